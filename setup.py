"""Builds the hot core modules into C extensions with mypyc (the rest of the project is plain Python).

The compiled modules are ordinary typed Python: with ``HOGX_COMPILE=0``, or where they cannot be built
(no C compiler), they run as they are, only slower. ``exchange/__init__.py`` refuses a compiled module
older than its source, so an edit is never shadowed by a stale build: ``make`` rebuilds it.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The modules every command passes through: the core's dispatch and checks, the book, the auction, the
# clearing (its dispatcher, its state and each flow's module) with its rules, and the ledger every money
# movement goes through.
COMPILED = [
    "exchange/matching/book.py",
    "exchange/matching/auction.py",
    "exchange/core.py",
    "exchange/replay.py",
    "exchange/settlement/clearing.py",
    "exchange/settlement/state.py",
    "exchange/settlement/participants.py",
    "exchange/settlement/funds.py",
    "exchange/settlement/holds.py",
    "exchange/settlement/delivery.py",
    "exchange/settlement/settling.py",
    "exchange/settlement/financing.py",
    "exchange/settlement/payouts.py",
    "exchange/settlement/packing.py",
    "exchange/settlement/rules.py",
    "exchange/settlement/ledger.py",
]


class OptionalBuildExt(build_ext):
    """A failed build leaves the modules as plain Python instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # a missing or broken C toolchain: setuptools raises several kinds
            print(f"hogx: the compiled core was not built ({exc}); it runs as plain Python", file=sys.stderr)


ext_modules = []
if os.environ.get("HOGX_COMPILE", "1") != "0":
    from mypyc.build import mypycify

    ext_modules = mypycify(COMPILED, opt_level="3", group_name="hogx_core")

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
