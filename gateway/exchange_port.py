"""The gateway's one door to the exchange: every call into `exchange.sequencer` is made here.

A `Shard` is one sequencer (the single writer of one database) together with the read model folded
from its committed batches (`gateway.readmodel`). Its core is the exchange as it runs, matching with
settlement (`exchange.core.new_exchange`), and the clearing's ledger rows are written in each batch's
own transaction (`exchange.settlement.pgstore.LedgerWriter` as the sequencer's `extra_writes`).
Shards are shared per database within a process and reference counted, so several gateway
applications in one process (tests, a second listener) front the same writer instead of queueing on
its advisory lock.

Start-up (`Shard.start`): the sequencer recovers (snapshot + journal tail, hash checked), the read
model is restored from its newest snapshot (`gateway.readmodel_snapshots`, saved every `snapshot_every`
commands, a slice at a time with the event loop's turn between slices, and at a clean stop) and folds
the journal's stored events after it up to the recovered seq (from seq 1 when there is no snapshot),
and its books are checked against the core's; only then does
the gateway report ready. So a start does not slow with history, and works after old journal days are
archived (the snapshot's watermark keeps archival off the rows it still needs). After that, every committed batch is
folded into the read model synchronously in the sequencer's publish step — before the callers whose
futures that commit resolved get to run — and then handed to the listeners (market-data publishers,
metrics).

The daily settlement report is history, answered from PostgreSQL: `exchange.history.ReportHistory`
catches up from the journal at start-up (after the read model's rebuild, before readiness), is fed every
published batch and writes the report's rows off the acknowledgement path; readers of the report wait
until the rows of the batches they could have seen are written (`history.wait_for`).

With `project_read_models` (on by default; `HOGX_PROJECT_READ_MODELS=false` turns it off) the shard also
runs `exchange.readmodel.Projector`, which keeps the PostgreSQL `orders` and `trades` tables in step with
the journal; it follows the journal on its own connection, so acknowledgements never wait for it. The
API answers from the in-memory read model, which is exact as of the last commit and costs no query, and
which forgets closed orders and old fills once the projection holds them (`read_model.projected_seq`,
kept in step here): those are answered from the tables (`gateway.orderhistory`). Without the projection
nothing is forgotten, and memory grows with the history of orders.

`ExchangePort` is an application's handle on its shard: it maps the sequencer's answers to API errors
(`Busy` -> 503 `busy` with Retry-After, `Unavailable` -> 503 `unavailable`, an idempotency conflict
-> 409 `duplicate_client_order_id`), stops taking commands when the application shuts down, keeps
readiness in step with the sequencer, and feeds the exchange metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any, Final

import asyncpg
from aiohttp import web

from exchange import priceindex, readmodel
from exchange.commands import Command, decode_command
from exchange.core import Core, new_exchange
from exchange.events import Event
from exchange.history import ReportHistory
from exchange.sequencer import (
    Busy,
    CommittedBatch,
    IdempotencyConflict,
    Result,
    Sequencer,
    State,
    Unavailable,
    decode_events,
)
from exchange.settlement import Clearing
from gateway import readmodel_codec
from gateway.clock import SimulatedClock
from gateway.config import GatewayConfig
from gateway.errors import ApiError, Code
from gateway.metrics import Metrics
from gateway.readmodel import BatchDigest, ReadModel
from gateway.readmodel_snapshots import latest_read_model, save_read_model
from gateway.schemas import ExecutionReport
from gateway.state import Readiness
from gateway.store import RegistrationWriter

__all__ = ["EXCHANGE", "ExchangePort", "Result", "Shard", "attach", "detach"]

_log = logging.getLogger(__name__)

_REBUILD_PAGE: Final = 20_000
_READINESS_POLL_S: Final = 0.25

Listener = Callable[[CommittedBatch, BatchDigest], None]


_MATCH_SAMPLE: Final = 16  # time one command in this many: a histogram observation costs as much as a match


def _timed_core_type(observe: Callable[[float], None]) -> type[Core]:
    """A Core whose `apply` reports its duration (the match-latency histogram), for one command in
    `_MATCH_SAMPLE` — a sample keeps the distribution and spares the hot path.

    Recovery builds the core with `core_type.from_snapshot`, which builds this class from the snapshot's
    clearing. Timing is off while recovery replays (`timing`), so replay speed is untouched.
    """
    countdown = [_MATCH_SAMPLE]

    class TimedCore(Core):
        timing = False

        def __init__(self, clearing: Clearing | None = None) -> None:
            # The exchange as it runs: matching with settlement (`new_exchange`), also when the
            # sequencer builds a fresh core (`core_type()`) for an empty journal.
            super().__init__(clearing if clearing is not None else Clearing())

        def apply(self, command: Command) -> list[Event]:
            countdown[0] -= 1
            if countdown[0] or not TimedCore.timing:
                return Core.apply(self, command)
            countdown[0] = _MATCH_SAMPLE
            started_s = time.perf_counter()
            events = Core.apply(self, command)
            observe(time.perf_counter() - started_s)
            return events

    return TimedCore


class Shard:
    """One sequencer and its read model; see the module docstring."""

    def __init__(self, dsn: str, config: GatewayConfig) -> None:
        self.dsn = dsn
        self.read_model = ReadModel(trade_history=config.trade_history, candle_history=config.candle_history)
        self._match_observers: list[Callable[[float], None]] = []
        self._core_type = _timed_core_type(self._observe_match)
        # The clearing's ledger rows commit in the same transaction as their journal batch.
        # So do the participant and key rows of a registration (the writer's subclass in gateway.store).
        self.ledger_writer = RegistrationWriter()
        # HOGX_CLOCK=simulated: the sequencer stamps with a clock that moves only on request (gateway/clock.py)
        self.clock: SimulatedClock | None = None
        if config.clock == "simulated":
            self.clock = SimulatedClock((config.clock_start_ms or time.time_ns() // 1_000_000) * 1_000_000)
        self.sequencer = Sequencer(
            dsn,
            core_type=self._core_type,
            queue_size=config.sequencer_queue_size,
            max_batch=config.sequencer_max_batch,
            snapshot_every=config.snapshot_every,
            tick_interval_s=config.clock_tick_s or None,
            extra_writes=self.ledger_writer,
            retention_ns=config.retention_s * 10**9,
            clock_ns=self.clock or time.time_ns,
        )
        self.ledger_writer.attach(self.sequencer)
        self.listeners: list[Listener] = []
        # The PostgreSQL read models (orders, trades) for reconciliation and other readers of the
        # database; followed asynchronously, so acknowledgements never wait for them.
        self.projector = readmodel.Projector(dsn) if config.project_read_models else None
        # The settlement history (the report's rows) in PostgreSQL, always kept: the API answers the
        # report from it. Fed from the published batches, written off the acknowledgement path.
        self.history = ReportHistory(dsn)
        # Live sets of the participants who want execution reports (e.g. subscribed to `orders`).
        self.report_wanted: list[AbstractSet[int]] = []
        self.users = 0
        self.failure: str | None = None  # set when a batch could not be folded: the read model is stale
        self.recovery_s = 0.0  # how long start() took: recovery and the read model's rebuild (a metric)
        self._buffer: list[CommittedBatch] | None = []  # batches committed while rebuilding
        self.config = config
        # Read model snapshots (gateway.readmodel_snapshots): the seq of the newest saved, the commands
        # folded since the last one was taken, the write in flight; where the last start began folding.
        self._saved_seq = 0
        self._since_snapshot = 0
        self._snapshot_task: asyncio.Task[None] | None = None
        self.snapshot_slices = 0  # slices encoded by all snapshots so far, each followed by a turn of the loop
        self.rebuilt_from_seq = 0
        # The execution reports of the orders placed by the last batch folded, by seq (`placed_report`).
        self.placed: dict[int, ExecutionReport] = {}

    # -- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover the sequencer, rebuild the read model, check it against the core, go live."""
        started_s = time.perf_counter()
        await self.sequencer.start()
        try:
            self.sequencer.subscribe(self._on_batch)
            await self._rebuild(self.sequencer.committed_seq)
            await self.history.catch_up(self.sequencer.committed_seq)
            buffered, self._buffer = self._buffer or [], None
            for batch in buffered:
                self._fold(batch)
            self._check_books()
        except BaseException:
            await self.sequencer.stop(snapshot=False)
            raise
        self._core_type.timing = True  # type: ignore[attr-defined]
        await self.history.start()
        self.recovery_s = time.perf_counter() - started_s
        if self.projector is not None:
            self.projector.attach(self.sequencer)
            await self.projector.start()
        _log.info("exchange ready at seq %d: %d instruments, %d orders, read model rebuilt in %.2f s",
                  self.read_model.applied_seq, len(self.read_model.instruments), len(self.read_model.orders),
                  time.perf_counter() - started_s)

    async def stop(self) -> None:
        """Drain: everything queued is committed (and acknowledged) before the writer disconnects."""
        await self.sequencer.stop()
        await self._final_snapshot()
        await self.history.stop()
        if self.projector is not None:
            await self.projector.stop()

    async def _rebuild(self, upto_seq: int) -> None:
        """Load the newest read model snapshot at or before `upto_seq` (`gateway.readmodel_snapshots`),
        then fold the journal rows after it up to `upto_seq` (all of them when there is none). Rows
        journaled without events are re-derived on a shadow core."""
        if upto_seq == 0:
            return
        conn = await asyncpg.connect(self.dsn)
        try:
            after_seq = await self._load_snapshot(conn, upto_seq)
            if self.projector is not None:  # what the projection holds may be forgotten while rebuilding
                self.read_model.projected_seq = await readmodel.projected_seq(conn)
            # the price index's final rows the projection holds leave memory too (gateway/priceindex.py)
            self.read_model.index.projected_seq = await priceindex.projected_seq(conn)
            bare = await conn.fetchval("SELECT count(*) FROM journal WHERE seq > $1 AND seq <= $2 AND events IS NULL",
                                       after_seq, upto_seq)
            shadow = new_exchange() if bare else None
            if shadow is not None and after_seq:
                raise RuntimeError(f"journal rows after seq {after_seq} have no events: the read model cannot "
                                   "fold them from a snapshot")
            page = await conn.prepare(
                "SELECT seq, command, events FROM journal WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3")
            self.rebuilt_from_seq = after_seq
            while after_seq < upto_seq:
                rows = await page.fetch(after_seq, upto_seq, _REBUILD_PAGE)
                if not rows:
                    raise RuntimeError(f"journal ends at seq {after_seq}, expected {upto_seq}")
                if rows[0][0] != after_seq + 1:
                    # archived days (exchange.store.archive_journal) that no read model snapshot covers: a
                    # snapshot's watermark makes archival refuse them, so this is an archive made before
                    # any gateway ran here, or a snapshot that no longer loads
                    raise RuntimeError(f"journal rows {after_seq + 1}..{rows[0][0] - 1} are missing (archived?) "
                                       "and no read model snapshot covers them; restore them first "
                                       "(exchange.store.restore_journal_partition)")
                self.read_model.apply_batch(_decode_rows(rows, shadow))
                after_seq = rows[-1][0]
        finally:
            await conn.close()

    async def _load_snapshot(self, conn: asyncpg.Connection, upto_seq: int) -> int:
        """Restore the newest snapshot that loads; its seq (0 if none: fold from seq 1)."""
        for seq, state in await latest_read_model(conn, upto_seq):
            try:
                readmodel_codec.restore(self.read_model, state)
            except Exception:  # an unknown format (a downgrade): an older one, or the journal, will do
                _log.warning("read model snapshot at seq %d does not load; trying an older one", seq,
                             exc_info=True)
                self.read_model.__init__(trade_history=self.config.trade_history,  # type: ignore[misc]
                                         candle_history=self.config.candle_history)
                continue
            if self.read_model.applied_seq != seq:
                raise RuntimeError(f"read model snapshot at seq {seq} holds seq {self.read_model.applied_seq}")
            # what it had retired was written in the snapshot's own transaction
            self.read_model.written(list(self.read_model.retired_lots), list(self.read_model.retired_auctions))
            self._saved_seq = seq
            return seq
        return 0

    # -- read model snapshots -----------------------------------------------------------------------

    def _maybe_snapshot(self, commands: int) -> None:
        """Every `snapshot_every` commands, start taking a read model snapshot (`_save_snapshot`); one at
        a time."""
        self._since_snapshot += commands
        if self._since_snapshot < self.config.snapshot_every or self.failure is not None:
            return
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        self._since_snapshot = 0
        self._snapshot_task = asyncio.get_running_loop().create_task(self._save_snapshot())

    async def _save_snapshot(self) -> None:
        """Save the read model with the lots and auctions it retired; then memory forgets those (the
        snapshot holds them too: a start from it drops them again, see `_load_snapshot`).

        The model is encoded a slice at a time (`gateway.readmodel_codec.snapshot_steps`), the event
        loop getting a turn after each: requests are answered and batches folded meanwhile, and no
        client waits for more than one slice, whatever the number of open orders. The snapshot is of
        the model as of the last slice."""
        model = self.read_model
        steps = readmodel_codec.snapshot_steps(model)
        try:
            while True:
                next(steps)
                self.snapshot_slices += 1
                await asyncio.sleep(0)
        except StopIteration as done:
            pieces: list[bytes] = done.value
        finally:
            steps.close()  # (cancelled between slices: the model stops noting changes for it)
        if self.failure is not None:  # a batch was not folded: the model is not the journal's
            return
        seq = model.applied_seq  # the last slice's, taken without a break since
        lots, auctions = dict(model.retired_lots), dict(model.retired_auctions)
        state = await asyncio.to_thread(b"".join, pieces)  # megabytes copied: not on the loop's thread
        try:
            conn = await asyncpg.connect(self.dsn)
            try:
                await save_read_model(conn, seq, state, lots.values(), auctions.values())
            finally:
                await conn.close()
            self._saved_seq = max(self._saved_seq, seq)
            model.written(lots, auctions)
        except Exception:  # the next one will be tried; until then a start folds a longer tail
            _log.exception("read model snapshot at seq %d was not saved", seq)

    async def _final_snapshot(self) -> None:
        """At a clean stop: the read model as of the last committed seq, so the next start folds nothing."""
        if self._snapshot_task is not None:
            await self._snapshot_task
        read_model = self.read_model
        if self.failure is None and self._buffer is None and read_model.applied_seq > self._saved_seq:
            await self._save_snapshot()

    def _check_books(self) -> None:
        """The rebuilt books must equal the recovered core's (when the core holds only committed state,
        which is always the case unless a clock tick is already being committed)."""
        sequencer = self.sequencer
        for symbol, market in sequencer.core.markets.items():
            depth = sequencer.settled_depth(symbol, len(market.book.bids.keys) + len(market.book.asks.keys) + 1)
            if depth is None:
                return
            seq, bids, asks = depth
            if not self.read_model.book_matches(seq, bids, asks, symbol):
                raise RuntimeError(f"read model of {symbol} disagrees with the recovered core at seq {seq}")

    # -- committed batches --------------------------------------------------------------------------

    def _on_batch(self, batch: CommittedBatch) -> None:
        if self._buffer is not None:
            self._buffer.append(batch)
            return
        if self.failure is not None:
            return
        try:
            self._fold(batch)
        except Exception as exc:
            # A bug: answers would now come from a read model that misses a batch. Stop taking commands
            # and report not ready rather than serve stale books; a restart rebuilds from the journal.
            self.failure = f"read model failed at seq {batch.first_seq}: {exc!r}"
            _log.critical("%s; the gateway stops taking commands", self.failure, exc_info=True)

    def _fold(self, batch: CommittedBatch) -> None:
        self.history.feed(batch)  # first: a reader that sees the batch in the read model waits for its rows
        read_model = self.read_model
        if batch.last_seq <= read_model.applied_seq:
            return  # already folded by the rebuild
        applied_seq = read_model.applied_seq
        entries = batch.entries()
        if batch.first_seq <= applied_seq:  # partly folded by the rebuild
            entries = (e for e in batch.entries() if e[0] > applied_seq)
        if self.projector is not None:
            read_model.projected_seq = self.projector.projected_seq
        wanted = [ids for ids in self.report_wanted if ids]  # nobody listening: no reports built at all
        wants = None if not wanted else (wanted[0].__contains__ if len(wanted) == 1 else _any_of(wanted))
        digest = read_model.apply_batch(entries, wants, placed=True)
        # Only the last batch's: its callers run before the next batch is folded (their futures resolve
        # right after this), and one that runs later misses and folds its events itself.
        self.placed = digest.placed or {}
        self._maybe_snapshot(digest.last_seq - digest.first_seq + 1 if digest.last_seq else 0)
        for listener in list(self.listeners):
            try:
                listener(batch, digest)
            except Exception:  # a publisher bug must not stop the read model or the other listeners
                _log.exception("exchange listener %r failed", listener)

    def _observe_match(self, duration_s: float) -> None:
        for observe in self._match_observers:
            observe(duration_s)


def _any_of(sets: list[AbstractSet[int]]) -> Callable[[int], bool]:
    return lambda participant_id: any(participant_id in ids for ids in sets)


def _decode_rows(rows: list[asyncpg.Record], shadow: Core | None) -> list[tuple[int, Command, list[Event]]]:
    out: list[tuple[int, Command, list[Event]]] = []
    for seq, command_data, events_data in rows:
        command = decode_command(command_data)
        events = shadow.apply(command) if shadow is not None else decode_events(events_data)
        out.append((seq, command, events))
    return out


# -- the per-process registry of shards -----------------------------------------------------------------

_shards: dict[str, Shard] = {}
# One lock per event loop: an asyncio.Lock may only ever wait on the loop it first waited on, and a
# process may run loops one after another (or a test server in a thread).
_registry_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _registry_locks.get(loop)
    if lock is None:
        lock = _registry_locks[loop] = asyncio.Lock()
    return lock


async def attach(dsn: str, config: GatewayConfig) -> Shard:
    """The running shard of `dsn`, started (recovery and read model) on first use."""
    async with _lock():
        shard = _shards.get(dsn)
        if shard is None:
            shard = Shard(dsn, config)
            await shard.start()
            _shards[dsn] = shard
        shard.users += 1
        return shard


async def detach(shard: Shard) -> None:
    """Release a shard; the last user drains and stops it."""
    async with _lock():
        shard.users -= 1
        if shard.users == 0:
            _shards.pop(shard.dsn, None)
            await shard.stop()


# -- one application's handle ---------------------------------------------------------------------------


class ExchangePort:
    """What handlers use: `submit`, the read model, and the shard's listener hooks."""

    def __init__(self, shard: Shard, metrics: Metrics, readiness: Readiness) -> None:
        self.shard = shard
        self.read_model = shard.read_model
        self.pool: asyncpg.Pool | None = None  # the application's (set once it has one): forgotten history
        self.metrics = metrics
        self.readiness = readiness
        self.accepting = True
        self._listeners: list[Listener] = []
        self._wanted: list[AbstractSet[int]] = []
        self._watch: asyncio.Task[None] | None = None
        self._observe_match = metrics.match_latency.labels().observe
        shard._match_observers.append(self._observe_match)
        metrics.sequencer_queue_depth.set_function(lambda: shard.sequencer.queue_depth)
        self.add_listener(self._count)
        # Metric children by label, resolved once: prometheus_client's label lookup costs more than an
        # increment. Instruments, reasons and transports are bounded sets.
        self.ack_latency = {t: metrics.ack_latency.labels(t) for t in ("http", "ws")}
        self._received: dict[str, Any] = {}
        self._rejected: dict[str, Any] = {}
        self._bound_instruments: set[str] = set()
        self._bind_book_gauges()

    @property
    def sequencer(self) -> Sequencer:
        return self.shard.sequencer

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)
        self.shard.listeners.append(listener)

    def add_report_wanted(self, participant_ids: AbstractSet[int]) -> None:
        """Execution reports are built, per order a batch touched, for the participants in this live set."""
        self._wanted.append(participant_ids)
        self.shard.report_wanted.append(participant_ids)

    def start_watching(self) -> None:
        self._watch = asyncio.create_task(self._watch_readiness(), name="exchange-readiness")

    async def close(self) -> None:
        """Stop taking commands and unhook from the shard (the shard itself is detached by the caller)."""
        self.accepting = False
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for listener in self._listeners:
            with contextlib.suppress(ValueError):
                self.shard.listeners.remove(listener)
        mine = {id(ids) for ids in self._wanted}  # by identity: two empty sets are equal
        self.shard.report_wanted[:] = [ids for ids in self.shard.report_wanted if id(ids) not in mine]
        with contextlib.suppress(ValueError):
            self.shard._match_observers.remove(self._observe_match)

    # -- commands -------------------------------------------------------------------------------------

    async def submit(self, command: Command) -> Result:
        """Sequence one command and return its durable result, or raise the API error for the outcome."""
        future = self.submit_nowait(command)
        with contextlib.suppress(Exception):  # the outcome, success or not, is read by result_of
            await future
        return self.result_of(future)

    def submit_nowait(self, command: Command) -> asyncio.Future[Result]:
        """Enqueue one command; its future resolves once it is durable. Pass it to `result_of`."""
        if not self.accepting:
            raise ApiError(503, Code.NOT_READY, "shutting down: not taking commands", retry_after_s=1)
        if self.shard.failure is not None:
            raise ApiError(503, Code.UNAVAILABLE, "the gateway's read model failed; restart it", retry_after_s=5)
        try:
            return self.shard.sequencer.submit_nowait(command)
        except Busy as exc:
            raise ApiError(503, "busy", "the exchange is busy; retry",
                           retry_after_s=max(1, math.ceil(exc.retry_after_s))) from None
        except Unavailable as exc:
            raise ApiError(503, Code.UNAVAILABLE, f"the exchange is unavailable: {exc}", retry_after_s=1) from None

    def placed_report(self, result: Result) -> ExecutionReport | None:
        """The execution report of the order a PlaceOrder placed, as of its command, from the read model's
        fold of its batch (`ReadModel.apply_batch(placed=True)`): what `gateway.orders.place_outcome`
        makes of its events, without folding them again. None when the fold has none (a rejection, a
        replayed answer, a batch folded since): the caller folds the events."""
        if result.replay:  # the original's events, answered to a retry: the retry's command makes the report
            return None
        return self.shard.placed.get(result.seq)

    @staticmethod
    def result_of(future: asyncio.Future[Result]) -> Result:
        """The durable result of a done submission, or the API error for its outcome."""
        try:
            return future.result()
        except IdempotencyConflict as exc:
            raise ApiError(409, "duplicate_client_order_id",
                           f"client_order_id {exc.client_order_id!r} was already used for a different order"
                           ) from None
        except Unavailable:
            # The route (or WebSocket op) adds which reference to reconcile by.
            raise ApiError(503, Code.UNAVAILABLE, "the exchange lost its database: the outcome is unknown",
                           retry_after_s=1, outcome_unknown=True) from None

    # -- metrics and readiness ----------------------------------------------------------------------

    def count_received(self, instrument: str) -> None:
        """Count an order; an instrument that is not listed counts as "unknown" (no label per typo)."""
        if instrument not in self.read_model.instruments:
            instrument = "unknown"
        child = self._received.get(instrument)
        if child is None:
            child = self._received[instrument] = self.metrics.orders_received.labels(instrument)
        child.inc()

    def count_rejected(self, code: str) -> None:
        child = self._rejected.get(code)
        if child is None:
            child = self._rejected[code] = self.metrics.orders_rejected.labels(code)
        child.inc()

    def _count(self, batch: CommittedBatch, digest: BatchDigest) -> None:
        metrics = self.metrics
        metrics.journal_batch_size.observe(len(batch))
        for symbol, delta in digest.instruments.items():
            if delta.trades:
                metrics.trades.labels(symbol).inc(len(delta.trades))
                metrics.traded_heads.labels(symbol).inc(sum(t.quantity_heads for t in delta.trades))
            if symbol not in self._bound_instruments:
                self._bind_book_gauges()

    def _bind_book_gauges(self) -> None:
        """Book depth gauges read the read model at scrape time."""
        for symbol, record in self.read_model.instruments.items():
            if symbol in self._bound_instruments:
                continue
            self._bound_instruments.add(symbol)
            for side_name, side in (("buy", record.bids), ("sell", record.asks)):
                self.metrics.book_depth_levels.labels(symbol, side_name).set_function(side.__len__)
                self.metrics.book_depth_heads.labels(symbol, side_name).set_function(
                    lambda side=side: sum(side.values()))

    async def _watch_readiness(self) -> None:
        """Not ready while the sequencer is rebuilding after database trouble; ready again after."""
        sequencer = self.shard.sequencer
        while True:
            await asyncio.sleep(_READINESS_POLL_S)
            if not self.accepting:
                return
            running = sequencer.state is State.RUNNING and self.shard.failure is None
            if running and not self.readiness.ready and self.readiness.reason == "exchange unavailable":
                self.readiness.set_ready()
            elif not running and self.readiness.ready:
                self.readiness.set_not_ready("exchange unavailable")


EXCHANGE = web.AppKey("hogx_exchange", ExchangePort)
