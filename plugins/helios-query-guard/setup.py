from setuptools import setup

setup(
    name="helios-query-guard",
    version="0.1.0",
    description="HeliosProxy plugin: reject DELETE and UPDATE without WHERE",
    py_modules=["helios_query_guard"],
    install_requires=["helios-proxy", "pglast>=6"],
    entry_points={"helios_proxy": ["query_guard = helios_query_guard"]},
)
