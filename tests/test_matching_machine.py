"""The fast core against the naive reference book, driven by one hypothesis state machine.

Every random command goes to ``exchange.core.Core`` and to ``tests.reference_book.ReferenceCore``; their
events must be identical. After every step the fast core's own structures are audited: sorted levels,
FIFO queues in time priority, level sizes, an uncrossed book (all-or-none sells aside, but none of them
takeable whole by a resting bid), quantity = filled + remaining + cancelled/expired per order, trades
inside both limits, all-or-none orders never split, lots never oversold, depth equal to the
reference's and to the L2 picture drawn by ``BookChanged`` events, sequence numbers without gaps,
rejections that change nothing, and snapshots that restore a core behaving identically afterwards.

Two drivers share those checks: the hypothesis state machine (short examples that shrink) and long
seeded runs of ``tests.test_determinism.workload`` (deep books that reach the rarer paths). Both are
sized for ``make test``; the ``soak`` variants run far more (``pytest --soak``).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

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
from exchange.core import Core
from exchange.domain import (
    InstrumentSpec,
    OrderType,
    ProductClass,
    RejectReason,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradingState,
)
from exchange.events import (
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
)
from tests.factories import OPERATOR, hog_spec
from tests.reference_book import ReferenceCore
from tests.test_determinism import workload

HOG = hog_spec(symbol="RC-HOG", reference_price_fen=2800, price_band_bps=400, tick_fen=10)
# ±0.3 % around ¥20.00 with a 5-fen tick: only 1995, 2000 and 2005 are inside the band
NARROW = hog_spec(symbol="RC-NAR", reference_price_fen=2000, price_band_bps=30, tick_fen=5,
                  min_order_heads=2, max_order_heads=20)
# piglets in fen per head, no band at all, and the market opens with a call auction
PIGLET = msgspec.structs.replace(
    hog_spec(symbol="RC-PIG", reference_price_fen=80_000, price_band_bps=0, tick_fen=100, max_order_heads=50,
             initial_state=TradingState.AUCTION),
    product_class=ProductClass.PIGLET,
)
SPECS: dict[str, InstrumentSpec] = {s.symbol: s for s in (HOG, NARROW, PIGLET)}
SYMBOLS = list(SPECS)
UNKNOWN_SYMBOL = "RC-NONE"
SYMBOL_MIX = [HOG.symbol] * 12 + [NARROW.symbol] * 4 + [PIGLET.symbol] * 6 + [UNKNOWN_SYMBOL]
SELLERS = [20, 21, 22]
BUYERS = [10, 11]
PARTICIPANTS = SELLERS + BUYERS
STEP_NS = 1_000_000_000
UNKNOWN_ORDER_ID = 999_999


def rarely(data: st.DataObject, odds: int) -> bool:
    """True about once in ``odds + 1`` draws (False is the simplest value, where hypothesis starts)."""
    return data.draw(st.integers(0, odds)) == odds


def event_instrument(event: Event) -> str:
    if isinstance(event, InstrumentListed):
        return event.spec.symbol
    if isinstance(event, LotRegistered):
        return event.lot.instrument
    return event.instrument


@dataclass
class OrderLedger:
    """What the events said about one order, to check quantity = filled + remaining + closed."""

    owner: int
    instrument: str
    all_or_none: bool
    quantity_heads: int
    price_fen: int  # its limit; 0 for a market order without a band
    filled_heads: int = 0
    closed_heads: int = 0  # cancelled or expired


class MatchingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = Core()
        self.reference = ReferenceCore()
        self.restored: Core | None = None  # a core restored from a snapshot, fed the same commands since
        self.now_ns = STEP_NS
        self.client_ids = 0
        self.used_client_ids: list[tuple[int, str]] = []
        self.orders: dict[int, OrderLedger] = {}
        self.lots: list[tuple[int, int, str]] = []  # (lot id, seller, instrument)
        self.lot_sold: dict[int, int] = {}
        self.reference_fen = {s: spec.reference_price_fen for s, spec in SPECS.items()}
        self.last_seq: dict[str, int] = {}
        self.l2: dict[tuple[str, Side], dict[int, int]] = {}  # the book as BookChanged events draw it
        self.last_place: PlaceOrder | None = None

    # -- driving both cores ------------------------------------------------------------------------

    def run(self, command: Command) -> list[Event]:
        hash_before = self.core.state_hash()
        events = self.core.apply(command)
        expected = self.reference.apply(command)
        assert events == expected, f"{command}\nfast: {events}\nreference: {expected}"
        if self.restored is not None:
            assert self.restored.apply(command) == events, "restored core diverged"
        rejections = [i for i, e in enumerate(events) if isinstance(e, Rejected)]
        assert rejections in ([], [len(events) - 1]), "a rejection is the last and only rejection"
        if events and all(isinstance(e, Rejected) for e in events):
            assert self.core.state_hash() == hash_before, f"rejected {command} changed the state"
        for event in events:
            assert event.ts_ns == command.ts_ns
            self.track(event)
        return events

    def track(self, event: Event) -> None:
        if isinstance(event, Rejected):
            assert event.seq == 0
            return
        symbol = event_instrument(event)
        assert event.seq == self.last_seq.get(symbol, 0) + 1, f"sequence gap at {event}"
        self.last_seq[symbol] = event.seq
        if isinstance(event, OrderAccepted):
            order = self.last_place
            assert order is not None
            self.orders[event.order_id] = OrderLedger(
                event.participant_id, event.instrument, order.all_or_none, event.quantity_heads, event.price_fen
            )
        elif isinstance(event, Trade):
            self.track_trade(event)
        elif isinstance(event, OrderCancelled):
            self.orders[event.order_id].closed_heads += event.cancelled_heads
        elif isinstance(event, OrderExpired):
            self.orders[event.order_id].closed_heads += event.expired_heads
        elif isinstance(event, OrderAmended):
            ledger = self.orders[event.order_id]
            ledger.quantity_heads = event.quantity_heads
            ledger.price_fen = event.price_fen
            assert event.remaining_heads == event.quantity_heads - ledger.filled_heads
        elif isinstance(event, LotRegistered):
            self.lots.append((event.lot.lot_id, event.lot.seller_id, event.lot.instrument))
            self.lot_sold[event.lot.lot_id] = 0
        elif isinstance(event, ReferencePriceSet):
            self.reference_fen[event.instrument] = event.price_fen
        elif isinstance(event, BookChanged):
            level = self.l2.setdefault((symbol, event.side), {})
            level[event.price_fen] = event.level_heads
            if not event.level_heads:
                del level[event.price_fen]

    def track_trade(self, trade: Trade) -> None:
        assert trade.quantity_heads > 0
        assert trade.buyer_id != trade.seller_id, "self-trade"
        buy = self.orders[trade.buy_order_id]
        sell = self.orders[trade.sell_order_id]
        if sell.all_or_none:
            assert sell.filled_heads == 0 and trade.sell_remaining_heads == 0, "all-or-none order split"
        assert sell.price_fen <= trade.price_fen, "sold below the sell's limit"
        assert buy.price_fen == 0 or trade.price_fen <= buy.price_fen, "bought above the buy's limit"
        buy.filled_heads += trade.quantity_heads
        sell.filled_heads += trade.quantity_heads
        self.lot_sold[trade.lot_id] += trade.quantity_heads

    # -- drawing values ----------------------------------------------------------------------------

    def next_client_id(self, data: st.DataObject, participant: int) -> str:
        own = [cid for p, cid in self.used_client_ids if p == participant]
        kind = data.draw(st.sampled_from(["fresh"] * 40 + ["reuse", "reuse", "empty", "long"]))
        if kind == "reuse" and own:
            return data.draw(st.sampled_from(own))
        if kind == "empty":
            return ""
        if kind == "long":
            return "x" * 37
        self.client_ids += 1
        cid = f"c{self.client_ids}"
        self.used_client_ids.append((participant, cid))
        return cid

    def draw_price(self, data: st.DataObject, symbol: str, side: Side = Side.BUY) -> int:
        """A price near the reference, a little keener than the other side's, so books cross often."""
        spec = SPECS.get(symbol, HOG)
        tick = spec.tick_fen
        spread = 1 if symbol == NARROW.symbol else 3  # the narrow band is only three ticks wide
        low, high = (-spread, spread + 1) if side == Side.BUY else (-spread - 1, spread)
        near = self.reference_fen.get(symbol, HOG.reference_price_fen) + tick * data.draw(st.integers(low, high))
        kind = data.draw(st.sampled_from(["near"] * 30 + ["off_tick", "outside", "not_positive"]))
        if kind == "off_tick":
            return near + tick // 2
        if kind == "outside":
            return near + tick * data.draw(st.sampled_from([-40, 40]))
        if kind == "not_positive":
            return data.draw(st.sampled_from([0, -tick]))
        return near

    def draw_quantity(self, data: st.DataObject, symbol: str) -> int:
        spec = SPECS.get(symbol, HOG)
        kind = data.draw(st.sampled_from(["small"] * 20 + ["large", "bounds"]))
        if kind == "large":
            return data.draw(st.integers(13, 45))
        if kind == "bounds":
            return data.draw(st.sampled_from([0, spec.min_order_heads - 1, spec.max_order_heads,
                                              spec.max_order_heads + 1]))
        return data.draw(st.integers(1, 12))

    def draw_symbol(self, data: st.DataObject) -> str:
        """Mostly the main hog book, so that it grows deep enough to match often."""
        return data.draw(st.sampled_from(SYMBOL_MIX))

    def draw_order_id(self, data: st.DataObject) -> int:
        kind = data.draw(st.sampled_from(["live"] * 5 + ["any", "unknown"]))
        if kind == "live" and self.core.orders:
            return data.draw(st.sampled_from(sorted(self.core.orders)))
        if kind == "any" and self.orders:
            return data.draw(st.sampled_from(sorted(self.orders)))
        return UNKNOWN_ORDER_ID

    # -- rules -------------------------------------------------------------------------------------

    @initialize()
    def open_markets(self) -> None:
        for spec in SPECS.values():
            self.run(ListInstrument(OPERATOR, self.now_ns, spec))
        for seller in SELLERS:
            for symbol in SYMBOLS:
                self.run(RegisterLot(seller, self.now_ns, symbol, 200, 110_000, "Rongchang", f"CQ-{seller}"))

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One command, drawn with weights that keep the books busy: mostly orders, some of everything."""
        action = data.draw(st.sampled_from(ACTIONS), label="action")
        getattr(self, action)(data)

    def place_order(self, data: st.DataObject) -> None:
        symbol = self.draw_symbol(data)
        side = data.draw(st.sampled_from([Side.BUY, Side.SELL]))
        participant, lot_id = self.draw_trader(data, side, symbol)
        market = self.reference.markets.get(symbol)
        # in a call auction only resting limit orders are taken: send mostly those, now and then others
        in_auction = market is not None and market.state == TradingState.AUCTION and not rarely(data, 8)
        order_type = OrderType.MARKET if not in_auction and rarely(data, 6) else OrderType.LIMIT
        tifs = [TimeInForce.GTC] * 4 + [TimeInForce.GTD] * 2 + [TimeInForce.IOC, TimeInForce.FOK]
        if in_auction:
            tifs = [TimeInForce.GTC, TimeInForce.GTD]
        elif order_type == OrderType.MARKET:
            tifs = [TimeInForce.IOC] * 6 + [TimeInForce.FOK] * 4 + [TimeInForce.GTC]
        tif = data.draw(st.sampled_from(tifs))
        resting = order_type == OrderType.LIMIT and tif in (TimeInForce.GTC, TimeInForce.GTD)
        expire_at_ns = 0
        if tif == TimeInForce.GTD or rarely(data, 40):
            expire_at_ns = self.now_ns + STEP_NS * data.draw(st.integers(0 if rarely(data, 8) else 1, 6))
            if rarely(data, 40):
                expire_at_ns = -expire_at_ns
        quantity = self.draw_quantity(data, symbol)
        if side == Side.SELL and resting and rarely(data, 2):
            quantity = data.draw(st.integers(1, 6))  # small enough for one bid to take whole, if all-or-none
        lot = self.reference.lots.get(lot_id)
        if side == Side.SELL and lot is not None and rarely(data, 8):
            quantity = lot.available_heads() + data.draw(st.integers(0, 1))  # all the lot has left, or one more
        min_quantity = 0
        if rarely(data, 6):
            odd = rarely(data, 6)
            min_quantity = data.draw(st.integers(-1, quantity + 1) if odd else st.integers(1, max(1, quantity)))
        # all-or-none and post-only mostly where they make sense, now and then where they do not
        all_or_none = rarely(data, 3 if side == Side.SELL and resting and not min_quantity else 60)
        post_only = rarely(data, 8 if resting else 60)
        self.last_place = command = PlaceOrder(
            participant, self.now_ns, self.next_client_id(data, participant), symbol, side, order_type,
            self.draw_price(data, symbol, side), quantity, tif, expire_at_ns,
            post_only=post_only,
            min_quantity_heads=min_quantity,
            all_or_none=all_or_none,
            stp=data.draw(st.sampled_from(list(SelfTradePrevention))),
            lot_id=lot_id,
        )
        self.run(command)

    def draw_trader(self, data: st.DataObject, side: Side, symbol: str) -> tuple[int, int]:
        """(participant, lot id): sellers mostly offer their own lots of this instrument."""
        participant = data.draw(st.sampled_from(PARTICIPANTS))
        lot_id = 0
        if side == Side.SELL and self.lots:
            fitting = [lot for lot in self.lots if lot[2] == symbol] or self.lots
            lot_id, seller, _ = data.draw(st.sampled_from(fitting * 20 + self.lots))
            if not rarely(data, 20):
                participant = seller
        if rarely(data, 60):
            lot_id = data.draw(st.sampled_from([0, 1, UNKNOWN_ORDER_ID]))
        return participant, lot_id

    def cancel_order(self, data: st.DataObject) -> None:
        order_id = self.draw_order_id(data)
        participant = self.draw_sender(data, order_id)
        self.run(CancelOrder(participant, self.now_ns, order_id))

    def amend_order(self, data: st.DataObject) -> None:
        order_id = self.draw_order_id(data)
        participant = self.draw_sender(data, order_id)
        ledger = self.orders.get(order_id)
        symbol = ledger.instrument if ledger else HOG.symbol
        price = data.draw(st.sampled_from([0, 0, self.draw_price(data, symbol)]))
        quantity = 0
        if data.draw(st.booleans()) or price == 0:
            current = ledger.quantity_heads if ledger else 5
            choices = [current - 2, current - 1, current, current + 1, current + 5, -1]
            resting = [o for o in self.reference.resting_orders() if o.order_id == order_id and o.lot_id]
            if resting:  # a sell: raise it to exactly what its lot has left, or one head more
                left = self.reference.lots[resting[0].lot_id].available_heads()
                choices += [current + left, current + left + 1]
            quantity = data.draw(st.sampled_from(choices))
        self.run(AmendOrder(participant, self.now_ns, order_id, price, quantity))

    def draw_sender(self, data: st.DataObject, order_id: int) -> int:
        ledger = self.orders.get(order_id)
        if ledger is not None and data.draw(st.integers(0, 6)) > 0:
            return ledger.owner
        return data.draw(st.sampled_from(PARTICIPANTS))

    def register_lot(self, data: st.DataObject) -> None:
        seller = data.draw(st.sampled_from(SELLERS))
        heads = data.draw(st.sampled_from([0, 5, 20, 60]))
        weight_g = data.draw(st.sampled_from([110_000, 110_000, 99_999, 120_001]))
        cert = data.draw(st.sampled_from([f"CQ-{seller}", f"CQ-{seller}", " "]))
        self.run(RegisterLot(seller, self.now_ns, self.draw_symbol(data), heads, weight_g, "Rongchang", cert))

    def change_session(self, data: st.DataObject) -> None:
        """Mostly the transition the market's state invites; now and then any, valid or not.

        Halted and auction markets are picked more often, so that they do not stay closed for long.
        """
        closed = [s for s, m in self.reference.markets.items() if m.state != TradingState.CONTINUOUS]
        symbol = data.draw(st.sampled_from(closed * 3 + SYMBOLS + [UNKNOWN_SYMBOL]))
        market = self.reference.markets.get(symbol)
        state = market.state if market else TradingState.CONTINUOUS
        likely = {
            TradingState.CONTINUOUS: [StartAuction, StartAuction, Halt],
            TradingState.AUCTION: [Uncross, Uncross, Halt],
            TradingState.HALTED: [Resume],
        }[state]
        kinds = [Halt, Resume, StartAuction, Uncross] if rarely(data, 5) else likely
        self.run(data.draw(st.sampled_from(kinds))(OPERATOR, self.now_ns, symbol))

    def set_reference_price(self, data: st.DataObject) -> None:
        symbol = UNKNOWN_SYMBOL if rarely(data, 10) else self.draw_symbol(data)
        price = self.draw_price(data, symbol)
        if rarely(data, 6):
            price = data.draw(st.sampled_from([0, -10, price + 1]))
        self.run(SetReferencePrice(OPERATOR, self.now_ns, symbol, price))

    def clock_tick(self, data: st.DataObject) -> None:
        self.now_ns += STEP_NS * data.draw(st.integers(0, 3))
        self.run(ClockTick(OPERATOR, self.now_ns))

    def list_again(self, data: st.DataObject) -> None:
        spec = data.draw(st.sampled_from([
            HOG,
            msgspec.structs.replace(HOG, symbol="RC-BAD", tick_fen=0),
            msgspec.structs.replace(HOG, symbol="RC-BAD", reference_price_fen=2805),
            msgspec.structs.replace(HOG, symbol=" "),
        ]))
        self.run(ListInstrument(OPERATOR, self.now_ns, spec))

    def restore_from_snapshot(self, data: st.DataObject) -> None:
        self.restore_from_snapshot_now()

    def restore_from_snapshot_now(self) -> None:
        """From now on a core restored from a snapshot of this moment gets every command too."""
        self.restored = Core.from_snapshot(self.core.snapshot())
        assert self.restored.state_hash() == self.core.state_hash()

    # -- invariants of the fast core ---------------------------------------------------------------

    def check_all(self) -> None:
        self.books_are_well_formed()
        self.quantities_are_conserved()
        self.lots_are_never_oversold()
        self.depth_matches_reference()

    @invariant()
    def books_are_well_formed(self) -> None:
        resting = 0
        for symbol, market in self.core.markets.items():
            book = market.book
            for book_side in (book.bids, book.asks):
                resting += self.check_side(symbol, book_side)
            if market.state == TradingState.CONTINUOUS:
                self.check_uncrossed(book)
        assert resting == len(self.core.orders)

    def check_side(self, symbol: str, book_side) -> int:
        keys = list(book_side.keys)
        assert keys == sorted(set(keys)) and set(keys) == set(book_side.levels)
        assert book_side.best_key == (keys[0] if keys else None)
        assert book_side.best is (book_side.levels[keys[0]] if keys else None), "cached best level stale"
        count = 0
        for key in keys:
            level = book_side.levels[key]
            assert level.price_fen * book_side.sign == key
            assert level.head is not None and level.head.prev is None, "empty level left in the book"
            order, previous, heads = level.head, None, 0
            while order is not None:
                assert order.prev is previous
                assert order.side == book_side.side and order.price_fen == level.price_fen
                assert order.instrument == symbol and order.remaining_heads > 0
                assert self.core.orders[order.order_id] is order
                assert previous is None or previous.priority < order.priority, "time priority broken"
                assert not (order.all_or_none and order.filled_heads), "all-or-none order partly filled"
                heads += order.remaining_heads
                previous, order, count = order, order.next, count + 1
            assert level.tail is previous
            assert level.heads == heads, "level size differs from the sum of its orders"
        return count

    def check_uncrossed(self, book) -> None:
        bids = list(book.bids.iter_orders())
        asks = [o for o in book.asks.iter_orders() if not o.all_or_none]
        if bids and asks:
            assert bids[0].price_fen < asks[0].price_fen, "book crossed at rest"
        for sell in book.asks.iter_orders():
            if sell.all_or_none:
                assert not any(
                    b.price_fen >= sell.price_fen and b.remaining_heads >= sell.remaining_heads
                    and b.participant_id != sell.participant_id
                    for b in bids
                ), "a resting bid could take a resting all-or-none sell whole"

    @invariant()
    def quantities_are_conserved(self) -> None:
        for order_id, ledger in self.orders.items():
            live = self.core.orders.get(order_id)
            remaining = 0 if live is None else live.remaining_heads
            if live is not None:
                assert live.filled_heads == ledger.filled_heads
                assert live.quantity_heads == ledger.quantity_heads
            assert ledger.quantity_heads == ledger.filled_heads + remaining + ledger.closed_heads, order_id

    @invariant()
    def lots_are_never_oversold(self) -> None:
        reserved: dict[int, int] = {}
        for order in self.core.orders.values():
            if order.lot is not None:
                reserved[order.lot.lot_id] = reserved.get(order.lot.lot_id, 0) + order.remaining_heads
        for lot_id, lot in self.core.lots.items():
            assert lot.reserved_heads == reserved.get(lot_id, 0), f"lot {lot_id} reservation drifted"
            assert lot.sold_heads == self.lot_sold[lot_id]
            assert 0 <= lot.sold_heads + lot.reserved_heads <= lot.heads, f"lot {lot_id} oversold"

    @invariant()
    def depth_matches_reference(self) -> None:
        for symbol in self.core.markets:
            _, bids, asks = self.core.depth(symbol, 1000)
            assert sorted(bids, reverse=True) == sorted(self.l2.get((symbol, Side.BUY), {}).items(), reverse=True)
            assert sorted(asks) == sorted(self.l2.get((symbol, Side.SELL), {}).items()), "BookChanged missed a level"
            assert self.core.depth(symbol) == self.reference.depth(symbol)
            assert self.core.depth(symbol, 1000) == self.reference.depth(symbol, 1000)
        if self.restored is not None:
            assert self.restored.state_hash() == self.core.state_hash()


ACTIONS = (
    ["place_order"] * 24 + ["cancel_order"] * 3 + ["amend_order"] * 4 + ["clock_tick"] * 3
    + ["change_session", "change_session", "set_reference_price", "register_lot", "list_again",
       "restore_from_snapshot"]
)

_QUIET = [HealthCheck.too_slow, HealthCheck.large_base_example]
FAST = settings(max_examples=60, stateful_step_count=100, deadline=None, suppress_health_check=_QUIET)
SOAK = settings(max_examples=1000, stateful_step_count=100, deadline=None, suppress_health_check=_QUIET)


def test_core_matches_reference() -> None:
    run_state_machine_as_test(MatchingMachine, settings=FAST)


def replay_audited(commands: list[Command]) -> None:
    """Feed a long command stream through the machine's checks: events against the reference, and
    every invariant after every command. Long seeded runs grow deeper books than hypothesis's short
    examples, so they reach the rarer paths (sweeps of all-or-none sells, auction ties) more often."""
    machine = MatchingMachine()
    for n, command in enumerate(commands):
        if isinstance(command, PlaceOrder):
            machine.last_place = command
        machine.run(command)
        machine.check_all()
        if n % 500 == 250:
            machine.restore_from_snapshot_now()


@pytest.mark.parametrize("seed", range(4))
def test_core_matches_reference_on_long_runs(seed: int) -> None:
    replay_audited(workload(seed, 1200))


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", range(100, 140))
def test_core_matches_reference_on_long_runs_soak(seed: int) -> None:
    replay_audited(workload(seed, 5000))


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_core_matches_reference_soak() -> None:
    run_state_machine_as_test(MatchingMachine, settings=SOAK)


# -- rare paths, pinned: both cores must agree and give exactly this outcome ----------------------


def both(*commands: Command) -> list[Event]:
    """Apply the commands to a fresh core and a fresh reference; the last command's events."""
    core, reference = Core(), ReferenceCore()
    events: list[Event] = []
    for command in commands:
        events = core.apply(command)
        assert events == reference.apply(command), command
    return events


def _setup() -> list[Command]:
    return [
        ListInstrument(OPERATOR, 1, HOG),
        RegisterLot(20, 1, HOG.symbol, 200, 110_000, "Rongchang", "CQ-20"),  # lot 1
        PlaceOrder(20, 1, "truck", HOG.symbol, Side.SELL, OrderType.LIMIT, 2790, 10, all_or_none=True, lot_id=1),
    ]


def _post_only(participant: int, cid: str, side: Side, price_fen: int, heads: int, **kw) -> PlaceOrder:
    return PlaceOrder(participant, 2, cid, HOG.symbol, side, OrderType.LIMIT, price_fen, heads, post_only=True, **kw)


def test_post_only_bid_may_rest_above_a_whole_truck_it_cannot_take() -> None:
    events = both(*_setup(), _post_only(10, "b", Side.BUY, 2800, 5))
    assert [type(e).__name__ for e in events] == ["OrderAccepted", "BookChanged"]


def test_post_only_bid_that_could_take_the_whole_truck_is_rejected() -> None:
    [rejected] = both(*_setup(), _post_only(10, "b", Side.BUY, 2800, 10))
    assert isinstance(rejected, Rejected) and rejected.reason == RejectReason.POST_ONLY_WOULD_TAKE


def test_post_only_all_or_none_sell_ignores_its_own_bids_and_bids_too_small() -> None:
    own_bid = PlaceOrder(21, 1, "own", HOG.symbol, Side.BUY, OrderType.LIMIT, 2800, 20)
    small_bid = PlaceOrder(10, 1, "small", HOG.symbol, Side.BUY, OrderType.LIMIT, 2800, 4)
    lot = RegisterLot(21, 1, HOG.symbol, 50, 110_000, "Rongchang", "CQ-21")  # lot 2
    sell = _post_only(21, "s", Side.SELL, 2790, 5, all_or_none=True, lot_id=2)
    events = both(*_setup(), own_bid, small_bid, lot, sell)
    assert [type(e).__name__ for e in events] == ["OrderAccepted", "BookChanged"]
    big_bid = PlaceOrder(11, 1, "big", HOG.symbol, Side.BUY, OrderType.LIMIT, 2790, 5)
    [rejected] = both(*_setup(), own_bid, small_bid, big_bid, lot, sell)
    assert isinstance(rejected, Rejected) and rejected.reason == RejectReason.POST_ONLY_WOULD_TAKE
