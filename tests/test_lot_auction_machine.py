"""A hypothesis state machine over lot auctions and the continuous book of the same instrument together.

After every command: the ledger balances; a live auction holds exactly its leader's maximum (heads x
maximum: piglets are per head) and nothing for anyone else; an ended auction holds nothing. Every sale
went to the highest maximum (a tie to the earlier) at the price the proxy rule gives from the maxima
alone (the second maximum plus one increment, capped by the winner's, raised to the reserve once the
winner's maximum reaches it) or at the buy-now or negotiated price. At the end, replaying every
command into a fresh exchange gives the same state hash and the same events; on the way the core is
sometimes replaced by one restored from its snapshot. Bids and negotiation steps sometimes carry client
references (a few, so they collide across auctions and bodies); a retry of one that took effect never
takes effect again (no event while the core holds the reference).
"""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from exchange.commands import (
    BidLotAuction,
    BuyNowLotAuction,
    CancelOrder,
    NegotiateLotAuction,
    OfferLotAuction,
    ParticipantRole,
    WithdrawLotAuction,
)
from exchange.domain import AuctionState, LotAuction, RejectReason, Side
from exchange.events import LotAuctionChanged, OrderAccepted, Rejected, Trade
from exchange.matching.lot_auction import increment_at
from tests.factories import order
from tests.settlement_support import BUYER, BUYER2, FARMER, PIGLETS, SECOND_NS, world

MINUTE = 60 * SECOND_NS
BUYER3 = 12
BIDDERS = (BUYER, BUYER2, BUYER3)
STEPS = ((0, 1_000), (100_000, 2_000))  # ¥10 a head up to ¥1,000, then ¥20
HEADS = 5


def expected_price(a: LotAuction) -> int:
    winner = next(b for b in a.bidders if b.paddle == a.leader_paddle)
    others = [b.max_price_fen for b in a.bidders if b.paddle != winner.paddle]
    if not others:
        price = a.start_price_fen
    else:
        second = max(others)
        price = min(winner.max_price_fen, second + increment_at(a.increments, second))
        price = max(price, a.start_price_fen)
    if winner.max_price_fen >= a.reserve_price_fen:
        price = max(price, a.reserve_price_fen)
    return price


class AuctionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.x = world()
        self.x.register(BUYER3, ParticipantRole.BUYER)
        for b in BIDDERS:
            self.x.deposit(b, 5_000_000)  # ¥50,000: enough for some maxima, not all
        self.base = len(self.x.commands)
        self.auction_ids: list[int] = []
        self.order_ids: list[int] = []
        self.checked_events = 0
        self.steps = 0
        self.referenced: list[BidLotAuction | NegotiateLotAuction] = []  # took effect with a client ref

    def live(self) -> dict[int, LotAuction]:
        return self.x.core.auctions.live

    def pick(self, data: st.DataObject) -> int:
        """Mostly a live auction; sometimes an ended or unknown one."""
        live = sorted(self.live())
        if live and data.draw(st.integers(0, 9)):
            return data.draw(st.sampled_from(live))
        return data.draw(st.sampled_from([*self.auction_ids, 999]))

    @rule(start=st.integers(5, 9), reserve_extra=st.integers(0, 60), buy_now=st.booleans(),
          minutes=st.integers(1, 4), extension=st.sampled_from([0, MINUTE]), negotiation=st.sampled_from([0, 600]),
          catalogue=st.sampled_from(["", "", "CAT-A"]), heads=st.integers(1, HEADS))
    def offer(self, start: int, reserve_extra: int, buy_now: bool, minutes: int, extension: int, negotiation: int,
              catalogue: str, heads: int) -> None:
        lot_id = self.x.lot(FARMER, heads, 20_000, PIGLETS)
        start_fen = start * 10_000
        reserve_fen = start_fen + reserve_extra * 1_000
        events = self.x.apply(OfferLotAuction(
            FARMER, 0, lot_id, start_fen, reserve_fen, STEPS, self.x.ts_ns, self.x.ts_ns + minutes * MINUTE,
            reserve_fen + 10_000 if buy_now else 0, extension, negotiation * SECOND_NS, catalogue,
        ))  # fmt: skip
        for e in events:
            if isinstance(e, LotAuctionChanged):
                self.auction_ids.append(e.auction.auction_id)

    def _referenced(self, command: BidLotAuction | NegotiateLotAuction) -> None:
        """Apply; remember a command that took effect under a client reference, for `retry`."""
        events = self.x.apply(command)
        if command.client_ref and any(isinstance(e, LotAuctionChanged) for e in events):
            self.referenced.append(command)

    @rule(data=st.data(), bidder=st.sampled_from(BIDDERS), steps=st.integers(0, 40),
          ref=st.sampled_from(["", "", "r1", "r2"]))
    def bid(self, data: st.DataObject, bidder: int, steps: int, ref: str) -> None:
        auction_id = self.pick(data)
        a = self.live().get(auction_id)
        base = a.price_fen or a.start_price_fen if a is not None else 50_000
        self._referenced(BidLotAuction(bidder, 0, auction_id, base + steps * 1_000, ref))

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """A retry of a referenced command that took effect never takes effect again."""
        if not self.referenced:
            return
        command = data.draw(st.sampled_from(self.referenced))
        held = (command.participant_id, command.client_ref) in self.x.core.auctions.refs
        events = self.x.apply(msgspec.structs.replace(command, ts_ns=0))
        event("a retry of a reference held" if held else "a retry of a forgotten reference")
        if held:
            assert events == [], events
        else:  # forgotten only once its auction is over
            assert [e.reason for e in events if isinstance(e, Rejected)] == [RejectReason.UNKNOWN_AUCTION]

    @rule(data=st.data(), bidder=st.sampled_from(BIDDERS))
    def buy_now(self, data: st.DataObject, bidder: int) -> None:
        self.x.apply(BuyNowLotAuction(bidder, 0, self.pick(data)))

    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        self.x.apply(WithdrawLotAuction(FARMER, 0, self.pick(data)))

    @rule(data=st.data(), seller=st.booleans(), extra=st.integers(0, 20), accept=st.booleans(),
          ref=st.sampled_from(["", "r1", "r3"]))
    def negotiate(self, data: st.DataObject, seller: bool, extra: int, accept: bool, ref: str) -> None:
        auction_id = self.pick(data)
        a = self.live().get(auction_id)
        who = FARMER
        if not seller and a is not None and a.leader_paddle:
            who = next(b.participant_id for b in a.bidders if b.paddle == a.leader_paddle)
        price = (a.price_fen if a is not None else 50_000) + extra * 1_000
        self._referenced(NegotiateLotAuction(who, 0, auction_id, 0 if accept else price, accept, ref))

    @rule(seconds=st.sampled_from([1, 10, 30, 59, 60, 120]))
    def tick(self, seconds: int) -> None:
        self.x.tick(seconds * SECOND_NS)

    @rule(bidder=st.sampled_from(BIDDERS), price=st.integers(75, 85), heads=st.integers(1, 3))
    def book_buy(self, bidder: int, price: int, heads: int) -> None:
        events = self.x.apply(order(bidder, Side.BUY, price * 1_000, heads, instrument=PIGLETS))
        self.order_ids += [e.order_id for e in events if isinstance(e, OrderAccepted)]

    @rule(price=st.integers(75, 85), heads=st.integers(1, 3))
    def book_sell(self, price: int, heads: int) -> None:
        lot_id = self.x.lot(FARMER, heads, 20_000, PIGLETS)
        self.x.apply(order(FARMER, Side.SELL, price * 1_000, heads, instrument=PIGLETS, lot_id=lot_id))

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if self.order_ids:
            order_id = data.draw(st.sampled_from(self.order_ids))
            who = self.x.clearing.holds[order_id].buyer_id if order_id in self.x.clearing.holds else BUYER
            self.x.apply(CancelOrder(who, 0, order_id))

    # -- invariants ---------------------------------------------------------------------------------------

    @invariant()
    def ledger_balances(self) -> None:
        posted = pending = 0
        for acc in self.x.clearing.ledger.accounts():
            posted += acc.debits_posted_fen - acc.credits_posted_fen
            pending += acc.debits_pending_fen - acc.credits_pending_fen
        assert posted == 0 and pending == 0

    @invariant()
    def holds_follow_the_leaders(self) -> None:
        holds = self.x.clearing.holds
        for a in self.live().values():
            for b in a.bidders:
                if b.paddle == a.leader_paddle:
                    hold = holds[b.hold_id]
                    assert hold.held_fen == a.heads * b.max_price_fen
                    assert b.max_price_fen >= a.price_fen
                else:
                    assert b.hold_id not in holds

    @invariant()
    def ended_auctions_hold_nothing_and_sales_follow_the_rules(self) -> None:
        events = self.x.events
        holds = self.x.clearing.holds
        for i in range(self.checked_events, len(events)):
            e = events[i]
            if not isinstance(e, LotAuctionChanged) or e.auction.state in (
                AuctionState.SCHEDULED, AuctionState.OPEN, AuctionState.NEGOTIATING,
            ):
                continue
            a = e.auction
            assert a.auction_id not in self.live()
            assert all(b.hold_id not in holds for b in a.bidders)
            if a.state != AuctionState.SOLD:
                continue
            trade = next(t for t in events[i - 3:i] if isinstance(t, Trade) and t.trade_id == a.trade_id)
            winner = next(b for b in a.bidders if b.paddle == a.leader_paddle)
            assert (trade.buyer_id, trade.price_fen, trade.quantity_heads) == (winner.participant_id, a.price_fen,
                                                                               a.heads)
            if e.change == "sold" and e.participant_id == 0:  # closed by the clock
                assert a.price_fen == expected_price(a) >= a.reserve_price_fen
                for b in a.bidders:
                    assert b.max_price_fen < winner.max_price_fen or b is winner or (
                        b.max_price_fen == winner.max_price_fen and b.max_bid_no > winner.max_bid_no)
            elif e.change == "bought_now":
                assert a.price_fen == a.buy_now_price_fen
        self.checked_events = len(events)

    @invariant()
    def snapshot_restores_the_same_state(self) -> None:
        self.steps += 1
        if self.steps % 9 == 0:
            before = self.x.core.state_hash()
            self.x.restore_from_snapshot()
            assert self.x.core.state_hash() == before

    def teardown(self) -> None:
        replay = world()
        replay.register(BUYER3, ParticipantRole.BUYER)
        for b in BIDDERS:
            replay.deposit(b, 5_000_000)
        assert len(replay.commands) == self.base
        for command in self.x.commands[self.base:]:
            replay.ts_ns = command.ts_ns
            replay.apply(command)
        assert replay.core.state_hash() == self.x.core.state_hash()
        assert replay.events == self.x.events


AuctionMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
test_lot_auction_machine = AuctionMachine.TestCase
