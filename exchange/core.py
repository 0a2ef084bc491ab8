"""The pure, deterministic exchange core: commands in, events out.

``Core.apply(command)`` is the one entry point. It reads no clock, does no I/O and draws no random
numbers: the same commands applied to a fresh core always give the same events and the same
``state_hash()``. The sequencer feeds it; tests and benchmarks call it directly.

A rejected command changes nothing at all (not even a sequence number) and yields one ``Rejected``
event. Place-order checks run in this fixed order, the first failure naming the reason:
unknown instrument; halted market; malformed or duplicate client order id; a combination that makes
no sense (INVALID_ORDER: market order that is post-only, all-or-none or not IOC/FOK; all-or-none buy or
IOC/FOK all-or-none; min quantity below 0 or above the quantity; a lot on a buy); order types a call
auction does not take; expiry; quantity range; price (positive, on the tick, inside the band); the
sell's lot (it must be the seller's own, of this instrument, with enough heads left); with the clearing
stage, funds (a buy's worst-case hold must be covered, a seller must be a registered seller); post-only that
would meet a resting order (``OrderBook.would_take``: an all-or-none sell it could not take whole does
not count); in an auction, a price that crosses the participant's own opposite order; FOK and
min-quantity that cannot be met at once.

A lot registration with a ``client_lot_ref`` the seller already used is a retry: the same content
yields the original ``LotRegistered`` again with ``seq`` 0 and changes nothing; other content is
rejected DUPLICATE_REFERENCE.

Every event is numbered by its instrument (``seq``). GTD orders expire at the first command whose
time has reached their expiry, before that command takes effect, so an expired order never trades.
Before that, the trading calendar (``exchange/calendar.py``) runs the session transitions due: pre-open,
opening uncross, break, close (DAY orders expire, the next reference is set). A CLOSED market rejects
orders and amendments with MARKET_CLOSED; DAY orders are only taken by an instrument with a session.

Memory: only what is open
-------------------------
The core holds markets, resting orders, live lots and, for idempotency, keys inside a retention
window of exchange time. Every ``ClockTick`` carries the window (``retention_ns``; 0: the default
``DEFAULT_RETENTION_NS``, 24 h), and forgets, deterministically and oldest first, what became final
before its time less the window:

* a client order id, once the window has passed since its order was accepted and the order no longer
  rests (a resting order keeps its id, however old): until then the same id is DUPLICATE_CLIENT_ORDER_ID
  (the sequencer answers a retry with the original result first); after it the id is free again, as
  Binance's ``newClientOrderId`` is unique among open orders only and Coinbase keeps ``client_oid``s
  for a limited time: it places a new order;
* a lot, its record and its ``client_lot_ref``, once the window has passed since its registration,
  every head of it is sold (nothing reserved, nothing available) and none of its trades is open (the
  clearing drops its copy with it): until then a retry gets the original
  ``LotRegistered``; after it the core no longer knows the lot (LOT_NOT_FOUND) nor its reference (the
  gateway refuses a reference ever used: ``lot_refs``, migration 0014);
* the clearing's final records and the ledger's final transfers (their modules say how).

What is forgotten is in PostgreSQL for good: the journal, ``ledger_transfers`` and the history tables
the API answers from. The forgetting is part of the state: snapshots list only what is held (and when
each key became final), so their size and encoding time follow the open state, and a replay gives the
live state hash.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from msgspec.structs import astuple
from mypy_extensions import mypyc_attr

from exchange import events as event_types
from exchange.calendar import DUE_NEVER, TradingCalendar
from exchange.calendar import spec_is_valid as calendar_terms_valid
from exchange.commands import (
    AmendOrder,
    CancelOrder,
    ClockTick,
    Command,
    Halt,
    ListInstrument,
    PlaceOrder,
    RegisterLot,
    Resume,
    SetReferencePrice,
    StartAuction,
    Uncross,
)
from exchange.domain import (
    ExpireReason,
    InstrumentSpec,
    Lot,
    OrderType,
    ProductClass,
    RejectReason,
    Side,
    TimeInForce,
    TradingState,
    band_fen,
)
from exchange.events import (
    AuctionUncrossed,
    Event,
    InstrumentListed,
    LotRegistered,
    OrderAmended,
    ReferencePriceSet,
    TradingStateChanged,
)
from exchange.matching.auction import uncross
from exchange.matching.book import (
    NO_LIMIT,
    Counters,
    LotState,
    Order,
    OrderBook,
    OrderId,
    TimeNs,
    level_of,
    release_remaining,
)
from exchange.matching.lot_auction import LotAuctions
from exchange.settlement import rules
from exchange.settlement.clearing import Clearing
from exchange.snapshot import decode_core, encode_core

# A PlaceOrder's fields by position (``msgspec.structs.astuple``): from compiled code one tuple of all
# fields costs less than two attribute reads of a msgspec struct. Checked against the struct at import.
_PLACE_ORDER_FIELDS: Final = (
    "participant_id", "ts_ns", "client_order_id", "instrument", "side", "order_type", "price_fen",
    "quantity_heads", "time_in_force", "expire_at_ns", "post_only", "min_quantity_heads", "all_or_none", "stp",
    "lot_id",
)  # fmt: skip
if PlaceOrder.__struct_fields__ != _PLACE_ORDER_FIELDS or CancelOrder.__struct_fields__ != (
    "participant_id", "ts_ns", "order_id"
):
    raise ImportError("PlaceOrder's or CancelOrder's fields changed: update how core.py unpacks them")
# literal indexes (Final): compiled, each is a constant
_PARTICIPANT_ID: Final = 0
_TS_NS: Final = 1
_CLIENT_ORDER_ID: Final = 2
_INSTRUMENT: Final = 3
_SIDE: Final = 4
_ORDER_TYPE: Final = 5
_PRICE_FEN: Final = 6
_QUANTITY_HEADS: Final = 7
_TIME_IN_FORCE: Final = 8
_EXPIRE_AT_NS: Final = 9
_POST_ONLY: Final = 10
_MIN_QUANTITY_HEADS: Final = 11
_ALL_OR_NONE: Final = 12
_STP: Final = 13
_LOT_ID: Final = 14

# The enums' values as plain ints: the compiled core compares native ints, not enum objects.
BUY: Final = int(Side.BUY)
SELL: Final = int(Side.SELL)
LIMIT: Final = int(OrderType.LIMIT)
GTC: Final = int(TimeInForce.GTC)
IOC: Final = int(TimeInForce.IOC)
FOK: Final = int(TimeInForce.FOK)
GTD: Final = int(TimeInForce.GTD)
DAY: Final = int(TimeInForce.DAY)
CONTINUOUS: Final = int(TradingState.CONTINUOUS)
AUCTION: Final = int(TradingState.AUCTION)
HALTED: Final = int(TradingState.HALTED)
CLOSED: Final = int(TradingState.CLOSED)
R: Final = RejectReason
MAX_CLIENT_ORDER_ID_LEN: Final = 36
DEFAULT_RETENTION_NS: Final = 24 * 3600 * 10**9  # what a ClockTick with retention_ns 0 keeps: 24 h
# Compiled, a module-level name is read from the module's dictionary at every use unless it is Final,
# which makes it a C static: the hot path's classes are Final aliases (see also matching/book.py).
OrderAccepted: Final = event_types.OrderAccepted
OrderCancelled: Final = event_types.OrderCancelled
Rejected: Final = event_types.Rejected
_PLACE_ORDER: Final = PlaceOrder
_CANCEL_ORDER: Final = CancelOrder
_CLOCK_TICK: Final = ClockTick
_astuple: Final = astuple
# what an order expires with on the hot paths (compiled, ExpireReason.IOC is a generic
# attribute lookup on the enum class at every use)
_EXPIRED_IOC: Final = ExpireReason.IOC
_EXPIRED_SELF_TRADE: Final = ExpireReason.SELF_TRADE
_EXPIRED_GTD: Final = ExpireReason.GTD


class Market:
    """An instrument's specification, trading state, reference price and book."""

    __slots__ = (
        "band_high_fen", "band_low_fen", "book", "has_session", "max_order_heads", "min_order_heads",
        "reference_price_fen", "resume_state", "spec", "state", "symbol", "tick_fen",
    )  # fmt: skip

    def __init__(self, spec: InstrumentSpec, book: OrderBook) -> None:
        self.spec = spec
        self.symbol: str = spec.symbol  # a native field (compiled, spec.symbol is a generic attribute read)
        # the fields every order checks, copied out of the (msgspec) specification for the compiled core
        self.tick_fen: int = spec.tick_fen
        self.min_order_heads: int = spec.min_order_heads
        self.max_order_heads: int = spec.max_order_heads
        self.book = book
        self.state: int = spec.initial_state  # a TradingState's value: the compiled core compares ints
        self.resume_state: int = spec.initial_state
        self.has_session: bool = spec.session is not None  # runs a trading calendar (exchange/calendar.py)
        self.set_reference(spec.reference_price_fen)

    def set_reference(self, price_fen: int) -> None:
        self.reference_price_fen = price_fen
        self.band_low_fen, self.band_high_fen = band_fen(self.spec, price_fen)

    def price_reason(self, price_fen: int) -> RejectReason | None:
        if price_fen <= 0:
            return R.INVALID_PRICE
        if price_fen % self.spec.tick_fen:
            return R.PRICE_OFF_TICK
        if self.band_high_fen and not self.band_low_fen <= price_fen <= self.band_high_fen:
            return R.PRICE_OUTSIDE_BAND
        return None


@mypyc_attr(allow_interpreted_subclasses=True)  # tests, benchmarks and the gateway's timing wrap it
class Core:
    """All markets, lots and resting orders of one shard, and the rules that change them.

    ``clearing`` is the settlement stage (``exchange.settlement.Clearing``): funds held for buys,
    obligations, deliveries, fees, financing and payouts. The exchange always runs with it
    (``new_exchange()``); without it the core is the bare matching engine, which the matching tests
    and the matching benchmark drive, and it rejects settlement commands as UNSUPPORTED_COMMAND.
    """

    def __init__(self, clearing: Clearing | None = None) -> None:
        self.clearing = clearing
        self.counters = Counters()
        self.markets: dict[str, Market] = {}
        self.lots: dict[int, LotState] = {}
        self.lot_records: dict[int, Lot] = {}
        self.orders: dict[OrderId, Order] = {}  # resting orders only
        # participant -> client order id -> order id, inside the retention window or while the order rests
        # (by participant: no key tuple to build per order)
        self.client_order_ids: dict[int, dict[str, int]] = {}
        self._checked_ids: dict[str, int] | None = None  # the order being placed's participant's, set by _check_order
        # the market of the last order placed: a shard's orders are mostly for one instrument, and comparing its
        # symbol costs less than a lookup in markets (a market is never replaced nor removed once listed)
        self._last_market: Market | None = None
        self.lot_refs: dict[tuple[int, str], int] = {}  # (seller, client lot ref) -> lot id, while the lot is held
        # What to look at when the window has passed, oldest first (see "Memory"): every client order id held
        # as three queues in step (accepted or last looked at, participant, id: the command's own objects,
        # no tuple per order), and (registered or last looked at, lot id, client lot ref) of every lot held.
        # (lists from ``id_head`` on: compiled, a list append is native, a deque's a generic method call)
        self.id_times: list[Any] = []
        self.id_owners: list[Any] = []
        self.id_names: list[Any] = []
        self.id_head = 0
        self.lot_times: deque[tuple[Any, Any, Any]] = deque()  # (registered at, lot id, client lot ref)
        self.forget_before_ns = 0  # the current tick's time less its window (the clearing forgets by it too)
        # set by a restore from a snapshot without those queues (an earlier version's): the first tick
        # queues every id and lot held then
        self.unqueued = False
        self.expiries: list[tuple[int, int]] = []  # heap of (expire_at_ns, order_id) for resting GTD
        self.calendar = TradingCalendar(self)
        # the calendar's next session transition, capped at DUE_NEVER (compiled, a short int compares inline,
        # a big one such as 2**63 - 1 through a generic call at every command); has_sessions: any calendar
        # instrument (the calendar keeps both up to date: a native bool reads cheaper than its dict)
        self.calendar_due_ns: int = DUE_NEVER
        self.has_sessions = False
        self._handlers: dict[type, Callable[[Any, list], None]] = {
            AmendOrder: self._amend_order,
            ListInstrument: self._list_instrument,
            RegisterLot: self._register_lot,
            Halt: self._halt,
            Resume: self._resume,
            StartAuction: self._start_auction,
            Uncross: self._uncross,
            SetReferencePrice: self._set_reference_price,
            ClockTick: self._clock_tick,
        }
        self.auctions = LotAuctions(self)  # lot auctions: they need the clearing (holds), as settlement does
        self._handlers.update(self.calendar.handlers())
        if clearing is not None:
            self._handlers.update(clearing.handlers())
            self._handlers.update(self.auctions.handlers())

    # -- entry point -------------------------------------------------------------------------------

    def apply(self, command: Command) -> list[Event]:
        events: list = []
        # Nearly all traffic is read as one tuple (msgspec.structs.astuple: compiled, every attribute read
        # of a msgspec struct is a generic lookup) and handled by a direct, native call; the rest goes
        # through the table. Commands are final classes: comparing types costs less than isinstance.
        kind = type(command)
        if kind is _PLACE_ORDER:
            fields = _astuple(command)
            ts_ns: TimeNs = fields[_TS_NS]
            self._expire_due(ts_ns, events)
            self._place_order(fields, events)
        elif kind is _CANCEL_ORDER:
            participant_id, ts_ns, order_id = _astuple(command)
            self._expire_due(ts_ns, events)
            self._cancel_order(participant_id, ts_ns, order_id, events)
        else:
            ts_ns = command.ts_ns
            self._expire_due(ts_ns, events)
            handler = self._handlers.get(kind)
            if handler is None:
                self._reject(command, R.UNSUPPORTED_COMMAND, events)
                return events
            handler(command, events)
        if self.has_sessions:
            self.calendar.count_trades(events)  # the day's trades of calendar instruments
        clearing = self.clearing
        if clearing is not None:
            # settlement follows what matching did: holds, escrow, releases (it appends its own events)
            clearing.on_events(events, ts_ns)
            if kind is _CLOCK_TICK:
                clearing.on_clock(ts_ns, events)
                clearing.forget(self.forget_before_ns, ts_ns)
        return events

    # -- orders --------------------------------------------------------------------------------------

    def _place_order(self, fields: tuple[Any, ...], events: list) -> None:
        """A PlaceOrder, by its fields (``_PLACE_ORDER_FIELDS``). They are read once, into the order (id
        0 until accepted): compiled, a field of the native Order is a load."""
        instrument: str = fields[_INSTRUMENT]
        market = self._last_market
        if market is None or market.symbol != instrument:
            market = self.markets.get(instrument)
            self._last_market = market  # None for an unknown instrument: looked up again next time
        if market is None:
            events.append(Rejected(0, fields[_TS_NS], fields[_PARTICIPANT_ID], R.UNKNOWN_INSTRUMENT,
                                   fields[_CLIENT_ORDER_ID], 0, fields[_INSTRUMENT]))
            return
        order = self._new_order(market, fields)
        ts_ns: TimeNs = fields[_TS_NS]
        lot_id: int = fields[_LOT_ID]
        reason = self._check_order(market, order, fields[_PARTICIPANT_ID], lot_id, ts_ns)
        if reason is not None:
            events.append(
                Rejected(0, ts_ns, order.participant_id, reason, order.client_order_id, 0, order.instrument)
            )
            return
        self._accept(market, order, fields, events)

    def _check_order(
        self, market: Market, order: Order, participant_id: Any, lot_id: int, ts_ns: int
    ) -> RejectReason | None:
        """The first reason this order must be rejected, in the documented order, or None. ``participant_id``
        is the command's object, the key of its ids (compiled, the order's native field would be boxed anew)."""
        state: int = market.state
        if state >= HALTED:
            return R.MARKET_HALTED if state == HALTED else R.MARKET_CLOSED
        cid = order.client_order_id
        if not 0 < len(cid) <= MAX_CLIENT_ORDER_ID_LEN:
            return R.INVALID_ORDER
        used = self.client_order_ids.get(participant_id)
        self._checked_ids = used  # for _accept: nothing changes the ids between the check and the acceptance
        if used is not None and cid in used:
            return R.DUPLICATE_CLIENT_ORDER_ID
        limit = order.is_limit
        tif = order.time_in_force
        side = order.side
        min_quantity = order.min_quantity_heads
        # the guards below only skip calls whose answer is known to be None: keep them in step
        if not limit or order.all_or_none or order.post_only or min_quantity or (side == BUY and lot_id):
            reason = _shape_reason(order, lot_id)
            if reason is not None:
                return reason
        if state == AUCTION and (not limit or tif in (IOC, FOK) or min_quantity):
            return R.NOT_ALLOWED_IN_AUCTION
        expire_at_ns = order.expire_at_ns
        if (tif == GTD or expire_at_ns) and (tif != GTD or expire_at_ns <= ts_ns):
            return R.INVALID_EXPIRY
        if tif == DAY and not market.has_session:
            return R.INVALID_EXPIRY  # no close to expire at
        if not market.min_order_heads <= order.quantity_heads <= market.max_order_heads:
            return R.QUANTITY_OUT_OF_RANGE
        if limit:
            price = order.price_fen
            if price <= 0 or price % market.tick_fen or (market.band_high_fen and not (
                market.band_low_fen <= price <= market.band_high_fen
            )):
                return market.price_reason(price)
        if side == SELL:
            # the order's lot is self.lots.get(lot_id), as _new_order looked it up (one lookup, not two)
            reason = self._lot_reason(order.participant_id, order.lot, order.instrument, order.quantity_heads)
            if reason is not None:
                return reason
        clearing = self.clearing
        if clearing is not None:
            if side == SELL:
                reason = clearing.check_sell(order.participant_id)
            else:  # a market buy holds at the top of the band, where _new_order priced it
                reason = clearing.check_buy(order.participant_id, market.spec, order.price_fen, order.quantity_heads)
            if reason is not None:
                return reason
        if state == AUCTION or order.post_only or tif == FOK or min_quantity:
            return self._liquidity_reason(market, order)
        return None

    @staticmethod
    def _lot_reason(participant_id: int, lot: LotState | None, instrument: str, heads: int) -> RejectReason | None:
        if lot is None or lot.seller_id != participant_id:
            return R.LOT_NOT_FOUND  # another seller's lot is as good as missing: never reveal it
        if lot.instrument != instrument:
            return R.LOT_WRONG_INSTRUMENT
        if lot.available_heads < heads:
            return R.LOT_EXHAUSTED
        return None

    def _liquidity_reason(self, market: Market, order: Order) -> RejectReason | None:
        """Checks that depend on what rests in the book right now."""
        book = market.book
        if market.state == AUCTION:
            # an all-or-none sell sits out the uncross, so it cannot meet its owner's bid there
            if not order.all_or_none and self._crosses_own(book, order.participant_id, order.side, order.price_fen):
                return R.SELF_TRADE_PREVENTED
            return None
        if order.post_only and book.would_take(
            order.side, order.price_fen, order.quantity_heads, order.participant_id, order.all_or_none
        ):
            return R.POST_ONLY_WOULD_TAKE
        fok = order.time_in_force == FOK
        needed = order.quantity_heads if fok else order.min_quantity_heads
        if needed and book.fillable(order, _limit_key(order.side, order.price_fen)) < needed:
            return R.FOK_NOT_FILLABLE if fok else R.MIN_QUANTITY_NOT_MET
        return None

    @staticmethod
    def _crosses_own(book: OrderBook, participant_id: int, side: int, price_fen: int) -> bool:
        """In an auction: would this price cross a non-all-or-none order of the same participant?"""
        opposite = book.asks if side == BUY else book.bids
        for order in opposite.iter_orders():
            if (order.price_fen <= price_fen) if side == BUY else (order.price_fen >= price_fen):
                if order.participant_id == participant_id and not order.all_or_none:
                    return True
            else:
                return False
        return False

    def _new_order(self, market: Market, fields: tuple[Any, ...]) -> Order:
        """The order a PlaceOrder's fields ask for, with id 0; a market order is priced at its side's band edge."""
        side: int = fields[_SIDE]
        order_type: int = fields[_ORDER_TYPE]
        is_limit = order_type == LIMIT
        if is_limit:
            price: int = fields[_PRICE_FEN]
        else:
            price = market.band_high_fen if side == BUY else market.band_low_fen
        quantity: int = fields[_QUANTITY_HEADS]
        order = Order(
            0, fields[_PARTICIPANT_ID], fields[_CLIENT_ORDER_ID], fields[_INSTRUMENT], side, price, quantity,
            quantity, fields[_TIME_IN_FORCE], fields[_EXPIRE_AT_NS], fields[_POST_ONLY], fields[_ALL_OR_NONE],
            fields[_STP], self.lots.get(fields[_LOT_ID]) if side == SELL else None,
        )  # fmt: skip
        order.is_limit = is_limit
        order.min_quantity_heads = fields[_MIN_QUANTITY_HEADS]
        return order

    def _accept(self, market: Market, order: Order, fields: tuple[Any, ...], events: list) -> None:
        ts_ns: TimeNs = fields[_TS_NS]
        counters = self.counters
        next_order_id = counters.next_order_id
        counters.next_order_id = next_order_id + 1
        order_id: OrderId = next_order_id  # boxed once, here
        order.order_id = order_id
        used = self._checked_ids  # the participant's ids as _check_order looked them up for this order
        if used is None:
            used = self.client_order_ids[order.participant_id] = {}
        used[order.client_order_id] = order_id
        self.id_times.append(fields[_TS_NS])  # the command's object: ts_ns would be boxed anew
        self.id_owners.append(fields[_PARTICIPANT_ID])
        self.id_names.append(fields[_CLIENT_ORDER_ID])
        if order.lot is not None:
            order.lot.reserved_heads += order.quantity_heads
        book = market.book
        book.seq += 1
        # the event echoes the command's own values, which are objects already (compiled, a native int is
        # boxed anew at every use); a market order's price is its band edge
        price_fen = fields[_PRICE_FEN] if order.is_limit else order.price_fen
        events.append(
            OrderAccepted(
                book.seq, fields[_TS_NS], order_id, fields[_PARTICIPANT_ID], fields[_CLIENT_ORDER_ID],
                fields[_INSTRUMENT], fields[_SIDE], price_fen, fields[_QUANTITY_HEADS], fields[_LOT_ID],
            )
        )  # fmt: skip
        tif = order.time_in_force
        # the opposite best level's native price (compiled, a comparison with the Optional best_key is generic)
        if order.side == BUY:
            best = book.asks.best
            passive = best is None or best.price_fen > order.price_fen
        else:
            best = book.bids.best
            passive = best is None or best.price_fen < order.price_fen
        if passive and market.state == CONTINUOUS and tif in (GTC, GTD):
            # the common passive order: nothing to meet, straight to the back of its level
            book.rest(order, ts_ns, events)
            if tif == GTD:
                heapq.heappush(self.expiries, (order.expire_at_ns, order_id))
            return
        self._execute(market, order, ts_ns, events)

    def _execute(self, market: Market, order: Order, ts_ns: TimeNs, events: list) -> None:
        """Match an accepted (or re-priced) order, then rest it or expire what is left."""
        book = market.book
        stopped = False
        if market.state == CONTINUOUS:
            limit_key = _limit_key(order.side, order.price_fen)
            opposite = book.asks if order.side == BUY else book.bids
            best = opposite.best
            if best is None or opposite.key(best.price_fen) > limit_key:
                pass  # nothing to meet: a passive order goes straight to the book
            elif order.all_or_none:
                book.match_all_or_none(order, limit_key, ts_ns, events)
            else:
                stopped = book.match(order, limit_key, ts_ns, events)
        if not order.remaining_heads:
            return
        if stopped or order.time_in_force == IOC or order.time_in_force == FOK:
            book.retire(order, _EXPIRED_SELF_TRADE if stopped else _EXPIRED_IOC, ts_ns, events)
            return
        book.rest(order, ts_ns, events)
        if order.time_in_force == GTD:
            heapq.heappush(self.expiries, (order.expire_at_ns, order.order_id))

    def _own_resting(self, order_id: OrderId, participant_id: int, ts_ns: TimeNs, events: list) -> Order | None:
        order = self.orders.get(order_id)
        if order is None or order.participant_id != participant_id:
            # another participant's order is reported exactly like a missing one
            events.append(Rejected(0, ts_ns, participant_id, R.UNKNOWN_ORDER, "", order_id))
            return None
        return order

    def _cancel_order(self, participant_id: Any, ts_ns: TimeNs, order_id: OrderId, events: list) -> None:
        """``participant_id`` is the command's object, for the event (compiled, an int parameter is unboxed and
        would be boxed anew)."""
        order = self._own_resting(order_id, participant_id, ts_ns, events)
        if order is None:
            return
        book = self.markets[order.instrument].book
        level = level_of(order)  # before remove() unlinks the order from it
        book_side = book.remove(order)
        cancelled = release_remaining(order)
        book.seq += 1
        events.append(OrderCancelled(book.seq, ts_ns, order_id, participant_id, order.instrument, cancelled))
        book.level_size_changed(book_side, level, ts_ns, events)
        book_side.drop_level_if_empty(level)

    def _amend_order(self, cmd: AmendOrder, events: list) -> None:
        order = self._own_resting(cmd.order_id, cmd.participant_id, cmd.ts_ns, events)
        if order is None:
            return
        market = self.markets[order.instrument]
        price = cmd.price_fen or order.price_fen
        quantity = cmd.quantity_heads or order.quantity_heads
        reason = self._amend_reason(market, order, price, quantity)
        if reason is not None:
            events.append(Rejected(0, cmd.ts_ns, cmd.participant_id, reason, "", order.order_id, order.instrument))
            return
        self._apply_amend(market, order, price, quantity, cmd.ts_ns, events)

    def _amend_reason(self, market: Market, order: Order, price: int, quantity: int) -> RejectReason | None:
        if market.state >= HALTED:
            return R.MARKET_HALTED if market.state == HALTED else R.MARKET_CLOSED
        if price == order.price_fen and quantity == order.quantity_heads:
            return R.NOTHING_TO_AMEND
        spec = market.spec
        if quantity - order.filled_heads < 1 or not spec.min_order_heads <= quantity <= spec.max_order_heads:
            return R.QUANTITY_OUT_OF_RANGE
        if price != order.price_fen:
            reason = market.price_reason(price)
            if reason is not None:
                return reason
        added = quantity - order.quantity_heads
        if order.lot is not None and added > order.lot.available_heads:
            return R.LOT_EXHAUSTED
        if self.clearing is not None and order.side == BUY:
            reason = self.clearing.check_amend_buy(order.order_id, price, order.remaining_heads + added)
            if reason is not None:
                return reason
        book = market.book
        if (
            price != order.price_fen
            and market.state == AUCTION
            and not order.all_or_none  # it sits out the uncross, as when it was placed
            and self._crosses_own(book, order.participant_id, order.side, price)
        ):
            return R.SELF_TRADE_PREVENTED
        keeps_priority = price == order.price_fen and added < 0
        if (
            order.post_only
            and (not keeps_priority or order.all_or_none)  # a smaller whole-truck offer may now be taken
            and market.state == CONTINUOUS
            and book.would_take(
                order.side, price, order.remaining_heads + added, order.participant_id, order.all_or_none
            )
        ):
            return R.POST_ONLY_WOULD_TAKE
        return None

    def _apply_amend(self, market: Market, order: Order, price: int, quantity: int, ts_ns: int, events: list) -> None:
        """Reducing quantity at the same price keeps priority; anything else re-enters the book."""
        book = market.book
        added = quantity - order.quantity_heads
        keep = price == order.price_fen and added < 0
        book_side = book.side_of(order.side)
        level = level_of(order)  # the order's level until now (remove() unlinks the order from it)
        if keep:
            level.heads += added
        else:
            book.remove(order)
        if order.lot is not None:
            order.lot.reserved_heads += added
        order.quantity_heads = quantity
        order.remaining_heads += added
        order.price_fen = price
        book.seq += 1
        events.append(
            OrderAmended(
                book.seq, ts_ns, order.order_id, order.participant_id, order.instrument, price, quantity,
                order.remaining_heads, keep,
            )
        )  # fmt: skip
        book.level_size_changed(book_side, level, ts_ns, events)
        if keep:
            if order.all_or_none and market.state == CONTINUOUS:
                book.sweep_all_or_none(ts_ns, events)
            return
        book_side.drop_level_if_empty(level)
        self._execute(market, order, ts_ns, events)

    def _expire_due(self, ts_ns: int, events: list) -> None:
        """What is due before a command at ``ts_ns`` takes effect: session transitions, then GTD expiries."""
        if ts_ns >= self.calendar_due_ns:
            self.calendar.advance(ts_ns, events)
        expiries = self.expiries
        while expiries and expiries[0][0] <= ts_ns:
            _, order_id = heapq.heappop(expiries)
            order = self.orders.get(order_id)
            if order is None:
                continue  # it filled or was cancelled before it could expire
            book = self.markets[order.instrument].book
            level = level_of(order)  # before remove() unlinks the order from it
            book_side = book.remove(order)
            book.retire(order, _EXPIRED_GTD, ts_ns, events)
            book.level_size_changed(book_side, level, ts_ns, events)
            book_side.drop_level_if_empty(level)

    # -- instruments, lots and sessions -------------------------------------------------------------

    def _reject(self, cmd: Command, reason: RejectReason, events: list, instrument: str = "") -> None:
        events.append(Rejected(0, cmd.ts_ns, cmd.participant_id, reason, "", 0, instrument))

    def _list_instrument(self, cmd: ListInstrument, events: list) -> None:
        spec = cmd.spec
        if spec.symbol in self.markets:
            return self._reject(cmd, R.INSTRUMENT_EXISTS, events, spec.symbol)
        if not _spec_is_valid(spec):
            return self._reject(cmd, R.INVALID_INSTRUMENT, events, spec.symbol)
        book = OrderBook(spec.symbol, self.counters, self.orders)
        market = self.markets[spec.symbol] = Market(spec, book)
        events.append(InstrumentListed(book.next_seq(), cmd.ts_ns, spec))
        if market.has_session:
            self.calendar.on_listed(market, cmd.ts_ns, events)
        return None

    def _register_lot(self, cmd: RegisterLot, events: list) -> None:
        ref = cmd.client_lot_ref
        if len(ref) > MAX_CLIENT_ORDER_ID_LEN:
            return self._reject(cmd, R.INVALID_LOT, events, cmd.instrument)
        if ref and (cmd.participant_id, ref) in self.lot_refs:
            return self._retried_lot(cmd, self.lot_records[self.lot_refs[(cmd.participant_id, ref)]], events)
        market = self.markets.get(cmd.instrument)
        if market is None:
            return self._reject(cmd, R.UNKNOWN_INSTRUMENT, events, cmd.instrument)
        if cmd.heads < 1 or not cmd.quarantine_cert.strip() or not cmd.origin.strip():
            return self._reject(cmd, R.INVALID_LOT, events, cmd.instrument)
        spec = market.spec
        if not rules.quarantine_cert_ok(spec.quarantine_region, cmd.quarantine_cert):
            return self._reject(cmd, R.INVALID_QUARANTINE_CERT, events, cmd.instrument)
        if not spec.lot_avg_min_g <= cmd.avg_weight_g <= spec.lot_avg_max_g:
            return self._reject(cmd, R.LOT_OUT_OF_GRADE, events, cmd.instrument)
        lot_id = self.counters.next_lot_id
        self.counters.next_lot_id = lot_id + 1
        lot = Lot(
            lot_id, cmd.participant_id, cmd.instrument, cmd.heads, cmd.avg_weight_g, cmd.origin,
            cmd.quarantine_cert, cmd.ear_tags,
        )  # fmt: skip
        self.lot_records[lot_id] = lot
        self.lots[lot_id] = LotState(lot_id, cmd.participant_id, cmd.instrument, cmd.heads)
        if ref:
            self.lot_refs[(cmd.participant_id, ref)] = lot_id
        self.lot_times.append((cmd.ts_ns, lot_id, ref))
        events.append(LotRegistered(market.book.next_seq(), cmd.ts_ns, lot))
        return None

    def _retried_lot(self, cmd: RegisterLot, lot: Lot, events: list) -> None:
        """A retry of a registration that took effect: the original lot again, changing nothing — so
        the event carries seq 0 (no book sequence is used) — or DUPLICATE_REFERENCE if it differs."""
        content = (cmd.instrument, cmd.heads, cmd.avg_weight_g, cmd.origin, cmd.quarantine_cert, cmd.ear_tags)
        if content != (lot.instrument, lot.heads, lot.avg_weight_g, lot.origin, lot.quarantine_cert, lot.ear_tags):
            return self._reject(cmd, R.DUPLICATE_REFERENCE, events, cmd.instrument)
        events.append(LotRegistered(0, cmd.ts_ns, lot))
        return None

    def _transition(
        self, cmd: Halt | Resume | StartAuction | Uncross, allowed: tuple[int, ...], events: list
    ) -> Market | None:
        market = self.markets.get(cmd.instrument)
        if market is None:
            self._reject(cmd, R.UNKNOWN_INSTRUMENT, events, cmd.instrument)
            return None
        if market.state not in allowed:
            self._reject(cmd, R.INVALID_STATE_TRANSITION, events, cmd.instrument)
            return None
        return market

    def _set_state(self, market: Market, state: int, ts_ns: int, events: list, reason: str = "") -> None:
        market.state = state
        events.append(
            TradingStateChanged(market.book.next_seq(), ts_ns, market.spec.symbol, TradingState(state), reason)
        )

    def _halt(self, cmd: Halt, events: list) -> None:
        market = self._transition(cmd, (CONTINUOUS, AUCTION, CLOSED), events)
        if market is not None:
            market.resume_state = market.state
            self._set_state(market, HALTED, cmd.ts_ns, events, cmd.reason)

    def _resume(self, cmd: Resume, events: list) -> None:
        market = self._transition(cmd, (HALTED,), events)
        if market is None:
            return
        if market.has_session:
            self.calendar.resume(market, cmd.ts_ns, events)  # to where the calendar has moved meanwhile
        else:
            self._set_state(market, market.resume_state, cmd.ts_ns, events)

    def _start_auction(self, cmd: StartAuction, events: list) -> None:
        market = self._transition(cmd, (CONTINUOUS,), events)
        if market is not None:
            self._set_state(market, AUCTION, cmd.ts_ns, events)

    def _uncross(self, cmd: Uncross, events: list) -> None:
        market = self._transition(cmd, (AUCTION,), events)
        if market is not None:
            self._run_uncross(market, cmd.ts_ns, events)

    def _run_uncross(self, market: Market, ts_ns: int, events: list, reason: str = "") -> None:
        """The call auction's uncross, then continuous trading (the operator's or the calendar's open)."""
        book = market.book
        price, heads = uncross(book, market.reference_price_fen, ts_ns, events)
        events.append(AuctionUncrossed(book.next_seq(), ts_ns, market.spec.symbol, price, heads))
        self._set_state(market, CONTINUOUS, ts_ns, events, reason)
        book.sweep_all_or_none(ts_ns, events)

    def _set_reference_price(self, cmd: SetReferencePrice, events: list) -> None:
        market = self.markets.get(cmd.instrument)
        if market is None:
            return self._reject(cmd, R.UNKNOWN_INSTRUMENT, events, cmd.instrument)
        if cmd.price_fen <= 0:
            return self._reject(cmd, R.INVALID_PRICE, events, cmd.instrument)
        if cmd.price_fen % market.spec.tick_fen:
            return self._reject(cmd, R.PRICE_OFF_TICK, events, cmd.instrument)
        if not rules.band_clears_discounts(market.spec, cmd.price_fen):
            return self._reject(cmd, R.INVALID_PRICE, events, cmd.instrument)  # a price the discount would eat
        market.set_reference(cmd.price_fen)
        events.append(ReferencePriceSet(market.book.next_seq(), cmd.ts_ns, cmd.instrument, cmd.price_fen))
        return None

    def _clock_tick(self, cmd: ClockTick, events: list) -> None:
        """Beyond what ``apply`` does for every command (expire what is due): open, close and lapse lot
        auctions, then forget the ids and lots that have been final for longer than the tick's window (the
        clearing forgets its own after it)."""
        if self.auctions.live:
            self.auctions.on_clock(cmd.ts_ns, events)
        self.forget_before_ns = cmd.ts_ns - retention_of(cmd)
        self.forget(cmd.ts_ns, self.forget_before_ns)
        if self.auctions.refs:
            self.auctions.forget(cmd.ts_ns, self.forget_before_ns)

    def forget(self, now_ns: int, before_ns: int) -> None:
        """Drop client order ids and lots final before ``before_ns`` (see "Memory"); one still in use (a
        resting order's id, a lot with heads reserved or available) is looked at again a window later."""
        if self.unqueued:
            self._queue_unqueued(now_ns)
        times, owners, names = self.id_times, self.id_owners, self.id_names
        used_by = self.client_order_ids
        resting = self.orders
        head = self.id_head
        while head < len(times) and times[head] < before_ns:
            owner = owners[head]
            name = names[head]
            head += 1
            used = used_by.get(owner)
            if used is None:
                continue
            order_id = used.get(name)
            if order_id is None:
                continue
            if order_id in resting:  # a resting order keeps its id: looked at again a window later
                times.append(now_ns)
                owners.append(owner)
                names.append(name)
                continue
            del used[name]
            if not used:
                del used_by[owner]
        if head > 4096 and 2 * head > len(times):  # drop the looked-at front now and then (amortised O(1))
            del times[:head]
            del owners[:head]
            del names[:head]
            head = 0
        self.id_head = head
        lots = self.lot_times
        while lots and lots[0][0] < before_ns:
            _, lot_id, ref = lots.popleft()
            state = self.lots.get(lot_id)
            if state is None:
                continue
            clearing = self.clearing
            if state.reserved_heads or state.sold_heads < state.heads or (
                clearing is not None and clearing.lot_in_use(lot_id)
            ):
                lots.append((now_ns, lot_id, ref))  # live: heads to sell or on offer, or a trade still open
                continue
            del self.lots[lot_id]
            del self.lot_records[lot_id]
            if ref:
                del self.lot_refs[(state.seller_id, ref)]
            if clearing is not None:
                clearing.forget_lot(lot_id)

    def _queue_unqueued(self, now_ns: int) -> None:
        """Queue every id and lot held by a snapshot written before the core forgot anything."""
        self.unqueued = False
        queued = set(zip(self.id_owners[self.id_head:], self.id_names[self.id_head:], strict=True))
        held = sorted((oid, p, cid) for p, used in self.client_order_ids.items() for cid, oid in used.items())
        # at the end, as now: every entry queued since the restore is at most as old
        for _, p, cid in held:
            if (p, cid) not in queued:
                self.id_times.append(now_ns)
                self.id_owners.append(p)
                self.id_names.append(cid)
        queued_lots = {lot_id for _, lot_id, _ in self.lot_times}
        refs = {lot_id: ref for (_, ref), lot_id in self.lot_refs.items()}
        self.lot_times.extend(
            (now_ns, lot_id, refs.get(lot_id, "")) for lot_id in sorted(self.lots) if lot_id not in queued_lots)

    # -- queries -------------------------------------------------------------------------------------

    def depth(self, instrument: str, levels: int = 10) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
        """(seq, bids, asks): an L2 picture of one book, best first, as (price_fen, heads)."""
        book = self.markets[instrument].book
        return (book.seq, book.bids.depth(levels), book.asks.depth(levels))

    def snapshot(self) -> bytes:
        return encode_core(self)

    @classmethod
    def from_snapshot(cls, data: bytes) -> Core:
        return decode_core(data, cls, Market)

    def state_hash(self) -> str:
        """A digest of the whole state: equal hashes mean equal books, lots, ids and sequences."""
        return hash_snapshot(self.snapshot())

    def snapshot_with_hash(self) -> tuple[bytes, str]:
        """The snapshot and its state hash from one encoding (the state can be large)."""
        data = self.snapshot()
        return data, hash_snapshot(data)


def retention_of(tick: ClockTick) -> int:
    """The window a tick keeps: its ``retention_ns``, or the default for 0 (or anything below 1 ns)."""
    retention: int = tick.retention_ns
    return retention if retention > 0 else DEFAULT_RETENTION_NS


def hash_snapshot(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def new_exchange() -> Core:
    """The exchange as it runs: matching with settlement."""
    return Core(Clearing())


def _limit_key(side: int, price_fen: int) -> int:
    """The opposite side's key space: a buy meets asks keyed by price, a sell bids keyed by -price."""
    if price_fen == 0:
        return NO_LIMIT  # a market order where the instrument has no band
    return price_fen if side == BUY else -price_fen


def _shape_reason(order: Order, lot_id: int) -> RejectReason | None:
    """Combinations of fields that make no sense whatever the market's state."""
    tif = order.time_in_force
    if not order.is_limit and (order.post_only or order.all_or_none or tif in (GTC, GTD, DAY)):
        return R.INVALID_ORDER
    if order.all_or_none and (order.side == BUY or tif in (IOC, FOK) or order.min_quantity_heads):
        return R.INVALID_ORDER
    if order.post_only and tif in (IOC, FOK):
        return R.INVALID_ORDER
    if not 0 <= order.min_quantity_heads <= order.quantity_heads:
        return R.INVALID_ORDER
    if order.side == BUY and lot_id:
        return R.INVALID_ORDER
    return None


MAX_SPEC_INT = 2**53  # every number in a specification stays far inside int64, so it always encodes


def _spec_is_valid(spec: InstrumentSpec) -> bool:
    numbers = [getattr(spec, name) for name in spec.__struct_fields__ if type(getattr(spec, name)) is int]
    return (
        all(0 <= n <= MAX_SPEC_INT for n in numbers)
        and _settlement_terms_are_valid(spec)
        and bool(spec.symbol.strip())
        and len(spec.symbol) <= 32
        and spec.tick_fen > 0
        and 0 < spec.min_order_heads <= spec.max_order_heads
        and 0 <= spec.price_band_bps < 10_000
        and spec.reference_price_fen >= 0
        and spec.reference_price_fen % spec.tick_fen == 0
        and 0 < spec.lot_avg_min_g <= spec.lot_avg_max_g
        and 0 < spec.animal_min_g <= spec.animal_max_g
        and spec.initial_state in (CONTINUOUS, AUCTION)
        and calendar_terms_valid(spec)
    )


def _settlement_terms_are_valid(spec: InstrumentSpec) -> bool:
    """Fees within 0-100 %, a shrink of at most ``rules.MAX_SHRINK_BPS``, and weight discounts only for what
    is priced by weight."""
    per_head = spec.product_class == ProductClass.PIGLET
    discounts = spec.overweight_discount_fen_per_kg or spec.underweight_discount_fen_per_kg
    return (
        spec.seller_fee_bps <= 10_000
        and spec.shrink_bps <= rules.MAX_SHRINK_BPS
        and spec.underweight_limit_g < spec.lot_avg_min_g
        and not (per_head and discounts)
        and (spec.reference_price_fen == 0 or max(
            spec.overweight_discount_fen_per_kg, spec.underweight_discount_fen_per_kg
        ) < spec.reference_price_fen)
        and rules.band_clears_discounts(spec, spec.reference_price_fen)  # every tradable price stays above it
    )
