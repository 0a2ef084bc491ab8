"""The compiled core (setup.py, mypyc) is the one that runs, it behaves exactly as its plain-Python
source does, and a checkout never imports a build older than its source."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import exchange
import exchange.core
import exchange.matching.auction
import exchange.matching.book
import exchange.settlement.clearing
import exchange.settlement.delivery
import exchange.settlement.financing
import exchange.settlement.funds
import exchange.settlement.holds
import exchange.settlement.ledger
import exchange.settlement.participants
import exchange.settlement.payouts
import exchange.settlement.rules
import exchange.settlement.settling
import exchange.settlement.state

ROOT = Path(__file__).resolve().parent.parent

# Applies a seeded stream of commands and prints a digest of every event and the final state hash:
# the matching benchmark's mix (limits, cancels, crossing and market orders) on the bare core, and the
# ledger benchmark's market day (holds, fills, weigh-ins, settlement, payouts) on the exchange.
DIGEST_SCRIPT = textwrap.dedent('''
    import exchange.core
    from benchmarks.matching import MixGenerator, setup_commands
    from benchmarks.ledger import MarketDay
    from exchange.core import Core, new_exchange
    encode = msgspec.msgpack.Encoder().encode
    digest = hashlib.blake2b(digest_size=16)
    for core, commands in ((Core(), setup_commands() + MixGenerator(7).generate(20_000)),
                           (new_exchange(), MarketDay(3).generate(3_000))):
        for command in commands:
            digest.update(encode(core.apply(command)))
        digest.update(core.state_hash().encode())
    print(exchange.core.__file__.endswith(".py"), digest.hexdigest())
''')

# Makes every module of the exchange package load from its .py source, never from a build.
PLAIN_PYTHON = textwrap.dedent('''
    import importlib.machinery as machinery
    class SourceOnly(machinery.PathFinder):
        loaders = [(machinery.SourceFileLoader, machinery.SOURCE_SUFFIXES)]
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name != "exchange" and not name.startswith("exchange."):
                return None
            for entry in path or sys.path:
                spec = machinery.FileFinder(entry or ".", *cls.loaders).find_spec(name)
                if spec is not None:
                    return spec
            return None
    sys.meta_path.insert(0, SourceOnly)
''')


def _digest(prelude: str) -> tuple[bool, str]:
    script = "import hashlib, msgspec, sys\n" + prelude + DIGEST_SCRIPT
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    plain, digest = out.stdout.split()
    return plain == "True", digest


@pytest.mark.skipif(os.environ.get("HOGX_COMPILE") == "0", reason="HOGX_COMPILE=0: the core runs uncompiled")
def test_the_core_runs_compiled() -> None:
    settlement = exchange.settlement
    for module in (exchange.core, exchange.matching.book, exchange.matching.auction, settlement.clearing,
                   settlement.state, settlement.participants, settlement.funds, settlement.holds, settlement.delivery,
                   settlement.settling, settlement.financing, settlement.payouts, settlement.rules,
                   settlement.ledger):
        assert module.__file__ is not None and not module.__file__.endswith(".py"), (
            f"{module.__name__} is not compiled: the build failed (see `make`'s output) or is missing; "
            "HOGX_COMPILE=0 runs the tests on the plain-Python core on purpose"
        )


def test_plain_python_and_compiled_cores_give_the_same_events_and_state() -> None:
    plain, plain_digest = _digest(PLAIN_PYTHON)
    assert plain, "the source-only loader did not take effect"
    default_is_plain, default_digest = _digest("")
    assert default_is_plain == (os.environ.get("HOGX_COMPILE") == "0")
    assert default_digest == plain_digest


def test_a_build_older_than_its_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text("")  # a source checkout
    package = tmp_path / "pkg"
    package.mkdir()
    built = package / f"mod{sysconfig.get_config_var('EXT_SUFFIX')}"
    source = package / "mod.py"
    built.write_bytes(b"")
    source.write_text("")
    os.utime(built, (1_000, 1_000))
    os.utime(source, (2_000, 2_000))
    with pytest.raises(ImportError, match="changed after it was compiled"):
        exchange.refuse_stale_builds(package)
    os.utime(built, (3_000, 3_000))
    exchange.refuse_stale_builds(package)  # rebuilt: accepted
    (tmp_path / "setup.py").unlink()
    os.utime(built, (1_000, 1_000))
    exchange.refuse_stale_builds(package)  # an installed package is not checked: no sources of its own
