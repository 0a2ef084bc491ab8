"""A naive reference exchange core: the test oracle for ``exchange.core.Core``, never used in production.

It takes the same commands and must give exactly the same events, but it is written for obviousness,
not speed: every market keeps its resting orders in one plain list, every question ("what is the best
ask?", "how many heads rest at 2800?") is a fresh sort or a linear scan, and "can this FOK fill?" is
answered by running the real matching on a deep copy of the whole state. It was written from the
rules stated in the docstrings of ``exchange/core.py``, ``exchange/matching/book.py`` and
``exchange/matching/auction.py``, restated here:

- Before any command takes effect, every resting GTD order whose ``expire_at_ns`` has been reached by the
  command's ``ts_ns`` expires, earliest expiry first (then lowest order id).
- A rejection changes nothing, carries seq 0 and is the only event of its command (apart from expiries).
- A taker walks the opposite side best price first, FIFO (time priority) within a price, trading at the
  maker's price. An all-or-none maker too big for what is left of the taker is skipped and keeps its
  place. Self-trade prevention applies only to a fill that would otherwise happen: the taker's mode
  stops the taker, removes the maker and goes on, or both. One ``BookChanged`` follows each price level
  whose size the taker changed.
- An incoming all-or-none sell trades once, whole, with the first bid (priority order) of another
  participant able to take it all, or rests untouched.
- A call auction uncrosses at the price with the most executable heads, then the least imbalance, then
  nearest the reference price, then the lowest; only resting prices are candidates; all-or-none sells
  take no part; allocation pairs bids (best first, FIFO) with asks (best first, FIFO).
- After an uncross, and after an all-or-none sell is reduced in place in continuous trading, every
  resting all-or-none sell (best ask first) trades whole with the first bid of another participant able
  to take it; the earlier of the two orders is the maker and sets the price.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from fractions import Fraction

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
    RejectReason,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradingState,
)
from exchange.events import (
    AuctionUncrossed,
    BookChanged,
    Event,
    InstrumentListed,
    LotRegistered,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    ReferencePriceSet,
    Rejected,
    Trade,
    TradingStateChanged,
)

R = RejectReason
CONTINUOUS, AUCTION, HALTED = TradingState.CONTINUOUS, TradingState.AUCTION, TradingState.HALTED
MAX_CLIENT_ORDER_ID_CHARS = 36


@dataclass(eq=False)  # identity, not field equality: two orders are never the same order
class RefOrder:
    order_id: int
    participant_id: int
    client_order_id: str
    instrument: str
    side: Side
    price_fen: int  # limit; for a market order the band edge, 0 meaning "no limit at all"
    quantity_heads: int
    remaining_heads: int
    time_in_force: TimeInForce
    expire_at_ns: int
    post_only: bool
    all_or_none: bool
    stp: SelfTradePrevention
    lot_id: int
    filled_heads: int = 0
    priority: int = 0


@dataclass
class RefLot:
    lot: Lot
    reserved_heads: int = 0
    sold_heads: int = 0

    def available_heads(self) -> int:
        return self.lot.heads - self.reserved_heads - self.sold_heads


@dataclass
class RefMarket:
    spec: InstrumentSpec
    state: TradingState
    resume_state: TradingState
    reference_price_fen: int
    seq: int = 0
    resting: list[RefOrder] = field(default_factory=list)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def side(self, side: Side) -> list[RefOrder]:
        """Resting orders of one side, best first: bids high to low, asks low to high, then by time."""
        orders = [o for o in self.resting if o.side == side]
        if side == Side.BUY:
            return sorted(orders, key=lambda o: (-o.price_fen, o.priority))
        return sorted(orders, key=lambda o: (o.price_fen, o.priority))

    def level_heads(self, side: Side, price_fen: int) -> int:
        return sum(o.remaining_heads for o in self.resting if o.side == side and o.price_fen == price_fen)

    def band(self) -> tuple[int, int] | None:
        """The inclusive band, edges rounded inwards to whole ticks; None when there is none."""
        bps = self.spec.price_band_bps
        ref = self.reference_price_fen
        if bps == 0 or ref == 0:
            return None
        tick = self.spec.tick_fen
        low = math.ceil(Fraction(ref) * (10_000 - bps) / 10_000 / tick) * tick
        high = math.floor(Fraction(ref) * (10_000 + bps) / 10_000 / tick) * tick
        return (max(low, tick), high)


def _opposite(side: Side) -> Side:
    return Side.SELL if side == Side.BUY else Side.BUY


def _reaches(taker_side: Side, limit_fen: int, maker_price_fen: int) -> bool:
    """May a taker with this limit trade at the maker's price? A limit of 0 means no limit."""
    if limit_fen == 0:
        return True
    return maker_price_fen <= limit_fen if taker_side == Side.BUY else maker_price_fen >= limit_fen


def _spec_ok(spec: InstrumentSpec) -> bool:
    if spec.tick_fen < 1:
        return False
    checks = [
        spec.symbol.strip() != "" and len(spec.symbol) <= 32,
        1 <= spec.min_order_heads <= spec.max_order_heads,
        0 <= spec.price_band_bps <= 9_999,
        spec.reference_price_fen >= 0 and spec.reference_price_fen % spec.tick_fen == 0,
        1 <= spec.lot_avg_min_g <= spec.lot_avg_max_g,
        1 <= spec.animal_min_g <= spec.animal_max_g,
        spec.initial_state in (CONTINUOUS, AUCTION),
    ]
    return all(checks)


class ReferenceCore:
    """Same interface as ``exchange.core.Core`` for what tests compare: ``apply`` and ``depth``."""

    def __init__(self) -> None:
        self.markets: dict[str, RefMarket] = {}
        self.lots: dict[int, RefLot] = {}
        self.client_order_ids: set[tuple[int, str]] = set()
        self.next_order_id = 1
        self.next_trade_id = 1
        self.next_lot_id = 1
        self.next_priority = 1

    # -- entry point -------------------------------------------------------------------------------

    def apply(self, command: Command) -> list[Event]:
        events: list[Event] = []
        self._expire_gtd(command.ts_ns, events)
        handler = getattr(self, "_on_" + type(command).__name__)
        handler(command, events)
        return events

    def depth(self, instrument: str, levels: int = 10) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
        market = self.markets[instrument]
        out = []
        for side in (Side.BUY, Side.SELL):
            prices: list[int] = []
            for order in market.side(side):
                if order.price_fen not in prices:
                    prices.append(order.price_fen)
            out.append([(p, market.level_heads(side, p)) for p in prices[:levels]])
        return (market.seq, out[0], out[1])

    def resting_orders(self) -> list[RefOrder]:
        return [o for m in self.markets.values() for o in m.resting]

    # -- shared steps ------------------------------------------------------------------------------

    def _book_changed(self, market: RefMarket, side: Side, price_fen: int, ts_ns: int, events: list) -> None:
        heads = market.level_heads(side, price_fen)
        events.append(BookChanged(market.next_seq(), ts_ns, market.spec.symbol, side, price_fen, heads))

    def _release(self, order: RefOrder, heads: int) -> None:
        if order.lot_id:
            self.lots[order.lot_id].reserved_heads -= heads

    def _expire(self, market: RefMarket, order: RefOrder, reason: ExpireReason, ts_ns: int, events: list) -> None:
        """Expire what is left of an order, resting or not (the caller emits the level change)."""
        heads = order.remaining_heads
        if order in market.resting:
            market.resting.remove(order)
        order.remaining_heads = 0
        self._release(order, heads)
        events.append(
            OrderExpired(market.next_seq(), ts_ns, order.order_id, order.participant_id, order.instrument, heads,
                         reason)
        )

    def _expire_gtd(self, ts_ns: int, events: list) -> None:
        due = [o for o in self.resting_orders() if o.time_in_force == TimeInForce.GTD and o.expire_at_ns <= ts_ns]
        for order in sorted(due, key=lambda o: (o.expire_at_ns, o.order_id)):
            market = self.markets[order.instrument]
            self._expire(market, order, ExpireReason.GTD, ts_ns, events)
            self._book_changed(market, order.side, order.price_fen, ts_ns, events)

    def _trade(
        self, market: RefMarket, buy: RefOrder, sell: RefOrder, price_fen: int, heads: int, taker_side: int,
        ts_ns: int, events: list,
    ) -> None:
        for order in (buy, sell):
            order.remaining_heads -= heads
            order.filled_heads += heads
            if order.remaining_heads == 0 and order in market.resting:
                market.resting.remove(order)
        lot = self.lots[sell.lot_id]
        lot.reserved_heads -= heads
        lot.sold_heads += heads
        trade_id = self.next_trade_id
        self.next_trade_id += 1
        events.append(
            Trade(
                market.next_seq(), ts_ns, market.spec.symbol, trade_id, price_fen, heads, buy.order_id,
                sell.order_id, buy.participant_id, sell.participant_id, sell.lot_id, taker_side,
                buy.remaining_heads, sell.remaining_heads,
            )
        )

    def _rest(self, market: RefMarket, order: RefOrder, ts_ns: int, events: list) -> None:
        order.priority = self.next_priority
        self.next_priority += 1
        market.resting.append(order)
        self._book_changed(market, order.side, order.price_fen, ts_ns, events)

    # -- matching ----------------------------------------------------------------------------------

    def _match(self, market: RefMarket, taker: RefOrder, ts_ns: int, events: list) -> bool:
        """Continuous matching of a taker that is not all-or-none. True if self-trade prevention stopped it."""
        maker_side = _opposite(taker.side)
        reachable = {
            o.price_fen for o in market.resting
            if o.side == maker_side and _reaches(taker.side, taker.price_fen, o.price_fen)
        }
        for price in sorted(reachable, reverse=maker_side == Side.BUY):  # best price first
            if taker.remaining_heads == 0:
                break
            before = market.level_heads(maker_side, price)
            stopped = self._match_at(market, taker, maker_side, price, ts_ns, events)
            if market.level_heads(maker_side, price) != before:
                self._book_changed(market, maker_side, price, ts_ns, events)
            if stopped:
                return True
        return False

    def _match_at(self, market: RefMarket, taker: RefOrder, maker_side: Side, price: int, ts_ns: int,
                  events: list) -> bool:
        queue = [o for o in market.side(maker_side) if o.price_fen == price]
        for maker in queue:
            if maker.all_or_none and maker.remaining_heads > taker.remaining_heads:
                continue  # cannot be taken whole: skipped, keeps its place, and is no self-trade
            if maker.participant_id == taker.participant_id:
                if taker.stp == SelfTradePrevention.EXPIRE_TAKER:
                    return True
                self._expire(market, maker, ExpireReason.SELF_TRADE, ts_ns, events)
                if taker.stp == SelfTradePrevention.EXPIRE_BOTH:
                    return True
                continue
            heads = min(maker.remaining_heads, taker.remaining_heads)
            buy, sell = (taker, maker) if taker.side == Side.BUY else (maker, taker)
            self._trade(market, buy, sell, maker.price_fen, heads, taker.side, ts_ns, events)
            if taker.remaining_heads == 0:
                return False
        return False

    def _take_whole(self, market: RefMarket, sell: RefOrder, ts_ns: int, events: list) -> None:
        """An incoming all-or-none sell: one whole fill with the first bid able to take it, or nothing."""
        for bid in market.side(Side.BUY):
            if not _reaches(Side.SELL, sell.price_fen, bid.price_fen):
                return
            if bid.participant_id != sell.participant_id and bid.remaining_heads >= sell.remaining_heads:
                self._trade(market, bid, sell, bid.price_fen, sell.remaining_heads, Side.SELL, ts_ns, events)
                self._book_changed(market, Side.BUY, bid.price_fen, ts_ns, events)
                return

    def _sweep_all_or_none(self, market: RefMarket, ts_ns: int, events: list) -> None:
        for sell in [o for o in market.side(Side.SELL) if o.all_or_none]:
            takers = [
                b for b in market.side(Side.BUY)
                if b.price_fen >= sell.price_fen and b.participant_id != sell.participant_id
                and b.remaining_heads >= sell.remaining_heads
            ]
            if not takers:
                continue
            bid = takers[0]
            maker, taker = (bid, sell) if bid.priority < sell.priority else (sell, bid)
            if taker.post_only and not maker.post_only:  # a post-only order never takes
                maker, taker = taker, maker
            self._trade(market, bid, sell, maker.price_fen, sell.remaining_heads, taker.side, ts_ns, events)
            self._book_changed(market, Side.BUY, bid.price_fen, ts_ns, events)
            self._book_changed(market, Side.SELL, sell.price_fen, ts_ns, events)

    def _execute(self, market: RefMarket, order: RefOrder, ts_ns: int, events: list) -> None:
        stopped = False
        if market.state == CONTINUOUS:
            if order.all_or_none:
                self._take_whole(market, order, ts_ns, events)
            else:
                stopped = self._match(market, order, ts_ns, events)
        if order.remaining_heads == 0:
            return
        if stopped:
            self._expire(market, order, ExpireReason.SELF_TRADE, ts_ns, events)
        elif order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
            self._expire(market, order, ExpireReason.IOC, ts_ns, events)
        else:
            self._rest(market, order, ts_ns, events)

    def _would_take(self, market: RefMarket, order: RefOrder) -> bool:
        """Would this order, arriving now, meet anything? Match it on a throw-away copy and see."""
        trial = copy.deepcopy(self)
        trial_market = trial.markets[market.spec.symbol]
        probe = copy.deepcopy(order)
        trial_market.resting = [o for o in trial_market.resting if o.order_id != order.order_id]
        events: list[Event] = []
        if probe.all_or_none:
            trial._take_whole(trial_market, probe, 0, events)
            return bool(events)
        stopped = trial._match(trial_market, probe, 0, events)
        return stopped or bool(events)

    def _fillable_now(self, cmd: PlaceOrder) -> int:
        """Heads this order would fill at once: run the real matching on a throw-away copy."""
        trial = copy.deepcopy(self)
        market = trial.markets[cmd.instrument]
        taker = trial._new_order(market, cmd, order_id=0)
        if taker.lot_id:
            trial.lots[taker.lot_id].reserved_heads += taker.quantity_heads
        trial._match(market, taker, cmd.ts_ns, [])
        return taker.filled_heads

    # -- orders ------------------------------------------------------------------------------------

    def _new_order(self, market: RefMarket, cmd: PlaceOrder, order_id: int) -> RefOrder:
        price = cmd.price_fen
        if cmd.order_type == OrderType.MARKET:
            band = market.band()
            price = 0 if band is None else (band[1] if cmd.side == Side.BUY else band[0])
        return RefOrder(
            order_id, cmd.participant_id, cmd.client_order_id, cmd.instrument, cmd.side, price, cmd.quantity_heads,
            cmd.quantity_heads, cmd.time_in_force, cmd.expire_at_ns, cmd.post_only, cmd.all_or_none, cmd.stp,
            cmd.lot_id if cmd.side == Side.SELL else 0,
        )

    def _price_problem(self, market: RefMarket, price_fen: int) -> RejectReason | None:
        if price_fen <= 0:
            return R.INVALID_PRICE
        if price_fen % market.spec.tick_fen != 0:
            return R.PRICE_OFF_TICK
        band = market.band()
        if band is not None and not band[0] <= price_fen <= band[1]:
            return R.PRICE_OUTSIDE_BAND
        return None

    def _crosses_own(self, market: RefMarket, participant_id: int, side: Side, price_fen: int) -> bool:
        """In an auction: would this price cross an order of the same participant that takes part?

        All-or-none sells sit the uncross out, so they neither count here nor are checked themselves.
        """
        return any(
            o.participant_id == participant_id and not o.all_or_none and _reaches(side, price_fen, o.price_fen)
            for o in market.side(_opposite(side))
        )

    def _place_problem(self, market: RefMarket, cmd: PlaceOrder) -> RejectReason | None:
        spec = market.spec
        is_market = cmd.order_type == OrderType.MARKET
        tif = cmd.time_in_force
        immediate = tif in (TimeInForce.IOC, TimeInForce.FOK)
        if market.state == HALTED:
            return R.MARKET_HALTED
        if not 1 <= len(cmd.client_order_id) <= MAX_CLIENT_ORDER_ID_CHARS:
            return R.INVALID_ORDER
        if (cmd.participant_id, cmd.client_order_id) in self.client_order_ids:
            return R.DUPLICATE_CLIENT_ORDER_ID
        nonsense = [
            is_market and (cmd.post_only or cmd.all_or_none or not immediate),
            cmd.all_or_none and (cmd.side == Side.BUY or immediate or cmd.min_quantity_heads != 0),
            cmd.post_only and immediate,
            cmd.min_quantity_heads < 0 or cmd.min_quantity_heads > cmd.quantity_heads,
            cmd.side == Side.BUY and cmd.lot_id != 0,
        ]
        if any(nonsense):
            return R.INVALID_ORDER
        if market.state == AUCTION and (is_market or immediate or cmd.min_quantity_heads > 0):
            return R.NOT_ALLOWED_IN_AUCTION
        if tif == TimeInForce.GTD:
            if cmd.expire_at_ns <= cmd.ts_ns:
                return R.INVALID_EXPIRY
        elif cmd.expire_at_ns != 0:
            return R.INVALID_EXPIRY  # only a GTD order has an expiry
        if not spec.min_order_heads <= cmd.quantity_heads <= spec.max_order_heads:
            return R.QUANTITY_OUT_OF_RANGE
        if not is_market:
            problem = self._price_problem(market, cmd.price_fen)
            if problem is not None:
                return problem
        if cmd.side == Side.SELL:
            lot = self.lots.get(cmd.lot_id)
            if lot is None or lot.lot.seller_id != cmd.participant_id:
                return R.LOT_NOT_FOUND
            if lot.lot.instrument != cmd.instrument:
                return R.LOT_WRONG_INSTRUMENT
            if lot.available_heads() < cmd.quantity_heads:
                return R.LOT_EXHAUSTED
        if market.state == AUCTION:
            if not cmd.all_or_none and self._crosses_own(market, cmd.participant_id, cmd.side, cmd.price_fen):
                return R.SELF_TRADE_PREVENTED
            return None
        if cmd.post_only and self._would_take(market, self._new_order(market, cmd, order_id=0)):
            return R.POST_ONLY_WOULD_TAKE
        if tif == TimeInForce.FOK and self._fillable_now(cmd) < cmd.quantity_heads:
            return R.FOK_NOT_FILLABLE
        if tif != TimeInForce.FOK and cmd.min_quantity_heads and self._fillable_now(cmd) < cmd.min_quantity_heads:
            return R.MIN_QUANTITY_NOT_MET
        return None

    def _on_PlaceOrder(self, cmd: PlaceOrder, events: list) -> None:
        market = self.markets.get(cmd.instrument)
        if market is None:
            events.append(
                Rejected(0, cmd.ts_ns, cmd.participant_id, R.UNKNOWN_INSTRUMENT, cmd.client_order_id, 0, cmd.instrument)
            )
            return
        problem = self._place_problem(market, cmd)
        if problem is not None:
            events.append(
                Rejected(0, cmd.ts_ns, cmd.participant_id, problem, cmd.client_order_id, 0, cmd.instrument)
            )
            return
        order = self._new_order(market, cmd, self.next_order_id)
        self.next_order_id += 1
        self.client_order_ids.add((cmd.participant_id, cmd.client_order_id))
        if order.lot_id:
            self.lots[order.lot_id].reserved_heads += order.quantity_heads
        events.append(
            OrderAccepted(
                market.next_seq(), cmd.ts_ns, order.order_id, cmd.participant_id, cmd.client_order_id,
                cmd.instrument, cmd.side, order.price_fen, cmd.quantity_heads, cmd.lot_id,
            )
        )
        self._execute(market, order, cmd.ts_ns, events)

    def _own_resting(self, cmd: CancelOrder | AmendOrder, events: list) -> RefOrder | None:
        for order in self.resting_orders():
            if order.order_id == cmd.order_id and order.participant_id == cmd.participant_id:
                return order
        events.append(Rejected(0, cmd.ts_ns, cmd.participant_id, R.UNKNOWN_ORDER, "", cmd.order_id))
        return None

    def _on_CancelOrder(self, cmd: CancelOrder, events: list) -> None:
        order = self._own_resting(cmd, events)
        if order is None:
            return
        market = self.markets[order.instrument]
        heads = order.remaining_heads
        market.resting.remove(order)
        order.remaining_heads = 0
        self._release(order, heads)
        events.append(
            OrderCancelled(market.next_seq(), cmd.ts_ns, order.order_id, order.participant_id, order.instrument,
                           heads)
        )
        self._book_changed(market, order.side, order.price_fen, cmd.ts_ns, events)

    def _amend_problem(self, market: RefMarket, order: RefOrder, price: int, quantity: int) -> RejectReason | None:
        spec = market.spec
        if market.state == HALTED:
            return R.MARKET_HALTED
        if price == order.price_fen and quantity == order.quantity_heads:
            return R.NOTHING_TO_AMEND
        if quantity <= order.filled_heads or not spec.min_order_heads <= quantity <= spec.max_order_heads:
            return R.QUANTITY_OUT_OF_RANGE
        if price != order.price_fen:
            problem = self._price_problem(market, price)
            if problem is not None:
                return problem
        extra = quantity - order.quantity_heads
        if order.lot_id and extra > self.lots[order.lot_id].available_heads():
            return R.LOT_EXHAUSTED
        if (
            price != order.price_fen
            and market.state == AUCTION
            and not order.all_or_none
            and self._crosses_own(market, order.participant_id, order.side, price)
        ):
            return R.SELF_TRADE_PREVENTED
        loses_priority = price != order.price_fen or extra > 0
        if order.post_only and (loses_priority or order.all_or_none) and market.state == CONTINUOUS:
            probe = copy.copy(order)
            probe.price_fen, probe.remaining_heads = price, quantity - order.filled_heads
            if self._would_take(market, probe):
                return R.POST_ONLY_WOULD_TAKE
        return None

    def _on_AmendOrder(self, cmd: AmendOrder, events: list) -> None:
        order = self._own_resting(cmd, events)
        if order is None:
            return
        market = self.markets[order.instrument]
        price = cmd.price_fen if cmd.price_fen != 0 else order.price_fen
        quantity = cmd.quantity_heads if cmd.quantity_heads != 0 else order.quantity_heads
        problem = self._amend_problem(market, order, price, quantity)
        if problem is not None:
            events.append(
                Rejected(0, cmd.ts_ns, cmd.participant_id, problem, "", order.order_id, order.instrument)
            )
            return
        extra = quantity - order.quantity_heads
        keeps_priority = price == order.price_fen and extra < 0
        old_price = order.price_fen
        if not keeps_priority:
            market.resting.remove(order)
        if order.lot_id:
            self.lots[order.lot_id].reserved_heads += extra
        order.quantity_heads = quantity
        order.remaining_heads += extra
        order.price_fen = price
        events.append(
            OrderAmended(
                market.next_seq(), cmd.ts_ns, order.order_id, order.participant_id, order.instrument, price,
                quantity, order.remaining_heads, keeps_priority,
            )
        )
        self._book_changed(market, order.side, old_price, cmd.ts_ns, events)
        if keeps_priority:
            if order.all_or_none and market.state == CONTINUOUS:
                self._sweep_all_or_none(market, cmd.ts_ns, events)
            return
        self._execute(market, order, cmd.ts_ns, events)

    # -- instruments, lots, sessions ---------------------------------------------------------------

    def _reject(self, cmd: Command, reason: RejectReason, instrument: str, events: list) -> None:
        events.append(Rejected(0, cmd.ts_ns, cmd.participant_id, reason, "", 0, instrument))

    def _on_ListInstrument(self, cmd: ListInstrument, events: list) -> None:
        spec = cmd.spec
        if spec.symbol in self.markets:
            return self._reject(cmd, R.INSTRUMENT_EXISTS, spec.symbol, events)
        if not _spec_ok(spec):
            return self._reject(cmd, R.INVALID_INSTRUMENT, spec.symbol, events)
        market = RefMarket(spec, spec.initial_state, spec.initial_state, spec.reference_price_fen)
        self.markets[spec.symbol] = market
        events.append(InstrumentListed(market.next_seq(), cmd.ts_ns, spec))
        return None

    def _on_RegisterLot(self, cmd: RegisterLot, events: list) -> None:
        market = self.markets.get(cmd.instrument)
        if market is None:
            return self._reject(cmd, R.UNKNOWN_INSTRUMENT, cmd.instrument, events)
        if cmd.heads <= 0 or cmd.origin.strip() == "" or cmd.quarantine_cert.strip() == "":
            return self._reject(cmd, R.INVALID_LOT, cmd.instrument, events)
        if not market.spec.lot_avg_min_g <= cmd.avg_weight_g <= market.spec.lot_avg_max_g:
            return self._reject(cmd, R.LOT_OUT_OF_GRADE, cmd.instrument, events)
        lot = Lot(
            self.next_lot_id, cmd.participant_id, cmd.instrument, cmd.heads, cmd.avg_weight_g, cmd.origin,
            cmd.quarantine_cert, cmd.ear_tags,
        )
        self.next_lot_id += 1
        self.lots[lot.lot_id] = RefLot(lot)
        events.append(LotRegistered(market.next_seq(), cmd.ts_ns, lot))
        return None

    def _market_in(self, cmd: Halt | Resume | StartAuction | Uncross, states: tuple, events: list) -> RefMarket | None:
        market = self.markets.get(cmd.instrument)
        if market is None:
            self._reject(cmd, R.UNKNOWN_INSTRUMENT, cmd.instrument, events)
            return None
        if market.state not in states:
            self._reject(cmd, R.INVALID_STATE_TRANSITION, cmd.instrument, events)
            return None
        return market

    def _new_state(self, market: RefMarket, state: TradingState, ts_ns: int, events: list) -> None:
        market.state = state
        events.append(TradingStateChanged(market.next_seq(), ts_ns, market.spec.symbol, state))

    def _on_Halt(self, cmd: Halt, events: list) -> None:
        market = self._market_in(cmd, (CONTINUOUS, AUCTION), events)
        if market is not None:
            market.resume_state = market.state
            self._new_state(market, HALTED, cmd.ts_ns, events)

    def _on_Resume(self, cmd: Resume, events: list) -> None:
        market = self._market_in(cmd, (HALTED,), events)
        if market is not None:
            self._new_state(market, market.resume_state, cmd.ts_ns, events)

    def _on_StartAuction(self, cmd: StartAuction, events: list) -> None:
        market = self._market_in(cmd, (CONTINUOUS,), events)
        if market is not None:
            self._new_state(market, AUCTION, cmd.ts_ns, events)

    def _on_Uncross(self, cmd: Uncross, events: list) -> None:
        market = self._market_in(cmd, (AUCTION,), events)
        if market is None:
            return
        bids = [o for o in market.side(Side.BUY) if not o.all_or_none]
        asks = [o for o in market.side(Side.SELL) if not o.all_or_none]
        price, volume = self._auction_price(bids, asks, market.reference_price_fen)
        if volume:
            self._allocate(market, bids, asks, price, volume, cmd.ts_ns, events)
        events.append(AuctionUncrossed(market.next_seq(), cmd.ts_ns, cmd.instrument, price, volume))
        self._new_state(market, CONTINUOUS, cmd.ts_ns, events)
        self._sweep_all_or_none(market, cmd.ts_ns, events)

    @staticmethod
    def _auction_price(bids: list[RefOrder], asks: list[RefOrder], reference_fen: int) -> tuple[int, int]:
        ranked = []
        for price in {o.price_fen for o in bids + asks}:
            demand = sum(o.remaining_heads for o in bids if o.price_fen >= price)
            supply = sum(o.remaining_heads for o in asks if o.price_fen <= price)
            volume = min(demand, supply)
            if volume > 0:
                distance = abs(price - reference_fen) if reference_fen else 0
                ranked.append(((-volume, abs(demand - supply), distance, price), price, volume))
        if not ranked:
            return (0, 0)
        _, price, volume = min(ranked)
        return (price, volume)

    def _allocate(
        self, market: RefMarket, bids: list[RefOrder], asks: list[RefOrder], price: int, volume: int, ts_ns: int,
        events: list,
    ) -> None:
        touched_bids: set[int] = set()
        touched_asks: set[int] = set()
        left = volume
        while left:
            bid = next(o for o in bids if o.remaining_heads)
            ask = next(o for o in asks if o.remaining_heads)
            heads = min(bid.remaining_heads, ask.remaining_heads, left)
            touched_bids.add(bid.price_fen)
            touched_asks.add(ask.price_fen)
            self._trade(market, bid, ask, price, heads, 0, ts_ns, events)
            left -= heads
        for level_price in sorted(touched_bids, reverse=True):
            self._book_changed(market, Side.BUY, level_price, ts_ns, events)
        for level_price in sorted(touched_asks):
            self._book_changed(market, Side.SELL, level_price, ts_ns, events)

    def _on_SetReferencePrice(self, cmd: SetReferencePrice, events: list) -> None:
        market = self.markets.get(cmd.instrument)
        if market is None:
            return self._reject(cmd, R.UNKNOWN_INSTRUMENT, cmd.instrument, events)
        if cmd.price_fen <= 0:
            return self._reject(cmd, R.INVALID_PRICE, cmd.instrument, events)
        if cmd.price_fen % market.spec.tick_fen:
            return self._reject(cmd, R.PRICE_OFF_TICK, cmd.instrument, events)
        market.reference_price_fen = cmd.price_fen
        events.append(ReferencePriceSet(market.next_seq(), cmd.ts_ns, cmd.instrument, cmd.price_fen))
        return None

    def _on_ClockTick(self, cmd: ClockTick, events: list) -> None:
        """Time moved: ``apply`` already expired what was due."""


# The name the matching benchmark (``benchmarks/matching.py``) looks for.
ReferenceBook = ReferenceCore
