"""Continuous matching by example: every order type and rule with fills computed by hand.

The default instrument (tests/factories.py) has reference 2800 fen/kg, tick 10 and a ±4 % band, which
rounded inwards to the tick is [2690, 2910]. Sellers are 11-13, buyers 21-23; order, trade and lot ids
count from 1 in each test because every test starts from a fresh core.
"""

from __future__ import annotations

from exchange.domain import (
    BreedClass,
    ExpireReason,
    InstrumentSpec,
    OrderType,
    ProductClass,
    RejectReason,
    SelfTradePrevention,
    TimeInForce,
    TradingState,
)
from exchange.events import ReferencePriceSet, Rejected
from tests.factories import SYMBOL, hog_spec, order, register_lot
from tests.scenarios import (
    BUY,
    SELL,
    Scenario,
    accepted,
    amend_cmd,
    amended,
    cancel_cmd,
    cancelled,
    expired,
    halt_cmd,
    level,
    rejected,
    resume_cmd,
    state,
    tick_cmd,
    trade,
)

S1, S2, S3 = 11, 12, 13
B1, B2, B3 = 21, 22, 23
IOC_REASON, STP_REASON, GTD_REASON = ExpireReason.IOC, ExpireReason.SELF_TRADE, ExpireReason.GTD
R = RejectReason


def lot_left(s: Scenario, lot_id: int) -> tuple[int, int, int]:
    """(available, reserved, sold) heads of a lot."""
    lot = s.core.lots[lot_id]
    return (lot.available_heads, lot.reserved_heads, lot.sold_heads)


# -- limit orders ---------------------------------------------------------------------------------------


def test_limit_buy_sweeps_levels_in_price_time_order_at_maker_prices_and_rests_the_rest() -> None:
    s = Scenario()
    lot1, lot2 = s.lot(S1, 100), s.lot(S2, 100)
    a1 = s.rest(S1, SELL, 2800, 5, lot_id=lot1)
    a2 = s.rest(S2, SELL, 2800, 3, lot_id=lot2)  # same level, behind a1
    a3 = s.rest(S1, SELL, 2810, 4, lot_id=lot1)
    s.rest(S2, SELL, 2830, 6, lot_id=lot2)  # beyond the buy's limit
    assert s.depth() == ([], [(2800, 8), (2810, 4), (2830, 6)])

    s.expect(order(B1, BUY, 2820, 15, cid="b1"), [
        accepted(5, B1, "b1", BUY, 2820, 15),
        trade(1, 2800, 5, buy=(5, B1, 10), sell=(a1, S1, 0), lot_id=lot1, taker=BUY),
        trade(2, 2800, 3, buy=(5, B1, 7), sell=(a2, S2, 0), lot_id=lot2, taker=BUY),
        level(SELL, 2800, 0),
        trade(3, 2810, 4, buy=(5, B1, 3), sell=(a3, S1, 0), lot_id=lot1, taker=BUY),
        level(SELL, 2810, 0),
        level(BUY, 2820, 3),
    ])  # fmt: skip
    assert s.depth() == ([(2820, 3)], [(2830, 6)])
    assert lot_left(s, lot1) == (91, 0, 9)
    assert lot_left(s, lot2) == (91, 6, 3)


def test_limit_sell_hits_bids_best_first_and_a_partly_filled_maker_keeps_its_place() -> None:
    s = Scenario()
    lot1 = s.lot(S1, 100)
    b1 = s.rest(B1, BUY, 2800, 4)
    b2 = s.rest(B2, BUY, 2790, 5)
    b3 = s.rest(B3, BUY, 2790, 5)

    s.expect(order(S1, SELL, 2780, 6, cid="s1", lot_id=lot1), [
        accepted(4, S1, "s1", SELL, 2780, 6, lot1),
        trade(1, 2800, 4, buy=(b1, B1, 0), sell=(4, S1, 2), lot_id=lot1, taker=SELL),
        level(BUY, 2800, 0),
        trade(2, 2790, 2, buy=(b2, B2, 3), sell=(4, S1, 0), lot_id=lot1, taker=SELL),
        level(BUY, 2790, 8),
    ])  # fmt: skip
    # b2 is still first at 2790 with its 3 heads left
    s.expect(order(S1, SELL, 2790, 4, cid="s2", lot_id=lot1), [
        accepted(5, S1, "s2", SELL, 2790, 4, lot1),
        trade(3, 2790, 3, buy=(b2, B2, 0), sell=(5, S1, 1), lot_id=lot1, taker=SELL),
        trade(4, 2790, 1, buy=(b3, B3, 4), sell=(5, S1, 0), lot_id=lot1, taker=SELL),
        level(BUY, 2790, 4),
    ])  # fmt: skip
    assert s.depth() == ([(2790, 4)], [])
    assert lot_left(s, lot1) == (90, 0, 10)


def test_a_limit_that_does_not_cross_rests_and_joins_the_back_of_its_level() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    s.rest(S1, SELL, 2810, 5, lot_id=lot1)
    s.expect(order(B1, BUY, 2800, 7, cid="b1"), [accepted(2, B1, "b1", BUY, 2800, 7), level(BUY, 2800, 7)])
    s.expect(order(B2, BUY, 2800, 2, cid="b2"), [accepted(3, B2, "b2", BUY, 2800, 2), level(BUY, 2800, 9)])
    assert s.depth() == ([(2800, 9)], [(2810, 5)])


# -- market orders --------------------------------------------------------------------------------------


def test_market_buy_trades_up_to_the_band_edge_only_and_expires_the_rest() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    a1 = s.rest(S1, SELL, 2900, 3, lot_id=lot1)
    s.rest(S1, SELL, 2910, 3, lot_id=lot1)
    # reference 2790: band [ceil(2678.4) -> 2680, floor(2901.6) -> 2900]; 2910 is now beyond it
    [moved] = s.set_reference(2790)
    assert moved == ReferencePriceSet(7, s.now_ns, SYMBOL, 2790)  # listed 1, lot 2, two orders 3-6

    s.expect(order(B1, BUY, 0, 10, cid="m1", order_type=OrderType.MARKET, tif=TimeInForce.IOC), [
        accepted(3, B1, "m1", BUY, 2900, 10),
        trade(1, 2900, 3, buy=(3, B1, 7), sell=(a1, S1, 0), lot_id=lot1, taker=BUY),
        level(SELL, 2900, 0),
        expired(3, B1, 7, IOC_REASON),
    ])  # fmt: skip
    assert s.depth() == ([], [(2910, 3)])


def test_market_sell_trades_down_to_the_lower_band_edge() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    b1 = s.rest(B1, BUY, 2700, 2)
    b2 = s.rest(B2, BUY, 2690, 2)
    s.expect(order(S1, SELL, 0, 3, cid="m1", lot_id=lot1, order_type=OrderType.MARKET, tif=TimeInForce.FOK), [
        accepted(3, S1, "m1", SELL, 2690, 3, lot1),
        trade(1, 2700, 2, buy=(b1, B1, 0), sell=(3, S1, 1), lot_id=lot1, taker=SELL),
        level(BUY, 2700, 0),
        trade(2, 2690, 1, buy=(b2, B2, 1), sell=(3, S1, 0), lot_id=lot1, taker=SELL),
        level(BUY, 2690, 1),
    ])  # fmt: skip
    assert lot_left(s, lot1) == (997, 0, 3)


def test_market_order_on_an_unbanded_instrument_has_no_price_limit() -> None:
    s = Scenario(hog_spec(price_band_bps=0))
    lot1 = s.lot(S1)
    b1 = s.rest(B1, BUY, 9000, 3)  # any positive price on the tick is allowed without a band
    b2 = s.rest(B2, BUY, 10, 3)
    s.expect(order(S1, SELL, 0, 8, cid="m1", lot_id=lot1, order_type=OrderType.MARKET, tif=TimeInForce.IOC), [
        accepted(3, S1, "m1", SELL, 0, 8, lot1),
        trade(1, 9000, 3, buy=(b1, B1, 0), sell=(3, S1, 5), lot_id=lot1, taker=SELL),
        level(BUY, 9000, 0),
        trade(2, 10, 3, buy=(b2, B2, 0), sell=(3, S1, 2), lot_id=lot1, taker=SELL),
        level(BUY, 10, 0),
        expired(3, S1, 2, IOC_REASON),
    ])  # fmt: skip
    assert lot_left(s, lot1) == (994, 0, 6)
    a = s.rest(S1, SELL, 500_000, 1, lot_id=lot1)
    s.expect(order(B1, BUY, 0, 1, cid="m2", order_type=OrderType.MARKET, tif=TimeInForce.IOC), [
        accepted(5, B1, "m2", BUY, 0, 1),
        trade(3, 500_000, 1, buy=(5, B1, 0), sell=(a, S1, 0), lot_id=lot1, taker=BUY),
        level(SELL, 500_000, 0),
    ])  # fmt: skip


def test_market_order_into_an_empty_book_expires_whole() -> None:
    s = Scenario()
    s.expect(order(B1, BUY, 0, 5, cid="m1", order_type=OrderType.MARKET, tif=TimeInForce.IOC), [
        accepted(1, B1, "m1", BUY, 2910, 5),
        expired(1, B1, 5, IOC_REASON),
    ])  # fmt: skip


# -- time in force --------------------------------------------------------------------------------------


def test_gtc_rests_through_any_amount_of_time() -> None:
    s = Scenario()
    s.rest(B1, BUY, 2800, 5)
    assert s.tick(10**18) == []
    assert s.depth() == ([(2800, 5)], [])


def test_gtd_expires_at_a_clock_tick_once_its_time_is_reached() -> None:
    s = Scenario()
    t0 = s.now_ns
    g = s.rest(B1, BUY, 2800, 5, tif=TimeInForce.GTD, expire_at_ns=t0 + 100)
    s.rest(B2, BUY, 2800, 2)
    assert s.tick(t0 + 99) == []
    s.expect(tick_cmd(), [expired(g, B1, 5, GTD_REASON), level(BUY, 2800, 2)], at_ns=t0 + 100)
    assert s.depth() == ([(2800, 2)], [])
    s.reject(cancel_cmd(B1, g), R.UNKNOWN_ORDER)



def test_gtd_never_trades_after_expiry_even_when_the_next_command_would_cross_it() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    t0 = s.now_ns
    g = s.rest(B1, BUY, 2800, 5, tif=TimeInForce.GTD, expire_at_ns=t0 + 50)
    # the crossing sell arrives after the expiry time with no tick in between: the bid expires first
    s.expect(order(S1, SELL, 2800, 5, cid="s1", lot_id=lot1), [
        expired(g, B1, 5, GTD_REASON),
        level(BUY, 2800, 0),
        accepted(2, S1, "s1", SELL, 2800, 5, lot1),
        level(SELL, 2800, 5),
    ], at_ns=t0 + 70)  # fmt: skip
    assert s.depth() == ([], [(2800, 5)])


def test_gtd_partly_filled_expires_its_remainder_and_releases_its_lot() -> None:
    s = Scenario()
    lot1 = s.lot(S1, 10)
    t0 = s.now_ns
    g = s.rest(S1, SELL, 2800, 8, lot_id=lot1, tif=TimeInForce.GTD, expire_at_ns=t0 + 10)
    s.expect(order(B1, BUY, 2800, 3, cid="b1"), [
        accepted(2, B1, "b1", BUY, 2800, 3),
        trade(1, 2800, 3, buy=(2, B1, 0), sell=(g, S1, 5), lot_id=lot1, taker=BUY),
        level(SELL, 2800, 5),
    ])  # fmt: skip
    assert lot_left(s, lot1) == (2, 5, 3)
    s.expect(tick_cmd(), [expired(g, S1, 5, GTD_REASON), level(SELL, 2800, 0)], at_ns=t0 + 1000)
    assert lot_left(s, lot1) == (7, 0, 3)


def test_gtd_orders_due_together_expire_in_expiry_then_id_order() -> None:
    s = Scenario()
    t0 = s.now_ns
    late = s.rest(B1, BUY, 2800, 1, tif=TimeInForce.GTD, expire_at_ns=t0 + 20)
    early = s.rest(B2, BUY, 2790, 2, tif=TimeInForce.GTD, expire_at_ns=t0 + 10)
    s.expect(tick_cmd(), [
        expired(early, B2, 2, GTD_REASON), level(BUY, 2790, 0),
        expired(late, B1, 1, GTD_REASON), level(BUY, 2800, 0),
    ], at_ns=t0 + 20)  # fmt: skip


def test_gtd_expiry_happens_even_when_the_command_that_reveals_it_is_rejected() -> None:
    s = Scenario()
    t0 = s.now_ns
    g = s.rest(B1, BUY, 2800, 5, tif=TimeInForce.GTD, expire_at_ns=t0 + 10)
    # the expiry belongs to the clock, not to the command: the rejection itself still takes no seq
    s.expect(order(B2, BUY, 2805, 1, cid="bad"), [
        expired(g, B1, 5, GTD_REASON),
        level(BUY, 2800, 0),
        rejected(B2, R.PRICE_OFF_TICK, cid="bad"),
    ], at_ns=t0 + 10)  # fmt: skip


def test_amended_gtd_order_keeps_its_expiry_and_expires_once() -> None:
    s = Scenario()
    t0 = s.now_ns
    g = s.rest(B1, BUY, 2800, 5, tif=TimeInForce.GTD, expire_at_ns=t0 + 10)
    s.expect(amend_cmd(B1, g, price_fen=2790), [
        amended(g, B1, 2790, 5, 5, False), level(BUY, 2800, 0), level(BUY, 2790, 5),
    ])  # fmt: skip
    s.expect(tick_cmd(), [expired(g, B1, 5, GTD_REASON), level(BUY, 2790, 0)], at_ns=t0 + 10)
    assert s.tick(t0 + 20) == []


def test_ioc_fills_what_it_can_and_expires_the_rest() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    a = s.rest(S1, SELL, 2800, 4, lot_id=lot1)
    s.rest(S1, SELL, 2820, 4, lot_id=lot1)
    s.expect(order(B1, BUY, 2810, 10, cid="i1", tif=TimeInForce.IOC), [
        accepted(3, B1, "i1", BUY, 2810, 10),
        trade(1, 2800, 4, buy=(3, B1, 6), sell=(a, S1, 0), lot_id=lot1, taker=BUY),
        level(SELL, 2800, 0),
        expired(3, B1, 6, IOC_REASON),
    ])  # fmt: skip
    assert s.depth() == ([], [(2820, 4)])


def test_ioc_sell_that_finds_nothing_expires_and_releases_its_lot() -> None:
    s = Scenario()
    lot1 = s.lot(S1, 10)
    s.expect(order(S1, SELL, 2800, 10, cid="i1", lot_id=lot1, tif=TimeInForce.IOC), [
        accepted(1, S1, "i1", SELL, 2800, 10, lot1),
        expired(1, S1, 10, IOC_REASON),
    ])  # fmt: skip
    assert lot_left(s, lot1) == (10, 0, 0)


def test_fok_fills_completely_across_levels() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    a1 = s.rest(S1, SELL, 2800, 4, lot_id=lot1)
    a2 = s.rest(S1, SELL, 2810, 6, lot_id=lot1)
    s.expect(order(B1, BUY, 2810, 10, cid="f1", tif=TimeInForce.FOK), [
        accepted(3, B1, "f1", BUY, 2810, 10),
        trade(1, 2800, 4, buy=(3, B1, 6), sell=(a1, S1, 0), lot_id=lot1, taker=BUY),
        level(SELL, 2800, 0),
        trade(2, 2810, 6, buy=(3, B1, 0), sell=(a2, S1, 0), lot_id=lot1, taker=BUY),
        level(SELL, 2810, 0),
    ])  # fmt: skip


def test_fok_that_cannot_fill_completely_is_rejected_and_changes_nothing() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    s.rest(S1, SELL, 2800, 4, lot_id=lot1)
    s.rest(S1, SELL, 2810, 6, lot_id=lot1)
    s.reject(order(B1, BUY, 2810, 11, tif=TimeInForce.FOK), R.FOK_NOT_FILLABLE)
    s.reject(order(B1, BUY, 2800, 5, tif=TimeInForce.FOK), R.FOK_NOT_FILLABLE)  # limit stops at 2800
    assert s.depth() == ([], [(2800, 4), (2810, 6)])


# -- post-only and minimum quantity ---------------------------------------------------------------------


def test_post_only_rests_when_it_would_not_take() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    s.rest(S1, SELL, 2810, 5, lot_id=lot1)
    s.expect(order(B1, BUY, 2800, 5, cid="p1", post_only=True), [
        accepted(2, B1, "p1", BUY, 2800, 5),
        level(BUY, 2800, 5),
    ])  # fmt: skip


def test_post_only_that_would_take_is_rejected() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    s.rest(S1, SELL, 2810, 5, lot_id=lot1)
    rejected = s.reject(order(B1, BUY, 2810, 5, cid="p1", post_only=True), R.POST_ONLY_WOULD_TAKE)
    assert (rejected.client_order_id, rejected.instrument) == ("p1", SYMBOL)


def test_minimum_quantity_met_fills_and_rests_the_rest() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    a = s.rest(S1, SELL, 2800, 3, lot_id=lot1)
    s.rest(S1, SELL, 2820, 9, lot_id=lot1)
    s.expect(order(B1, BUY, 2800, 10, cid="q1", min_quantity_heads=3), [
        accepted(3, B1, "q1", BUY, 2800, 10),
        trade(1, 2800, 3, buy=(3, B1, 7), sell=(a, S1, 0), lot_id=lot1, taker=BUY),
        level(SELL, 2800, 0),
        level(BUY, 2800, 7),
    ])  # fmt: skip


def test_minimum_quantity_not_met_is_rejected() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    s.rest(S1, SELL, 2800, 3, lot_id=lot1)
    s.rest(S1, SELL, 2820, 9, lot_id=lot1)
    s.reject(order(B1, BUY, 2800, 10, min_quantity_heads=4), R.MIN_QUANTITY_NOT_MET)


# -- all-or-none sells ----------------------------------------------------------------------------------


def test_all_or_none_sell_is_skipped_keeping_its_priority_then_filled_whole() -> None:
    s = Scenario()
    lot1, lot2 = s.lot(S1, 100), s.lot(S2, 100)
    aon = s.rest(S1, SELL, 2800, 10, lot_id=lot1, all_or_none=True)
    a2 = s.rest(S2, SELL, 2800, 5, lot_id=lot2)
    # 6 heads cannot take the 10-head lot: it is passed over, never split
    s.expect(order(B1, BUY, 2800, 6, cid="b1", tif=TimeInForce.IOC), [
        accepted(3, B1, "b1", BUY, 2800, 6),
        trade(1, 2800, 5, buy=(3, B1, 1), sell=(a2, S2, 0), lot_id=lot2, taker=BUY),
        level(SELL, 2800, 10),
        expired(3, B1, 1, IOC_REASON),
    ])  # fmt: skip
    a4 = s.rest(S2, SELL, 2800, 4, lot_id=lot2)
    # 12 heads can take it whole, and it is still ahead of the later sell
    s.expect(order(B2, BUY, 2800, 12, cid="b2"), [
        accepted(5, B2, "b2", BUY, 2800, 12),
        trade(2, 2800, 10, buy=(5, B2, 2), sell=(aon, S1, 0), lot_id=lot1, taker=BUY),
        trade(3, 2800, 2, buy=(5, B2, 0), sell=(a4, S2, 2), lot_id=lot2, taker=BUY),
        level(SELL, 2800, 2),
    ])  # fmt: skip
    assert lot_left(s, lot1) == (90, 0, 10)


def test_skipped_all_or_none_level_gets_no_book_change() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    s.rest(S1, SELL, 2800, 10, lot_id=lot1, all_or_none=True)
    a2 = s.rest(S1, SELL, 2810, 5, lot_id=lot1)
    s.expect(order(B1, BUY, 2810, 5, cid="b1"), [
        accepted(3, B1, "b1", BUY, 2810, 5),
        trade(1, 2810, 5, buy=(3, B1, 0), sell=(a2, S1, 0), lot_id=lot1, taker=BUY),
        level(SELL, 2810, 0),
    ])  # fmt: skip
    assert s.depth() == ([], [(2800, 10)])


def test_incoming_all_or_none_sell_fills_whole_against_the_first_bid_able_to_take_it() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    s.rest(B1, BUY, 2820, 3)
    s.rest(S1, BUY, 2810, 20)  # the seller's own bid is passed over, neither traded nor expired
    s.rest(B2, BUY, 2810, 8)
    b3 = s.rest(B3, BUY, 2800, 12)
    s.expect(order(S1, SELL, 2800, 10, cid="a1", lot_id=lot1, all_or_none=True), [
        accepted(5, S1, "a1", SELL, 2800, 10, lot1),
        trade(1, 2800, 10, buy=(b3, B3, 2), sell=(5, S1, 0), lot_id=lot1, taker=SELL),
        level(BUY, 2800, 2),
    ])  # fmt: skip
    assert s.depth() == ([(2820, 3), (2810, 28), (2800, 2)], [])


def test_incoming_all_or_none_sell_rests_whole_when_no_bid_can_take_it() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    s.rest(B1, BUY, 2820, 6)
    s.rest(B2, BUY, 2810, 6)
    s.expect(order(S1, SELL, 2800, 10, cid="a1", lot_id=lot1, all_or_none=True), [
        accepted(3, S1, "a1", SELL, 2800, 10, lot1),
        level(SELL, 2800, 10),
    ])  # fmt: skip
    assert lot_left(s, lot1) == (990, 10, 0)


def test_reducing_a_resting_all_or_none_sell_lets_a_waiting_bid_take_it_at_the_earlier_price() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    aon = s.rest(S1, SELL, 2790, 10, lot_id=lot1, all_or_none=True)
    b = s.rest(B1, BUY, 2800, 6)  # too small for the lot: rests opposite it
    s.expect(amend_cmd(S1, aon, heads=6), [
        amended(aon, S1, 2790, 6, 6, True),
        level(SELL, 2790, 6),
        trade(1, 2790, 6, buy=(b, B1, 0), sell=(aon, S1, 0), lot_id=lot1, taker=BUY),
        level(BUY, 2800, 0),
        level(SELL, 2790, 0),
    ])  # fmt: skip
    assert s.depth() == ([], [])
    assert lot_left(s, lot1) == (994, 0, 6)




def test_reducing_a_post_only_all_or_none_sell_into_a_bid_able_to_take_it_is_rejected() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    s.rest(B1, BUY, 2800, 5)
    aon = s.rest(S1, SELL, 2790, 10, lot_id=lot1, all_or_none=True, post_only=True)  # too big for the bid
    s.reject(amend_cmd(S1, aon, heads=5), R.POST_ONLY_WOULD_TAKE)
    s.expect(amend_cmd(S1, aon, heads=6), [amended(aon, S1, 2790, 6, 6, True), level(SELL, 2790, 6)])


def test_a_post_only_bid_is_the_maker_when_a_reduced_all_or_none_sell_meets_it() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    aon = s.rest(S1, SELL, 2790, 10, lot_id=lot1, all_or_none=True)
    b = s.rest(B1, BUY, 2800, 6, post_only=True)  # may rest: it cannot take the whole truck
    s.expect(amend_cmd(S1, aon, heads=6), [
        amended(aon, S1, 2790, 6, 6, True),
        level(SELL, 2790, 6),
        trade(1, 2800, 6, buy=(b, B1, 0), sell=(aon, S1, 0), lot_id=lot1, taker=SELL),
        level(BUY, 2800, 0),
        level(SELL, 2790, 0),
    ])  # fmt: skip


# -- self-trade prevention ------------------------------------------------------------------------------


def _stp_book() -> tuple[Scenario, int, int, int, int, int]:
    """Asks: S2 3@2790, S1 5@2800, S2 4@2800. S1 then buys 10@2800 and meets its own sell."""
    s = Scenario()
    lot1, lot2 = s.lot(S1, 100), s.lot(S2, 100)
    a1 = s.rest(S2, SELL, 2790, 3, lot_id=lot2)
    own = s.rest(S1, SELL, 2800, 5, lot_id=lot1)
    a3 = s.rest(S2, SELL, 2800, 4, lot_id=lot2)
    return s, lot1, lot2, a1, own, a3


def test_stp_expire_taker_is_the_default() -> None:
    s, lot1, lot2, a1, _own, _a3 = _stp_book()
    s.expect(order(S1, BUY, 2800, 10, cid="t"), [
        accepted(4, S1, "t", BUY, 2800, 10),
        trade(1, 2790, 3, buy=(4, S1, 7), sell=(a1, S2, 0), lot_id=lot2, taker=BUY),
        level(SELL, 2790, 0),
        expired(4, S1, 7, STP_REASON),
    ])  # fmt: skip
    assert s.depth() == ([], [(2800, 9)])
    assert lot_left(s, lot1) == (95, 5, 0)


def test_stp_expire_maker_removes_the_own_order_and_matching_goes_on() -> None:
    s, lot1, lot2, a1, own, a3 = _stp_book()
    s.expect(order(S1, BUY, 2800, 10, cid="t", stp=SelfTradePrevention.EXPIRE_MAKER), [
        accepted(4, S1, "t", BUY, 2800, 10),
        trade(1, 2790, 3, buy=(4, S1, 7), sell=(a1, S2, 0), lot_id=lot2, taker=BUY),
        level(SELL, 2790, 0),
        expired(own, S1, 5, STP_REASON),
        trade(2, 2800, 4, buy=(4, S1, 3), sell=(a3, S2, 0), lot_id=lot2, taker=BUY),
        level(SELL, 2800, 0),
        level(BUY, 2800, 3),
    ])  # fmt: skip
    assert s.depth() == ([(2800, 3)], [])
    assert lot_left(s, lot1) == (100, 0, 0)


def test_stp_expire_both() -> None:
    s, lot1, lot2, a1, own, _a3 = _stp_book()
    s.expect(order(S1, BUY, 2800, 10, cid="t", stp=SelfTradePrevention.EXPIRE_BOTH), [
        accepted(4, S1, "t", BUY, 2800, 10),
        trade(1, 2790, 3, buy=(4, S1, 7), sell=(a1, S2, 0), lot_id=lot2, taker=BUY),
        level(SELL, 2790, 0),
        expired(own, S1, 5, STP_REASON),
        level(SELL, 2800, 4),
        expired(4, S1, 7, STP_REASON),
    ])  # fmt: skip
    assert s.depth() == ([], [(2800, 4)])
    assert lot_left(s, lot1) == (100, 0, 0)


def test_stp_for_a_sell_taker_expires_the_sell_and_releases_its_lot() -> None:
    s = Scenario()
    lot1 = s.lot(S1, 20)
    b1 = s.rest(B1, BUY, 2810, 2)
    s.rest(S1, BUY, 2800, 5)
    s.expect(order(S1, SELL, 2800, 10, cid="t", lot_id=lot1), [
        accepted(3, S1, "t", SELL, 2800, 10, lot1),
        trade(1, 2810, 2, buy=(b1, B1, 0), sell=(3, S1, 8), lot_id=lot1, taker=SELL),
        level(BUY, 2810, 0),
        expired(3, S1, 8, STP_REASON),
    ])  # fmt: skip
    assert lot_left(s, lot1) == (18, 0, 2)


def test_skipped_all_or_none_of_the_same_participant_is_no_self_trade() -> None:
    s = Scenario()
    lot1, lot2 = s.lot(S1), s.lot(S2)
    s.rest(S1, SELL, 2800, 10, lot_id=lot1, all_or_none=True)
    a2 = s.rest(S2, SELL, 2800, 4, lot_id=lot2)
    s.expect(order(S1, BUY, 2800, 4, cid="t"), [
        accepted(3, S1, "t", BUY, 2800, 4),
        trade(1, 2800, 4, buy=(3, S1, 0), sell=(a2, S2, 0), lot_id=lot2, taker=BUY),
        level(SELL, 2800, 10),
    ])  # fmt: skip


# -- amend ----------------------------------------------------------------------------------------------


def _two_sells() -> tuple[Scenario, int, int, int, int]:
    s = Scenario()
    lot1, lot2 = s.lot(S1, 100), s.lot(S2, 100)
    a1 = s.rest(S1, SELL, 2800, 10, lot_id=lot1)
    a2 = s.rest(S2, SELL, 2800, 5, lot_id=lot2)
    return s, lot1, lot2, a1, a2


def test_amend_reducing_quantity_keeps_priority() -> None:
    s, lot1, lot2, a1, a2 = _two_sells()
    s.expect(amend_cmd(S1, a1, heads=6), [amended(a1, S1, 2800, 6, 6, True), level(SELL, 2800, 11)])
    assert lot_left(s, lot1) == (94, 6, 0)
    s.expect(order(B1, BUY, 2800, 8, cid="b"), [
        accepted(3, B1, "b", BUY, 2800, 8),
        trade(1, 2800, 6, buy=(3, B1, 2), sell=(a1, S1, 0), lot_id=lot1, taker=BUY),
        trade(2, 2800, 2, buy=(3, B1, 0), sell=(a2, S2, 3), lot_id=lot2, taker=BUY),
        level(SELL, 2800, 3),
    ])  # fmt: skip


def test_amend_increasing_quantity_loses_priority() -> None:
    s, lot1, lot2, a1, a2 = _two_sells()
    s.expect(amend_cmd(S1, a1, heads=12), [
        amended(a1, S1, 2800, 12, 12, False),
        level(SELL, 2800, 5),
        level(SELL, 2800, 17),
    ])  # fmt: skip
    assert lot_left(s, lot1) == (88, 12, 0)
    s.expect(order(B1, BUY, 2800, 8, cid="b"), [
        accepted(3, B1, "b", BUY, 2800, 8),
        trade(1, 2800, 5, buy=(3, B1, 3), sell=(a2, S2, 0), lot_id=lot2, taker=BUY),
        trade(2, 2800, 3, buy=(3, B1, 0), sell=(a1, S1, 9), lot_id=lot1, taker=BUY),
        level(SELL, 2800, 9),
    ])  # fmt: skip


def test_amend_price_loses_priority_even_when_it_comes_back() -> None:
    s, lot1, lot2, a1, a2 = _two_sells()
    s.expect(amend_cmd(S1, a1, price_fen=2810), [
        amended(a1, S1, 2810, 10, 10, False),
        level(SELL, 2800, 5),
        level(SELL, 2810, 10),
    ])  # fmt: skip
    s.expect(amend_cmd(S1, a1, price_fen=2800), [
        amended(a1, S1, 2800, 10, 10, False),
        level(SELL, 2810, 0),
        level(SELL, 2800, 15),
    ])  # fmt: skip
    s.expect(order(B1, BUY, 2800, 6, cid="b"), [
        accepted(3, B1, "b", BUY, 2800, 6),
        trade(1, 2800, 5, buy=(3, B1, 1), sell=(a2, S2, 0), lot_id=lot2, taker=BUY),
        trade(2, 2800, 1, buy=(3, B1, 0), sell=(a1, S1, 9), lot_id=lot1, taker=BUY),
        level(SELL, 2800, 9),
    ])  # fmt: skip


def test_amend_quantity_is_the_new_total_including_what_already_filled() -> None:
    s, lot1, _lot2, a1, _a2 = _two_sells()
    s.submit(order(B1, BUY, 2800, 4))  # a1: 4 filled, 6 left
    s.expect(amend_cmd(S1, a1, heads=8), [amended(a1, S1, 2800, 8, 4, True), level(SELL, 2800, 9)])
    assert lot_left(s, lot1) == (92, 4, 4)
    s.reject(amend_cmd(S1, a1, heads=4), R.QUANTITY_OUT_OF_RANGE)  # nothing would be left


def test_amend_that_crosses_trades_at_once() -> None:
    s, lot1, _lot2, a1, _a2 = _two_sells()
    b = s.rest(B1, BUY, 2790, 12)
    s.expect(amend_cmd(B1, b, price_fen=2800), [
        amended(b, B1, 2800, 12, 12, False),
        level(BUY, 2790, 0),
        trade(1, 2800, 10, buy=(b, B1, 2), sell=(a1, S1, 0), lot_id=lot1, taker=BUY),
        trade(2, 2800, 2, buy=(b, B1, 0), sell=(2, S2, 3), lot_id=2, taker=BUY),
        level(SELL, 2800, 3),
    ])  # fmt: skip
    assert s.depth() == ([], [(2800, 3)])


def test_amend_of_a_post_only_order_that_would_take_is_rejected() -> None:
    s, _lot1, _lot2, _a1, _a2 = _two_sells()
    b = s.rest(B1, BUY, 2790, 5, post_only=True)
    s.reject(amend_cmd(B1, b, price_fen=2800), R.POST_ONLY_WOULD_TAKE)
    s.expect(amend_cmd(B1, b, heads=7), [amended(b, B1, 2790, 7, 7, False), level(BUY, 2790, 0), level(BUY, 2790, 7)])


def test_amend_beyond_what_the_lot_has_left_is_rejected() -> None:
    s, lot1, _lot2, a1, _a2 = _two_sells()
    s.rest(S1, SELL, 2810, 85, lot_id=lot1)  # lot1: 10 + 85 of 100 reserved
    s.reject(amend_cmd(S1, a1, heads=16), R.LOT_EXHAUSTED)
    s.expect(amend_cmd(S1, a1, heads=15), [
        amended(a1, S1, 2800, 15, 15, False), level(SELL, 2800, 5), level(SELL, 2800, 20),
    ])  # fmt: skip
    assert lot_left(s, lot1) == (0, 100, 0)


# -- cancel ---------------------------------------------------------------------------------------------


def test_cancel_own_order_releases_its_lot() -> None:
    s, lot1, _lot2, a1, _a2 = _two_sells()
    s.submit(order(B1, BUY, 2800, 4))  # a1: 6 left
    s.expect(cancel_cmd(S1, a1), [cancelled(a1, S1, 6), level(SELL, 2800, 5)])
    assert lot_left(s, lot1) == (96, 0, 4)
    assert s.depth() == ([], [(2800, 5)])


def test_cancel_of_the_last_order_at_a_level_removes_the_level() -> None:
    s = Scenario()
    b = s.rest(B1, BUY, 2800, 5)
    s.expect(cancel_cmd(B1, b), [cancelled(b, B1, 5), level(BUY, 2800, 0)])
    assert s.depth() == ([], [])


def test_cancel_of_another_participants_order_looks_exactly_like_an_unknown_order() -> None:
    s, _lot1, _lot2, a1, _a2 = _two_sells()
    other = s.reject(cancel_cmd(S2, a1), R.UNKNOWN_ORDER)
    unknown = s.reject(cancel_cmd(S2, 999), R.UNKNOWN_ORDER)
    assert other == Rejected(0, other.ts_ns, S2, R.UNKNOWN_ORDER, "", a1, "")
    assert unknown == Rejected(0, unknown.ts_ns, S2, R.UNKNOWN_ORDER, "", 999, "")
    s.reject(amend_cmd(S2, a1, heads=1), R.UNKNOWN_ORDER)


def test_cancel_of_a_filled_or_already_cancelled_order_is_unknown() -> None:
    s, _lot1, _lot2, a1, a2 = _two_sells()
    s.submit(order(B1, BUY, 2800, 10))  # fills a1
    s.reject(cancel_cmd(S1, a1), R.UNKNOWN_ORDER)
    s.submit(cancel_cmd(S2, a2))
    s.reject(cancel_cmd(S2, a2), R.UNKNOWN_ORDER)


# -- lots -----------------------------------------------------------------------------------------------


def test_sell_beyond_what_the_lot_has_left_is_rejected_and_cancel_releases_the_reservation() -> None:
    s = Scenario()
    lot1 = s.lot(S1, 10)
    a = s.rest(S1, SELL, 2810, 6, lot_id=lot1)
    s.reject(order(S1, SELL, 2820, 5, lot_id=lot1), R.LOT_EXHAUSTED)
    s.submit(order(B1, BUY, 2810, 2))  # sells 2 of the lot
    s.submit(cancel_cmd(S1, a))  # releases the 4 still offered
    assert lot_left(s, lot1) == (8, 0, 2)
    s.reject(order(S1, SELL, 2820, 9, lot_id=lot1), R.LOT_EXHAUSTED)
    s.rest(S1, SELL, 2820, 8, lot_id=lot1)
    assert lot_left(s, lot1) == (0, 8, 2)


def test_lot_reservation_is_released_when_the_sell_expires() -> None:
    s = Scenario()
    lot1 = s.lot(S1, 10)
    t0 = s.now_ns
    s.rest(S1, SELL, 2810, 10, lot_id=lot1, tif=TimeInForce.GTD, expire_at_ns=t0 + 5)
    s.reject(order(S1, SELL, 2820, 1, lot_id=lot1), R.LOT_EXHAUSTED)
    s.tick(t0 + 5)
    assert lot_left(s, lot1) == (10, 0, 0)
    s.rest(S1, SELL, 2820, 10, lot_id=lot1)


def test_another_sellers_lot_is_not_found_and_a_lot_of_another_instrument_is_refused() -> None:
    other = "RC-LH-NSY"
    s = Scenario(hog_spec(), hog_spec(symbol=other))
    lot1 = s.lot(S1, 10)
    lot_other = s.lot(S1, 10, instrument=other)
    s.reject(order(S2, SELL, 2800, 1, lot_id=lot1), R.LOT_NOT_FOUND)
    s.reject(order(S1, SELL, 2800, 1, lot_id=lot_other), R.LOT_WRONG_INSTRUMENT)
    s.reject(order(S1, SELL, 2800, 1, lot_id=0), R.LOT_NOT_FOUND)
    s.rest(S1, SELL, 2800, 1, lot_id=lot_other, instrument=other)


# -- trading state and reference price ------------------------------------------------------------------


def test_halt_rejects_orders_and_amends_but_allows_cancels_and_resume_restores_trading() -> None:
    s = Scenario()
    lot1 = s.lot(S1)
    a = s.rest(S1, SELL, 2800, 5, lot_id=lot1)
    b = s.rest(B1, BUY, 2790, 5)
    s.expect(halt_cmd(), [state(TradingState.HALTED)])
    s.reject(order(B2, BUY, 2800, 1), R.MARKET_HALTED)
    s.reject(amend_cmd(B1, b, price_fen=2800), R.MARKET_HALTED)
    s.reject(halt_cmd(), R.INVALID_STATE_TRANSITION)
    s.expect(cancel_cmd(B1, b), [cancelled(b, B1, 5), level(BUY, 2790, 0)])
    s.expect(resume_cmd(), [state(TradingState.CONTINUOUS)])
    s.expect(order(B2, BUY, 2800, 1, cid="b2"), [  # rejected orders took no id: this is order 3
        accepted(3, B2, "b2", BUY, 2800, 1),
        trade(1, 2800, 1, buy=(3, B2, 0), sell=(a, S1, 4), lot_id=lot1, taker=BUY),
        level(SELL, 2800, 4),
    ])  # fmt: skip
    s.reject(resume_cmd(), R.INVALID_STATE_TRANSITION)




def test_reference_price_change_moves_the_band_and_leaves_resting_orders_alone() -> None:
    s = Scenario()
    s.reject(order(B1, BUY, 2920, 1), R.PRICE_OUTSIDE_BAND)
    s.rest(B1, BUY, 2690, 1)  # the lower edge of [2690, 2910]
    s.reject(order(B1, BUY, 2680, 1), R.PRICE_OUTSIDE_BAND)
    s.set_reference(2900)  # band [ceil(2784) -> 2790, floor(3016) -> 3010]
    s.rest(B1, BUY, 3010, 1)
    s.reject(order(B1, BUY, 3020, 1), R.PRICE_OUTSIDE_BAND)
    s.reject(order(B1, BUY, 2780, 1), R.PRICE_OUTSIDE_BAND)
    s.rest(B1, BUY, 2790, 1)
    assert s.depth() == ([(3010, 1), (2790, 1), (2690, 1)], [])  # 2690 is now outside but stays


# -- piglets --------------------------------------------------------------------------------------------


def piglet_spec() -> InstrumentSpec:
    return InstrumentSpec(
        symbol="RC-PIG-7KG", product_class=ProductClass.PIGLET, breed_class=BreedClass.WAI_SAN_YUAN,
        delivery_point="Rongchang", lot_avg_min_g=6_000, lot_avg_max_g=8_000, animal_min_g=5_000,
        animal_max_g=9_000, tick_fen=100, min_order_heads=10, max_order_heads=1000, price_band_bps=400,
        reference_price_fen=82_100,  # ¥821 a head
    )  # fmt: skip


def test_piglets_are_priced_per_head() -> None:
    spec = piglet_spec()
    sym = spec.symbol
    s = Scenario(spec)
    [registered] = s.submit(register_lot(S1, 50, instrument=sym, avg_weight_g=7_000))
    lot1 = registered.lot.lot_id
    s.reject(order(S1, SELL, 82_050, 20, lot_id=lot1, instrument=sym), R.PRICE_OFF_TICK)
    # band: [ceil(78816) -> 78900, floor(85384) -> 85300] fen a head
    s.reject(order(S1, SELL, 78_800, 20, lot_id=lot1, instrument=sym), R.PRICE_OUTSIDE_BAND)
    s.reject(order(S1, SELL, 82_000, 9, lot_id=lot1, instrument=sym), R.QUANTITY_OUT_OF_RANGE)
    a = s.rest(S1, SELL, 82_000, 20, lot_id=lot1, instrument=sym)
    s.expect(order(B1, BUY, 85_300, 15, cid="p", instrument=sym), [
        accepted(2, B1, "p", BUY, 85_300, 15, instrument=sym),
        trade(1, 82_000, 15, buy=(2, B1, 0), sell=(a, S1, 5), lot_id=lot1, taker=BUY, instrument=sym),
        level(SELL, 82_000, 5, instrument=sym),
    ])  # fmt: skip

