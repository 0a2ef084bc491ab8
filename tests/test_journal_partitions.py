"""The journal partitioned by day (migration 0013) and its archival (`store.archive_journal`, `hogx archive`).

A journal written over simulated days by the sequencer (a fake clock), a snapshot, the old days archived
through the CLI: restarting from the snapshot and the tail gives the state hash of the live core; a day
that recovery still needs is refused; an archived day restores from its file; an existing journal is
converted by the migration.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgspec
import pytest

from benchmarks.matching import MixGenerator, exchange_setup_commands
from exchange import history, priceindex, readmodel, store
from exchange.commands import Command
from exchange.core import new_exchange
from exchange.events import Rejected
from exchange.sequencer import RecoveryError, Sequencer, recover
from gateway import cli
from tests.conftest import FreshDatabase

DAY = store.DAY_NS
START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: days in the past, so the wall clock's are not archived
DAYS = 4
PER_DAY = 400


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns // 10**9, UTC).date().isoformat()


class Clock:
    """The sequencer's clock, moved by the test from one simulated day to the next."""

    def __init__(self) -> None:
        self.now_ns = START_NS + 3_600 * 10**9  # 01:00 on day 0

    def __call__(self) -> int:
        self.now_ns += 1_000
        return self.now_ns


async def _submit(sequencer: Sequencer, commands: Sequence[Command]) -> None:
    fresh = [msgspec.structs.replace(command, ts_ns=0) for command in commands]
    futures = sequencer.submit_many(fresh)
    for result in await asyncio.gather(*futures):
        assert not any(e.__class__ is Rejected for e in result.events), result


async def _archive_cli(dsn: str, before_ns: int, directory: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setenv(store.DATABASE_URL_ENV, dsn)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = await asyncio.to_thread(cli.main, ["archive", "--before", _iso(before_ns), "--to", str(directory)])
    return code, out.getvalue() + err.getvalue()


async def _project_everything(dsn: str, last_seq: int) -> None:
    """Run the settlement history and the read-model projector up to `last_seq`, as a gateway would."""
    await history.ReportHistory(dsn).catch_up(last_seq)
    projectors = (readmodel.Projector(dsn, poll_interval_s=0.01), priceindex.IndexProjector(dsn, poll_interval_s=0.01))
    for projector in projectors:
        await projector.start()
        try:
            await projector.wait_for(last_seq, timeout_s=30)
        finally:
            await projector.stop()


async def test_old_days_archived_then_recovery_from_snapshot_and_tail_gives_the_same_state(
    fresh_database_url: FreshDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = await fresh_database_url()
    stream = MixGenerator(11).generate(DAYS * PER_DAY + PER_DAY)
    clock = Clock()
    sequencer = Sequencer(dsn, core_type=new_exchange, clock_ns=clock, snapshot_every=10**9)
    await sequencer.start()
    await _submit(sequencer, exchange_setup_commands())
    for day in range(DAYS):  # days 0..3, each its own partition
        clock.now_ns = max(clock.now_ns, START_NS + day * DAY + 3_600 * 10**9)
        await _submit(sequencer, stream[day * PER_DAY:(day + 1) * PER_DAY])
    await sequencer.stop()  # a clean stop snapshots: the snapshot is on day 3
    snapshot_seq = sequencer.committed_seq

    sequencer = Sequencer(dsn, core_type=new_exchange, clock_ns=clock, snapshot_every=10**9)
    await sequencer.start()
    await _submit(sequencer, stream[DAYS * PER_DAY:])  # the tail after the snapshot, still on day 3
    live_hash, last_seq = sequencer.core.state_hash(), sequencer.committed_seq
    await sequencer.stop(snapshot=False)
    assert last_seq > snapshot_seq

    conn = await asyncpg.connect(dsn)
    try:
        assert (await recover(conn, new_exchange, use_snapshot=False)).core.state_hash() == live_hash
        days = {p.name: p for p in await store.journal_partitions(conn)}
        for day in range(DAYS):
            assert store.journal_partition_name(day + START_NS // DAY) in days
        rows_before = {name: await conn.fetchval(f"SELECT count(*) FROM {name}") for name in days}

        # day 3 holds the snapshot and the tail: archiving up to day 4 is refused, and nothing moves
        code, said = await _archive_cli(dsn, START_NS + 4 * DAY, tmp_path / "refused", monkeypatch)
        assert code == 1 and "journal_20260104 holds journal rows up to seq" in said
        assert {p.name for p in await store.journal_partitions(conn)} == set(days)
        assert not (tmp_path / "refused").exists()

        # days 0, 1 and 2 lie wholly before the snapshot, but the projections have not folded them yet: refused
        # (no gateway runs here: its read model snapshot's watermark stays at 0, switched off)
        await conn.execute("UPDATE projections SET seq = 1 WHERE name <> 'gateway_read_model'")
        code, said = await _archive_cli(dsn, START_NS + 3 * DAY, tmp_path / "archive", monkeypatch)
        assert code == 1
        assert ("the projections orders at seq 1, price_index at seq 1, settlement_reports at seq 1 have not yet "
                "folded") in said
        assert {p.name for p in await store.journal_partitions(conn)} == set(days)
        assert not (tmp_path / "archive").exists()
        await _project_everything(dsn, last_seq)
        # a projection that never folded anything is switched off (the read models by default): not in the way
        await conn.execute("UPDATE projections SET seq = 0 WHERE name = 'orders'")

        code, said = await _archive_cli(dsn, START_NS + 3 * DAY, tmp_path / "archive", monkeypatch)
        assert code == 0, said
        archived = ["journal_20260101", "journal_20260102", "journal_20260103"]
        assert [line.split(":")[0] for line in said.splitlines()] == archived
        left = {p.name for p in await store.journal_partitions(conn)}
        assert left == set(days) - set(archived)
        for name in archived:
            manifest = json.loads((tmp_path / "archive" / f"{name}.json").read_text())
            assert manifest["rows"] == rows_before[name] > 0
            assert manifest["last_seq"] < manifest["snapshot_seq"] == snapshot_seq
            assert (tmp_path / "archive" / manifest["path"]).stat().st_size > 0
        first_kept = await conn.fetchval("SELECT min(seq) FROM journal")
        assert first_kept == json.loads((tmp_path / "archive" / f"{archived[-1]}.json").read_text())["last_seq"] + 1

        # a full replay now meets the missing rows and says so
        with pytest.raises(RecoveryError, match="a hole in the journal"):
            await recover(conn, new_exchange, use_snapshot=False)
        # so do the projections, rebuilt from seq 0 (their documented reset): they stop, their watermarks stay
        await conn.execute("DELETE FROM settlement_report_rows")
        await conn.execute("UPDATE projections SET seq = 0")
        with pytest.raises(store.JournalGap, match="settlement history: journal rows between seq 0 and"):
            await history.ReportHistory(dsn).catch_up(last_seq)
        for projector, who in ((readmodel.Projector(dsn, poll_interval_s=0.01), "read-model projector"),
                               (priceindex.IndexProjector(dsn, poll_interval_s=0.01), "price index projector")):
            await projector.start()
            assert projector._task is not None
            with pytest.raises(store.JournalGap, match=f"{who}: journal rows between seq 0 and"):
                await asyncio.wait_for(asyncio.shield(projector._task), 10)
            await projector.stop()
        assert set(await conn.fetch("SELECT seq FROM projections")) == {(0,)}
        assert await conn.fetchval("SELECT count(*) FROM settlement_report_rows") == 0
    finally:
        await conn.close()

    # the sequencer restarts from the snapshot and the tail, to the live state
    sequencer = Sequencer(dsn, core_type=new_exchange, clock_ns=clock)
    recovery = await sequencer.start()
    try:
        assert (recovery.snapshot_seq, recovery.last_seq) == (snapshot_seq, last_seq)
        assert sequencer.core.state_hash() == live_hash
    finally:
        await sequencer.stop(snapshot=False)

    # the files bring the days back: a full replay again equals the live state
    conn = await asyncpg.connect(dsn)
    try:
        for name in archived:
            await store.restore_journal_partition(conn, tmp_path / "archive" / f"{name}.json")
        assert (await recover(conn, new_exchange, use_snapshot=False)).core.state_hash() == live_hash
    finally:
        await conn.close()


async def test_archival_without_a_snapshot_is_refused(fresh_database_url: FreshDatabase, tmp_path: Path) -> None:
    dsn = await fresh_database_url()
    conn = await asyncpg.connect(dsn)
    try:
        await store.append_journal(conn, [(1, START_NS, b"\x90", b"\x90"), (2, START_NS + 2 * DAY, b"\x90", b"\x90")])
        with pytest.raises(store.ArchiveRefused, match="no snapshot"):
            await store.archive_journal(conn, START_NS + DAY, tmp_path)
        assert [p.name for p in await store.journal_partitions(conn)][:1] == ["journal_20260101"]
        assert await store.max_seq(conn) == 2
    finally:
        await conn.close()


async def test_the_sequencer_makes_a_days_partition_before_the_day_starts(fresh_database_url: FreshDatabase) -> None:
    dsn = await fresh_database_url()
    clock = Clock()
    sequencer = Sequencer(dsn, core_type=new_exchange, clock_ns=clock)
    await sequencer.start()
    try:
        await _submit(sequencer, exchange_setup_commands()[:1])
        conn = await asyncpg.connect(dsn)
        try:
            names = {p.name for p in await store.journal_partitions(conn)}
            # the first row's day and the next two, before any row of them
            assert {"journal_20260101", "journal_20260102", "journal_20260103"} <= names
            assert "journal_20260104" not in names
            clock.now_ns = START_NS + DAY + 60 * 10**9  # a minute into day 1: day 3 is made
            await _submit(sequencer, exchange_setup_commands()[1:2])
            assert "journal_20260104" in {p.name for p in await store.journal_partitions(conn)}
            clock.now_ns = START_NS + 30 * DAY  # a clock that jumps weeks ahead still finds its day
            await _submit(sequencer, exchange_setup_commands()[2:3])
            assert await conn.fetchval("SELECT count(*) FROM journal_20260131") == 1
        finally:
            await conn.close()
    finally:
        await sequencer.stop(snapshot=False)


async def test_the_migration_keeps_an_existing_journal_as_one_partition(fresh_database_url: FreshDatabase) -> None:
    dsn = await fresh_database_url(migrated=False)
    conn = await asyncpg.connect(dsn)
    try:
        earlier = [m for m in store.load_migrations() if m.version < 13]
        await store.migrate(conn, migrations=earlier)
        rows = [(seq, START_NS + seq * DAY // 2, b"c%d" % seq, b"e") for seq in range(1, 6)]  # 2026-01-01..03
        await conn.executemany("INSERT INTO journal (seq, ts_ns, command, events) VALUES ($1, $2, $3, $4)", rows)
        assert await store.migrate(conn) == [m.version for m in store.load_migrations() if m.version >= 13]
        strategy = "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = 'journal'::regclass"
        assert await conn.fetchval(strategy) == "r"  # by range
        legacy = store.JournalPartition("journal_legacy", START_NS, START_NS + 3 * DAY)  # the rows' whole days
        assert await store.journal_partitions(conn) == [legacy]
        assert [tuple(r) for r in await conn.fetch("SELECT seq, ts_ns, command, events FROM journal ORDER BY seq")] \
            == rows
        # new rows go to new days; the legacy partition still refuses a duplicate seq
        await store.append_journal(conn, [(6, START_NS + 5 * DAY, b"c6", b"e")])
        assert [p.name for p in await store.journal_partitions(conn)][1] == "journal_20260106"
        with pytest.raises(asyncpg.UniqueViolationError):
            await store.append_journal(conn, [(3, START_NS + DAY, b"dup", b"e")])
        assert await store.max_seq(conn) == 6
    finally:
        await conn.close()


async def test_recovery_reads_only_the_partitions_of_the_days_after_its_snapshot(
    fresh_database_url: FreshDatabase,
) -> None:
    """Recovery's journal queries are planned over the partitions of the tail's days only (store.max_seq):
    an old day's partition locked by someone else (an archival detaching it, say) does not stop it, and
    it gives the live state. Planned over every partition, each query took 8-15 ms more on 35 days."""
    dsn = await fresh_database_url()
    stream = MixGenerator(12).generate(DAYS * PER_DAY)
    clock = Clock()
    sequencer = Sequencer(dsn, core_type=new_exchange, clock_ns=clock, snapshot_every=10**9)
    await sequencer.start()
    await _submit(sequencer, exchange_setup_commands())
    for day in range(DAYS - 1):  # days 0..2
        clock.now_ns = max(clock.now_ns, START_NS + day * DAY + 3_600 * 10**9)
        await _submit(sequencer, stream[day * PER_DAY:(day + 1) * PER_DAY])
    await sequencer.stop()  # the snapshot is on day 2
    sequencer = Sequencer(dsn, core_type=new_exchange, clock_ns=clock, snapshot_every=10**9)
    await sequencer.start()
    clock.now_ns = max(clock.now_ns, START_NS + (DAYS - 1) * DAY + 3_600 * 10**9)
    await _submit(sequencer, stream[(DAYS - 1) * PER_DAY:])  # the tail, on day 3
    live_hash, last_seq = sequencer.core.state_hash(), sequencer.committed_seq
    await sequencer.stop(snapshot=False)

    locker, conn = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        first_day = store.journal_partition_name(START_NS // DAY)
        assert await locker.fetchval(f"SELECT count(*) FROM {first_day}") > 0
        await conn.execute("SET lock_timeout = '3s'")
        async with locker.transaction():
            await locker.execute(f"LOCK TABLE {first_day} IN ACCESS EXCLUSIVE MODE")
            recovery = await recover(conn, new_exchange)
            assert recovery.replayed > 0 and recovery.last_seq == last_seq
            assert recovery.core.state_hash() == live_hash
            with pytest.raises(asyncpg.LockNotAvailableError):  # what a query by seq alone does
                await store.max_seq(conn)
    finally:
        await locker.close()
        await conn.close()
