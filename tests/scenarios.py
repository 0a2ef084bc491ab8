"""A scripted market for the example tests: one core, a running clock, and builders for expected events.

``Scenario`` stamps every command with the next tick of its own clock (or a time the test names), so a
test reads as a list of commands. Expected events are written without ``seq`` and ``ts_ns``
(``expect`` fills them in: consecutive numbers per instrument continuing from the book's last one, 0
for a rejection, and the command's time), which keeps the hand-computed figures in focus while still
checking the numbering exactly.
"""

from __future__ import annotations

from typing import Any

import msgspec

from exchange.commands import (
    AmendOrder,
    CancelOrder,
    ClockTick,
    Command,
    Halt,
    Resume,
    SetReferencePrice,
    StartAuction,
    Uncross,
    stamp,
)
from exchange.core import Core
from exchange.domain import ExpireReason, InstrumentSpec, RejectReason, Side, TradingState
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
    Rejected,
    Trade,
    TradingStateChanged,
)
from tests.factories import OPERATOR, SYMBOL, hog_spec, list_instrument, order, register_lot

BUY = Side.BUY
SELL = Side.SELL
START_NS = 1_000


class Scenario:
    """A fresh core with instruments listed; every command goes through ``submit``."""

    def __init__(self, *specs: InstrumentSpec) -> None:
        self.core = Core()
        self.now_ns = START_NS
        for spec in specs or (hog_spec(),):
            [listed] = self.submit(list_instrument(spec))
            assert isinstance(listed, InstrumentListed)

    # -- driving the core ---------------------------------------------------------------------------

    def submit(self, command: Command, at_ns: int | None = None) -> list[Event]:
        """Apply one command stamped with the next clock tick (or ``at_ns``, which must not go back)."""
        if at_ns is None:
            at_ns = self.now_ns + 1
        assert at_ns >= self.now_ns, "the exchange clock never goes back"
        self.now_ns = at_ns
        return self.core.apply(stamp(command, at_ns))

    def lot(self, seller: int, heads: int = 1000, instrument: str = SYMBOL) -> int:
        [registered] = self.submit(register_lot(seller, heads, instrument=instrument))
        assert isinstance(registered, LotRegistered), registered
        return registered.lot.lot_id

    def rest(self, participant: int, side: Side, price_fen: int, heads: int, **kwargs: Any) -> int:
        """Place an order that must rest untouched; returns its order id."""
        events = self.submit(order(participant, side, price_fen, heads, **kwargs))
        assert [type(e) for e in events] == [OrderAccepted, BookChanged], events
        return events[0].order_id

    def cancel(self, participant: int, order_id: int) -> list[Event]:
        return self.submit(cancel_cmd(participant, order_id))

    def amend(self, participant: int, order_id: int, price_fen: int = 0, heads: int = 0) -> list[Event]:
        return self.submit(amend_cmd(participant, order_id, price_fen, heads))

    def tick(self, at_ns: int) -> list[Event]:
        return self.submit(tick_cmd(), at_ns)

    def start_auction(self, instrument: str = SYMBOL) -> list[Event]:
        return self.submit(start_auction_cmd(instrument))

    def uncross(self, instrument: str = SYMBOL) -> list[Event]:
        return self.submit(uncross_cmd(instrument))

    def set_reference(self, price_fen: int, instrument: str = SYMBOL) -> list[Event]:
        return self.submit(reference_cmd(price_fen, instrument))

    # -- checking ------------------------------------------------------------------------------------

    def seq(self, instrument: str = SYMBOL) -> int:
        return self.core.markets[instrument].book.seq

    def depth(self, instrument: str = SYMBOL) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(bids, asks) best first as (price_fen, heads)."""
        _, bids, asks = self.core.depth(instrument, 100)
        return bids, asks

    def expect(self, command: Command, expected: list[Event], at_ns: int | None = None) -> list[Event]:
        """Apply ``command`` and assert it yields exactly ``expected`` (numbered and stamped here)."""
        seqs = {symbol: market.book.seq for symbol, market in self.core.markets.items()}
        events = self.submit(command, at_ns)
        numbered = []
        for event in expected:
            if isinstance(event, Rejected):
                numbered.append(msgspec.structs.replace(event, seq=0, ts_ns=self.now_ns))
                continue
            symbol = instrument_of(event)
            seqs[symbol] += 1
            numbered.append(msgspec.structs.replace(event, seq=seqs[symbol], ts_ns=self.now_ns))
        assert events == numbered, _mismatch(events, numbered)
        return events

    def reject(self, command: Command, reason: RejectReason, at_ns: int | None = None) -> Rejected:
        """Apply ``command``, assert one ``Rejected`` with ``reason`` and that nothing at all changed."""
        before = self.core.state_hash()
        events = self.submit(command, at_ns)
        assert len(events) == 1 and isinstance(events[0], Rejected), events
        [rejected] = events
        assert (rejected.reason, rejected.seq, rejected.participant_id) == (reason, 0, command.participant_id)
        assert self.core.state_hash() == before
        return rejected


# -- commands (the time is stamped by Scenario.submit) ---------------------------------------------------


def cancel_cmd(participant: int, order_id: int) -> CancelOrder:
    return CancelOrder(participant_id=participant, ts_ns=0, order_id=order_id)


def amend_cmd(participant: int, order_id: int, price_fen: int = 0, heads: int = 0) -> AmendOrder:
    return AmendOrder(participant_id=participant, ts_ns=0, order_id=order_id, price_fen=price_fen, quantity_heads=heads)


def tick_cmd() -> ClockTick:
    return ClockTick(participant_id=OPERATOR, ts_ns=0)


def halt_cmd(instrument: str = SYMBOL) -> Halt:
    return Halt(participant_id=OPERATOR, ts_ns=0, instrument=instrument)


def resume_cmd(instrument: str = SYMBOL) -> Resume:
    return Resume(participant_id=OPERATOR, ts_ns=0, instrument=instrument)


def start_auction_cmd(instrument: str = SYMBOL) -> StartAuction:
    return StartAuction(participant_id=OPERATOR, ts_ns=0, instrument=instrument)


def uncross_cmd(instrument: str = SYMBOL) -> Uncross:
    return Uncross(participant_id=OPERATOR, ts_ns=0, instrument=instrument)


def reference_cmd(price_fen: int, instrument: str = SYMBOL) -> SetReferencePrice:
    return SetReferencePrice(participant_id=OPERATOR, ts_ns=0, instrument=instrument, price_fen=price_fen)


def _mismatch(got: list[Event], want: list[Event]) -> str:
    """One line per position, marked where the actual and expected events differ."""
    lines = [f"got {len(got)} events, expected {len(want)}"]
    for i in range(max(len(got), len(want))):
        g = got[i] if i < len(got) else None
        w = want[i] if i < len(want) else None
        lines.append(f"{'  ' if g == w else '!!'} {i}: got  {g!r}")
        if g != w:
            lines.append(f"      want {w!r}")
    return "\n".join(lines)


def instrument_of(event: Event) -> str:
    if isinstance(event, InstrumentListed):
        return event.spec.symbol
    if isinstance(event, LotRegistered):
        return event.lot.instrument
    return event.instrument  # type: ignore[union-attr]


# -- expected events (seq and ts_ns are filled in by Scenario.expect) -------------------------------------


def accepted(
    order_id: int, participant: int, cid: str, side: Side, price_fen: int, heads: int, lot_id: int = 0,
    instrument: str = SYMBOL,
) -> OrderAccepted:
    return OrderAccepted(0, 0, order_id, participant, cid, instrument, side, price_fen, heads, lot_id)


def trade(
    trade_id: int, price_fen: int, heads: int, *, buy: tuple[int, int, int], sell: tuple[int, int, int],
    lot_id: int, taker: int, instrument: str = SYMBOL,
) -> Trade:
    """``buy`` and ``sell`` are (order id, participant, remaining heads after the fill)."""
    (buy_id, buyer, buy_left), (sell_id, seller, sell_left) = buy, sell
    return Trade(
        0, 0, instrument, trade_id, price_fen, heads, buy_id, sell_id, buyer, seller, lot_id, taker,
        buy_left, sell_left,
    )  # fmt: skip


def level(side: Side, price_fen: int, heads: int, instrument: str = SYMBOL) -> BookChanged:
    return BookChanged(0, 0, instrument, side, price_fen, heads)


def cancelled(order_id: int, participant: int, heads: int, instrument: str = SYMBOL) -> OrderCancelled:
    return OrderCancelled(0, 0, order_id, participant, instrument, heads)


def expired(
    order_id: int, participant: int, heads: int, reason: ExpireReason, instrument: str = SYMBOL
) -> OrderExpired:
    return OrderExpired(0, 0, order_id, participant, instrument, heads, reason)


def amended(
    order_id: int, participant: int, price_fen: int, heads: int, remaining: int, kept: bool,
    instrument: str = SYMBOL,
) -> OrderAmended:
    return OrderAmended(0, 0, order_id, participant, instrument, price_fen, heads, remaining, kept)


def state(value: TradingState, instrument: str = SYMBOL) -> TradingStateChanged:
    return TradingStateChanged(0, 0, instrument, value)


def uncrossed(price_fen: int, heads: int, instrument: str = SYMBOL) -> AuctionUncrossed:
    return AuctionUncrossed(0, 0, instrument, price_fen, heads)


def rejected(
    participant: int, reason: RejectReason, cid: str = "", order_id: int = 0, instrument: str = SYMBOL
) -> Rejected:
    return Rejected(0, 0, participant, reason, cid, order_id, instrument)
