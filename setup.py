"""Builds the hot core modules into C extensions with mypyc (the rest of the project is plain Python).

The compiled modules are ordinary typed Python: without a C compiler, or with ``HOGX_COMPILE=0``, they
run as they are, only slower. ``exchange/__init__.py`` refuses a compiled module older than its source,
so an edit is never shadowed by a stale build: ``make`` rebuilds it.
"""

import os

from setuptools import setup

# The modules every command passes through: matching and the settlement stage.
COMPILED = [
    "exchange/matching/book.py",
    "exchange/matching/auction.py",
    "exchange/core.py",
]

ext_modules = []
if os.environ.get("HOGX_COMPILE", "1") != "0":
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, opt_level="3", group_name="hogx_core")

setup(ext_modules=ext_modules)
