"""Shim for tools that still call setup.py; the metadata lives in setup.cfg. The one thing here:
the fast path's compiled helper (helios_proxy/_speedups.c), optional: where no C compiler (or no
Python headers) is found, the install goes on without it and the pure-Python reference runs
(helios_proxy/speedups.py)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("helios_proxy._speedups", ["helios_proxy/_speedups.c"], optional=True)])
