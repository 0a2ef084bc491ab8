"""PostgreSQL store: finding the database, schema migrations, the journal and snapshots (asyncpg).

With `exchange/sequencer.py`, the only module of `exchange/` that does I/O. It owns:
- which database to use: `DATABASE_URL` when set, otherwise an embedded server (`exchange.pgembed`);
- the migration runner: `exchange/migrations/NNNN_name.sql` applied in order, each in its own
  transaction, recorded in `schema_migrations`, serialised across processes by an advisory lock;
- the journal (`seq`, `ts_ns`, msgspec-encoded `command`, and since migration 0004 the msgspec-encoded
  list of the command's `events`), appended with binary COPY of pre-encoded rows (`encode_journal_body`
  encodes a run of rows, so the sequencer encodes a batch in parts as it builds it, `encode_journal_run`
  the same bytes for rows sharing one time stamp, as the sequencer stamps them, from the values and their
  encoders, and
  `copy_binary_data` frames the parts) and read back in `seq` order in keyset pages, or for replay as
  server-concatenated pages of commands (`read_command_page`);
- the journal's partitions (migration 0013): one per UTC day of `ts_ns`, `journal_YYYYMMDD`, created
  ahead of need (`ensure_journal_partitions`: the sequencer calls it at start and on the first commit of
  each day, for that day and the next `JOURNAL_DAYS_AHEAD`; `append_journal` for its rows' days), and
  their archival (`archive_journal`): a partition whose every row is older than the latest snapshot
  (seq < the snapshot's seq) is exported with binary COPY to a file beside a JSON manifest, fsynced,
  then detached (`DETACH PARTITION ... CONCURRENTLY`: the writer's COPYs go on) and dropped. Recovery
  reads only the snapshot and the rows after it, so it never needs an archived partition; the row at
  the snapshot's own seq is kept too (recovery reads its time stamp). A partition holding a row
  recovery still needs is refused (`ArchiveRefused`) and then nothing is archived; so is one holding
  rows a projection (a `projections` watermark: settlement reports, read models) has not yet folded.
  A projection that meets missing rows after its watermark anyway (reset to rebuild, say) stops with
  `JournalGap` (`check_journal_contiguous`) instead of skipping them. What archival
  gives up: a full replay from seq 1 (`recover(use_snapshot=False)`, which then reports the missing
  rows as a hole), answers to retries of orders placed in archived days (archive only days older
  than the idempotency retention). The gateway's read model starts from its own snapshot (its
  `gateway_read_model` watermark, gateway/readmodel_snapshots.py), so it needs only rows after it.
  `restore_journal_partition` attaches an archived day again from its file;
- snapshots: encoded core state at a sequence number with the state hash replay must reproduce, and
  the sequencer's idempotency index at that sequence number (`client_orders`, migration 0004).

The functions take a connection, not a pool, so the caller decides the transaction: the sequencer
writes a batch's journal rows and its other rows inside one transaction (`begin_copy_journal_binary`
opens it with the journal's COPY, the ledger writer's last COPY commits it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources
from itertools import chain, count, repeat
from pathlib import Path
from typing import Any, BinaryIO, Final, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from exchange.pgembed import DEFAULT_DATA_DIR, EmbeddedPostgres

__all__ = [
    "APP_DATABASE",
    "DATABASE_URL_ENV",
    "DAY_NS",
    "JOURNAL_DAYS_AHEAD",
    "PGDATA_ENV",
    "ArchiveRefused",
    "ArchivedPartition",
    "JournalGap",
    "JournalPartition",
    "JournalRow",
    "Migration",
    "MigrationError",
    "Snapshot",
    "append_journal",
    "archive_journal",
    "begin_copy_journal_binary",
    "check_journal_contiguous",
    "copy_binary_data",
    "copy_binary_statement",
    "copy_journal_binary",
    "create_pool",
    "dsn_with_database",
    "encode_journal_body",
    "encode_journal_rows",
    "encode_journal_run",
    "ensure_database",
    "ensure_journal_partitions",
    "follow_reconnecting",
    "journal_entry",
    "journal_partition_name",
    "journal_partitions",
    "latest_snapshot",
    "load_migrations",
    "max_seq",
    "migrate",
    "read_command_page",
    "read_journal",
    "resolve_database_url",
    "restore_journal_partition",
    "save_snapshot",
    "snapshot_client_orders",
    "wait_event",
]

DATABASE_URL_ENV = "DATABASE_URL"
PGDATA_ENV = "HOGX_PGDATA"
APP_DATABASE = "hogx"

# pg_advisory_lock key taken while migrating: "hogx_mig" as a big-endian int64.
_MIGRATION_LOCK_KEY = int.from_bytes(b"hogx_mig", "big")
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

JournalRow = tuple[int, int, bytes] | tuple[int, int, bytes, bytes]
"""One journal row: (seq, ts_ns, msgspec-encoded command[, msgspec-encoded list of its events])."""

_JOURNAL_COLUMNS = ("seq", "ts_ns", "command")
_JOURNAL_COLUMNS_WITH_EVENTS = ("seq", "ts_ns", "command", "events")

# PostgreSQL's binary COPY format: a header, per row a field count and (byte length, big-endian value)
# per field, then a trailer. Pre-encoding rows here costs a fraction of asyncpg's value-by-value path.
COPY_BINARY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_BINARY_TRAILER: Final = struct.pack(">h", -1)
_JOURNAL_ROW_HEAD: Final = struct.Struct(">hiqiqi")  # 4 fields; seq; ts_ns; the command's length
_FIELD_LENGTH: Final = struct.Struct(">i")


def encode_journal_rows(
    first_seq: int, ts_ns: Iterable[int], commands: Iterable[bytes], events: Iterable[bytes]
) -> bytes:
    """Binary COPY data of journal rows ``first_seq, first_seq + 1, ...`` (columns seq, ts_ns, command, events)."""
    return copy_binary_data([encode_journal_body(first_seq, ts_ns, list(commands), list(events))])


def encode_journal_body(
    first_seq: int, ts_ns: Iterable[int], commands: Sequence[bytes], events: Sequence[bytes]
) -> bytes:
    """The journal rows of ``encode_journal_rows`` without the COPY header and trailer, so a batch can
    be encoded in parts as it is built (``copy_binary_data`` joins them)."""
    # maps and zips, no bytecode per row: each row is (head, command, events' length, events)
    heads = map(_JOURNAL_ROW_HEAD.pack, repeat(4), repeat(8), count(first_seq), repeat(8), ts_ns, map(len, commands))
    lengths = map(_FIELD_LENGTH.pack, map(len, events))
    return b"".join(chain.from_iterable(zip(heads, commands, lengths, events, strict=True)))


# A run of rows stamped with one time (the sequencer stamps each absorbed chunk so) is written into one
# buffer: each command and its events by their encoder (msgspec's `encode_into`, no bytes object per value
# and no join), and the 30 bytes before a row's command after them, as (field count, seq's length, seq's
# high word) | seq's low word | (ts_ns's length, ts_ns) | the command's length: the first and third the
# same for the whole run (packed once), the others 32-bit codes, which struct packs without the generic
# path its 64-bit big-endian codes take. Callgrind, the journal benchmark's rows: a fifth fewer
# instructions per row than encoding each value apart and joining them with `encode_journal_body`.
EncodeInto = Callable[[Any, bytearray, int], None]
_RUN_HEAD: Final = struct.Struct(">10sI12si")
_RUN_PREFIX: Final = struct.Struct(">hiI")
_RUN_TS: Final = struct.Struct(">iq")
_ROW_HEAD_SIZE: Final = _JOURNAL_ROW_HEAD.size
_pack_run_head_into: Final = _RUN_HEAD.pack_into
_pack_length_into: Final = _FIELD_LENGTH.pack_into
assert _RUN_HEAD.size == _ROW_HEAD_SIZE


def encode_journal_run(
    first_seq: int, ts_ns: int, commands: Sequence[Any], events: Sequence[Any],
    encode_command_into: EncodeInto, encode_events_into: EncodeInto, buffer: bytearray,
) -> bytes:  # fmt: skip
    """``encode_journal_body`` of rows that all have the time stamp ``ts_ns``, the command and events of
    each written by the two encoders (``msgspec.msgpack.Encoder.encode_into``): the same bytes, faster.

    ``buffer`` is the caller's scratch space, reused from run to run so that it keeps its capacity (a
    new one would grow, or be zero-filled, for every run); its content is overwritten."""
    high = first_seq >> 32
    if (first_seq + len(commands) - 1) >> 32 != high:  # the run crosses a 2**32 boundary of seq: once in an age
        return encode_journal_body(first_seq, repeat(ts_ns), [_encoded(encode_command_into, c) for c in commands],
                                   [_encoded(encode_events_into, e) for e in events])  # fmt: skip
    head, length = _pack_run_head_into, _pack_length_into
    prefix, ts = _RUN_PREFIX.pack(4, 8, high), _RUN_TS.pack(8, ts_ns)
    seq = first_seq & 0xFFFF_FFFF
    head_size = _ROW_HEAD_SIZE
    at = head_size  # where the row's command goes
    for command, row_events in zip(commands, events):  # noqa: B905 - in step by construction, and a keyword costs a dict a call
        encode_command_into(command, buffer, at)  # the buffer now ends with the command...
        end = len(buffer)
        encode_events_into(row_events, buffer, end + 4)  # ...then with the events, after room for their length
        head(buffer, at - head_size, prefix, seq, ts, end - at)
        at = len(buffer)
        length(buffer, end, at - end - 4)
        at += head_size
        seq += 1
    return bytes(buffer)


def _encoded(encode_into: EncodeInto, value: Any) -> bytes:
    buffer = bytearray()
    encode_into(value, buffer, 0)
    return bytes(buffer)


def copy_binary_data(bodies: Iterable[bytes]) -> bytes:
    """Binary COPY data of rows encoded in parts (``encode_journal_body``): header, the parts, trailer."""
    return b"".join((COPY_BINARY_HEADER, *bodies, COPY_BINARY_TRAILER))


async def copy_journal_binary(conn: asyncpg.Connection, data: bytes, *, timeout_s: float | None = None) -> None:
    """Append rows encoded by ``encode_journal_rows`` (inside the caller's transaction, if any)."""
    # a memoryview, not bytes: asyncpg takes bytes for a file name
    await conn.copy_to_table("journal", source=memoryview(data), columns=_JOURNAL_COLUMNS_WITH_EVENTS,
                             format="binary", timeout=timeout_s)


# A COPY sent as one simple Query together with the statement that opens or ends its transaction: the
# server runs a Query's statements in order (the COPY's data is read when its turn comes), so BEGIN or
# COMMIT rides on the COPY's round trip instead of taking one of its own. A batch of the sequencer with
# ledger rows is then two round trips ("BEGIN; COPY journal", "COPY ledger_transfers; COMMIT") instead
# of four; py-spy of benchmarks.journal: BEGIN's round trip alone was 4-6 % of the writer's time, most
# of it the send that wakes the backend. A failed statement discards the rest of its Query and leaves
# the transaction aborted (the caller drops the connection), so the COMMIT never runs after a failed COPY.
JOURNAL_COPY: Final = "COPY journal (seq, ts_ns, command, events) FROM STDIN (FORMAT binary)"


async def copy_binary_statement(
    conn: asyncpg.Connection, statement: str, data: bytes, *, timeout_s: float | None = None
) -> None:
    """Send ``statement`` (a simple-query string holding one ``COPY ... FROM STDIN (FORMAT binary)``, with
    plain statements before or after it) and ``data`` (binary COPY data) as the COPY's input.

    asyncpg's ``copy_to_table`` sends exactly such a Query built from its arguments; this is its own
    last step (``Connection._copy_in``) with the caller's statement. In copy mode asyncpg skips the
    CommandComplete of a statement before the COPY and keeps the last one after it; an error anywhere
    raises as from ``copy_to_table``. tests/test_store.py pins what it relies on."""
    await conn._copy_in(statement, memoryview(data), timeout_s)


async def begin_copy_journal_binary(conn: asyncpg.Connection, data: bytes) -> None:
    """BEGIN a transaction and append rows encoded by ``encode_journal_rows`` in it, in one round trip;
    the caller ends the transaction (or drops the connection)."""
    await copy_binary_statement(conn, "BEGIN; " + JOURNAL_COPY, data)


class MigrationError(RuntimeError):
    """The migration files or the recorded schema history are inconsistent."""


# -- which database -------------------------------------------------------------------------------------


async def resolve_database_url(
    env: Mapping[str, str] | None = None, *, data_dir: Path | None = None
) -> tuple[str, EmbeddedPostgres | None]:
    """DSN to use and the embedded server started for it (None when `DATABASE_URL` is set).

    Without `DATABASE_URL` an embedded server is started on `data_dir` (default: `$HOGX_PGDATA`, else
    `./.hogx/pgdata`) and the `hogx` database on it is created when missing. The caller stops the
    server (or leaves it to atexit).
    """
    env = os.environ if env is None else env
    url = env.get(DATABASE_URL_ENV, "").strip()
    if url:
        return url, None
    data_dir = data_dir or Path(env.get(PGDATA_ENV) or DEFAULT_DATA_DIR)
    server = await asyncio.to_thread(EmbeddedPostgres.start, data_dir)
    try:
        return await ensure_database(server.dsn, APP_DATABASE), server
    except BaseException:
        await asyncio.to_thread(server.stop)
        raise


def dsn_with_database(dsn: str, database: str) -> str:
    """The same URL-form DSN pointing at another database."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URL, got {parts.scheme!r}")
    return urlunsplit(parts._replace(path=f"/{database}"))


async def ensure_database(admin_dsn: str, database: str) -> str:
    """Create `database` on the server of `admin_dsn` unless it exists; return its DSN."""
    _check_identifier(database)
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Another process may create it between our check and our CREATE; the loser gets one of these.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return dsn_with_database(admin_dsn, database)


def _check_identifier(name: str) -> None:
    # Database names are interpolated into DDL (no bind parameters there), so only plain ones pass.
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain lower-case identifier: {name!r}")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, **connect_kwargs: Any) -> asyncpg.Pool:
    """An asyncpg pool on `dsn`; extra keyword arguments go to `asyncpg.create_pool`."""
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, **connect_kwargs)
    assert pool is not None  # asyncpg returns None only when used without await
    return pool


# -- migrations -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One SQL file: version from its `NNNN_` prefix, name from the rest."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Migration files of `directory` (default: the `exchange.migrations` package) in version order."""
    root = directory if directory is not None else resources.files("exchange.migrations")
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations numbered {version:04d}: {found[version].name}, {match.group(2)}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def migrate(
    target: asyncpg.Connection | asyncpg.Pool, *, migrations: Sequence[Migration] | None = None
) -> list[int]:
    """Apply the migrations not yet recorded, in order; return the versions applied now.

    Idempotent. Concurrent callers (two processes starting together) queue on an advisory lock, so
    each file runs once. Each file and its `schema_migrations` row commit together or not at all.
    Raises MigrationError if an applied file was edited since.
    """
    todo = load_migrations() if migrations is None else sorted(migrations, key=lambda m: m.version)
    if isinstance(target, asyncpg.Pool):
        async with target.acquire() as conn:
            return await _migrate(conn, todo)
    return await _migrate(target, todo)


async def _migrate(conn: asyncpg.Connection, todo: Sequence[Migration]) -> list[int]:
    # Session-level lock (released in finally, or by the server if the connection dies): it also
    # covers the CREATE TABLE IF NOT EXISTS below, which is not safe against a concurrent twin.
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {r["version"]: r for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")}
        done: list[int] = []
        for migration in todo:
            recorded = applied.get(migration.version)
            if recorded is not None:
                _check_unchanged(migration, recorded)
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version, migration.name, migration.checksum,
                )
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)


def _check_unchanged(migration: Migration, recorded: asyncpg.Record) -> None:
    if recorded["checksum"] != migration.checksum:
        raise MigrationError(
            f"migration {migration.version:04d}_{migration.name} was edited after it was applied; "
            "add a new migration instead (or, for a throw-away dev database, delete .hogx/)"
        )


# -- journal --------------------------------------------------------------------------------------------


async def append_journal(
    conn: asyncpg.Connection, rows: Sequence[JournalRow], *, timeout_s: float | None = None
) -> None:
    """Append rows with binary COPY, inside the caller's transaction if one is open.

    Rows of four fields also fill `events` (migration 0004); all rows of one call have the same width.
    The partitions of the rows' days are created first when missing (`ensure_journal_partitions`).
    Outside a transaction the COPY is one statement and so commits all rows or none.
    """
    if rows:
        columns = _JOURNAL_COLUMNS if len(rows[0]) == 3 else _JOURNAL_COLUMNS_WITH_EVENTS
        await ensure_journal_partitions(conn, (row[1] for row in rows))  # a tool's rows may be of any day
        await conn.copy_records_to_table("journal", records=rows, columns=columns, timeout=timeout_s)


async def read_journal(
    conn: asyncpg.Connection, after_seq: int = 0, batch: int = 10_000
) -> AsyncIterator[list[asyncpg.Record]]:
    """Journal rows with `seq > after_seq`, in `seq` order, in lists of up to `batch` rows.

    Each record unpacks as `seq, ts_ns, command`. Keyset pages on the primary key: no long-lived
    transaction or cursor, so rows committed while reading are picked up by later pages.
    """
    if batch <= 0:
        raise ValueError("batch must be positive")
    page = await conn.prepare("SELECT seq, ts_ns, command FROM journal WHERE seq > $1 ORDER BY seq LIMIT $2")
    while True:
        rows = await page.fetch(after_seq, batch)
        if not rows:
            return
        yield rows
        if len(rows) < batch:
            return
        after_seq = rows[-1][0]


# `from_ts_ns` (the three readers below): only rows stamped at or after it are read, so the server plans the
# query over the partitions of those days only, not every day's (the partition key is ts_ns, and a query by
# seq alone is planned over every partition: 8-12 ms on 35 days' partitions, 1-2.5 ms on 6, each query of a
# fresh connection, as recovery's are). The same rows as without it when a lower bound of the rows' time
# stamps is given: the sequencer never stamps a row earlier than the one before (migration 0013), so every
# row from a seq on is stamped at or after that seq's time or any earlier row's (recovery passes the latest
# time its snapshot's idempotency index recorded). 0: every partition.


def _stamped_from(query: str, args: tuple[int, ...], from_ts_ns: int) -> tuple[str, tuple[int, ...]]:
    """`query` (its WHERE clause last) and `args`, limited to rows stamped at or after `from_ts_ns` (0: not)."""
    if not from_ts_ns:
        return query, args
    return f"{query} AND ts_ns >= ${len(args) + 1}", (*args, from_ts_ns)


async def read_command_page(
    conn: asyncpg.Connection, after_seq: int, upto_seq: int, from_ts_ns: int = 0
) -> tuple[int, bytes]:
    """(row count, the commands of `after_seq < seq <= upto_seq` concatenated in `seq` order).

    Replay's fast path: the server concatenates the msgspec-encoded commands, so the client receives one
    value per page and decodes it with one call (prefix a msgpack array header of the count). The
    count lets the caller check that the range had no hole.
    """
    query, args = _stamped_from(
        "SELECT count(*)::bigint, string_agg(command, ''::bytea ORDER BY seq) FROM journal "
        "WHERE seq > $1 AND seq <= $2", (after_seq, upto_seq), from_ts_ns)  # fmt: skip
    row = await conn.fetchrow(query, *args)
    assert row is not None  # an aggregate always returns one row
    return int(row[0]), bytes(row[1] or b"")


async def journal_entry(
    conn: asyncpg.Connection, seq: int, from_ts_ns: int = 0
) -> tuple[int, bytes, bytes | None] | None:
    """(ts_ns, command, events) of one journal row, None if there is no row `seq`."""
    query, args = _stamped_from("SELECT ts_ns, command, events FROM journal WHERE seq = $1", (seq,), from_ts_ns)
    row = await conn.fetchrow(query, *args)
    if row is None:
        return None
    return row[0], bytes(row[1]), None if row[2] is None else bytes(row[2])


async def max_seq(conn: asyncpg.Connection, from_ts_ns: int = 0) -> int:
    """Highest journal sequence number, 0 for an empty journal (or none stamped at or after `from_ts_ns`)."""
    if from_ts_ns:
        return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM journal WHERE ts_ns >= $1", from_ts_ns))
    return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM journal"))


# -- journal partitions and archival --------------------------------------------------------------------

DAY_NS: Final = 86_400 * 10**9
JOURNAL_DAYS_AHEAD: Final = 2  # days after the newest row's that always have a partition
# pg_advisory_xact_lock key taken while creating partitions: "hogx_prt" as a big-endian int64
_PARTITION_LOCK_KEY: Final = int.from_bytes(b"hogx_prt", "big")
_BOUND = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")
_EPOCH: Final = date(1970, 1, 1)


class JournalPartition(NamedTuple):
    """An attached partition of the journal: rows with `from_ns <= ts_ns < to_ns`."""

    name: str
    from_ns: int
    to_ns: int
    detach_pending: bool = False  # a DETACH ... CONCURRENTLY was interrupted (archival finishes it)


class ArchivedPartition(NamedTuple):
    """One archived partition: its rows are in `path` (binary COPY), described by `path` + `.json`."""

    name: str
    from_ns: int
    to_ns: int
    rows: int
    first_seq: int  # 0 for an empty partition
    last_seq: int
    path: str
    sha256: str


class ArchiveRefused(RuntimeError):
    """Archiving would lose what recovery or a projection needs (no snapshot, a partition holds rows
    after it, or a `projections` watermark has not yet passed a partition's rows)."""


class JournalGap(RuntimeError):
    """A projection meets journal rows missing after its watermark (archived days): folding on would skip
    them silently and move its watermark past them. Restore the days (`restore_journal_partition`)."""


async def wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Until `event` is set or `timeout_s` passed: how a journal follower sleeps. `asyncio.timeout`, not
    `wait_for`: on Python 3.11 `wait_for` can swallow a cancellation that races its timeout, and the
    follower's `stop()` would then wait forever."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


async def follow_reconnecting(
    dsn: str, follow: Callable[[asyncpg.Connection], Awaitable[object]], who: str, log: logging.Logger,
) -> None:
    """Run `follow(conn)` on its own connection to `dsn` until cancelled, connecting again (backing off
    from 0.05 s to 2 s) when the database cannot be reached or the connection is lost; any other error
    ends it. The background followers of the journal (the read-model projector, the settlement history's
    writer) share this loop; `who` names them in `log`'s warnings."""
    delay_s = 0.05
    while True:
        try:
            conn = await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("%s cannot connect (%s); retrying in %.2f s", who, exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 2.0)
            continue
        delay_s = 0.05
        try:
            await follow(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            # InternalClientError: asyncpg's protocol state after the backend was terminated mid-query
            log.warning("%s lost its connection (%s); reconnecting", who, exc)
        finally:
            conn.terminate()


async def check_journal_contiguous(conn: asyncpg.Connection, after_seq: int, seqs: Sequence[int], who: str) -> None:
    """Raise `JournalGap` unless the journal holds every seq from `after_seq + 1` up to the last of `seqs`
    (ascending: the rows a projection is about to fold, possibly skipping rows without events). Only a
    jump between neighbours is counted in the database, so a contiguous page costs nothing."""
    previous = after_seq
    for seq in seqs:
        if seq > previous + 1:
            held = await conn.fetchval("SELECT count(*) FROM journal WHERE seq > $1 AND seq < $2", previous, seq)
            if held != seq - previous - 1:
                raise JournalGap(
                    f"{who}: journal rows between seq {previous} and {seq} are missing (archived?): "
                    f"restore those days before projecting on"
                )
        previous = seq


def journal_partition_name(day: int) -> str:
    """`journal_YYYYMMDD` for day number `day` (days since 1970-01-01, UTC)."""
    return f"journal_{_EPOCH + timedelta(days=day):%Y%m%d}"


async def journal_partitions(conn: asyncpg.Connection) -> list[JournalPartition]:
    """The journal's attached partitions, in time order."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'journal'::regclass"
    )
    out = []
    for name, bound, pending in rows:
        match = _BOUND.search(bound or "")
        if match is None:  # a default partition: none is made here (see migration 0013)
            raise MigrationError(f"journal partition {name} has bound {bound!r}, not a range of ts_ns")
        out.append(JournalPartition(name, int(match.group(1)), int(match.group(2)), pending))
    return sorted(out, key=lambda p: p.from_ns)


async def ensure_journal_partitions(
    conn: asyncpg.Connection, ts_ns: Iterable[int], *, days_ahead: int = JOURNAL_DAYS_AHEAD
) -> int:
    """Make sure the days of `ts_ns` and the `days_ahead` days after the last of them have partitions;
    return the end (ns) of that span, up to which rows of the newest day onwards have a partition.

    A day already covered (by its own partition, or by `journal_legacy`) is left alone. Concurrent
    callers queue on a transaction-level advisory lock. Each new day is `CREATE TABLE ... (LIKE
    journal ...)` with its bound as a CHECK, then `ATTACH PARTITION`: that takes SHARE UPDATE EXCLUSIVE
    on the journal, which a writer's COPY does not wait for (`CREATE TABLE ... PARTITION OF` would take
    ACCESS EXCLUSIVE), and with no default partition nothing is scanned.
    """
    days = sorted({t // DAY_NS for t in ts_ns})
    if not days:
        raise ValueError("no time stamps")
    wanted = sorted({*days, *range(days[-1] + 1, days[-1] + days_ahead + 1)})
    end_ns = (days[-1] + days_ahead + 1) * DAY_NS
    if not _missing_days(wanted, await journal_partitions(conn)):
        return end_ns
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK_KEY)
        for day in _missing_days(wanted, await journal_partitions(conn)):
            name, lo, hi = journal_partition_name(day), day * DAY_NS, (day + 1) * DAY_NS
            await conn.execute(
                f"CREATE TABLE {name} (LIKE journal INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE "
                f"INCLUDING COMPRESSION, CONSTRAINT {name}_pkey PRIMARY KEY (seq) WITH (fillfactor = 100), "
                f"CONSTRAINT {name}_day CHECK (ts_ns >= {lo} AND ts_ns < {hi}))"
            )  # the keys only grow at their right end and rows never change: no room left in index pages
            await conn.execute(f"ALTER TABLE journal ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
            # the CHECK spared ATTACH a scan; the bound says the same, and each row would pay for both
            await conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_day")
    return end_ns


def _missing_days(days: Iterable[int], partitions: Sequence[JournalPartition]) -> list[int]:
    return [d for d in days if not any(p.from_ns < (d + 1) * DAY_NS and p.to_ns > d * DAY_NS for p in partitions)]


async def archive_journal(
    conn: asyncpg.Connection,
    before_ns: int,
    directory: Path,
    *,
    verify_snapshot: Callable[[Snapshot], object] | None = None,
) -> list[ArchivedPartition]:
    """Archive every journal partition that ends at or before `before_ns` (a day boundary, say): write
    its rows to `directory`, then detach and drop it. Returns what was archived, oldest first.

    Refused (`ArchiveRefused`, nothing archived) when there is no snapshot or when one of those
    partitions holds a row with seq >= the latest snapshot's: recovery (the latest snapshot, then
    the rows after it) still needs it; refused too when a `projections` watermark is below one of those
    partitions' last seq (the projection would never fold the rows). `verify_snapshot`, when given,
    must raise if the latest snapshot does not restore (the CLI restores it and checks its hash): once
    rows are archived it is the only way back. Each partition is exported (binary COPY, ordered by seq) to `NAME.copy`,
    fsynced, checked for its row count and described in `NAME.json` (bounds, rows, first and last seq,
    sha256, the snapshot seq that made it archivable) before `DETACH PARTITION ... CONCURRENTLY` (the
    writer's COPYs are not blocked; it cannot run inside a transaction) and `DROP TABLE`. An interrupted
    run is finished by the next one (a pending detach is finalized; a file is written again).
    """
    snapshot = await latest_snapshot(conn)
    if snapshot is None:
        raise ArchiveRefused("there is no snapshot: recovery needs the whole journal")
    if verify_snapshot is not None:
        verify_snapshot(snapshot)
    # in time order: a day after the snapshot's is never reached, the snapshot's own day (it holds the
    # snapshot's row) is refused first, so no day that may still get rows is ever archived
    chosen = [p for p in await journal_partitions(conn) if p.to_ns <= before_ns]
    spans = []
    for partition in chosen:
        rows, first_seq, last_seq = await conn.fetchrow(
            f"SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM {partition.name}")
        if last_seq >= snapshot.seq:
            raise ArchiveRefused(
                f"{partition.name} holds journal rows up to seq {last_seq}, and recovery starts from the snapshot "
                f"at seq {snapshot.seq}: take a later snapshot first"
            )
        spans.append((partition, int(rows), int(first_seq), int(last_seq)))
    await _refuse_unprojected(conn, max((span[3] for span in spans), default=0))
    directory.mkdir(parents=True, exist_ok=True)
    archived = []
    for partition, rows, first_seq, last_seq in spans:
        archived.append(await _archive_partition(conn, partition, rows, first_seq, last_seq, snapshot.seq, directory))
    return archived


async def _refuse_unprojected(conn: asyncpg.Connection, last_seq: int) -> None:
    """A projection (settlement reports, read models) folds the journal from its watermark on: rows it has
    not yet folded must stay, or they would never reach it."""
    # A watermark still at 0 has never folded anything: that projection is switched off (the PostgreSQL
    # read models are by default). Switched on later, it rebuilds from seq 0 and stops at the archived
    # rows with JournalGap, loudly: restore the days first.
    behind = await conn.fetch("SELECT name, seq FROM projections WHERE seq > 0 AND seq < $1 ORDER BY name",
                              last_seq)
    if behind:
        which = ", ".join(f"{r['name']} at seq {r['seq']}" for r in behind)
        raise ArchiveRefused(
            f"the projections {which} have not yet folded the rows to archive (up to seq {last_seq}): "
            f"let them catch up (start the gateway) first"
        )


async def _archive_partition(
    conn: asyncpg.Connection, partition: JournalPartition, rows: int, first_seq: int, last_seq: int,
    snapshot_seq: int, directory: Path,
) -> ArchivedPartition:
    name = partition.name
    path = directory / f"{name}.copy"
    if not partition.detach_pending:
        part = directory / f"{name}.copy.part"
        # the rows hold API secrets (CreateApiKey): the file is the owner's alone from its first byte
        with _private_file(part) as out:
            status = await conn.copy_from_query(
                f"SELECT seq, ts_ns, command, events FROM {name} ORDER BY seq", output=out, format="binary")
        if status != f"COPY {rows}":
            raise RuntimeError(f"exporting {name}: {status}, expected {rows} rows; nothing was detached")
        await asyncio.to_thread(_fsync_rename, part, path)
    else:
        os.chmod(path, 0o600)  # exported by an interrupted run, perhaps by a version that left it readable
    sha256 = await asyncio.to_thread(_sha256_of, path)
    record = ArchivedPartition(name, partition.from_ns, partition.to_ns, rows, first_seq, last_seq, str(path), sha256)
    manifest = {**record._asdict(), "path": path.name, "snapshot_seq": snapshot_seq,
                "columns": list(_JOURNAL_COLUMNS_WITH_EVENTS), "format": "PostgreSQL binary COPY"}
    await asyncio.to_thread(_write_manifest, directory / f"{name}.json", manifest)
    # detached only now that its rows are safely on disk; then it is a plain table nobody writes
    suffix = "FINALIZE" if partition.detach_pending else "CONCURRENTLY"
    # The writer's daily ATTACH (ensure_journal_partitions) takes this lock before it touches the journal:
    # it then waits for the detach instead of deadlocking with it (the detach waits for every transaction
    # that uses the journal, and the attach for the detach's lock on it).
    await conn.execute("SELECT pg_advisory_lock($1)", _PARTITION_LOCK_KEY)
    try:
        await conn.execute(f"ALTER TABLE journal DETACH PARTITION {name} {suffix}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _PARTITION_LOCK_KEY)
    await conn.execute(f"DROP TABLE {name}")
    return record


async def restore_journal_partition(conn: asyncpg.Connection, manifest_path: Path) -> int:
    """Attach an archived partition again from its manifest and file; return its row count."""
    manifest = json.loads(manifest_path.read_text())
    name, lo, hi = manifest["name"], int(manifest["from_ns"]), int(manifest["to_ns"])
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a journal partition name: {name!r}")
    path = manifest_path.parent / manifest["path"]
    if await asyncio.to_thread(_sha256_of, path) != manifest["sha256"]:
        raise ValueError(f"{path} does not match the sha256 of its manifest")
    async with conn.transaction():
        await conn.execute(
            f"CREATE TABLE {name} (LIKE journal INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE "
            f"INCLUDING COMPRESSION, CONSTRAINT {name}_pkey PRIMARY KEY (seq), "
            f"CONSTRAINT {name}_day CHECK (ts_ns >= {lo} AND ts_ns < {hi}))"
        )
        await conn.copy_to_table(name, source=str(path), columns=_JOURNAL_COLUMNS_WITH_EVENTS, format="binary")
        await conn.execute(f"ALTER TABLE journal ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
    return int(manifest["rows"])


def _fsync_rename(part: Path, path: Path) -> None:
    with part.open("rb") as f:
        os.fsync(f.fileno())
    part.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _private_file(path: Path) -> BinaryIO:
    """``path`` opened for writing (truncated), mode 0600 even if it existed (an interrupted run's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    part = path.with_suffix(".json.part")
    with _private_file(part) as out:
        out.write((json.dumps(manifest, indent=2) + "\n").encode())
    _fsync_rename(part, path)


# -- snapshots ------------------------------------------------------------------------------------------


class Snapshot(NamedTuple):
    seq: int
    state_hash: str
    state: bytes


async def save_snapshot(
    conn: asyncpg.Connection, seq: int, state_hash: str, state: bytes, client_orders: bytes | None = None
) -> bool:
    """Store the state at `seq`; False (and nothing written) if a snapshot at `seq` already exists.

    Replay is deterministic, so a second snapshot at the same `seq` (after a restart) is the same one.
    `client_orders` is the sequencer's idempotency index at `seq` (migration 0004).
    """
    status = await conn.execute(
        "INSERT INTO snapshots (seq, state_hash, state, client_orders) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (seq) DO NOTHING",
        seq, state_hash, state, client_orders,
    )
    return status == "INSERT 0 1"


async def snapshot_client_orders(conn: asyncpg.Connection, seq: int) -> bytes | None:
    """The idempotency index stored with the snapshot at `seq` (None if none was stored)."""
    value = await conn.fetchval("SELECT client_orders FROM snapshots WHERE seq = $1", seq)
    return None if value is None else bytes(value)


async def latest_snapshot(conn: asyncpg.Connection, at_or_before: int | None = None) -> Snapshot | None:
    """The newest snapshot, or the newest with `seq <= at_or_before`; None if there is none."""
    row = await conn.fetchrow(
        "SELECT seq, state_hash, state FROM snapshots WHERE seq <= $1 ORDER BY seq DESC LIMIT 1",
        at_or_before if at_or_before is not None else 2**63 - 1,
    )
    return None if row is None else Snapshot(row["seq"], row["state_hash"], bytes(row["state"]))
