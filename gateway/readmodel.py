"""The gateway's read model: what queries and market data are answered from, folded from committed
batches only.

`ReadModel.apply_batch` takes the sequencer's committed (seq, command, events) entries in journal order
and keeps: instruments with their state, current seller fee and an L2 book per instrument (absolute
heads per level, the instrument's last event `seq`), every order with its fills, each participant's
orders and fills, lots with their reserved and sold heads, a bounded history of public trades and
candles. Because nothing uncommitted ever reaches it, a book snapshot taken from it is exactly what
later deltas chain on, even while the core is already applying the next batch.

It also returns a `BatchDigest` per batch for the publishers: per instrument, the seq range the batch
covered (every event of an instrument takes a seq, so the range includes events that are not book
changes and the deltas chain without holes), the levels that changed (last value wins) and the trades;
for the participants `wants` names, an execution report per order each command touched; and, when asked
(`placed`), the execution report of each order placed, as of its own command: what the order handlers
answer, taken from the fold instead of folding the command's events a second time.

Memory holds what is open: every open order and lot, and closed orders and fills only while they are
recent. At each `ClockTick` it forgets the orders closed (filled, cancelled, expired) and the fills made
more than the tick's retention window before it (`ClockTick.retention_ns`, 24 h by default, as the
core), but only those the PostgreSQL projection (`exchange.readmodel`, the `orders` and `trades` tables)
already holds: `projected_seq`, which its owner keeps up to date (0: nothing is forgotten). What is
forgotten is answered from those tables (`gateway.orderhistory`): `forgotten_orders` and
`forgotten_fills` tell, per participant, up to which order id and trade id memory no longer has
everything. Lots sold out and lot auctions ended before the window are retired at the same ticks
(`retire`): the gateway writes them to PostgreSQL with its next snapshot (`lot_history`,
`auction_history`, gateway/readmodel_snapshots.py), then memory drops them (`written`); until then they
answer from `retired_lots` and `retired_auctions`. The price index (`index`, gateway/index.py) lets its
rows of ended days go at the same ticks, once its own projection (`price_index_daily`) holds them.

The whole state is saved as a snapshot so that a gateway start folds only the journal after it
(gateway/readmodel_snapshots.py); its format is gateway/readmodel_codec.py's. A snapshot is taken in
slices between batches: while one is under way (`snapshot_changes` is set) the fold notes what it
changes (`SnapshotChanges`), which the snapshot's last slice takes into account.

Pure and synchronous: no I/O, no clock. The order-event fold (`fold_order`) is shared with the order
handlers, which build a command's execution report from that command's own events.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import msgspec
from sortedcontainers import SortedDict

from exchange.calendar import cst_day, day_of_label
from exchange.commands import ClockTick, Command, PlaceOrder
from exchange.core import retention_of
from exchange.domain import AuctionState, InstrumentSpec, Lot, LotAuction, OrderType, Side, band_fen
from exchange.events import (
    AuctionUncrossed,
    BookChanged,
    Event,
    FeeScheduleSet,
    InstrumentListed,
    LotAuctionChanged,
    LotRegistered,
    NonTradingDaySet,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    ReferencePriceSet,
    Rejected,
    Trade,
    TradingStateChanged,
)
from gateway.index import DayCell, PriceIndex, SeriesKey, series_of
from gateway.schemas import (
    CANDLE_INTERVAL_MS,
    ORDER_TYPE_NAME,
    SIDE_NAME,
    TIF_NAME,
    Candle,
    CandleInterval,
    ExecutionReport,
    Fill,
    Liquidity,
    OrderStatus,
    TradeView,
    reject_code,
)

__all__ = [
    "BatchDigest",
    "InstrumentDelta",
    "InstrumentRecord",
    "LotRecord",
    "OrderRecord",
    "ReadModel",
    "SnapshotChanges",
    "fold_order",
    "order_from_accepted",
    "to_report",
]

_NS_PER_MS: Final = 1_000_000
_BUY, _SELL = Side.BUY, Side.SELL
_NEW, _PARTIAL, _FILLED = OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED
_CANCELED, _EXPIRED, _REJECTED = OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED
_MAKER, _TAKER, _AUCTION = Liquidity.MAKER, Liquidity.TAKER, Liquidity.AUCTION
OPEN_STATUSES: Final = frozenset({_NEW, _PARTIAL})
# A filtered listing stops scanning after this many of the participant's orders and hands back a cursor,
# so one request never walks an unbounded history.
MAX_SCAN: Final = 20_000


class OrderRecord(msgspec.Struct, array_like=True, gc=False):
    """One accepted order as it stands; `fills` holds every fill in trade order.

    `fills` is a tuple, not a list: with only untracked members it is not tracked by the cyclic garbage
    collector, so a million orders do not make every full collection scan a million lists. Array-like:
    a read model snapshot encodes it without its field names (gateway/readmodel_codec.py).
    """

    order_id: int
    participant_id: int
    client_order_id: str
    instrument: str
    side: int
    order_type: int
    time_in_force: int
    price_fen: int
    quantity_heads: int
    remaining_heads: int
    lot_id: int
    expire_at_ns: int
    created_ns: int
    updated_ns: int
    filled_heads: int = 0
    status: OrderStatus = OrderStatus.NEW
    fills: tuple[Fill, ...] = ()


class LotRecord(msgspec.Struct, gc=False):
    lot: Lot
    reserved_heads: int = 0
    sold_heads: int = 0

    @property
    def available_heads(self) -> int:
        return self.lot.heads - self.reserved_heads - self.sold_heads


class InstrumentRecord:
    """An instrument's specification, state and L2 book (bids keyed by -price so index 0 is best)."""

    __slots__ = ("asks", "band_high_fen", "band_low_fen", "bids", "reference_price_fen", "seller_fee_bps", "seq",
                 "series", "spec", "state", "state_reason", "trades")

    def __init__(self, spec: InstrumentSpec, seq: int, trade_history: int) -> None:
        self.spec = spec
        self.state = spec.initial_state
        self.state_reason = ""  # a halt's reason, or the calendar's phase
        self.seq = seq
        self.bids: SortedDict = SortedDict()
        self.asks: SortedDict = SortedDict()
        self.trades: deque[TradeView] = deque(maxlen=trade_history)
        self.series: list[_Series] = []  # candles of every interval, filled on the first trade
        self.seller_fee_bps = spec.seller_fee_bps  # the listing's, until a fee schedule changes it
        self.set_reference(spec.reference_price_fen)

    def set_reference(self, price_fen: int) -> None:
        self.reference_price_fen = price_fen
        self.band_low_fen, self.band_high_fen = band_fen(self.spec, price_fen)

    def depth(self, levels: int | None = None) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(bids, asks) as (price_fen, heads), best first; all levels when `levels` is None."""
        bids = [(-key, heads) for key, heads in self.bids.items()[:levels]]
        asks = list(self.asks.items()[:levels])
        return bids, asks


class SnapshotChanges:
    """What the fold changed since a snapshot being taken in slices began (gateway/readmodel_codec.py):
    the orders added, changed or dropped, the instruments added or changed, and how many entries left
    the front of `closed_orders` and `fill_times` (which otherwise only grow at the back)."""

    __slots__ = ("closed_popped", "fills_popped", "instruments", "orders")

    def __init__(self) -> None:
        self.orders: set[int] = set()
        self.instruments: set[str] = set()
        self.closed_popped = 0
        self.fills_popped = 0


class InstrumentDelta:
    """What one batch did to one instrument: its seq range, changed levels and trades."""

    __slots__ = ("first_seq", "last_seq", "levels", "trades")

    def __init__(self, seq: int) -> None:
        self.first_seq = seq
        self.last_seq = seq
        self.levels: dict[tuple[int, int], int] = {}  # (side, price_fen) -> absolute heads, 0 = gone
        self.trades: list[TradeView] = []

    def bids_asks(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        bids = [(price, heads) for (side, price), heads in self.levels.items() if side == _BUY]
        asks = [(price, heads) for (side, price), heads in self.levels.items() if side == _SELL]
        return bids, asks


class BatchDigest:
    """The publishers' view of one batch."""

    __slots__ = ("auctions", "first_seq", "index", "index_sealed", "instruments", "last_seq", "placed", "placing",
                 "reports", "wants")

    def __init__(self, wants: Callable[[int], bool] | None, placed: bool = False) -> None:
        self.first_seq = 0
        self.last_seq = 0
        self.instruments: dict[str, InstrumentDelta] = {}
        self.auctions: list[LotAuctionChanged] = []  # lot auction changes, in order
        self.index: set[tuple[int, SeriesKey]] = set()  # (day, series) of the price index its trades moved
        self.index_sealed: dict[tuple[int, SeriesKey], DayCell] = {}  # the index rows it let go (`seal`)
        self.reports: list[tuple[int, ExecutionReport]] = []  # (participant_id, report)
        self.wants = wants
        # seq of a PlaceOrder accepted -> its order's report as of that command (when asked for); the order
        # the command being folded placed, until its last event is folded
        self.placed: dict[int, ExecutionReport] | None = {} if placed else None
        self.placing: OrderRecord | None = None


class _Series:
    """One instrument's candles of one interval: [start_ms, open, high, low, close, volume, trades]; a trade
    is added by `ReadModel._on_trade`."""

    __slots__ = ("candles", "interval_ms", "max_candles")

    def __init__(self, interval_ms: int, max_candles: int) -> None:
        self.interval_ms = interval_ms
        self.max_candles = max_candles
        self.candles: deque[list[int]] = deque(maxlen=max_candles)

    def last(self, limit: int) -> list[Candle]:
        out = list(self.candles)[-limit:]
        return [Candle(*c) for c in out]


# -- the order fold, shared with the handlers -----------------------------------------------------------


def order_from_accepted(command: PlaceOrder, event: OrderAccepted) -> OrderRecord:
    return OrderRecord(
        event.order_id, event.participant_id, event.client_order_id, event.instrument, event.side,
        command.order_type, command.time_in_force, event.price_fen, event.quantity_heads, event.quantity_heads,
        event.lot_id, command.expire_at_ns, event.ts_ns, event.ts_ns,
    )  # fmt: skip


def fold_order(rec: OrderRecord, event: Event) -> int:
    """Apply one event that concerns `rec`; returns the heads sold out of its lot (fills of a sell).

    Adds a fill to `rec.fills` for a trade. The caller keeps lot reservations right from the
    change of `remaining_heads`.
    """
    cls = event.__class__
    rec.updated_ns = event.ts_ns
    if cls is Trade:
        is_buy = event.buy_order_id == rec.order_id
        remaining = event.buy_remaining_heads if is_buy else event.sell_remaining_heads
        heads = event.quantity_heads
        rec.filled_heads += heads
        rec.remaining_heads = remaining
        rec.status = _PARTIAL if remaining else _FILLED
        taker = event.taker_side
        liquidity = _AUCTION if taker == 0 else (_TAKER if taker == rec.side else _MAKER)
        rec.fills = (*rec.fills, Fill(event.trade_id, rec.order_id, rec.instrument, SIDE_NAME[rec.side],
                                      event.price_fen, heads, liquidity, event.ts_ns // _NS_PER_MS, event.lot_id))
        return 0 if is_buy else heads
    if cls is OrderCancelled:
        rec.remaining_heads = 0
        rec.status = _CANCELED
    elif cls is OrderExpired:
        rec.remaining_heads = 0
        rec.status = _EXPIRED
    elif cls is OrderAmended:
        rec.price_fen = event.price_fen
        rec.quantity_heads = event.quantity_heads
        rec.remaining_heads = event.remaining_heads
        rec.filled_heads = event.quantity_heads - event.remaining_heads
        rec.status = _PARTIAL if rec.filled_heads else _NEW
    return 0


def to_report(rec: OrderRecord, fills: list[Fill] | tuple[Fill, ...]) -> ExecutionReport:
    return ExecutionReport(
        rec.order_id, rec.client_order_id, rec.instrument, SIDE_NAME[rec.side], ORDER_TYPE_NAME[rec.order_type],
        TIF_NAME[rec.time_in_force], rec.status, rec.price_fen, rec.quantity_heads, rec.filled_heads,
        rec.remaining_heads, list(fills), rec.lot_id, rec.expire_at_ns // _NS_PER_MS, rec.created_ns // _NS_PER_MS,
        rec.updated_ns // _NS_PER_MS,
    )  # fmt: skip


def rejected_report(command: PlaceOrder, event: Rejected) -> ExecutionReport:
    price = command.price_fen if command.order_type == OrderType.LIMIT else 0
    time_ms = event.ts_ns // _NS_PER_MS
    return ExecutionReport(
        0, command.client_order_id, command.instrument, SIDE_NAME[command.side], ORDER_TYPE_NAME[command.order_type],
        TIF_NAME[command.time_in_force], _REJECTED, price, command.quantity_heads, 0, 0, [], command.lot_id,
        command.expire_at_ns // _NS_PER_MS, time_ms, time_ms, reject_code(event.reason),
    )  # fmt: skip


def order_event_ids(event: Event) -> tuple[int, ...]:
    """The order ids an event concerns (a trade concerns two)."""
    cls = event.__class__
    if cls is Trade:
        return (event.buy_order_id, event.sell_order_id)
    if cls is OrderCancelled or cls is OrderExpired or cls is OrderAmended or cls is OrderAccepted:
        return (event.order_id,)
    return ()


_SYMBOL_ELSEWHERE: Final = frozenset({InstrumentListed, LotRegistered})  # events without an `instrument`


def event_instrument(event: Event) -> str:
    cls = event.__class__
    if cls is InstrumentListed:
        return event.spec.symbol
    if cls is LotRegistered:
        return event.lot.instrument
    return event.instrument  # every other event with a seq names its instrument


_ENDED_AUCTION: Final = frozenset({AuctionState.SOLD, AuctionState.UNSOLD, AuctionState.WITHDRAWN})


# -- the projection -------------------------------------------------------------------------------------


class ReadModel:
    """Everything the gateway answers from, as of journal seq `applied_seq`."""

    def __init__(self, *, trade_history: int = 10_000, candle_history: int = 1_000) -> None:
        self.applied_seq = 0
        self.trade_history = trade_history
        self.candle_history = candle_history
        self.instruments: dict[str, InstrumentRecord] = {}
        self.orders: dict[int, OrderRecord] = {}
        self.orders_by_participant: dict[int, list[int]] = {}
        self.fills_by_participant: dict[int, list[Fill]] = {}
        self.lots: dict[int, LotRecord] = {}
        self.lots_by_participant: dict[int, list[int]] = {}
        self.candles: dict[tuple[str, CandleInterval], _Series] = {}
        self.trade_count = 0
        self.traded_heads = 0
        self.auctions: dict[int, LotAuction] = {}  # every lot auction as it is now (gateway/auctions.py)
        self.index = PriceIndex()  # the daily live-hog price index (gateway/index.py)
        # Each instrument's index series (`series_of` its spec), found once: every trade needs it. Not
        # snapshotted: an instrument keeps its spec, so it is found again after a restore.
        self._series_keys: dict[str, SeriesKey] = {}
        self.non_trading_days: set[int] = set()  # yyyymmdd, China Standard Time (exchange/calendar.py)
        # Forgetting (see the module docstring): the journal seq of the entry being folded; how far the
        # PostgreSQL projection is; (closed at, seq, order id) of every closed order held and (made at, seq,
        # participant) of every fill held, oldest first; per participant, the highest order id and trade id
        # forgotten.
        self.seq = 0
        self.projected_seq = 0
        self.closed_orders: deque[tuple[int, int, int]] = deque()
        self.fill_times: deque[tuple[int, int, int]] = deque()
        self.forgotten_orders: dict[int, int] = {}
        self.forgotten_fills: dict[int, int] = {}
        # Lots sold out and lot auctions ended, (at, lot or auction id), oldest first; those retired at a
        # tick (older than the retention window) wait here until the gateway has written them to
        # PostgreSQL (gateway.readmodel_snapshots) and still answer from here until then.
        self.lot_closes: deque[tuple[int, int]] = deque()
        self.auction_ends: deque[tuple[int, int]] = deque()
        self.retired_lots: dict[int, LotRecord] = {}
        self.retired_auctions: dict[int, LotAuction] = {}
        self.last_lot_id = 0
        # While a snapshot is taken in slices (gateway/readmodel_codec.py): what changed since it began.
        self.snapshot_changes: SnapshotChanges | None = None
        self._handlers = self._make_handlers()

    def _make_handlers(self) -> dict[type, Callable[..., None]]:
        return {
            LotAuctionChanged: self._on_lot_auction,
            OrderAccepted: self._on_accepted,
            Trade: self._on_trade,
            OrderCancelled: self._on_order_event,
            OrderExpired: self._on_order_event,
            OrderAmended: self._on_order_event,
            BookChanged: self._on_book,
            InstrumentListed: self._on_listed,
            LotRegistered: self._on_lot,
            TradingStateChanged: self._on_state,
            ReferencePriceSet: self._on_reference,
            AuctionUncrossed: _ignore,
            Rejected: self._on_rejected,
            FeeScheduleSet: self._on_fee_schedule,
            NonTradingDaySet: self._on_non_trading_day,
        }

    # -- folding --------------------------------------------------------------------------------------

    def apply_batch(self, entries: Iterable[tuple[int, Command, list[Event]]],
                    wants: Callable[[int], bool] | None = None, placed: bool = False) -> BatchDigest:
        """Fold committed entries in seq order; `wants(participant_id)` selects who gets reports; with
        `placed`, `digest.placed` holds the report of every order placed (the handlers' answers)."""
        digest = BatchDigest(wants, placed)
        for seq, command, events in entries:
            if seq != self.applied_seq + 1:
                raise ValueError(f"read model at seq {self.applied_seq} was given seq {seq}")
            self.seq = seq
            self._apply(command, events, digest)
            if command.__class__ is ClockTick:
                before_ns = command.ts_ns - retention_of(command)  # type: ignore[arg-type]
                self.forget(before_ns)
                self.retire(before_ns)
                digest.index_sealed.update(self.index.seal(cst_day(command.ts_ns)))
            self.applied_seq = seq
            if not digest.first_seq:
                digest.first_seq = seq
            digest.last_seq = seq
        # Each instrument's seq once per batch, not per event: nothing reads it inside a batch.
        records = self.instruments
        for symbol, delta in digest.instruments.items():
            record = records.get(symbol)
            if record is not None:
                record.seq = delta.last_seq
        if self.snapshot_changes is not None:
            self.snapshot_changes.instruments.update(digest.instruments)
        return digest

    def _apply(self, command: Command, events: list[Event], digest: BatchDigest) -> None:
        touched: dict[int, int] = {}  # order id -> number of its fills before this command
        instruments = digest.instruments
        handlers = self._handlers
        for event in events:
            cls = event.__class__
            seq = event.seq
            if seq:
                symbol = event_instrument(event) if cls in _SYMBOL_ELSEWHERE else event.instrument
                delta = instruments.get(symbol)
                if delta is None:
                    instruments[symbol] = delta = InstrumentDelta(seq)
                delta.last_seq = seq
            handler = handlers.get(cls)
            if handler is not None:  # of settlement events (seq 0) only a fee schedule concerns this model
                handler(event, command, touched, digest)
        placing = digest.placing
        placed = None
        if placing is not None:  # every event of the command is folded: the report is as of the command
            digest.placing = None
            placed = to_report(placing, placing.fills)
            digest.placed[self.seq] = placed  # type: ignore[index]
        if touched:
            if digest.wants is not None:
                self._reports(touched, digest, placing, placed)
            if self.snapshot_changes is not None:
                self.snapshot_changes.orders.update(touched)

    def _reports(self, touched: dict[int, int], digest: BatchDigest, placing: OrderRecord | None,
                 placed: ExecutionReport | None) -> None:
        wants = digest.wants
        assert wants is not None
        for order_id, fills_before in touched.items():
            rec = self.orders[order_id]
            if wants(rec.participant_id):
                # the order just placed has all its fills from this command: its report is the one made
                report = placed if rec is placing else to_report(rec, rec.fills[fills_before:])
                digest.reports.append((rec.participant_id, report))  # type: ignore[arg-type]

    def _touch(self, rec: OrderRecord, touched: dict[int, int]) -> None:
        if rec.order_id not in touched:
            touched[rec.order_id] = len(rec.fills)

    def _on_accepted(self, event: OrderAccepted, command: Command, touched: dict[int, int],
                     digest: BatchDigest) -> None:
        assert isinstance(command, PlaceOrder)
        rec = order_from_accepted(command, event)
        self.orders[rec.order_id] = rec
        self.orders_by_participant.setdefault(rec.participant_id, []).append(rec.order_id)
        if rec.lot_id:
            self.lots[rec.lot_id].reserved_heads += rec.remaining_heads
        touched[rec.order_id] = 0
        # the command's own order, as `gateway.orders.place_outcome` finds it among the command's events
        if digest.placed is not None and event.participant_id == command.participant_id \
                and event.client_order_id == command.client_order_id:
            digest.placing = rec

    def _on_lot_auction(self, event: LotAuctionChanged, command: Command, touched: dict[int, int],
                        digest: BatchDigest) -> None:
        """Keep the auction and its lot's reserved and sold heads (its sale's Trade names no order)."""
        a = event.auction
        lot = self.lots.get(a.lot_id)
        if lot is not None:
            if event.change == "offered":
                lot.reserved_heads += a.heads
            elif a.state in _ENDED_AUCTION:
                lot.reserved_heads -= a.heads
                if a.state == AuctionState.SOLD:
                    lot.sold_heads += a.heads
                    self._maybe_sold_out(lot, event.ts_ns)
        if a.state in _ENDED_AUCTION and a.auction_id in self.auctions \
                and self.auctions[a.auction_id].state not in _ENDED_AUCTION:
            self.auction_ends.append((event.ts_ns, a.auction_id))
        self.auctions[a.auction_id] = a
        digest.auctions.append(event)

    def _on_trade(self, event: Trade, command: Command, touched: dict[int, int], digest: BatchDigest) -> None:
        orders, seq, ts_ns = self.orders, self.seq, event.ts_ns
        for order_id in (event.buy_order_id, event.sell_order_id):
            rec = orders.get(order_id)
            if rec is None:
                continue  # a lot auction's sale: no order on either side (its hold id, 0 for the seller)
            if order_id not in touched:
                touched[order_id] = len(rec.fills)
            before = rec.remaining_heads
            sold = fold_order(rec, event)
            if rec.lot_id:
                lot = self.lots[rec.lot_id]
                lot.reserved_heads += rec.remaining_heads - before
                lot.sold_heads += sold
                if sold:
                    self._maybe_sold_out(lot, ts_ns)
            fills = self.fills_by_participant.get(rec.participant_id)  # (no list built per trade)
            if fills is None:
                fills = self.fills_by_participant[rec.participant_id] = []
            fills.append(rec.fills[-1])
            self.fill_times.append((ts_ns, seq, rec.participant_id))
            if not rec.remaining_heads:
                self.closed_orders.append((ts_ns, seq, order_id))
        symbol, price_fen, heads = event.instrument, event.price_fen, event.quantity_heads
        taker = None if event.taker_side == 0 else SIDE_NAME[event.taker_side]
        time_ms = ts_ns // _NS_PER_MS
        view = TradeView(event.trade_id, symbol, price_fen, heads, taker, time_ms, event.seq)
        record = self.instruments[symbol]
        record.trades.append(view)
        digest.instruments[symbol].trades.append(view)
        if not record.series:
            record.series = [self._series(symbol, interval) for interval in CandleInterval]
        for series in record.series:  # (here, not a method: a call per interval costs as much as its body)
            start_ms = time_ms - time_ms % series.interval_ms
            candles = series.candles
            if candles and (c := candles[-1])[0] == start_ms:
                if price_fen > c[2]:
                    c[2] = price_fen
                if price_fen < c[3]:
                    c[3] = price_fen
                c[4] = price_fen
                c[5] += heads
                c[6] += 1
            else:  # exchange time never goes backwards, so a new bucket is always the newest
                candles.append([start_ms, price_fen, price_fen, price_fen, price_fen, heads, 1])
        key = self._series_keys.get(symbol)
        if key is None:
            key = self._series_keys[symbol] = series_of(record.spec)
        lot = self.lots.get(event.lot_id)
        digest.index.add(self.index.add_to(key, ts_ns, price_fen, heads, 0 if lot is None else lot.lot.avg_weight_g,
                                           seq))
        self.trade_count += 1
        self.traded_heads += heads

    def _on_order_event(self, event: OrderCancelled | OrderExpired | OrderAmended, command: Command,
                        touched: dict[int, int], digest: BatchDigest) -> None:
        rec = self.orders[event.order_id]
        self._touch(rec, touched)
        before = rec.remaining_heads
        fold_order(rec, event)
        if rec.lot_id:
            self.lots[rec.lot_id].reserved_heads += rec.remaining_heads - before
        if before and not rec.remaining_heads:
            self.closed_orders.append((event.ts_ns, self.seq, rec.order_id))

    def _on_book(self, event: BookChanged, command: Command, touched: dict[int, int], digest: BatchDigest) -> None:
        record = self.instruments[event.instrument]
        if event.side == _BUY:
            side, key = record.bids, -event.price_fen
        else:
            side, key = record.asks, event.price_fen
        if event.level_heads:
            side[key] = event.level_heads
        else:
            side.pop(key, None)
        digest.instruments[event.instrument].levels[(event.side, event.price_fen)] = event.level_heads

    def _on_listed(self, event: InstrumentListed, command: Command, touched: dict[int, int],
                   digest: BatchDigest) -> None:
        self.instruments[event.spec.symbol] = InstrumentRecord(event.spec, event.seq, self.trade_history)
        if event.spec.index_base_day:
            self.index.name(series_of(event.spec), day_of_label(event.spec.index_base_day))

    def _on_lot(self, event: LotRegistered, command: Command, touched: dict[int, int], digest: BatchDigest) -> None:
        lot = event.lot
        if lot.lot_id <= self.last_lot_id:
            return  # a retried registration (seq 0) announces its lot again: keep its heads and listing
        self.last_lot_id = lot.lot_id
        self.lots[lot.lot_id] = LotRecord(lot)
        self.lots_by_participant.setdefault(lot.seller_id, []).append(lot.lot_id)

    def _on_state(self, event: TradingStateChanged, command: Command, touched: dict[int, int],
                  digest: BatchDigest) -> None:
        record = self.instruments[event.instrument]
        record.state, record.state_reason = event.state, event.reason
        self._instrument_changed(event.instrument)

    def _on_non_trading_day(self, event: NonTradingDaySet, command: Command, touched: dict[int, int],
                            digest: BatchDigest) -> None:
        if event.closed:
            self.non_trading_days.add(event.day)
        else:
            self.non_trading_days.discard(event.day)

    def _on_reference(self, event: ReferencePriceSet, command: Command, touched: dict[int, int],
                      digest: BatchDigest) -> None:
        self.instruments[event.instrument].set_reference(event.price_fen)
        self._instrument_changed(event.instrument)

    def _on_fee_schedule(self, event: FeeScheduleSet, command: Command, touched: dict[int, int],
                         digest: BatchDigest) -> None:
        record = self.instruments.get(event.instrument)
        if record is not None:  # the clearing sets fees only of listed instruments; never fail a fold on it
            record.seller_fee_bps = event.seller_fee_bps
            self._instrument_changed(event.instrument)  # (a settlement event: seq 0, in no digest)

    def _instrument_changed(self, symbol: str) -> None:
        if self.snapshot_changes is not None:
            self.snapshot_changes.instruments.add(symbol)

    def _on_rejected(self, event: Rejected, command: Command, touched: dict[int, int], digest: BatchDigest) -> None:
        wants = digest.wants
        if command.__class__ is PlaceOrder and wants is not None and wants(event.participant_id):
            digest.reports.append((event.participant_id, rejected_report(command, event)))  # type: ignore[arg-type]

    def _series(self, instrument: str, interval: CandleInterval) -> _Series:
        key = (instrument, interval)
        series = self.candles.get(key)
        if series is None:
            series = self.candles[key] = _Series(CANDLE_INTERVAL_MS[interval], self.candle_history)
        return series

    # -- forgetting -----------------------------------------------------------------------------------

    def forget(self, before_ns: int) -> None:
        """Drop the orders closed and the fills made before `before_ns` that the PostgreSQL projection
        holds (their seq at most `projected_seq`); the rest waits for a later tick."""
        projected = self.projected_seq
        closed, orders = self.closed_orders, self.orders
        held_before = (len(closed), len(self.fill_times))
        while closed and closed[0][0] < before_ns and closed[0][1] <= projected:
            order_id = closed.popleft()[2]
            rec = orders.get(order_id)
            if rec is None or rec.remaining_heads:  # (an order is closed once: never reopened)
                continue
            del orders[order_id]
            if self.snapshot_changes is not None:
                self.snapshot_changes.orders.add(order_id)
            ids = self.orders_by_participant[rec.participant_id]
            del ids[bisect.bisect_left(ids, order_id)]
            if not ids:
                del self.orders_by_participant[rec.participant_id]
            forgotten = self.forgotten_orders
            forgotten[rec.participant_id] = max(forgotten.get(rec.participant_id, 0), order_id)
        fills, dropped = self.fill_times, dict[int, int]()
        while fills and fills[0][0] < before_ns and fills[0][1] <= projected:
            participant_id = fills.popleft()[2]
            dropped[participant_id] = dropped.get(participant_id, 0) + 1
        if self.snapshot_changes is not None:  # (both queues only ever lose entries at the front here)
            self.snapshot_changes.closed_popped += held_before[0] - len(closed)
            self.snapshot_changes.fills_popped += held_before[1] - len(fills)
        for participant_id, count in dropped.items():
            held = self.fills_by_participant[participant_id]
            self.forgotten_fills[participant_id] = held[count - 1].trade_id
            del held[:count]  # a participant's fills are held in the order they were made
            if not held:
                del self.fills_by_participant[participant_id]

    def _maybe_sold_out(self, lot: LotRecord, ts_ns: int) -> None:
        if lot.sold_heads == lot.lot.heads and not lot.reserved_heads:
            self.lot_closes.append((ts_ns, lot.lot.lot_id))  # final: nothing is left to offer or sell

    def retire(self, before_ns: int) -> None:
        """Move the lots sold out and the auctions ended before `before_ns` to the retired maps, from
        which the gateway writes them to PostgreSQL and drops them (`written`)."""
        closes = self.lot_closes
        while closes and closes[0][0] < before_ns:
            lot_id = closes.popleft()[1]
            rec = self.lots.pop(lot_id, None)
            if rec is None:
                continue
            self.retired_lots[lot_id] = rec
            ids = self.lots_by_participant[rec.lot.seller_id]
            del ids[bisect.bisect_left(ids, lot_id)]
            if not ids:
                del self.lots_by_participant[rec.lot.seller_id]
        ends = self.auction_ends
        while ends and ends[0][0] < before_ns:
            auction_id = ends.popleft()[1]
            a = self.auctions.pop(auction_id, None)
            if a is not None:
                self.retired_auctions[auction_id] = a

    def written(self, lot_ids: Iterable[int], auction_ids: Iterable[int]) -> None:
        """The retired lots and auctions PostgreSQL now holds: memory forgets them."""
        for lot_id in lot_ids:
            self.retired_lots.pop(lot_id, None)
        for auction_id in auction_ids:
            self.retired_auctions.pop(auction_id, None)

    def auction(self, auction_id: int) -> LotAuction | None:
        """A lot auction held in memory (live, or ended inside the retention window)."""
        a = self.auctions.get(auction_id)
        return a if a is not None else self.retired_auctions.get(auction_id)

    # -- queries --------------------------------------------------------------------------------------

    def order_of(self, participant_id: int, order_id: int) -> OrderRecord | None:
        """The participant's own order; another participant's is None, exactly like a missing one."""
        rec = self.orders.get(order_id)
        return rec if rec is not None and rec.participant_id == participant_id else None

    def lot_of(self, participant_id: int, lot_id: int) -> LotRecord | None:
        rec = self.lots.get(lot_id) or self.retired_lots.get(lot_id)
        return rec if rec is not None and rec.lot.seller_id == participant_id else None

    def list_orders(self, participant_id: int, *, status: OrderStatus | None, instrument: str | None,
                    before_id: int | None, limit: int) -> tuple[list[OrderRecord], int | None]:
        """Newest first, order ids below `before_id`; returns the page and the next cursor (or None)."""
        ids = self.orders_by_participant.get(participant_id, [])
        end = len(ids) if before_id is None else bisect.bisect_left(ids, before_id)
        page: list[OrderRecord] = []
        orders = self.orders
        index = end - 1
        stop = max(-1, end - 1 - MAX_SCAN)
        while index > stop and len(page) < limit:
            rec = orders[ids[index]]
            if (status is None or rec.status == status) and (instrument is None or rec.instrument == instrument):
                page.append(rec)
            index -= 1
        more = index > -1
        return page, (ids[index + 1] if more else None)

    def list_fills(self, participant_id: int, *, instrument: str | None, before_trade_id: int | None,
                   limit: int) -> tuple[list[Fill], int | None]:
        fills = self.fills_by_participant.get(participant_id, [])
        end = len(fills) if before_trade_id is None else bisect.bisect_left(
            fills, before_trade_id, key=lambda f: f.trade_id)
        page: list[Fill] = []
        index = end - 1
        stop = max(-1, end - 1 - MAX_SCAN)
        while index > stop and len(page) < limit:
            fill = fills[index]
            if instrument is None or fill.instrument == instrument:
                page.append(fill)
            index -= 1
        more = index > -1
        return page, (fills[index + 1].trade_id if more else None)

    def list_lots(self, participant_id: int) -> list[LotRecord]:
        """The participant's lots held in memory, oldest first (retired ones too, until written)."""
        held = [self.lots[lot_id] for lot_id in self.lots_by_participant.get(participant_id, [])]
        retired = [rec for rec in self.retired_lots.values() if rec.lot.seller_id == participant_id]
        return sorted(held + retired, key=lambda rec: rec.lot.lot_id) if retired else held

    def trades(self, instrument: str, *, before_trade_id: int | None, limit: int) -> tuple[list[TradeView], int | None]:
        record = self.instruments[instrument]
        page: list[TradeView] = []
        history = record.trades
        for trade in reversed(history):
            if before_trade_id is not None and trade.trade_id >= before_trade_id:
                continue
            if len(page) == limit:
                return page, page[-1].trade_id
            page.append(trade)
        return page, None

    def candles_of(self, instrument: str, interval: CandleInterval, limit: int) -> list[Candle]:
        series = self.candles.get((instrument, interval))
        return [] if series is None else series.last(limit)

    def book_matches(self, seq: int, bids: list[tuple[int, int]], asks: list[tuple[int, int]],
                     instrument: str) -> bool:
        """Does this projection's book equal an L2 picture (e.g. the core's after recovery)?"""
        record = self.instruments.get(instrument)
        if record is None:
            return False
        return (record.seq, *record.depth()) == (seq, list(bids), list(asks))


def _ignore(*_: object) -> None:
    """Events with no read-model effect beyond taking a seq (already counted by the caller)."""

