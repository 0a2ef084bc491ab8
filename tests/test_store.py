"""exchange.store against a real PostgreSQL: migrations, journal, snapshots, database resolution."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg
import msgspec
import pytest

from exchange import store
from exchange.store import Migration, MigrationError, Snapshot

from .conftest import FreshDatabase

# -- migrations -----------------------------------------------------------------------------------------


def test_packaged_migrations_start_with_the_journal() -> None:
    migrations = store.load_migrations()
    assert (migrations[0].version, migrations[0].name) == (1, "journal")
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})


def test_load_migrations_orders_by_number_and_ignores_other_files(tmp_path: Path) -> None:
    (tmp_path / "0010_later.sql").write_text("SELECT 10;")
    (tmp_path / "0002_early.sql").write_text("SELECT 2;")
    (tmp_path / "README.md").write_text("not a migration")
    (tmp_path / "3_unpadded.sql").write_text("SELECT 3;")
    assert [(m.version, m.name) for m in store.load_migrations(tmp_path)] == [(2, "early"), (10, "later")]


def test_load_migrations_rejects_two_files_with_one_number(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="two migrations numbered 0001"):
        store.load_migrations(tmp_path)


async def _applied_versions(conn: asyncpg.Connection) -> list[int]:
    return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]


async def test_migrate_applies_every_file_once(fresh_database_url: FreshDatabase) -> None:
    conn = await asyncpg.connect(await fresh_database_url(migrated=False))
    try:
        expected = [m.version for m in store.load_migrations()]
        assert await store.migrate(conn) == expected
        assert await store.migrate(conn) == []
        assert await _applied_versions(conn) == expected
        columns = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'journal' ORDER BY ordinal_position"
        )
        # 0001 lays down the replayable core of the journal; later migrations may add columns after it
        assert [(c["column_name"], c["data_type"]) for c in columns][:3] == [
            ("seq", "bigint"), ("ts_ns", "bigint"), ("command", "bytea"),
        ]
    finally:
        await conn.close()


async def test_migrate_runs_files_in_version_order(fresh_database_url: FreshDatabase) -> None:
    # Given out of order: 0002 only works after 0001 created its table.
    migrations = [
        Migration(2, "fill", "INSERT INTO t (v) VALUES (2);"),
        Migration(1, "create", "CREATE TABLE t (v int); INSERT INTO t (v) VALUES (1);"),
    ]
    conn = await asyncpg.connect(await fresh_database_url(migrated=False))
    try:
        assert await store.migrate(conn, migrations=migrations) == [1, 2]
        assert [r["v"] for r in await conn.fetch("SELECT v FROM t ORDER BY v")] == [1, 2]
        more = [*migrations, Migration(3, "more", "INSERT INTO t (v) VALUES (3);")]
        assert await store.migrate(conn, migrations=more) == [3]
    finally:
        await conn.close()


async def test_failed_migration_leaves_nothing_behind(fresh_database_url: FreshDatabase) -> None:
    good = Migration(1, "good", "CREATE TABLE a (v int);")
    broken = Migration(2, "broken", "CREATE TABLE b (v int); SELECT * FROM no_such_table;")
    conn = await asyncpg.connect(await fresh_database_url(migrated=False))
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await store.migrate(conn, migrations=[good, broken])
        assert await _applied_versions(conn) == [1]
        assert await conn.fetchval("SELECT to_regclass('b')") is None
        fixed = Migration(2, "fixed", "CREATE TABLE b (v int);")
        assert await store.migrate(conn, migrations=[good, fixed]) == [2]  # the lock was released
    finally:
        await conn.close()


async def test_edited_migration_is_refused(fresh_database_url: FreshDatabase) -> None:
    conn = await asyncpg.connect(await fresh_database_url(migrated=False))
    try:
        await store.migrate(conn, migrations=[Migration(1, "a", "CREATE TABLE a (v int);")])
        with pytest.raises(MigrationError, match="0001_a was edited"):
            await store.migrate(conn, migrations=[Migration(1, "a", "CREATE TABLE a (v bigint);")])
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_file_once(fresh_database_url: FreshDatabase) -> None:
    dsn = await fresh_database_url(migrated=False)
    # A slow first file widens the window in which the racers overlap.
    migrations = [
        Migration(1, "slow", "SELECT pg_sleep(0.2); CREATE TABLE t (v int);"),
        Migration(2, "fill", "INSERT INTO t (v) VALUES (1);"),
    ]
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(store.migrate(c, migrations=migrations) for c in conns))
        assert sorted(v for applied in results for v in applied) == [1, 2]
        assert await conns[0].fetchval("SELECT count(*) FROM t") == 1
        assert await _applied_versions(conns[0]) == [1, 2]
    finally:
        for c in conns:
            await c.close()


async def test_migrate_accepts_a_pool(pool: asyncpg.Pool) -> None:
    assert await store.migrate(pool) == []  # the session database is already migrated


# -- journal --------------------------------------------------------------------------------------------


async def test_journal_round_trip_in_pages(fresh_database_url: FreshDatabase) -> None:
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        assert await store.max_seq(conn) == 0
        rows = [(seq, 1_700_000_000_000_000_000 + seq * 7, bytes([seq % 256, 0, 255]) * (seq % 5))
                for seq in range(1, 2_501)]
        await store.append_journal(conn, rows[:1000])
        await store.append_journal(conn, rows[1000:])
        await store.append_journal(conn, [])
        assert await store.max_seq(conn) == 2_500

        pages = [page async for page in store.read_journal(conn, 0, batch=1000)]
        assert [len(p) for p in pages] == [1000, 1000, 500]
        assert [tuple(r) for page in pages for r in page] == rows

        tail = [tuple(r) async for page in store.read_journal(conn, after_seq=2_000, batch=250) for r in page]
        assert tail == rows[2_000:]
    finally:
        await conn.close()


async def test_read_journal_ends_on_an_exact_multiple_of_the_batch(pool: asyncpg.Pool) -> None:
    # Works in the shared session database and rolls back, leaving it as it found it.
    with pytest.raises(_Rollback):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM journal")
            await store.append_journal(conn, [(s, s, b"x") for s in range(1, 7)])
            pages = [[r["seq"] for r in page] async for page in store.read_journal(conn, 0, batch=3)]
            assert pages == [[1, 2, 3], [4, 5, 6]]
            assert [page async for page in store.read_journal(conn, 6, batch=3)] == []
            with pytest.raises(ValueError):
                await anext(store.read_journal(conn, 0, batch=0))
            raise _Rollback


async def test_append_is_all_or_nothing_inside_a_transaction(fresh_database_url: FreshDatabase) -> None:
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        await store.append_journal(conn, [(1, 10, b"a"), (2, 20, b"b")])
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await store.append_journal(conn, [(3, 30, b"c")])
                await store.append_journal(conn, [(4, 40, b"d"), (2, 99, b"dup")])
        assert [tuple(r) async for page in store.read_journal(conn, 0, 10) for r in page] == [
            (1, 10, b"a"), (2, 20, b"b"),
        ]
        with pytest.raises(asyncpg.CheckViolationError):
            await store.append_journal(conn, [(0, 0, b"seq starts at 1")])
    finally:
        await conn.close()


async def test_a_copy_begins_and_commits_in_its_own_query(fresh_database_url: FreshDatabase) -> None:
    """copy_binary_statement (the sequencer's two round trips a batch): BEGIN before a COPY leaves the
    transaction open with the rows in it, COMMIT after a COPY ends it; a COPY that fails runs nothing after
    it, so its COMMIT never happens, and the rows of the transaction go with the connection."""
    dsn = await fresh_database_url()
    conn = await asyncpg.connect(dsn)
    reader = await asyncpg.connect(dsn)
    encoder = msgspec.msgpack.Encoder()

    def rows(first_seq: int, n: int) -> bytes:
        return store.encode_journal_rows(first_seq, [ts_ns] * n, [b"\x90"] * n, [encoder.encode([])] * n)

    commit = store.JOURNAL_COPY + "; COMMIT"
    ts_ns = 1_790_000_000_000_000_000
    try:
        await store.ensure_journal_partitions(conn, (ts_ns,))
        await store.begin_copy_journal_binary(conn, rows(1, 3))
        assert conn.is_in_transaction()
        assert await reader.fetchval("SELECT count(*) FROM journal") == 0  # not committed yet
        await store.copy_binary_statement(conn, commit, rows(4, 2))
        assert not conn.is_in_transaction()
        assert await reader.fetchval("SELECT array_agg(seq ORDER BY seq) FROM journal") == [1, 2, 3, 4, 5]

        await store.begin_copy_journal_binary(conn, rows(6, 1))
        with pytest.raises(asyncpg.UniqueViolationError):
            await store.copy_binary_statement(conn, commit, rows(5, 2))  # seq 5 again
        assert conn.is_in_transaction()  # aborted, never committed
        conn.terminate()
        assert await reader.fetchval("SELECT max(seq) FROM journal") == 5
    finally:
        conn.terminate()
        await reader.close()


# -- snapshots ------------------------------------------------------------------------------------------


async def test_snapshots_latest_and_at_or_before(fresh_database_url: FreshDatabase) -> None:
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        assert await store.latest_snapshot(conn) is None
        assert await store.save_snapshot(conn, 10, "h10", b"\x00state10") is True
        assert await store.save_snapshot(conn, 20, "h20", b"state20" * 100_000) is True
        assert await store.save_snapshot(conn, 10, "other", b"other") is False  # first one kept

        assert await store.latest_snapshot(conn) == Snapshot(20, "h20", b"state20" * 100_000)
        assert await store.latest_snapshot(conn, at_or_before=19) == Snapshot(10, "h10", b"\x00state10")
        assert await store.latest_snapshot(conn, at_or_before=20) == Snapshot(20, "h20", b"state20" * 100_000)
        assert await store.latest_snapshot(conn, at_or_before=9) is None
    finally:
        await conn.close()


# -- which database -------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_seq", [1, 2**31 - 1, 2**32 - 3, 2**32, 5 * 2**32 + 7, 2**62])
def test_a_run_of_one_time_stamp_encodes_as_rows_of_their_own(first_seq: int) -> None:
    """encode_journal_run (the sequencer's chunks, values and their encoders) gives encode_journal_body's
    bytes of the values encoded apart, rows longer than its first guess and across a 2**32 seq too."""
    encoder = msgspec.msgpack.Encoder()
    commands: list[object] = [[1, 2, 3], "", "x" * 3000, None, [0], {"a": [1] * 600}]
    events: list[object] = [[], [[1, "e" * 40]] * 40, [], [1, 2], [], list(range(-500, 500))]
    ts_ns = 1_790_000_000_123_456_789
    scratch = bytearray()
    for n in (len(commands), 1, 2):
        expected = store.encode_journal_body(first_seq, [ts_ns] * n, list(map(encoder.encode, commands[:n])),
                                             list(map(encoder.encode, events[:n])))  # fmt: skip
        for buffer in (bytearray(), bytearray(b"\xff" * 50_000), scratch):  # its content never matters
            got = store.encode_journal_run(first_seq, ts_ns, commands[:n], events[:n], encoder.encode_into,
                                           encoder.encode_into, buffer)  # fmt: skip
            assert got == expected


def test_dsn_with_database_keeps_everything_but_the_path() -> None:
    assert store.dsn_with_database("postgresql://u:p@127.0.0.1:5432/test?sslmode=disable", "other") == (
        "postgresql://u:p@127.0.0.1:5432/other?sslmode=disable"
    )
    with pytest.raises(ValueError):
        store.dsn_with_database("mysql://127.0.0.1/x", "y")


async def test_resolve_database_url_prefers_database_url() -> None:
    url = "postgresql://someone@127.0.0.1:1/somewhere"
    assert await store.resolve_database_url({"DATABASE_URL": url}) == (url, None)


async def test_resolve_database_url_starts_an_embedded_server() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hogx-test-resolve-"))
    try:
        dsn, server = await store.resolve_database_url({}, data_dir=tmp / "pgdata")
        assert server is not None
        try:
            assert dsn == server.dsn_for("hogx")
            conn = await asyncpg.connect(dsn)
            assert await conn.fetchval("SELECT current_database()") == "hogx"
            await conn.close()
            assert await store.ensure_database(server.dsn, "hogx") == dsn  # already there: no error
        finally:
            server.stop()
        assert not server.is_running()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def test_ensure_database_rejects_names_needing_quotes(database_url: str) -> None:
    with pytest.raises(ValueError):
        await store.ensure_database(database_url, 'x"; DROP DATABASE postgres; --')


class _Rollback(Exception):
    """Raised to roll a test's transaction back."""
