"""The durable sequencer: one writer per shard between callers and the pure core.

Owns, for one shard (today the whole exchange): the core (by default the exchange with settlement,
`exchange.core.new_exchange`), the journal writer connection, the submission queue, the idempotency
index of client order ids, snapshots, and recovery.

Flow of a command::

    submit -> bounded queue -> writer: stamp ts_ns, apply to the core
           -> one COPY, encoding each journal row as it is copied (or one transaction with
              `extra_writes`) -> resolve futures -> publish

- **Queue.** Bounded by `queue_size` (two deques in step, commands and futures: no tuple per
  command). A full queue raises `Busy(retry_after_s)` at once and nothing is enqueued; while the
  database is unavailable (or the sequencer is not running) `submit` raises `Unavailable` at once.
- **Stamping.** Sequence numbers are consecutive from 1; `ts_ns` comes from `clock_ns`, read once per
  absorbed chunk and never allowed to go backwards, so replay sees exactly the live time. A submitted
  command whose `ts_ns` is 0 (a fresh one, as the gateway builds them) is handed over and stamped in
  place (`msgspec.structs.force_setattr`: no copy); one already stamped (an object submitted again)
  is stamped as a copy, so an object in a batch never changes after it was applied.
- **Pipelining.** At most one batch is being committed while the writer already applies the next
  commands to the core: Python work overlaps PostgreSQL's. A batch is sealed when the previous
  commit finished (or it holds `max_batch` commands), so batches grow with load and stay at one
  command when idle; when nothing is being committed only half of what waits is sealed at once, so
  the other half is applied while that half commits (see `_serve`).
- **Commit.** Without `extra_writes` the batch is ONE binary `COPY` into `journal` (a single statement
  is its own transaction: all rows or none, one round trip). With `extra_writes(conn, batch)` (the
  settlement ledger's rows, `exchange.settlement.pgstore.LedgerWriter`) it is BEGIN, COPY, extra
  writes, COMMIT; a hook with a `commit(conn, batch)` method (`LedgerWriter`) ends the transaction
  itself, and BEGIN travels with the journal's COPY and COMMIT with the hook's last COPY (one simple
  Query each, `store.copy_binary_statement`): two round trips a batch (a COMMIT of its own follows
  when the hook left the transaction open). Such a hook issues plain statements only (no
  `conn.transaction()`, which asyncpg refuses inside a transaction it did not begin). The journal rows (command and
  events by msgspec, pre-encoded binary COPY) are encoded chunk by chunk as the commands are applied,
  and an `extra_writes` with a `prepare(batch)` method (`LedgerWriter`) takes its rows the same way,
  so this work overlaps the previous batch's commit; at the seal what is left is joined and the extra
  writes are called (a `LedgerWriter` encodes there, an `async def` hook runs when awaited inside the
  transaction). PostgreSQL then never waits inside the transaction for Python to encode. Futures are
  resolved, and subscribers called, only after the commit returned.
- **Partitions.** The journal is partitioned by day of `ts_ns` (migration 0013). After recovery the
  writer makes sure of the partitions of today and the next two days (`store.ensure_journal_partitions`),
  and the first batch stamped in a new day does it again on the writer connection before its COPY (a
  comparison a batch; a DDL of a few ms once a day), so a day's partition exists a day before its
  first row, and a clock that jumps days ahead still finds one. Old days are archived by
  `store.archive_journal` (`python -m gateway archive`), never a row recovery needs.
- **Failure.** If a commit fails (connection lost, backend terminated, timeout, anything) the core has
  already applied commands that may not be durable, so it is thrown away: the batch being committed,
  the batch being built and everything queued fail with `Unavailable` (status unknown: a client
  reconciles by client order id), new submissions get `Unavailable`, and the writer reconnects with
  capped exponential back-off and REBUILDS the core from the database (snapshot + journal tail). The
  rebuild also settles whether an ambiguous COMMIT went through. A core exception (a bug) is treated
  the same way, after the batch already in flight finished; the offending caller gets the exception.
  The writer holds a session advisory lock, so a second writer on the same database (or a zombie
  backend of this one) can never interleave; the journal's primary key on `seq` is the last guard.
- **Idempotency.** The first `PlaceOrder` of a (participant, client order id) is journaled; a later
  one with the same content (compared without `ts_ns`) is not journaled again and gets the original
  `Result` with `replay=True` — from the in-flight batch when the original is not committed yet
  (it then shares the original's fate), from the journal's `events` column otherwise (also after a
  restart). The same id with other content raises `IdempotencyConflict`. The index is
  (participant, client id) -> seq, rebuilt on recovery from the snapshot's copy of it plus the
  journal tail. Ids the core rejects as malformed (empty, too long) are not indexed: those orders are
  rejected every time. The index keeps an id for the core's retention window (`ClockTick.retention_ns`,
  the core's "Memory"): each clock tick drops the ids indexed more than a window before it whose order
  the core no longer holds (a resting order keeps its id), in the live writer and in a replay alike.
  The snapshot's copy lists when each id was indexed, in the order the ticks look at them, so an id
  keeps its age across restarts (restarted every day, an exchange whose ids counted from the restart
  would never forget one). An id dropped is free again, as in the core: a new order.
- **Snapshots.** When `snapshot_every` commands have been journaled since the last one, the writer
  encodes the core (and a copy of the idempotency index) at the moment a batch is sealed, so the state
  is exactly that at the batch's last seq, and after the batch's commit writes it on another
  connection, off the writer's path. A clean `stop` also takes one, so the next start replays nothing.
- **Recovery.** `recover()`: latest snapshot -> `Core.from_snapshot`, whose `state_hash()` must equal
  the hash recorded with it (else `RecoveryError`: the sequencer refuses to start), then the journal
  tail is replayed. The tail is fetched in pages that the server concatenates (`string_agg`), so a
  page of commands is decoded with one msgspec call; each page's row count proves the range has no
  hole; the next page is fetched while one is applied (pages grow from 2,000 rows to 50,000, so the
  first one arrives at once). Its queries read only rows stamped at or after the latest time the
  snapshot's idempotency index recorded (a lower bound of the tail's: the sequencer never stamps a row
  earlier than the one before), so the server plans them over the partitions of those days only:
  planned over every day's, each took 8-12 ms more on 35 days of journal. The loop that applies a page
  and rebuilds the idempotency index is compiled with the core (`exchange/replay.py`). Measured:
  1,000,000 commands of the matching benchmark's mix replayed in 3.7 s on an otherwise idle core (wall
  = CPU), the bare core's apply being 2.8-3 µs a command of that.
- **Memory.** After every recovery the rebuilt state (possibly millions of resting orders) is moved
  to the collector's permanent generation (`gc.freeze()`, unless `freeze_gc=False`), so the
  collector's full passes never rescan it and cannot stall the writer. The young generation's
  threshold is raised to `gc_young_threshold` (default 50,000 allocations; the interpreter's default
  is 700): the objects of the commands in flight (events, futures, rows) live for a commit or two, so
  a young collection every few hundred commands scans them all again and again; at 50,000 one scans
  the few thousand still in flight. Measured: 0.5-0.8 µs less CPU per command, and the ack p99 halved.
  Both are process-wide settings: the sequencer is the heart of its process.
- **Time.** With `tick_interval_s` set, a `ClockTick` is submitted periodically (participant
  `SYSTEM_PARTICIPANT`), so GTD orders expire without traffic. Off by default. Each carries
  `retention_ns` (0: the core's default window, 24 h).
- **What `core` shows.** While a batch is being committed, `core` already includes the next batch's
  commands (`applied_seq` > `committed_seq`). Read market data from committed batches (subscribers)
  or from `settled_depth()`, which answers only when nothing uncommitted is applied.
- **Subscribers.** `subscribe(callback)` calls `callback(CommittedBatch)` synchronously after every
  commit, in seq order; a callback must not block (queue and return). The batch's futures are
  resolved in the same step, so every subscriber has seen a batch before any caller awaiting one of
  its results runs again. `feed()` wraps one in a bounded async iterator.
- **Results in order.** A batch's futures are resolved in seq order in one step, so a client that
  pipelines (`submit_many`) may await only its last future: the others are done by then.

Results and errors (the gateway maps them): `Result(seq, ts_ns, events, replay)`; `Busy` ("busy",
429/503 with Retry-After), `Unavailable` ("unavailable", 503: status unknown),
`IdempotencyConflict` ("idempotency_conflict", 409), `RecoveryError` (start refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import itertools
import logging
import operator
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from itertools import repeat, starmap
from typing import Final

import asyncpg
import msgspec

from exchange import store
from exchange.commands import AmendOrder, CancelOrder, ClockTick, Command, PlaceOrder, decode_command, encode_command
from exchange.core import MAX_CLIENT_ORDER_ID_LEN, Core, new_exchange, retention_of
from exchange.events import Event
from exchange.replay import ClientIndex, apply_commands

__all__ = [
    "SYSTEM_PARTICIPANT",
    "Busy",
    "CommittedBatch",
    "CoreFactory",
    "ExtraWrites",
    "IdempotencyConflict",
    "Recovery",
    "RecoveryError",
    "Result",
    "Sequencer",
    "SequencerError",
    "State",
    "Unavailable",
    "decode_events",
    "encode_events",
    "recover",
    "restore_snapshot",
]

_log = logging.getLogger(__name__)

SYSTEM_PARTICIPANT: Final = 0  # participant id of commands the sequencer itself submits (ClockTick)

# pg_advisory_lock key held by the writer connection for as long as it writes: "hogx_seq" as int64.
_WRITER_LOCK_KEY: Final = int.from_bytes(b"hogx_seq", "big") - (1 << 63)
# Replay's pages grow from _REPLAY_FIRST_PAGE by doubling to _REPLAY_PAGE rows: nothing is applied
# before the first page arrived, so a small one starts the work at once (a page of 50,000 took the
# server 55 ms to aggregate), and each later page is fetched while the one before it, half its size, is
# applied (the server aggregates a row in about a quarter of the time the core applies it).
_REPLAY_FIRST_PAGE: Final = 2_000
_REPLAY_PAGE: Final = 50_000
# the collector's young-generation threshold while running (the interpreter's default is 700)
GC_YOUNG_THRESHOLD: Final = 50_000
# Commands applied between turns of the event loop during replay: each turn reads at most 256 KiB of the
# next page from the socket (asyncio's transport), so a page of 50,000 commands (2.5 MB) needs ten turns
# or more to arrive; at 5,000 a page had only ten turns, and the next page's bytes were still arriving
# when it was awaited. A turn costs a few µs, a slice of 1,000 commands some milliseconds.
_REPLAY_SLICE: Final = 1_000
# While a batch commits, the writer applies the next one in chunks of max_batch / this, turning the event
# loop between chunks: each of the commit's round trips waits for the chunk in progress, and PostgreSQL
# idles meanwhile. Measured with max_batch 2,000 (benchmarks.ledger): at 8 the writer spent about a
# quarter of the run waiting for commits with a full batch, at 32 about 7 %; a turn costs a few µs.
_CHUNKS_PER_BATCH: Final = 32
_BACKOFF_START_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0

ClientKey = tuple[int, str]

_command_encoder = msgspec.msgpack.Encoder()  # the same encoding as commands.encode_command, one call less
_events_encoder = msgspec.msgpack.Encoder()
_events_decoder = msgspec.msgpack.Decoder(list[Event])
_commands_decoder = msgspec.msgpack.Decoder(list[Command])
_index_encoder = msgspec.msgpack.Encoder()
_encode_command_into = _command_encoder.encode_into
_encode_events_into = _events_encoder.encode_into
_ts_of = operator.attrgetter("ts_ns")
_set_result = asyncio.Future.set_result
_drain = deque(maxlen=0).extend  # runs an iterator to its end, keeping nothing


class IndexEntry(msgspec.Struct, array_like=True, frozen=True):
    """One id of the snapshot's idempotency index. `indexed_ns`: when it was indexed or last looked at
    by a tick (0 in snapshots of earlier versions, which listed only the first three)."""

    participant_id: int
    client_order_id: str
    seq: int
    indexed_ns: int = 0


_index_decoder = msgspec.msgpack.Decoder(list[IndexEntry])


def encode_events(events: list[Event]) -> bytes:
    """The journal's `events` column: the command's events as one msgpack array."""
    return _events_encoder.encode(events)


def decode_events(data: bytes) -> list[Event]:
    return _events_decoder.decode(data)


# -- results and errors ---------------------------------------------------------------------------------


class Result(msgspec.Struct, frozen=True, gc=False):
    """The answer to one command: its journal seq, its stamped time and its events.

    `replay` is True when this is the earlier answer returned again for a retried `PlaceOrder`.
    """

    seq: int
    ts_ns: int
    events: list[Event]
    replay: bool = False


class SequencerError(Exception):
    """Base of the sequencer's answers that are not a `Result`; `code` is stable for API errors."""

    code: str = "sequencer_error"


class Busy(SequencerError):
    """The queue is full; nothing was enqueued. Try again after `retry_after_s`."""

    code = "busy"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"sequencer queue is full, retry after {retry_after_s:.3f} s")
        self.retry_after_s = retry_after_s


class InvalidCommand(SequencerError):
    """The command cannot be journaled (e.g. an integer beyond 64 bits); nothing was enqueued."""

    code = "invalid_command"


# Commands whose every number the gateway bounds (request schemas) and the core range-checks: the hot
# path skips the encodability check for them. Any other command is trial-encoded at submit, so one that
# could not be journaled is refused alone instead of failing the COPY of a whole batch.
_BOUNDED_COMMANDS: Final = frozenset({PlaceOrder, CancelOrder, AmendOrder, ClockTick})


def _check_encodable(command: Command) -> None:
    try:
        encode_command(command)
    except (OverflowError, msgspec.EncodeError, TypeError) as error:
        raise InvalidCommand(f"{type(command).__name__} cannot be journaled: {error}") from None


class Unavailable(SequencerError):
    """The sequencer cannot take work now (database down, recovering, stopped).

    For a command that was already submitted it means "status unknown": it may or may not have been
    journaled; reconcile by client order id.
    """

    code = "unavailable"


class IdempotencyConflict(SequencerError):
    """A `PlaceOrder` reuses a client order id of an earlier order with different content."""

    code = "idempotency_conflict"

    def __init__(self, participant_id: int, client_order_id: str, seq: int) -> None:
        super().__init__(
            f"client order id {client_order_id!r} of participant {participant_id} was used at seq {seq} "
            "for a different order"
        )
        self.participant_id = participant_id
        self.client_order_id = client_order_id
        self.seq = seq


class RecoveryError(SequencerError):
    """The database's journal and snapshots do not rebuild a trustworthy state; refusing to start."""

    code = "recovery_failed"


class State(Enum):
    NEW = "new"
    RUNNING = "running"
    RECOVERING = "recovering"  # database trouble: rebuilding, submissions answered Unavailable
    STOPPING = "stopping"
    STOPPED = "stopped"


# -- batches --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class CommittedBatch:
    """A durably committed run of commands: `commands[i]` has seq `first_seq + i` and `events[i]`."""

    first_seq: int
    commands: list[Command] = field(default_factory=list)
    events: list[list[Event]] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.commands) - 1

    def __len__(self) -> int:
        return len(self.commands)

    def entries(self) -> Iterator[tuple[int, Command, list[Event]]]:
        """(seq, stamped command, events) in seq order."""
        return zip(range(self.first_seq, self.first_seq + len(self.commands)), self.commands, self.events,
                   strict=True)


ExtraWrites = Callable[[asyncpg.Connection, CommittedBatch], Awaitable[None]]
CoreFactory = Callable[[], Core]
Subscriber = Callable[[CommittedBatch], None]


@dataclass(eq=False)
class _SnapshotDue:
    seq: int
    state_hash: str
    state: bytes
    client_orders: list[tuple[int, str, int, int]]  # Sequencer._index_copy


@dataclass(eq=False)
class _Batch(CommittedBatch):
    """A batch being built or committed: the public part plus futures and replay followers.

    Its journal rows are encoded slice by slice as commands are applied (`journal_parts`, see
    `Sequencer._absorb`), so little is left to encode when it is sealed."""

    futures: list[asyncio.Future[Result] | None] = field(default_factory=list)
    journal_parts: list[bytes] = field(default_factory=list)
    # retries of a PlaceOrder of this batch: (future, index of the original in this batch)
    followers: list[tuple[asyncio.Future[Result], int]] = field(default_factory=list)
    snapshot: _SnapshotDue | None = None

    def result(self, index: int, replay: bool = False) -> Result:
        return Result(self.first_seq + index, self.commands[index].ts_ns, self.events[index], replay)

    def fail(self, exc_type: type[Exception] = Unavailable, message: str = "") -> None:
        for future in self.futures:
            if future is not None and not future.done():
                future.set_exception(exc_type(message))
        for future, _ in self.followers:
            if not future.done():
                future.set_exception(exc_type(message))


class _CommitFailed(Exception):
    """The commit of a batch failed; the batch's futures are already failed."""


class _CoreFailed(Exception):
    """`core.apply` raised: the core is in an unknown state."""


# -- recovery -------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Recovery:
    """What recovery rebuilt from the database."""

    core: Core
    client_orders: dict[ClientKey, int]
    last_seq: int  # highest journal seq applied (0: empty journal)
    last_ts_ns: int  # ts_ns of that command (0: empty journal)
    snapshot_seq: int  # seq of the snapshot recovery started from (0: none)
    replayed: int  # commands replayed after the snapshot
    # the index's keys and when each was indexed, in the order ticks look at them (see "Idempotency")
    client_order_keys: deque[ClientKey] = field(default_factory=deque)
    client_order_times: deque[int] = field(default_factory=deque)


async def recover(
    conn: asyncpg.Connection,
    core_type: CoreFactory = new_exchange,
    *,
    use_snapshot: bool = True,
    until_seq: int | None = None,
    freeze_gc: bool = False,
) -> Recovery:
    """Rebuild the core and the idempotency index from the database (latest snapshot + journal tail).

    `core_type` makes the empty core (default: the exchange with settlement, `new_exchange`); a
    snapshot is restored by its `from_snapshot` when it has one (a `Core` subclass), else by
    `Core.from_snapshot`.
    With `use_snapshot=False` everything is replayed from seq 1 (tests compare the two); with
    `until_seq` the state after that seq is rebuilt (from the latest snapshot at or before it). Raises
    `RecoveryError` if the snapshot's state hash does not match its state or the journal has a hole.

    The collector is paused meanwhile (for the whole process: other tasks run while pages are fetched):
    the core builds no reference cycles, and scanning millions of young objects again and again would
    double a replay's time (callgrind: a snapshot's restore spent 6 % of its instructions in the
    collector). With `freeze_gc` the rebuilt state is moved to the collector's permanent generation
    (`gc.freeze()`) before the collector runs again, as the sequencer wants it after a recovery:
    otherwise the first allocation after it resumes collects the young generation, which then holds
    everything rebuilt (callgrind: 3 % of a replay of 100,000 commands).
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        recovery = await _recover(conn, core_type, use_snapshot, until_seq)
        if freeze_gc:
            gc.freeze()
    finally:
        if gc_was_enabled:
            gc.enable()
    return recovery


async def _recover(
    conn: asyncpg.Connection, core_type: CoreFactory, use_snapshot: bool, until_seq: int | None
) -> Recovery:
    snapshot = await store.latest_snapshot(conn, at_or_before=until_seq) if use_snapshot else None
    index = ClientIndex()
    if snapshot is None:
        core, after_seq = core_type(), 0
    else:
        core = restore_snapshot(snapshot, core_type)
        index_data = await store.snapshot_client_orders(conn, snapshot.seq)
        if index_data is None:
            raise RecoveryError(f"snapshot at seq {snapshot.seq} has no idempotency index")
        for entry in _index_decoder.decode(index_data):
            index.add((entry.participant_id, entry.client_order_id), entry.seq, entry.indexed_ns)
        after_seq = snapshot.seq
    # Every row from the snapshot's on is stamped at or after the latest time its index recorded (a command
    # at or before the snapshot's seq; the sequencer never stamps a row earlier than the one before): the
    # journal is read from that day's partitions on, not planned over every day's (store.max_seq).
    from_ts_ns = max(index.times, default=0)
    upto_seq = await store.max_seq(conn, from_ts_ns)
    if until_seq is not None:
        upto_seq = min(upto_seq, until_seq)
    if upto_seq < after_seq:
        raise RecoveryError(f"the journal ends at seq {upto_seq}, before the snapshot at seq {after_seq}")
    last_ts_ns = await _replay(conn, core, index, after_seq, upto_seq, from_ts_ns)
    # An earlier version's snapshot did not say when its ids were indexed: they count from now (late,
    # never early: a retry inside the window is still recognised).
    return Recovery(core, index.seqs, upto_seq, last_ts_ns, after_seq, upto_seq - after_seq, index.keys_deque(),
                    index.times_deque(last_ts_ns))  # fmt: skip


def forget_client_orders(seqs: dict[ClientKey, int], keys: deque[ClientKey], times: deque[int],
                         held: dict[int, dict[str, int]], now_ns: int, before_ns: int) -> None:
    """Drop the index's ids indexed before `before_ns` whose order the core no longer holds (`held`: the
    core's client order ids); a resting order's id is looked at again a window later."""
    while times and times[0] < before_ns:
        times.popleft()
        key = keys.popleft()
        if key[1] in held.get(key[0], ()):
            keys.append(key)  # a resting order keeps its id
            times.append(now_ns)
        else:
            seqs.pop(key, None)


def restore_snapshot(snapshot: store.Snapshot, core_type: CoreFactory = new_exchange) -> Core:
    """The core of `snapshot`; `RecoveryError` if it does not restore to the state hash recorded with it.
    (`hogx archive` hands it to `store.archive_journal` to check the snapshot archival relies on.)"""
    core = getattr(core_type, "from_snapshot", Core.from_snapshot)(snapshot.state)
    restored_hash = core.state_hash()
    if restored_hash != snapshot.state_hash:
        raise RecoveryError(
            f"snapshot at seq {snapshot.seq} restores to state hash {restored_hash}, "
            f"but {snapshot.state_hash} was recorded"
        )
    return core


async def _replay(
    conn: asyncpg.Connection, core: Core, index: ClientIndex, after_seq: int, upto_seq: int, from_ts_ns: int = 0
) -> int:
    """Apply journal rows `after_seq < seq <= upto_seq` to `core`; return the last command's ts_ns. Rows are
    read among those stamped at or after `from_ts_ns` (a lower bound of theirs: store.max_seq).

    The next page is fetched while the current one is applied: the page is applied in slices with a
    turn of the event loop between them, so the next page's query goes out at once and its bytes are
    read as they arrive (without the turns it would be sent only after the page, and nothing would
    overlap). `recover` pauses the collector meanwhile.
    """
    last_ts_ns = 0
    if after_seq >= upto_seq:
        if upto_seq:
            entry = await store.journal_entry(conn, upto_seq, from_ts_ns)
            last_ts_ns = entry[0] if entry is not None else 0
        return last_ts_ns
    page_rows = _REPLAY_FIRST_PAGE
    page_end = min(after_seq + page_rows, upto_seq)
    pending = asyncio.ensure_future(store.read_command_page(conn, after_seq, page_end, from_ts_ns))
    while pending is not None:
        count, data = await pending
        page_start, after_seq = after_seq, page_end
        pending = None
        if after_seq < upto_seq:
            page_rows = min(page_rows * 2, _REPLAY_PAGE)
            page_end = min(after_seq + page_rows, upto_seq)
            pending = asyncio.ensure_future(store.read_command_page(conn, after_seq, page_end, from_ts_ns))
        commands = _decode_page(count, data, page_start, after_seq)
        for start in range(0, len(commands), _REPLAY_SLICE):
            if pending is not None:
                await asyncio.sleep(0)
            last_ts_ns = apply_commands(core, index, commands, start, min(start + _REPLAY_SLICE, len(commands)),
                                        page_start + 1)
    return last_ts_ns


def _decode_page(count: int, data: bytes, after_seq: int, upto_seq: int) -> list[Command]:
    if count != upto_seq - after_seq:
        raise RecoveryError(f"journal rows {after_seq + 1}..{upto_seq}: {count} present, a hole in the journal")
    commands = _commands_decoder.decode(b"\xdd" + count.to_bytes(4, "big") + data)
    if len(commands) != count:
        raise RecoveryError(f"journal rows {after_seq + 1}..{upto_seq} decode to {len(commands)} commands")
    return commands


# -- the sequencer --------------------------------------------------------------------------------------


class Sequencer:
    """One shard's single writer. See the module docstring for the guarantees.

    `dsn` is the database; the writer opens its own connection on it (holding the writer lock).
    `core_type` makes the core: by default the exchange as it runs, matching with settlement
    (`exchange.core.new_exchange`; pair it with `exchange.settlement.pgstore.LedgerWriter` as
    `extra_writes` so the ledger's rows commit with their batch); `Core` is the bare matching engine.
    Any callable returning a fresh `Core` will do (see `recover` for snapshots).
    `pool` serves side work (snapshots, answers to retries of committed orders); one of two
    connections is created when not given.
    """

    def __init__(
        self,
        dsn: str,
        *,
        core_type: CoreFactory = new_exchange,
        pool: asyncpg.Pool | None = None,
        queue_size: int = 50_000,
        max_batch: int = 1_000,
        snapshot_every: int = 100_000,
        clock_ns: Callable[[], int] = time.time_ns,
        tick_interval_s: float | None = None,
        extra_writes: ExtraWrites | None = None,
        commit_timeout_s: float = 10.0,
        backoff_max_s: float = _BACKOFF_MAX_S,
        freeze_gc: bool = True,
        gc_young_threshold: int | None = GC_YOUNG_THRESHOLD,
        retention_ns: int = 0,
    ) -> None:
        if queue_size < 1 or max_batch < 1 or snapshot_every < 1:
            raise ValueError("queue_size, max_batch and snapshot_every must be positive")
        self.dsn = dsn
        self.core_type = core_type
        self.queue_size = queue_size
        self.max_batch = max_batch
        self.snapshot_every = snapshot_every
        self.tick_interval_s = tick_interval_s
        self.retention_ns = retention_ns  # what the ticks it submits carry (0: the core's default)
        self.commit_timeout_s = commit_timeout_s
        self.backoff_max_s = backoff_max_s
        self.freeze_gc = freeze_gc
        self.gc_young_threshold = gc_young_threshold
        self._clock_ns = clock_ns
        self._extra_writes = extra_writes
        self._pool = pool
        self._own_pool = pool is None
        self.state = State.NEW
        self.core: Core = core_type()
        if extra_writes is None and self.core.clearing is not None:
            # the clearing's ledger rows must commit with their batch: never leave them to pile up
            from exchange.settlement.pgstore import LedgerWriter

            writer = LedgerWriter()
            writer.attach(self)
            self._extra_writes = writer
        # an extra_writes hook may take its rows slice by slice as commands are applied (LedgerWriter)
        self._prepare_extra: Callable[[CommittedBatch], None] | None = getattr(self._extra_writes, "prepare", None)
        # and may end the transaction itself (LedgerWriter.commit: its last COPY carries the COMMIT), which
        # the journal's COPY then begins: two round trips a batch instead of four (see `_commit`)
        self._extra_commit: ExtraWrites | None = getattr(self._extra_writes, "commit", None)
        self._client_orders: dict[ClientKey, int] = {}
        # every key of _client_orders and when it was indexed, oldest first, as two queues in step (no
        # tuple per order): what a tick looks at
        self._client_order_keys: deque[ClientKey] = deque()
        self._client_order_times: deque[int] = deque()
        # The submission queue as two deques in step (no tuple per command): commands and their futures.
        self._queue: deque[Command] = deque()
        self._journal_buffer = bytearray()  # scratch space of `_journal_body`, keeping its capacity
        self._sinks: deque[asyncio.Future[Result] | None] = deque()
        self._conn: asyncpg.Connection | None = None
        self._next_seq = 1
        self._last_ts_ns = 0
        self._committed_seq = 0
        self._snapshot_seq = 0
        # a batch stamped outside [from, due) makes sure of the journal's partitions first (`_ensure_partitions`)
        self._partitions_from_ns = self._partitions_due_ns = 0
        self._open: _Batch | None = None
        self._committing: _Batch | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._wake_at = 1  # queue length at which a submission wakes the writer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_future: Callable[[], asyncio.Future[Result]] = _not_started
        self._writer_task: asyncio.Task[None] | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._snapshot_task: asyncio.Task[None] | None = None
        self._snapshot_due: _SnapshotDue | None = None
        self._subscribers: list[Subscriber] = []
        self._stopping = False
        self._rate_cps = 10_000.0  # EWMA of commit throughput, for Busy's retry_after_s
        self._last_commit_s = time.monotonic()
        self.recoveries = 0  # times the core was rebuilt after trouble (not counting start)
        self.last_recovery: Recovery | None = None

    # -- life cycle -----------------------------------------------------------------------------------

    async def start(self) -> Recovery:
        """Connect, recover (refusing to start on a mismatch), and open for business."""
        if self.state is not State.NEW:
            raise RuntimeError(f"cannot start a sequencer in state {self.state.value}")
        self._loop = asyncio.get_running_loop()
        self._new_future = _future_factory(self._loop)
        if self._pool is None:
            self._pool = await store.create_pool(self.dsn, min_size=1, max_size=2)
        try:
            recovery = await self._connect_and_recover()
        except BaseException:
            if self._own_pool and self._pool is not None:
                await self._pool.close()
                self._pool = None  # a later start() makes a new one
            raise
        self.state = State.RUNNING
        self._writer_task = asyncio.create_task(self._writer(), name="sequencer-writer")
        if self.tick_interval_s:
            self._tick_task = asyncio.create_task(self._ticker(self.tick_interval_s), name="sequencer-ticker")
        return recovery

    async def stop(self, *, snapshot: bool = True) -> None:
        """Stop taking submissions, commit everything queued, optionally snapshot, and disconnect."""
        if self.state in (State.STOPPED, State.NEW):
            self.state = State.STOPPED
            return
        self._stopping = True
        recovering = self.state is State.RECOVERING
        if self.state is State.RUNNING:
            self.state = State.STOPPING
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        self._wake()
        if self._writer_task is not None:
            if recovering:  # nothing to drain; do not wait out back-off or a lock held elsewhere
                self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        self._fail_pending()  # normally nothing is left; after a cancelled recovery, say so
        if self._snapshot_task is not None:
            with contextlib.suppress(Exception):
                await self._snapshot_task
        if snapshot and self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._save_snapshot_now()
        for task in list(self._side_tasks):
            with contextlib.suppress(Exception):
                await task
        await self._close_conn()
        if self._own_pool and self._pool is not None:
            await self._pool.close()
        self.state = State.STOPPED

    async def __aenter__(self) -> Sequencer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- submission -----------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.state is State.RUNNING

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def committed_seq(self) -> int:
        """Highest journal seq known to be committed by this sequencer (or found on recovery)."""
        return self._committed_seq

    @property
    def applied_seq(self) -> int:
        """Highest seq applied to `core`. Above `committed_seq` while a batch is in flight: `core` then
        shows state that is not durable yet (and is thrown away if the commit fails)."""
        return self._next_seq - 1

    def settled_depth(self, instrument: str, levels: int = 10) -> tuple[int, list, list] | None:
        """`core.depth(...)` (book seq, bids, asks) if the core holds only committed state, else None.

        For market-data snapshots: never show a book an uncommitted batch changed. Between batches (and
        always when idle) the core is settled; a caller that gets None tries again after the next commit.
        """
        if self.applied_seq != self._committed_seq:
            return None
        return self.core.depth(instrument, levels)

    @property
    def writer_backend_pid(self) -> int | None:
        """PostgreSQL backend pid of the writer connection (for operators and tests)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    def _check_open(self, count: int) -> None:
        if self.state is not State.RUNNING:
            raise Unavailable(f"sequencer is {self.state.value}")
        if len(self._queue) + count > self.queue_size:
            raise Busy(self._retry_after_s())

    def submit_nowait(self, command: Command) -> asyncio.Future[Result]:
        """Enqueue `command` and return the future of its `Result`; raises `Busy`/`Unavailable` at once.

        The future fails with `Unavailable` (status unknown) or `IdempotencyConflict`.
        """
        # The hot path of every caller: checks inlined, no helper calls unless refusing.
        if command.__class__ not in _BOUNDED_COMMANDS:
            _check_encodable(command)
        queue = self._queue
        if self.state is not State.RUNNING or len(queue) >= self.queue_size:
            self._check_open(1)
        future = self._new_future()
        queue.append(command)
        self._sinks.append(future)
        if len(queue) >= self._wake_at:
            waiter = self._wakeup
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        return future

    def submit_many(self, commands: Iterable[Command]) -> list[asyncio.Future[Result]]:
        """Enqueue all of `commands` (in order) or, if they do not all fit, none: raises `Busy`."""
        commands = list(commands)
        # orders and cancels: one check for all of them, without bytecode per command
        unbounded = [] if _BOUNDED_COMMANDS.issuperset(map(type, commands)) else [
            command for command in commands if command.__class__ not in _BOUNDED_COMMANDS]  # fmt: skip
        if unbounded:
            # one trial encode for all of them; only when it fails, one by one to name the culprit
            try:
                _command_encoder.encode(unbounded)
            except (OverflowError, msgspec.EncodeError, TypeError):
                for command in unbounded:
                    _check_encodable(command)
                raise
        self._check_open(len(commands))
        futures = list(starmap(self._new_future, repeat((), len(commands))))
        self._queue.extend(commands)
        self._sinks.extend(futures)
        if len(self._queue) >= self._wake_at:
            self._wake()
        return futures

    async def submit(self, command: Command) -> Result:
        """Sequence `command`; return its `Result` once it is durably journaled."""
        return await self.submit_nowait(command)

    def _retry_after_s(self) -> float:
        return min(5.0, max(0.01, len(self._queue) / max(self._rate_cps, 1.0)))

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- subscribers ----------------------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(batch)` after every commit; returns a function that unsubscribes.

        Called synchronously in the writer, in seq order: it must not block. A callback that raises
        is logged and unsubscribed.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def feed(self, maxsize: int = 1_000) -> AsyncIterator[CommittedBatch]:
        """Committed batches as an async iterator with a bounded buffer.

        If the consumer falls `maxsize` batches behind, the iterator raises `Unavailable`: the
        consumer resynchronises from the journal (`committed_seq` tells where the live feed is).
        """
        queue: asyncio.Queue[CommittedBatch | None] = asyncio.Queue(maxsize)

        def push(batch: CommittedBatch) -> None:
            try:
                queue.put_nowait(batch)
            except asyncio.QueueFull:
                unsubscribe()
                queue.get_nowait()  # make room for the end-of-feed marker
                queue.put_nowait(None)

        unsubscribe = self.subscribe(push)
        try:
            while True:
                batch = await queue.get()
                if batch is None:
                    raise Unavailable("feed consumer fell behind; resynchronise from the journal")
                yield batch
        finally:
            unsubscribe()

    def _publish(self, batch: CommittedBatch) -> None:
        for callback in list(self._subscribers):
            try:
                callback(batch)
            except Exception:
                _log.exception("sequencer subscriber %r failed; unsubscribed", callback)
                with contextlib.suppress(ValueError):
                    self._subscribers.remove(callback)

    # -- connection and recovery ----------------------------------------------------------------------

    async def _connect_and_recover(self) -> Recovery:
        conn = await asyncpg.connect(self.dsn)
        try:
            # Wait for the writer lock: another live writer (or the zombie backend of a lost
            # connection of ours) must be gone before we read the journal and write after it.
            await conn.execute("SELECT pg_advisory_lock($1)", _WRITER_LOCK_KEY)
            recovery = await recover(conn, self.core_type, freeze_gc=self.freeze_gc)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.core = recovery.core
        self._client_orders = recovery.client_orders
        self._client_order_keys = recovery.client_order_keys
        self._client_order_times = recovery.client_order_times
        self._next_seq = recovery.last_seq + 1
        self._committed_seq = recovery.last_seq
        self._last_ts_ns = recovery.last_ts_ns
        self._snapshot_seq = recovery.snapshot_seq
        self.last_recovery = recovery
        try:
            # today's by the wall clock (not `clock_ns`, which is read only to stamp), and the journal's last day's
            await self._ensure_partitions(conn, (max(time.time_ns(), recovery.last_ts_ns),))
        except BaseException:
            self._conn = None
            conn.terminate()
            raise
        if self.freeze_gc:
            gc.freeze()
        young, *older = gc.get_threshold()
        if self.gc_young_threshold is not None and young < self.gc_young_threshold:
            gc.set_threshold(self.gc_young_threshold, *older)
        _log.info(
            "sequencer recovered to seq %d (snapshot %d + %d replayed)",
            recovery.last_seq, recovery.snapshot_seq, recovery.replayed,
        )
        return recovery

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=2.0)
        except Exception:
            conn.terminate()

    async def _recover_with_backoff(self) -> None:
        """Reconnect and rebuild until it works (or we are stopping)."""
        delay_s = _BACKOFF_START_S
        while not self._stopping:
            await self._close_conn()
            try:
                await self._connect_and_recover()
            except RecoveryError:
                _log.critical("sequencer cannot rebuild a trustworthy state; staying unavailable")
                raise
            except Exception as exc:
                _log.warning("sequencer reconnect failed (%s); retrying in %.2f s", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self.backoff_max_s)
                continue
            self.recoveries += 1
            if not self._stopping:
                self.state = State.RUNNING
            return

    # -- the writer -----------------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            try:
                await self._serve()
                return  # stopped and drained
            except Exception as exc:  # _CommitFailed, _CoreFailed, or a bug: the core cannot be trusted
                self._mark_trouble()
                _log.warning("sequencer batch failed (%s): rebuilding from the database", exc.__cause__ or exc)
                self._fail_pending()
            if self._stopping:
                return
            try:
                await self._recover_with_backoff()
            except RecoveryError:
                self.state = State.RECOVERING
                return

    def _mark_trouble(self) -> None:
        if self.state is State.RUNNING:
            self.state = State.RECOVERING

    def _fail_pending(self) -> None:
        """Fail everything not committed: the open batch and the queue."""
        for batch in (self._committing, self._open):
            if batch is not None:
                batch.fail(Unavailable, "database trouble: status unknown, reconcile by client order id")
        self._committing = self._open = None
        sinks, self._queue, self._sinks = self._sinks, deque(), deque()
        for future in sinks:
            if future is not None and not future.done():
                future.set_exception(Unavailable("database trouble: not processed"))

    async def _serve(self) -> None:
        """Absorb, seal and commit batches until stopped (returns) or something fails (raises).

        Loop: absorb what is queued into the open batch; when no commit is in flight, seal the open
        batch and start its commit (after absorbing only half of what waits, so the other half is
        absorbed while it commits); while a commit is in flight, absorb a chunk (`1/_CHUNKS_PER_BATCH`
        of a batch) at a time with a turn of the event loop between chunks, so each step of the commit
        (BEGIN, COPY, COPY, COMMIT: a round trip each) is answered promptly, and with
        nothing queued sleep until the commit finishes or a chunk of new work has queued up, so a busy
        writer is not woken once per submission.
        """
        loop = asyncio.get_running_loop()
        commit: asyncio.Task[None] | None = None
        chunk = max(1, self.max_batch // _CHUNKS_PER_BATCH)
        self._open = self._new_batch()
        try:
            while True:
                if commit is not None and commit.done():
                    commit.result()  # raises _CommitFailed
                    commit = None
                batch = self._open
                if self._queue and len(batch) < self.max_batch:
                    # Nothing being committed: commit half of what waits (at least a chunk) at once
                    # and absorb the rest while PostgreSQL works, so the two overlap. A commit in
                    # flight: absorb a chunk at a time, looking at the commit between chunks.
                    take = chunk if commit is not None else max(chunk, (len(self._queue) + 1) // 2)
                    self._absorb(batch, min(self.max_batch - len(batch), take))
                if commit is None:
                    if len(batch):
                        self._seal(batch)
                        self._committing, self._open = batch, self._new_batch()
                        # the rows are complete before the next batch takes any (see _commit_writes)
                        commit = asyncio.create_task(self._commit(batch, self._commit_writes(batch)))
                        commit.add_done_callback(self._wake_on_commit)
                        await asyncio.sleep(0)  # the commit's first step sends the rows
                        continue
                    if self._queue:
                        continue  # everything absorbed was a retry; more is queued
                    if self._stopping:
                        return
                    self._wake_at = 1
                elif self._queue and len(self._open) < self.max_batch:
                    # A turn of the loop between slices: a commit that finished meanwhile is seen
                    # now, not after everything queued was absorbed, and the next one starts sooner.
                    await asyncio.sleep(0)
                    continue
                else:
                    self._wake_at = chunk if len(self._open) < self.max_batch else self.queue_size + 1
                self._wakeup = waiter = loop.create_future()
                await waiter
                self._wakeup = None
        except BaseException:
            if commit is not None and not commit.done():
                # Let the batch in flight finish: its callers deserve its real outcome.
                with contextlib.suppress(Exception):
                    await asyncio.shield(commit)
            raise

    def _wake_on_commit(self, _: asyncio.Task[None]) -> None:
        self._wake()

    @property
    def last_ts_ns(self) -> int:
        """The time stamped on the last command (recovered from the journal at start)."""
        return self._last_ts_ns

    def _new_batch(self) -> _Batch:
        return _Batch(self._next_seq)

    def _absorb(self, batch: _Batch, limit: int) -> None:
        """Stamp and apply up to `limit` queued commands into `batch`, and encode their journal rows."""
        queue, sinks = self._queue, self._sinks
        ts_ns = self._clock_ns()
        if ts_ns < self._last_ts_ns:
            ts_ns = self._last_ts_ns
        self._last_ts_ns = ts_ns
        apply = self.core.apply
        pop_command, pop_sink = queue.popleft, sinks.popleft
        replace, force_setattr = msgspec.structs.replace, msgspec.structs.force_setattr
        client_orders = self._client_orders
        index_key, index_time = self._client_order_keys.append, self._client_order_times.append
        commands, events_out, futures = batch.commands, batch.events, batch.futures
        seq = first_seq = moved = self._next_seq
        # The futures of absorbed commands stay at the head of `sinks` and are moved to the batch in
        # runs (seqs `moved` to `seq`), not one by one: only a retry or a core failure needs its own.
        for _ in range(min(limit, len(queue))):
            command = pop_command()
            kind = type(command)
            if kind is PlaceOrder and 0 < len(command.client_order_id) <= MAX_CLIENT_ORDER_ID_LEN:
                # one lookup: the seq this (participant, client id) has now, set to this one if new
                key = (command.participant_id, command.client_order_id)
                original_seq = client_orders.setdefault(key, seq)
                if original_seq != seq:
                    futures.extend(starmap(pop_sink, repeat((), seq - moved)))
                    moved = seq
                    self._retry(command, pop_sink(), original_seq)
                    continue
                index_key(key)
                index_time(ts_ns)
            if command.ts_ns:  # already stamped once (a resubmitted object): stamp a copy
                command = replace(command, ts_ns=ts_ns)
            else:  # a fresh command, handed over: stamp it in place
                force_setattr(command, "ts_ns", ts_ns)
            try:
                events = apply(command)
            except Exception as exc:
                futures.extend(starmap(pop_sink, repeat((), seq - moved)))
                future = pop_sink()
                self._next_seq = seq
                self._mark_trouble()
                if future is not None and not future.done():
                    future.set_exception(exc)
                raise _CoreFailed(f"core.apply raised on seq {seq}: {exc!r}") from exc
            commands.append(command)
            events_out.append(events)
            seq += 1
            if kind is ClockTick:
                self._forget_client_orders(ts_ns, ts_ns - retention_of(command))  # type: ignore[arg-type]
        futures.extend(starmap(pop_sink, repeat((), seq - moved)))
        self._next_seq = seq
        absorbed = seq - first_seq
        if absorbed:
            # Encode the slice's rows now, while the previous batch commits: what is left at the seal
            # is a join, and PostgreSQL does not wait inside the transaction for Python to encode.
            start = len(commands) - absorbed
            batch.journal_parts.append(_journal_body(first_seq, ts_ns, commands, events_out, start,
                                                     self._journal_buffer))  # fmt: skip
            if self._prepare_extra is not None:
                self._prepare_extra(batch)

    def _forget_client_orders(self, now_ns: int, before_ns: int) -> None:
        """Drop the index's ids indexed before `before_ns` whose order the core no longer holds."""
        forget_client_orders(self._client_orders, self._client_order_keys, self._client_order_times,
                             self.core.client_order_ids, now_ns, before_ns)  # fmt: skip

    def _index_copy(self) -> list[tuple[int, str, int, int]]:
        """The index as a snapshot lists it: (participant, client id, seq, indexed at), in tick order."""
        seqs = self._client_orders
        return [(key[0], key[1], seqs[key], at)
                for key, at in zip(self._client_order_keys, self._client_order_times, strict=True)]

    def _retry(self, command: PlaceOrder, future: asyncio.Future[Result] | None, original_seq: int) -> None:
        """Answer a repeated client order id: the original result, or a conflict."""
        if future is None:
            return
        for batch in (self._committing, self._open):
            if batch is not None and batch.first_seq <= original_seq < batch.first_seq + len(batch):
                index = original_seq - batch.first_seq
                if not _same_order(batch.commands[index], command):
                    future.set_exception(
                        IdempotencyConflict(command.participant_id, command.client_order_id, original_seq)
                    )
                else:
                    batch.followers.append((future, index))
                return
        task = asyncio.create_task(self._answer_committed_retry(command, future, original_seq))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _answer_committed_retry(
        self, command: PlaceOrder, future: asyncio.Future[Result], original_seq: int
    ) -> None:
        try:
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                entry = await store.journal_entry(conn, original_seq)
        except Exception as exc:
            if not future.done():
                future.set_exception(Unavailable(f"cannot read the original answer: {exc}"))
            return
        if future.done():
            return
        if entry is None or entry[2] is None:
            future.set_exception(Unavailable(f"journal row {original_seq} is missing its events"))
            return
        ts_ns, command_data, events_data = entry
        original = decode_command(command_data)
        if not _same_order(original, command):
            future.set_exception(IdempotencyConflict(command.participant_id, command.client_order_id, original_seq))
        else:
            future.set_result(Result(original_seq, ts_ns, decode_events(events_data), True))

    def _seal(self, batch: _Batch) -> None:
        """Close `batch` for more commands; note a snapshot if one is due at its last seq."""
        last_seq = batch.last_seq
        if last_seq - self._snapshot_seq >= self.snapshot_every:
            self._snapshot_seq = last_seq
            state, state_hash = self.core.snapshot_with_hash()
            batch.snapshot = _SnapshotDue(last_seq, state_hash, state, self._index_copy())

    def _commit_writes(self, batch: _Batch) -> tuple[bytes, Awaitable[None] | None] | Exception:
        """At the seal, before anything else is absorbed: the batch's journal COPY data and the
        awaitable of its extra writes (a `LedgerWriter` takes and encodes its remaining rows here;
        a plain `async def` hook only runs when awaited, inside the transaction). An exception is
        returned, to fail the commit like any other commit error."""
        try:
            data = store.copy_binary_data(batch.journal_parts)
            conn = self._conn
            hook = self._extra_writes if self._extra_commit is None else self._extra_commit
            extra = None if hook is None or conn is None else hook(conn, batch)
        except Exception as exc:
            return exc
        return data, extra

    async def _commit(self, batch: _Batch, writes: tuple[bytes, Awaitable[None] | None] | Exception) -> None:
        conn = self._conn
        extra = None
        try:
            if isinstance(writes, Exception):
                raise writes
            data, extra = writes
            if conn is None:
                raise ConnectionError("no writer connection")
            commands = batch.commands
            if not (self._partitions_from_ns <= commands[0].ts_ns and commands[-1].ts_ns < self._partitions_due_ns):
                # a new day (once a day, before its first row), or a clock not on the days made at start
                async with asyncio.timeout(self.commit_timeout_s):
                    await self._ensure_partitions(conn, map(_ts_of, commands))
            if extra is None:
                await store.copy_journal_binary(conn, data, timeout_s=self.commit_timeout_s)
            elif self._extra_commit is not None:
                # BEGIN with the journal's COPY, COMMIT with the hook's last write: a round trip each.
                # Nothing answers before that COMMIT returned; a failure on the way leaves the
                # transaction open or aborted, and the connection is terminated below (no commit).
                async with asyncio.timeout(self.commit_timeout_s):
                    await store.begin_copy_journal_binary(conn, data)
                    pending, extra = extra, None
                    await pending
                    if conn.is_in_transaction():  # the hook left the COMMIT to us (see LedgerWriter.commit)
                        await conn.execute("COMMIT")
            else:
                async with asyncio.timeout(self.commit_timeout_s), conn.transaction():
                    await store.copy_journal_binary(conn, data)
                    pending, extra = extra, None
                    await pending
        except BaseException as exc:
            if inspect.iscoroutine(extra):
                extra.close()  # never started: no "never awaited" warning
            self._mark_trouble()  # before the callers hear of it, so a quick resubmission is refused too
            batch.fail(Unavailable, f"commit failed ({type(exc).__name__}): status unknown")
            if conn is not None:
                conn.terminate()  # its state is unknown; recovery opens a new one
            raise _CommitFailed(str(exc)) from exc
        self._committing = None
        self._committed(batch)

    async def _ensure_partitions(self, conn: asyncpg.Connection, ts_ns: Iterable[int]) -> None:
        """Partitions for the days of `ts_ns` and the next `store.JOURNAL_DAYS_AHEAD`; the next check is
        due when a batch reaches the day after the newest of them (so a day's partition always exists a
        day ahead)."""
        covered_until_ns = await store.ensure_journal_partitions(conn, ts_ns)
        self._partitions_due_ns = covered_until_ns - store.JOURNAL_DAYS_AHEAD * store.DAY_NS
        self._partitions_from_ns = self._partitions_due_ns - store.DAY_NS  # the newest day's start

    def _committed(self, batch: _Batch) -> None:
        """After COMMIT: resolve futures, answer followers, publish, start a due snapshot's write."""
        self._committed_seq = batch.last_seq
        now_s = time.monotonic()
        elapsed_s = max(now_s - self._last_commit_s, 1e-4)
        self._last_commit_s = now_s
        self._rate_cps = 0.8 * self._rate_cps + 0.2 * (len(batch) / elapsed_s)
        first_seq, commands, events, futures = batch.first_seq, batch.commands, batch.events, batch.futures
        if not len(futures) == len(commands) == len(events):
            raise RuntimeError(f"batch at seq {first_seq}: {len(futures)} futures for {len(commands)} commands")
        # The Results are built by a map (no bytecode per field), and resolve their futures by a map too
        # when every future is pending and asyncio's (the rule): no bytecode per command. Otherwise (the
        # ticker's None, a future a caller cancelled, another kind of future) one by one, skipping those
        # done, which include the ones the map resolved before it stopped.
        results = map(Result, itertools.count(first_seq), map(_ts_of, commands), events)
        try:
            _drain(map(_set_result, futures, results))
        except (TypeError, AttributeError, asyncio.InvalidStateError):
            results = map(Result, itertools.count(first_seq), map(_ts_of, commands), events)
            for future, result in zip(futures, results, strict=True):
                if future is not None and not future.done():
                    future.set_result(result)
        for future, index in batch.followers:
            if not future.done():
                future.set_result(batch.result(index, replay=True))
        self._publish(CommittedBatch(first_seq, commands, events))
        if batch.snapshot is not None:
            self._start_snapshot_write(batch.snapshot)

    # -- snapshots ------------------------------------------------------------------------------------

    def _start_snapshot_write(self, due: _SnapshotDue) -> None:
        """Write `due` after the snapshot being written, if any. One waits at most: a newer one
        replaces it (snapshots only shorten recovery, the newest shortens it most)."""
        if self._snapshot_due is not None:
            _log.warning("snapshot at seq %d dropped for the newer one at %d", self._snapshot_due.seq, due.seq)
        self._snapshot_due = due
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = asyncio.create_task(self._snapshot_writer(), name="sequencer-snapshot")

    async def _snapshot_writer(self) -> None:
        while self._snapshot_due is not None:
            due, self._snapshot_due = self._snapshot_due, None
            await self._write_snapshot(due)

    async def _write_snapshot(self, due: _SnapshotDue) -> None:
        # Millions of entries take a while to encode: in a thread, so the writer keeps its turns.
        index = await asyncio.to_thread(_encode_index, due.client_orders)
        try:
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                await store.save_snapshot(conn, due.seq, due.state_hash, due.state, index)
        except Exception:
            _log.exception("writing the snapshot at seq %d failed; the next one will be taken later", due.seq)

    async def _save_snapshot_now(self) -> None:
        """Snapshot the committed state on the writer connection (on stop, when nothing is in flight)."""
        if self._committed_seq <= self._snapshot_seq or self._next_seq != self._committed_seq + 1:
            return
        assert self._conn is not None
        index = _encode_index(self._index_copy())
        state, state_hash = self.core.snapshot_with_hash()
        await store.save_snapshot(self._conn, self._committed_seq, state_hash, state, index)
        self._snapshot_seq = self._committed_seq

    # -- time -----------------------------------------------------------------------------------------

    async def _ticker(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if self.state is State.RUNNING:
                with contextlib.suppress(SequencerError):
                    self._check_open(1)
                    self._queue.append(ClockTick(SYSTEM_PARTICIPANT, 0, self.retention_ns))
                    self._sinks.append(None)
                    self._wake()


def _journal_body(
    first_seq: int, ts_ns: int, commands: list[Command], events: list[list[Event]], start: int, buffer: bytearray
) -> bytes:
    """Journal rows of `commands[start:]` (seq `first_seq` onwards, all stamped `ts_ns`), pre-encoded for
    binary COPY (asyncpg's row path costs more), without COPY header and trailer; `buffer` is scratch."""
    return store.encode_journal_run(first_seq, ts_ns, commands[start:], events[start:],
                                    _encode_command_into, _encode_events_into, buffer)  # fmt: skip


def _future_factory(loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Future[Result]]:
    """`loop.create_future`, called without its Python frame when it is asyncio's own (which makes an
    `asyncio.Future(loop=loop)`): submissions make a future per command, and the frame was a fifth of
    each one's cost (callgrind). Another loop's own kind of future is left to that loop.

    The loop is named, not left to `asyncio.Future()` to find: finding the running loop calls getpid()
    (asyncio checks for a fork), a system call per future that callgrind hardly counts but the clock
    does (here 0.27 µs, a third of a future: `Future()` 0.35 µs, this partial 0.25 µs)."""
    if type(loop).create_future is asyncio.BaseEventLoop.create_future:
        return functools.partial(asyncio.Future, loop=loop)
    return loop.create_future


def _not_started() -> asyncio.Future[Result]:
    raise RuntimeError("the sequencer has not been started")


def _encode_index(entries: list[tuple[int, str, int, int]]) -> bytes:
    return _index_encoder.encode(entries)


def _same_order(a: Command, b: Command) -> bool:
    """Equal but for the sequencer's time stamp."""
    return msgspec.structs.replace(a, ts_ns=0) == msgspec.structs.replace(b, ts_ns=0)
