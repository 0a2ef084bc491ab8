"""Lot auctions (exchange/matching/lot_auction.py): one exact example per rule, through the whole core
with its clearing, so every hold, release and sale is checked on the ledger too.

Piglets are quoted per head (the hold is price x heads); finishing hogs per kg (the hold per head is the
heaviest animal the grade allows, 140 kg, at the price)."""

from __future__ import annotations

from typing import Any

import pytest

from exchange.commands import (
    BidLotAuction,
    BuyNowLotAuction,
    NegotiateLotAuction,
    OfferLotAuction,
    ParticipantRole,
    RunPayouts,
    WithdrawLotAuction,
)
from exchange.core import Core
from exchange.domain import AuctionState, LotAuction, OfferSide, RejectReason
from exchange.events import LotAuctionChanged, ObligationRecorded, Trade, TradeSettled
from exchange.matching.lot_auction import increment_at
from exchange.settlement.ledger import AccountCode as AC
from tests.settlement_support import (
    BUYER,
    BUYER2,
    DAY_NS,
    FARMER,
    HOUR_NS,
    OPERATOR,
    PIGLETS,
    SECOND_NS,
    SYMBOL,
    T0,
    Exchange,
    world,
)

R = RejectReason
BUYER3 = 12
YUAN = 100
# piglets: ¥10 steps up to ¥1,000 a head, ¥20 from there
STEPS = ((0, 10 * YUAN), (1_000 * YUAN, 20 * YUAN))
CLOSE = T0 + HOUR_NS


def piglet_world() -> Exchange:
    x = world()
    x.register(BUYER3, ParticipantRole.BUYER)
    for b in (BUYER, BUYER2, BUYER3):
        x.deposit(b, 10_000_000 * YUAN)
    return x


def offer(x: Exchange, lot_id: int, *, start: int = 700 * YUAN, reserve: int = 800 * YUAN, by: int = FARMER,
          **kwargs: Any) -> LotAuction:
    terms: dict[str, Any] = dict(opens_at_ns=T0, closes_at_ns=CLOSE, increments=STEPS)
    terms.update(kwargs)
    events = x.ok(OfferLotAuction(by, 0, lot_id, start, reserve, **terms))
    return next(e.auction for e in events if isinstance(e, LotAuctionChanged))


def auction(x: Exchange, auction_id: int) -> LotAuction:
    """The auction as its last event showed it."""
    return [e.auction for e in x.of(LotAuctionChanged) if e.auction.auction_id == auction_id][-1]


def bid(x: Exchange, who: int, auction_id: int, max_yuan: int) -> LotAuction:
    x.ok(BidLotAuction(who, 0, auction_id, max_yuan * YUAN))
    return auction(x, auction_id)


def held(x: Exchange, who: int) -> int:
    return x.held(AC.BUYER_CASH, who)


def leader_id(a: LotAuction) -> int:
    return next(b.participant_id for b in a.bidders if b.paddle == a.leader_paddle)


def piglet_lot(x: Exchange, heads: int = 10) -> int:
    return x.lot(FARMER, heads, 20_000, PIGLETS)


def test_increment_table_by_price_range() -> None:
    assert increment_at(STEPS, 0) == 10 * YUAN
    assert increment_at(STEPS, 999 * YUAN) == 10 * YUAN
    assert increment_at(STEPS, 1_000 * YUAN) == 20 * YUAN
    assert increment_at(STEPS, 5_000 * YUAN) == 20 * YUAN


def test_reserve_met_sells_at_the_close_and_settles_like_a_book_trade() -> None:
    x = piglet_world()
    lot_id = piglet_lot(x)
    a = offer(x, lot_id)
    assert (a.state, a.heads, x.core.lots[lot_id].available_heads) == (AuctionState.OPEN, 10, 0)
    a = bid(x, BUYER, a.auction_id, 700)
    assert (a.price_fen, a.leader_paddle, a.bid_count) == (700 * YUAN, 1, 1)
    assert held(x, BUYER) == 7_000 * YUAN  # 10 heads x ¥700
    a = bid(x, BUYER2, a.auction_id, 820)  # the reserve is reached: the price jumps to it
    assert (a.price_fen, a.leader_paddle) == (800 * YUAN, 2)
    assert (held(x, BUYER), held(x, BUYER2)) == (0, 8_200 * YUAN)  # the outbid hold is voided at once
    x.advance(HOUR_NS - SECOND_NS)
    events = x.tick(SECOND_NS)  # exactly at the close
    trade = x.of(Trade, events)[0]
    assert (trade.price_fen, trade.quantity_heads, trade.buyer_id, trade.seller_id, trade.lot_id) == (
        800 * YUAN, 10, BUYER2, FARMER, lot_id)
    assert trade.buy_order_id == a.bidders[1].hold_id and trade.sell_order_id == 0
    obligation = x.of(ObligationRecorded, events)[0]
    assert (obligation.obligation_fen, obligation.released_fen) == (8_000 * YUAN, 200 * YUAN)
    assert auction(x, a.auction_id).state == AuctionState.SOLD
    assert held(x, BUYER2) == 0 and x.clearing.holds == {}
    assert x.core.lots[lot_id].sold_heads == 10 and not x.core.auctions.live
    # weigh-in, dispute window, fee, payout: exactly as for a book trade
    x.weigh_in(trade.trade_id, 10, 200_000)
    settled = x.of(TradeSettled, x.tick(2 * DAY_NS))  # the 48 h dispute window
    assert len(settled) == 1 and settled[0].trade_id == trade.trade_id
    assert settled[0].fee_fen == 80 * YUAN  # 1 % of ¥8,000
    assert x.balance(AC.FARMER_PAYABLE, FARMER) == 7_920 * YUAN
    x.ok(RunPayouts(OPERATOR, 0, "RUN-1"))
    assert x.balance(AC.BUYER_CASH, BUYER2) == 10_000_000 * YUAN - 8_000 * YUAN


def test_reserve_missed_passes_in_and_the_negotiation_can_be_accepted() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), reserve=900 * YUAN)
    bid(x, BUYER, a.auction_id, 720)
    a = bid(x, BUYER2, a.auction_id, 750)
    assert (a.price_fen, leader_id(a)) == (730 * YUAN, BUYER2)  # BUYER's 720 + ¥10
    events = x.tick(HOUR_NS)
    a = auction(x, a.auction_id)
    assert not x.of(Trade, events)
    assert (a.state, a.negotiate_until_ns) == (AuctionState.NEGOTIATING, CLOSE + HOUR_NS)
    assert held(x, BUYER2) == 7_500 * YUAN  # the top bidder's maximum stays held through the window
    x.reject(NegotiateLotAuction(BUYER, 0, a.auction_id, 800 * YUAN), R.NOT_NEGOTIATING)  # not the top bidder
    x.reject(NegotiateLotAuction(FARMER, 0, a.auction_id, accept=True), R.NO_OFFER_TO_ACCEPT)
    x.reject(NegotiateLotAuction(FARMER, 0, a.auction_id, 720 * YUAN), R.BID_TOO_LOW)  # below the top bid
    x.ok(NegotiateLotAuction(FARMER, 0, a.auction_id, 880 * YUAN))  # the seller comes down
    x.ok(NegotiateLotAuction(BUYER2, 0, a.auction_id, 820 * YUAN))  # counter-offer above its maximum
    assert held(x, BUYER2) == 8_200 * YUAN  # re-held at the offer
    assert (auction(x, a.auction_id).offer_side, auction(x, a.auction_id).offer_price_fen) == (
        OfferSide.BIDDER, 820 * YUAN)
    x.reject(NegotiateLotAuction(BUYER2, 0, a.auction_id, accept=True), R.NO_OFFER_TO_ACCEPT)  # its own offer
    x.reject(NegotiateLotAuction(FARMER, 0, a.auction_id, 810 * YUAN, accept=True), R.NO_OFFER_TO_ACCEPT)
    events = x.ok(NegotiateLotAuction(FARMER, 0, a.auction_id, 820 * YUAN, accept=True))
    trade = x.of(Trade, events)[0]
    assert (trade.price_fen, trade.buyer_id) == (820 * YUAN, BUYER2)
    assert auction(x, a.auction_id).state == AuctionState.SOLD and x.clearing.holds == {}


def test_negotiation_lapses_releases_every_hold_and_the_lot_can_be_offered_again() -> None:
    x = piglet_world()
    lot_id = piglet_lot(x)
    a = offer(x, lot_id, reserve=900 * YUAN, negotiation_ns=HOUR_NS)
    bid(x, BUYER, a.auction_id, 750)
    x.tick(HOUR_NS)
    x.ok(NegotiateLotAuction(FARMER, 0, a.auction_id, 850 * YUAN))
    x.tick(HOUR_NS - 1)
    assert auction(x, a.auction_id).state == AuctionState.NEGOTIATING
    x.tick(1)
    assert auction(x, a.auction_id).state == AuctionState.UNSOLD
    assert held(x, BUYER) == 0 and x.clearing.holds == {}
    x.reject(NegotiateLotAuction(BUYER, 0, a.auction_id, accept=True), R.UNKNOWN_AUCTION)
    assert x.core.lots[lot_id].available_heads == 10
    again = offer(x, lot_id, reserve=700 * YUAN, opens_at_ns=x.ts_ns, closes_at_ns=x.ts_ns + HOUR_NS)
    assert again.auction_id == a.auction_id + 1
    bid(x, BUYER, again.auction_id, 700)
    assert len(x.of(Trade, x.tick(HOUR_NS))) == 1


def test_no_bid_closes_unsold_and_no_negotiation_window_passes_straight_to_unsold() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x))
    b = offer(x, piglet_lot(x), reserve=900 * YUAN, negotiation_ns=0)
    bid(x, BUYER, b.auction_id, 750)
    x.tick(HOUR_NS)
    assert auction(x, a.auction_id).state == AuctionState.UNSOLD
    assert auction(x, b.auction_id).state == AuctionState.UNSOLD
    assert x.clearing.holds == {}


def test_increments_and_minimum_bids() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), start=990 * YUAN, reserve=2_000 * YUAN)
    x.reject(BidLotAuction(BUYER, 0, a.auction_id, 980 * YUAN), R.BID_TOO_LOW)  # below the start
    x.reject(BidLotAuction(BUYER, 0, a.auction_id, 99_050), R.PRICE_OFF_TICK)  # piglets tick ¥1
    a = bid(x, BUYER, a.auction_id, 990)
    x.reject(BidLotAuction(BUYER2, 0, a.auction_id, 999 * YUAN), R.BID_TOO_LOW)  # needs 990 + 10
    a = bid(x, BUYER2, a.auction_id, 1_000)
    assert a.price_fen == 1_000 * YUAN  # 990 + 10 = BUYER2's maximum
    x.reject(BidLotAuction(BUYER, 0, a.auction_id, 1_019 * YUAN), R.BID_TOO_LOW)  # from ¥1,000 the step is 20
    a = bid(x, BUYER, a.auction_id, 1_020)
    assert (a.price_fen, leader_id(a)) == (1_020 * YUAN, BUYER)  # min(1,020, 1,000 + 20)
    x.reject(BidLotAuction(BUYER, 0, a.auction_id, 1_020 * YUAN), R.BID_TOO_LOW)  # a leader must raise its max
    a = bid(x, BUYER, a.auction_id, 1_500)
    assert (a.price_fen, a.bid_count) == (1_020 * YUAN, 4)  # raising one's own maximum moves no price
    assert held(x, BUYER) == 15_000 * YUAN


def test_proxy_against_proxy_and_ties_go_to_the_earlier_maximum() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), reserve=2_000 * YUAN)
    a = bid(x, BUYER, a.auction_id, 900)
    assert a.price_fen == 700 * YUAN  # a proxy opens at the start price
    a = bid(x, BUYER2, a.auction_id, 850)
    assert (a.price_fen, leader_id(a)) == (860 * YUAN, BUYER)  # 850 + 10, BUYER's proxy answers
    assert held(x, BUYER2) == 0  # it never led: nothing held
    a = bid(x, BUYER2, a.auction_id, 900)
    assert (a.price_fen, leader_id(a)) == (900 * YUAN, BUYER)  # a tie: the earlier maximum keeps the lead
    a = bid(x, BUYER3, a.auction_id, 950)
    assert (a.price_fen, leader_id(a)) == (910 * YUAN, BUYER3)  # 900 + 10, never above 950
    assert (held(x, BUYER), held(x, BUYER3)) == (0, 9_500 * YUAN)
    assert [b.paddle for b in a.bidders] == [1, 2, 3]


def test_a_bid_must_be_covered_like_a_buy_order() -> None:
    x = world()
    x.deposit(BUYER, 7_000 * YUAN)
    a = offer(x, piglet_lot(x))
    x.reject(BidLotAuction(BUYER, 0, a.auction_id, 710 * YUAN), R.INSUFFICIENT_FUNDS)
    a = bid(x, BUYER, a.auction_id, 700)
    x.deposit(BUYER, 100 * YUAN)
    a = bid(x, BUYER, a.auction_id, 710)  # the current hold counts: 7,000 held + 100 free cover 7,100
    assert held(x, BUYER) == 7_100 * YUAN
    x.reject(BidLotAuction(FARMER, 0, a.auction_id, 900 * YUAN), R.SELF_TRADE_PREVENTED)


def test_a_finishing_hog_lot_is_bid_per_kg_and_held_at_the_heaviest_animal() -> None:
    x = piglet_world()
    lot_id = x.lot(FARMER, 20)
    a = offer(x, lot_id, start=2_500, reserve=2_600, increments=((0, 10),))
    a = bid(x, BUYER, a.auction_id, 27)
    assert held(x, BUYER) == 20 * 140 * 2_700  # 20 heads x 140 kg x ¥27/kg
    trade = x.of(Trade, x.tick(HOUR_NS))[0]
    assert trade.price_fen == 2_600 and trade.instrument == SYMBOL
    x.weigh_in(trade.trade_id, 20, 20 * 110_000)
    assert x.clearing.trades[trade.trade_id].amount_fen == 20 * 110 * 2_600


def test_a_late_bid_extends_the_close() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), extension_ns=60 * SECOND_NS)
    x.advance(HOUR_NS - 30 * SECOND_NS)
    a = bid(x, BUYER, a.auction_id, 800)
    assert a.closes_at_ns == CLOSE + 30 * SECOND_NS  # the bid's time + 60 s
    x.tick(60 * SECOND_NS - 1)
    assert auction(x, a.auction_id).state == AuctionState.OPEN
    x.advance(1)
    x.reject(BidLotAuction(BUYER2, 0, a.auction_id, 900 * YUAN), R.AUCTION_NOT_OPEN)  # closed, before the tick
    assert len(x.of(Trade, x.tick())) == 1


def test_an_early_bid_does_not_extend() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), extension_ns=60 * SECOND_NS)
    x.advance(HOUR_NS - 61 * SECOND_NS)
    assert bid(x, BUYER, a.auction_id, 800).closes_at_ns == CLOSE


def test_a_catalogue_closes_together_and_every_lot_extends_on_a_late_bid() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), catalogue="RC-2026-01", extension_ns=60 * SECOND_NS)
    b = offer(x, piglet_lot(x), catalogue="RC-2026-01", extension_ns=60 * SECOND_NS, closes_at_ns=CLOSE + DAY_NS)
    assert b.closes_at_ns == CLOSE  # takes the catalogue's close
    other = offer(x, piglet_lot(x), extension_ns=60 * SECOND_NS)
    bid(x, BUYER, b.auction_id, 800)
    x.advance(HOUR_NS - 10 * SECOND_NS)
    bid(x, BUYER2, a.auction_id, 800)
    extended = CLOSE + 50 * SECOND_NS
    assert auction(x, a.auction_id).closes_at_ns == extended
    assert auction(x, b.auction_id).closes_at_ns == extended
    assert auction(x, other.auction_id).closes_at_ns == CLOSE  # not in the catalogue
    trades = x.of(Trade, x.tick(10 * SECOND_NS))
    assert trades == [] and auction(x, other.auction_id).state == AuctionState.UNSOLD
    trades = x.of(Trade, x.tick(50 * SECOND_NS))
    assert [t.buyer_id for t in trades] == [BUYER2, BUYER]  # together, in auction id order


def test_buy_now_ends_the_auction_at_once() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), buy_now_price_fen=1_000 * YUAN)
    bid(x, BUYER, a.auction_id, 900)
    events = x.ok(BuyNowLotAuction(BUYER2, 0, a.auction_id))
    trade = x.of(Trade, events)[0]
    assert (trade.price_fen, trade.buyer_id) == (1_000 * YUAN, BUYER2)
    assert auction(x, a.auction_id).state == AuctionState.SOLD
    assert x.clearing.holds == {} and held(x, BUYER) == 0
    x.reject(BidLotAuction(BUYER3, 0, a.auction_id, 1_100 * YUAN), R.UNKNOWN_AUCTION)


def test_buy_now_is_gone_once_the_price_reaches_it_and_absent_without_a_price() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), buy_now_price_fen=900 * YUAN)
    bid(x, BUYER, a.auction_id, 950)
    bid(x, BUYER2, a.auction_id, 950)  # the tie lifts the price to 950
    x.reject(BuyNowLotAuction(BUYER3, 0, a.auction_id), R.BUY_NOW_UNAVAILABLE)
    b = offer(x, piglet_lot(x))
    x.reject(BuyNowLotAuction(BUYER3, 0, b.auction_id), R.BUY_NOW_UNAVAILABLE)


def test_withdrawal_before_the_first_bid_only() -> None:
    x = piglet_world()
    lot_id = piglet_lot(x)
    a = offer(x, lot_id)
    x.reject(WithdrawLotAuction(BUYER, 0, a.auction_id), R.NOT_AUTHORIZED)
    x.ok(WithdrawLotAuction(FARMER, 0, a.auction_id))
    assert auction(x, a.auction_id).state == AuctionState.WITHDRAWN
    assert x.core.lots[lot_id].available_heads == 10
    b = offer(x, lot_id)
    bid(x, BUYER, b.auction_id, 700)
    x.reject(WithdrawLotAuction(FARMER, 0, b.auction_id), R.AUCTION_HAS_BIDS)
    x.reject(WithdrawLotAuction(OPERATOR, 0, b.auction_id), R.AUCTION_HAS_BIDS)


def test_an_operator_offers_for_a_seller_and_nobody_else_can() -> None:
    x = piglet_world()
    lot_id = piglet_lot(x)
    x.reject(OfferLotAuction(BUYER, 0, lot_id, 70_000, 80_000, STEPS, T0, CLOSE, seller_id=FARMER),
             R.NOT_AUTHORIZED)
    x.reject(OfferLotAuction(BUYER, 0, lot_id, 70_000, 80_000, STEPS, T0, CLOSE), R.NOT_AUTHORIZED)  # not a seller
    a = offer(x, lot_id, by=OPERATOR, seller_id=FARMER)
    assert (a.seller_id, a.offered_by) == (FARMER, OPERATOR)
    x.reject(OfferLotAuction(FARMER, 0, lot_id, 70_000, 80_000, STEPS, T0, CLOSE), R.LOT_EXHAUSTED)  # in auction


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (dict(reserve_price_fen=60_000), R.INVALID_AUCTION),  # reserve below start
        (dict(start_price_fen=70_050), R.PRICE_OFF_TICK),
        (dict(start_price_fen=0), R.INVALID_PRICE),
        (dict(buy_now_price_fen=75_000), R.INVALID_AUCTION),  # below the reserve
        (dict(increments=()), R.INVALID_AUCTION),
        (dict(increments=((100, 1_000),)), R.INVALID_AUCTION),  # must start at 0
        (dict(increments=((0, 1_000), (0, 2_000))), R.INVALID_AUCTION),  # not ascending
        (dict(increments=((0, 1_050),)), R.INVALID_AUCTION),  # off the tick
        (dict(closes_at_ns=T0), R.INVALID_AUCTION),  # closes at its opening
        (dict(closes_at_ns=T0 - 1, opens_at_ns=T0 - 2), R.INVALID_AUCTION),  # in the past
        (dict(extension_ns=-1), R.INVALID_AUCTION),
        (dict(catalogue="x" * 37), R.INVALID_AUCTION),
    ],
)
def test_invalid_terms_are_rejected(changes: dict[str, Any], reason: R) -> None:
    x = piglet_world()
    lot_id = piglet_lot(x)
    terms: dict[str, Any] = dict(lot_id=lot_id, start_price_fen=70_000, reserve_price_fen=80_000, increments=STEPS,
                                 opens_at_ns=T0, closes_at_ns=CLOSE)
    terms.update(changes)
    x.reject(OfferLotAuction(FARMER, 0, **terms), reason)
    assert x.core.lots[lot_id].available_heads == 10


def test_a_scheduled_auction_opens_on_the_tick_and_takes_no_bid_before() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), opens_at_ns=T0 + HOUR_NS, closes_at_ns=T0 + 2 * HOUR_NS)
    assert a.state == AuctionState.SCHEDULED
    x.reject(BidLotAuction(BUYER, 0, a.auction_id, 800 * YUAN), R.AUCTION_NOT_OPEN)
    x.tick(HOUR_NS)
    assert auction(x, a.auction_id).state == AuctionState.OPEN
    bid(x, BUYER, a.auction_id, 800)


def test_snapshot_restores_live_auctions_and_replay_gives_the_same_hash() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), reserve=900 * YUAN)
    bid(x, BUYER, a.auction_id, 750)
    bid(x, BUYER2, a.auction_id, 760)
    before = x.core.state_hash()
    x.restore_from_snapshot()
    assert x.core.state_hash() == before
    assert x.core.auctions.live[a.auction_id] == auction(x, a.auction_id)
    x.tick(HOUR_NS)
    x.ok(NegotiateLotAuction(BUYER2, 0, a.auction_id, 900 * YUAN))
    x.ok(NegotiateLotAuction(FARMER, 0, a.auction_id, accept=True))
    replay = world()
    replay.register(BUYER3, ParticipantRole.BUYER)
    for command in x.commands[len(replay.commands):]:
        replay.ts_ns = command.ts_ns
        replay.apply(command)
    assert replay.core.state_hash() == x.core.state_hash()


def test_a_core_without_auctions_snapshots_as_before() -> None:
    x = piglet_world()
    data = x.core.snapshot()
    assert Core.from_snapshot(data).snapshot() == data
    assert x.core.auctions.snapshot() == b""


def test_a_bid_or_offer_retried_with_its_client_ref_takes_effect_once() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), reserve=900 * YUAN)
    first = x.ok(BidLotAuction(BUYER, 0, a.auction_id, 750 * YUAN, "bid-1"))
    answer = first[0].auction
    assert (answer.price_fen, answer.bid_count) == (700 * YUAN, 1)
    bid(x, BUYER2, a.auction_id, 760)  # the auction moves on: BUYER is outbid at 760
    assert x.apply(BidLotAuction(BUYER, 0, a.auction_id, 750 * YUAN, "bid-1")) == []  # a retry: nothing happens
    assert x.core.auctions.refs[(BUYER, "bid-1")].answer == answer  # the original answer, kept for the gateway
    assert (auction(x, a.auction_id).bid_count, held(x, BUYER), held(x, BUYER2)) == (2, 0, 7_600 * YUAN)
    x.reject(BidLotAuction(BUYER, 0, a.auction_id, 780 * YUAN, "bid-1"), R.DUPLICATE_REFERENCE)  # another body
    x.reject(NegotiateLotAuction(BUYER, 0, a.auction_id, 780 * YUAN, client_ref="bid-1"), R.DUPLICATE_REFERENCE)
    x.reject(BidLotAuction(BUYER, 0, a.auction_id, 760 * YUAN, "low"), R.BID_TOO_LOW)
    assert (BUYER, "low") not in x.core.auctions.refs  # a rejected bid uses no reference
    x.ok(BidLotAuction(BUYER, 0, a.auction_id, 790 * YUAN, "low"))
    x.ok(BidLotAuction(BUYER2, 0, a.auction_id, 790 * YUAN, "bid-1"))  # references are per participant
    x.reject(BidLotAuction(BUYER, 0, a.auction_id, 800 * YUAN, "x" * 37), R.INVALID_AUCTION)

    x.tick(HOUR_NS)  # passed in: BUYER leads at 790 (the earlier maximum)
    x.ok(NegotiateLotAuction(FARMER, 0, a.auction_id, 850 * YUAN, client_ref="o-1"))
    before = x.core.state_hash()
    assert x.apply(NegotiateLotAuction(FARMER, 0, a.auction_id, 850 * YUAN, client_ref="o-1")) == []
    assert x.core.state_hash() == before
    sold = x.ok(NegotiateLotAuction(BUYER, 0, a.auction_id, accept=True, client_ref="yes"))
    assert len(x.of(Trade, sold)) == 1
    # the auction has ended (the core no longer holds it): the acceptance's retry still answers it sold
    assert x.apply(NegotiateLotAuction(BUYER, 0, a.auction_id, accept=True, client_ref="yes")) == []
    kept = x.core.auctions.refs[(BUYER, "yes")].answer
    assert (kept.state, kept.price_fen) == (AuctionState.SOLD, 850 * YUAN)
    assert len(x.of(Trade)) == 1 and x.clearing.holds == {}

    # snapshots carry the references; replay gives the same hash
    live_hash = x.core.state_hash()
    x.restore_from_snapshot()
    assert x.core.state_hash() == live_hash and x.core.auctions.refs[(BUYER, "yes")].answer == kept
    replay = world()
    replay.register(BUYER3, ParticipantRole.BUYER)
    for command in x.commands[len(replay.commands):]:
        replay.ts_ns = command.ts_ns
        replay.apply(command)
    assert replay.core.state_hash() == x.core.state_hash()
    # forgotten by the first tick a retention window after their use once their auction has ended
    x.tick(DAY_NS)
    assert (BUYER, "yes") in x.core.auctions.refs
    x.tick(1)
    assert x.core.auctions.refs == {}
    assert x.core.auctions.snapshot() == Core.from_snapshot(x.core.snapshot()).auctions.snapshot()


def test_a_live_auction_keeps_its_references_past_the_window() -> None:
    x = piglet_world()
    a = offer(x, piglet_lot(x), closes_at_ns=T0 + 3 * DAY_NS)
    x.ok(BidLotAuction(BUYER, 0, a.auction_id, 750 * YUAN, "long"))
    x.tick(2 * DAY_NS)
    assert x.apply(BidLotAuction(BUYER, 0, a.auction_id, 750 * YUAN, "long")) == []  # still a retry
    assert auction(x, a.auction_id).bid_count == 1
