"""Database trouble and recovery: a terminated writer backend, failed batches, refusals to start.

What must hold after any trouble: every acknowledged command is in the journal exactly once at the
seq it was acknowledged with, nothing is journaled twice, a batch is wholly committed or not at all,
the sequencer rebuilds itself and serves again, and its state equals a replay of the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio

from exchange.commands import Command, PlaceOrder
from exchange.core import Core
from exchange.domain import Side
from exchange.events import Event
from exchange.sequencer import (
    CommittedBatch,
    RecoveryError,
    Result,
    Sequencer,
    State,
    Unavailable,
    recover,
)
from tests.factories import list_instrument, order, register_lot
from tests.sequencer_harness import StepClock, client_ids, eventually, journal, replay_hash

from .conftest import FreshDatabase


@pytest_asyncio.fixture
async def dsn(fresh_database_url: FreshDatabase) -> str:
    return await fresh_database_url()


async def _admin(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def _setup(sequencer: Sequencer) -> int:
    await sequencer.submit(list_instrument())
    return (await sequencer.submit(register_lot(20, heads=1_000_000))).events[0].lot.lot_id  # type: ignore[union-attr]


class Traffic:
    """Concurrent submitters of unique orders that record what was acknowledged and what was not."""

    def __init__(self, sequencer: Sequencer, lot_id: int, tasks: int = 16) -> None:
        self.sequencer = sequencer
        self.lot_id = lot_id
        self.acked: dict[str, Result] = {}
        self.unknown: dict[str, PlaceOrder] = {}  # answered Unavailable: status unknown
        self.refused = 0  # Unavailable at submission: never enqueued
        self._running = True
        self._rng = random.Random(7)
        self._tasks = [asyncio.create_task(self._submitter(k)) for k in range(tasks)]

    def _order(self, cid: str) -> PlaceOrder:
        price_fen = 2800 + 10 * self._rng.randint(-3, 3)
        if self._rng.random() < 0.5:
            return order(10 + self._rng.randint(0, 2), Side.BUY, price_fen, 2, cid=cid)
        return order(20, Side.SELL, price_fen, 2, cid=cid, lot_id=self.lot_id)

    async def _submitter(self, k: int) -> None:
        i = 0
        while self._running:
            cid = f"t{k}-{i}"
            i += 1
            command = self._order(cid)
            try:
                future = self.sequencer.submit_nowait(command)
            except Unavailable:
                self.refused += 1
                await asyncio.sleep(0.002)
                continue
            try:
                self.acked[cid] = await future
            except Unavailable:
                self.unknown[cid] = command

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)


async def _check_journal(dsn: str, traffic: Traffic, live_hash: str) -> None:
    conn = await _admin(dsn)
    try:
        rows = await journal(conn)
        assert all(row.events is not None for row in rows)  # every row whole: command and its events
        seq_of = {cid: row.seq for row in rows for cid in [getattr(row.command, "client_order_id", None)] if cid}
        ids = client_ids(rows)
        assert len(ids) == len(set(ids)), "a command was journaled twice"
        for cid, result in traffic.acked.items():
            assert seq_of.get(cid) == result.seq, f"acknowledged {cid} lost or moved"
        assert await replay_hash(conn, use_snapshot=False) == live_hash
        assert await replay_hash(conn, use_snapshot=True) == live_hash
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _connections_blocked(dsn: str) -> AsyncIterator[None]:
    """No new connection to the test database (superusers included) while inside."""
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


# -- connection loss --------------------------------------------------------------------------------------


async def test_backend_terminated_inside_a_batch_loses_nothing_and_commits_nothing_twice(dsn: str) -> None:
    """The writer's backend dies while a batch's transaction is open; the database then refuses
    connections for a while: submissions are refused with Unavailable until it is back."""
    calls = 0
    inside = asyncio.Event()
    terminated = asyncio.Event()

    async def extra_writes(conn: asyncpg.Connection, batch: CommittedBatch) -> None:
        nonlocal calls
        calls += 1
        if calls == 40:  # pause inside the transaction until the test has killed the backend
            inside.set()
            await terminated.wait()
        await conn.execute("SELECT 1")

    sequencer = Sequencer(
        dsn, core_type=Core, clock_ns=StepClock(), max_batch=16, extra_writes=extra_writes, backoff_max_s=0.1
    )
    await sequencer.start()
    lot_id = await _setup(sequencer)
    traffic = Traffic(sequencer, lot_id)
    await asyncio.wait_for(inside.wait(), 20)
    doomed = sequencer._committing  # the batch inside the paused transaction
    assert doomed is not None and len(doomed) > 0
    doomed_ids = [c.client_order_id for c in doomed.commands if isinstance(c, PlaceOrder)]
    async with _connections_blocked(dsn):
        admin = await _admin(dsn.rsplit("/", 1)[0] + "/postgres")
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", sequencer.writer_backend_pid)
        finally:
            await admin.close()
        terminated.set()
        await eventually(lambda: sequencer.state is State.RECOVERING, what="the sequencer to notice")
        with pytest.raises(Unavailable):
            await sequencer.submit(order(10, Side.BUY, 2800, 1, cid="while-down"))
        await asyncio.sleep(0.3)  # several reconnect attempts fail meanwhile
        assert sequencer.state is State.RECOVERING
    await eventually(lambda: sequencer.available, what="recovery")
    served = len(traffic.acked)
    await eventually(lambda: len(traffic.acked) > served + 100, what="serving again")
    await traffic.stop()
    live_hash = sequencer.core.state_hash()
    await sequencer.stop()

    assert sequencer.recoveries == 1
    assert set(doomed_ids) <= set(traffic.unknown), "the doomed batch's callers must hear 'unavailable'"
    assert traffic.refused > 0
    await _check_journal(dsn, traffic, live_hash)
    conn = await _admin(dsn)
    try:
        journaled = {cid for _, cid in client_ids(await journal(conn))}
    finally:
        await conn.close()
    assert not journaled & set(doomed_ids), "the batch whose transaction died was committed"
    assert "while-down" not in journaled


async def test_backend_terminated_at_random_moments_under_load(dsn: str) -> None:
    """Plain COPY commits (no extra writes), killed whenever: ambiguous commits are settled by recovery."""
    sequencer = Sequencer(dsn, core_type=Core, clock_ns=StepClock(), max_batch=32, backoff_max_s=0.1)
    await sequencer.start()
    lot_id = await _setup(sequencer)
    traffic = Traffic(sequencer, lot_id)
    rng = random.Random(11)
    for kill in range(3):
        await eventually(lambda: sequencer.available)
        served = len(traffic.acked)
        await eventually(lambda: len(traffic.acked) > served + 50, what="traffic")  # noqa: B023
        await asyncio.sleep(rng.uniform(0, 0.05))
        admin = await _admin(dsn)
        try:
            await admin.fetchval("SELECT pg_terminate_backend($1)", sequencer.writer_backend_pid)
        finally:
            await admin.close()
        await eventually(lambda: sequencer.recoveries > kill, what=f"recovery {kill + 1}")  # noqa: B023
    await eventually(lambda: sequencer.available)
    served = len(traffic.acked)
    await eventually(lambda: len(traffic.acked) > served + 50, what="serving after the last kill")
    await traffic.stop()
    live_hash = sequencer.core.state_hash()

    # A retry of every "status unknown" order now gets its settled answer: the original if it was
    # committed after all, a fresh acceptance if it was not.
    conn = await _admin(dsn)
    try:
        journaled = {cid: row.seq for row in await journal(conn)
                     for cid in [getattr(row.command, "client_order_id", None)] if cid}
    finally:
        await conn.close()
    for cid, command in list(traffic.unknown.items())[:50]:
        retried = await sequencer.submit(command)
        assert retried.replay == (cid in journaled)
        if retried.replay:
            assert retried.seq == journaled[cid]
    live_hash = sequencer.core.state_hash()
    await sequencer.stop()
    assert sequencer.recoveries == 3
    await _check_journal(dsn, traffic, live_hash)


async def test_stop_while_the_database_is_unreachable_returns_promptly(dsn: str) -> None:
    sequencer = Sequencer(dsn, core_type=Core, clock_ns=StepClock(), backoff_max_s=0.05)
    await sequencer.start()
    await _setup(sequencer)
    async with _connections_blocked(dsn):
        admin = await _admin(dsn.rsplit("/", 1)[0] + "/postgres")
        try:
            await admin.fetchval("SELECT pg_terminate_backend($1)", sequencer.writer_backend_pid)
        finally:
            await admin.close()
        with pytest.raises(Unavailable):  # the batch that finds the connection dead
            await sequencer.submit(order(10, Side.BUY, 2800, 1, cid="into-the-void"))
        assert sequencer.state is State.RECOVERING
        await asyncio.wait_for(sequencer.stop(), 5)
    assert sequencer.state is State.STOPPED
    with pytest.raises(Unavailable):
        sequencer.submit_nowait(order(10, Side.BUY, 2800, 1, cid="after-stop"))


# -- failed batches ---------------------------------------------------------------------------------------


async def test_a_failing_extra_write_rolls_back_the_whole_batch(dsn: str) -> None:
    conn = await _admin(dsn)
    await conn.execute("CREATE TABLE side_rows (seq bigint PRIMARY KEY)")
    await conn.close()
    calls = 0

    async def extra_writes(conn: asyncpg.Connection, batch: CommittedBatch) -> None:
        nonlocal calls
        calls += 1
        await conn.copy_records_to_table(
            "side_rows", records=[(seq,) for seq, _, _ in batch.entries()], columns=["seq"]
        )
        if calls == 3:
            raise RuntimeError("ledger does not balance")

    sequencer = Sequencer(dsn, core_type=Core, clock_ns=StepClock(), extra_writes=extra_writes, backoff_max_s=0.05)
    await sequencer.start()
    await _setup(sequencer)  # calls 1 and 2
    failed = await asyncio.gather(
        *sequencer.submit_many([order(10, Side.BUY, 2800, 1, cid=f"x{i}") for i in range(5)]),
        return_exceptions=True,
    )
    assert all(isinstance(f, Unavailable) for f in failed)
    await eventually(lambda: sequencer.available, what="recovery")
    after = await sequencer.submit(order(10, Side.BUY, 2800, 1, cid="after"))
    assert after.seq == 3  # the failed batch took no seq in the end
    retried = await sequencer.submit(order(10, Side.BUY, 2800, 1, cid="x0"))
    assert not retried.replay and retried.seq == 4
    live_hash = sequencer.core.state_hash()
    await sequencer.stop()
    conn = await _admin(dsn)
    try:
        assert [r["seq"] for r in await conn.fetch("SELECT seq FROM side_rows ORDER BY seq")] == [1, 2, 3, 4]
        assert [cid for _, cid in client_ids(await journal(conn))] == ["after", "x0"]
        assert await replay_hash(conn, use_snapshot=False) == live_hash
    finally:
        await conn.close()


class _FaultyCore(Core):
    """A real core that raises on one client order id, as a bug in the core would."""

    def apply(self, command: Command) -> list[Event]:
        if isinstance(command, PlaceOrder) and command.client_order_id == "boom":
            self.counters.next_order_id += 1  # half-applied: state changed, then the failure
            raise RuntimeError("core bug")
        return super().apply(command)


async def test_a_core_exception_fails_the_batch_and_rebuilds_the_core(dsn: str) -> None:
    sequencer = Sequencer(dsn, core_type=_FaultyCore, clock_ns=StepClock(), backoff_max_s=0.05)
    await sequencer.start()
    await _setup(sequencer)
    outcomes = await asyncio.gather(
        *sequencer.submit_many([order(10, Side.BUY, 2800, 1, cid=c) for c in ("before", "boom", "behind")]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], RuntimeError)
    assert all(isinstance(o, Unavailable) for o in (outcomes[0], outcomes[2]))
    await eventually(lambda: sequencer.available, what="recovery")
    assert sequencer.core.counters.next_order_id == 1  # the half-applied change is gone
    again = await sequencer.submit(order(10, Side.BUY, 2800, 1, cid="before"))
    assert (again.seq, again.replay) == (3, False)
    live_hash = sequencer.core.state_hash()
    await sequencer.stop()
    conn = await _admin(dsn)
    try:
        assert [cid for _, cid in client_ids(await journal(conn))] == ["before"]
        assert await replay_hash(conn, use_snapshot=False) == live_hash
    finally:
        await conn.close()


# -- refusing to start ------------------------------------------------------------------------------------


async def _journal_something(dsn: str, **options: Any) -> None:
    sequencer = Sequencer(dsn, core_type=Core, clock_ns=StepClock(), **options)
    await sequencer.start()
    await _setup(sequencer)
    for i in range(3):
        await sequencer.submit(order(10, Side.BUY, 2800, 1, cid=f"o{i}"))
    await sequencer.stop()


async def test_recover_can_freeze_what_it_replayed(dsn: str) -> None:
    """freeze_gc (the sequencer's recovery): the state the replay built leaves the collector's generations
    before the collector runs again; the state is the same as without."""
    await _journal_something(dsn)
    conn = await _admin(dsn)
    try:
        plain = await recover(conn, Core, use_snapshot=False)
        assert gc.is_tracked(plain.core) and any(o is plain.core for o in gc.get_objects())
        frozen_before = gc.get_freeze_count()
        frozen = await recover(conn, Core, use_snapshot=False, freeze_gc=True)
        assert gc.get_freeze_count() > frozen_before
        assert not any(o is frozen.core for o in gc.get_objects())  # in the permanent generation
        assert frozen.core.state_hash() == plain.core.state_hash()
        assert frozen.client_orders == plain.client_orders and frozen.last_seq == plain.last_seq
        from_snapshot = await recover(conn, Core, freeze_gc=True)  # _journal_something's stop took one
        assert from_snapshot.snapshot_seq == plain.last_seq and from_snapshot.replayed == 0
        assert not any(o is from_snapshot.core for o in gc.get_objects())
        assert from_snapshot.core.state_hash() == plain.core.state_hash()
        assert gc.isenabled()  # paused while recovering only
    finally:
        gc.unfreeze()
        await conn.close()


async def test_start_refuses_a_snapshot_whose_hash_does_not_match(dsn: str) -> None:
    await _journal_something(dsn)
    conn = await _admin(dsn)
    try:
        await conn.execute("UPDATE snapshots SET state_hash = 'not-the-hash'")
    finally:
        await conn.close()
    sequencer = Sequencer(dsn, core_type=Core)
    with pytest.raises(RecoveryError, match="state hash"):
        await sequencer.start()
    assert not sequencer.available


async def test_start_refuses_a_journal_with_a_hole(dsn: str) -> None:
    await _journal_something(dsn)
    conn = await _admin(dsn)
    try:
        await conn.execute("DELETE FROM snapshots")
        await conn.execute("DELETE FROM journal WHERE seq = 3")
    finally:
        await conn.close()
    with pytest.raises(RecoveryError, match="hole"):
        await Sequencer(dsn, core_type=Core).start()


async def test_a_second_writer_waits_until_the_first_is_gone(dsn: str) -> None:
    first = Sequencer(dsn, core_type=Core, clock_ns=StepClock())
    await first.start()
    await _setup(first)
    second = Sequencer(dsn, core_type=Core)
    starting = asyncio.ensure_future(second.start())
    await asyncio.sleep(0.3)
    assert not starting.done()
    await first.submit(order(10, Side.BUY, 2800, 1, cid="last-of-first"))
    await first.stop()
    recovery = await asyncio.wait_for(starting, 10)
    assert recovery.last_seq == 3
    assert (await second.submit(order(10, Side.BUY, 2800, 1, cid="last-of-first"))).replay
    await second.stop()
