from setuptools import setup

setup(
    name="helios-audit-log",
    version="0.1.0",
    description="HeliosProxy plugin: a JSON-lines audit log of who ran what, where and how long",
    py_modules=["helios_audit_log"],
    install_requires=["helios-proxy"],
    entry_points={"helios_proxy": ["audit_log = helios_audit_log:plugin"]},
)
