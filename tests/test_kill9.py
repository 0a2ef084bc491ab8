"""kill -9: a sequencer process under a steady stream of orders is SIGKILLed at random moments.

The child (`tests/sequencer_harness.py`) prints `ACK <client order id> <seq>` only after an order's
acknowledgement. After each kill: every acknowledged order is in the journal exactly once, at its
acknowledged seq; no command is journaled twice; every row is whole (command and events, seqs without
a hole); snapshot + tail replays to the same state as a replay from zero; and the next child's
recovered state hash equals that fresh replay. 3 rounds by default, 12 with `--soak`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from exchange.core import Core
from exchange.sequencer import Sequencer
from tests.sequencer_harness import DSN_ENV, ROUND_ENV, client_ids, journal, replay_hash

from .conftest import FreshDatabase

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest_asyncio.fixture
async def dsn(fresh_database_url: FreshDatabase) -> str:
    return await fresh_database_url()


async def _run_and_kill(dsn: str, round_id: str, rng: random.Random) -> tuple[str, dict[str, int]]:
    """Start a child, let it acknowledge a random number of orders, SIGKILL it at a random moment.

    Returns the state hash it recovered to and the orders it acknowledged.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sequencer_harness",
        cwd=REPO_ROOT, env={**os.environ, DSN_ENV: dsn, ROUND_ENV: round_id},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    acked: dict[str, int] = {}
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().split()
        assert first[0] == "RECOVERED", first
        target = rng.choice([0, rng.randint(1, 50), rng.randint(50, 600)])
        while len(acked) < target:
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert line, "the child died on its own"
            _, cid, seq = line.decode().split()
            acked[cid] = int(seq)
        await asyncio.sleep(rng.uniform(0, 0.03))  # kill between acks, not right after reading one
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    for line in (await process.stdout.read()).decode().splitlines():  # acks printed before the kill
        _, cid, seq = line.split()
        acked[cid] = int(seq)
    assert process.returncode == -signal.SIGKILL
    return first[2], acked


async def _dead_childs_backends_gone(conn: asyncpg.Connection) -> None:
    """A SIGKILLed client's backends may still finish what the server already received (a COPY, a
    snapshot INSERT: allowed, those commands were never acknowledged), so check only once they are gone.
    A new sequencer needs no such wait: it queues on the writer lock the old backend holds."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    for _ in range(2_000):
        if not await conn.fetchval(query):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the killed child's backends are still there after 20 s")


async def _check_after_kill(conn: asyncpg.Connection, acked: dict[str, int]) -> str:
    await _dead_childs_backends_gone(conn)
    rows = await journal(conn)
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    assert all(row.events is not None for row in rows)
    ids = client_ids(rows)
    assert len(ids) == len(set(ids)), "an order was journaled twice"
    seq_of = {cid: row.seq for row in rows for cid in [getattr(row.command, "client_order_id", None)] if cid}
    missing = {cid for cid, seq in acked.items() if seq_of.get(cid) != seq}
    assert not missing, f"acknowledged orders lost: {sorted(missing)[:5]}"
    from_zero = await replay_hash(conn, use_snapshot=False)
    assert await replay_hash(conn, use_snapshot=True) == from_zero
    return from_zero


async def test_sigkill_loses_no_acknowledged_order_and_replay_is_exact(
    dsn: str, request: pytest.FixtureRequest
) -> None:
    rounds = 12 if request.config.getoption("--soak") else 3
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    acked: dict[str, int] = {}
    expected_hash = None
    conn = await asyncpg.connect(dsn)
    try:
        for round_number in range(rounds):
            recovered_hash, new_acks = await _run_and_kill(dsn, f"r{round_number}", rng)
            if expected_hash is not None:
                assert recovered_hash == expected_hash, f"round {round_number}: recovery differs from a fresh replay"
            acked |= new_acks
            expected_hash = await _check_after_kill(conn, acked)
    finally:
        await conn.close()
    sequencer = Sequencer(dsn, core_type=Core)
    await sequencer.start()
    try:
        assert sequencer.core.state_hash() == expected_hash
    finally:
        await sequencer.stop(snapshot=False)
