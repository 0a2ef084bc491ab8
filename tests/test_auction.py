"""The call auction by example: collection, the uncrossing price and its tie-breaks, allocation, and what
follows. Every price and fill below is computed by hand in the comments.

Unless a test says otherwise the instrument is listed in auction with reference 2800 and a ±10 % band
([2520, 3080]). Sellers are 11-13 (lots 1-3 in that order), buyers 21-23.
"""

from __future__ import annotations

import pytest

from exchange.domain import ExpireReason, OrderType, RejectReason, TimeInForce, TradingState
from tests.factories import hog_spec, order
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
    resume_cmd,
    start_auction_cmd,
    state,
    tick_cmd,
    trade,
    uncross_cmd,
    uncrossed,
)

S1, S2, S3 = 11, 12, 13
B1, B2, B3 = 21, 22, 23
R = RejectReason
AUCTION, CONTINUOUS = TradingState.AUCTION, TradingState.CONTINUOUS


def auction(reference_price_fen: int = 2800) -> tuple[Scenario, int, int, int]:
    """A market listed in auction, and a lot of 100 heads for each seller."""
    s = Scenario(hog_spec(reference_price_fen=reference_price_fen, price_band_bps=1000, initial_state=AUCTION))
    return (s, s.lot(S1, 100), s.lot(S2, 100), s.lot(S3, 100))


# -- collecting -----------------------------------------------------------------------------------------


def test_orders_collect_without_matching_while_in_auction() -> None:
    s, lot1, _, _ = auction()
    s.rest(B1, BUY, 2850, 5)
    s.rest(S1, SELL, 2750, 5, lot_id=lot1)  # crosses the bid, and still only rests
    s.rest(B2, BUY, 2800, 3, tif=TimeInForce.GTD, expire_at_ns=s.now_ns + 1000)
    assert s.depth() == ([(2850, 5), (2800, 3)], [(2750, 5)])


def test_a_continuous_market_can_start_an_auction_and_only_an_auction_can_uncross() -> None:
    s = Scenario()  # continuous, band [2690, 2910]
    lot1 = s.lot(S1)
    a = s.rest(S1, SELL, 2810, 5, lot_id=lot1)
    s.rest(B1, BUY, 2800, 5)
    s.reject(uncross_cmd(), R.INVALID_STATE_TRANSITION)
    s.expect(start_auction_cmd(), [state(AUCTION)])
    s.reject(start_auction_cmd(), R.INVALID_STATE_TRANSITION)
    b = s.rest(B2, BUY, 2820, 4)
    # candidates 2800, 2810, 2820: bids at or above 9, 4, 4; asks at or below 0, 5, 5; volume 0, 4, 4;
    # imbalance -, 1, 1; 2810 is nearer the reference 2800
    s.expect(uncross_cmd(), [
        trade(1, 2810, 4, buy=(b, B2, 0), sell=(a, S1, 1), lot_id=lot1, taker=0),
        level(BUY, 2820, 0),
        level(SELL, 2810, 1),
        uncrossed(2810, 4),
        state(CONTINUOUS),
    ])  # fmt: skip
    assert s.depth() == ([(2800, 5)], [(2810, 1)])


def test_halt_during_an_auction_resumes_into_the_auction() -> None:
    s, lot1, _, _ = auction()
    b = s.rest(B1, BUY, 2800, 5)
    a = s.rest(S1, SELL, 2800, 5, lot_id=lot1)
    s.expect(halt_cmd(), [state(TradingState.HALTED)])
    s.reject(uncross_cmd(), R.INVALID_STATE_TRANSITION)
    s.reject(order(B2, BUY, 2800, 1), R.MARKET_HALTED)
    s.expect(resume_cmd(), [state(AUCTION)])
    s.rest(B2, BUY, 2790, 1)  # still collecting, not matching
    s.expect(uncross_cmd(), [
        trade(1, 2800, 5, buy=(b, B1, 0), sell=(a, S1, 0), lot_id=lot1, taker=0),
        level(BUY, 2800, 0),
        level(SELL, 2800, 0),
        uncrossed(2800, 5),
        state(CONTINUOUS),
    ])  # fmt: skip


# -- the uncrossing price -------------------------------------------------------------------------------


def test_uncross_at_the_price_of_maximum_volume() -> None:
    s, lot1, lot2, lot3 = auction()
    b1 = s.rest(B1, BUY, 2840, 10)
    b2 = s.rest(B2, BUY, 2820, 4)
    s.rest(B3, BUY, 2800, 2)
    a1 = s.rest(S1, SELL, 2780, 3, lot_id=lot1)
    a2 = s.rest(S2, SELL, 2820, 9, lot_id=lot2)
    s.rest(S3, SELL, 2860, 5, lot_id=lot3)
    # price:                2780  2800  2820  2840  2860
    # bids at or above:       16    16    14    10     0
    # asks at or below:        3     3    12    12    17
    # volume:                  3     3    12    10     0   -> 2820, although 2800 is the reference
    # allocation: b1 takes a1's 3 and 7 of a2; b2 takes a2's last 2
    s.expect(uncross_cmd(), [
        trade(1, 2820, 3, buy=(b1, B1, 7), sell=(a1, S1, 0), lot_id=lot1, taker=0),
        trade(2, 2820, 7, buy=(b1, B1, 0), sell=(a2, S2, 2), lot_id=lot2, taker=0),
        trade(3, 2820, 2, buy=(b2, B2, 2), sell=(a2, S2, 0), lot_id=lot2, taker=0),
        level(BUY, 2840, 0),
        level(BUY, 2820, 2),
        level(SELL, 2780, 0),
        level(SELL, 2820, 0),
        uncrossed(2820, 12),
        state(CONTINUOUS),
    ])  # fmt: skip
    assert s.depth() == ([(2820, 2), (2800, 2)], [(2860, 5)])
    assert s.core.lots[lot2].sold_heads == 9


def test_equal_volume_is_decided_by_the_smallest_imbalance() -> None:
    s, lot1, lot2, lot3 = auction(reference_price_fen=2820)
    b1 = s.rest(B1, BUY, 2820, 6)
    s.rest(B2, BUY, 2780, 4)
    a1 = s.rest(S1, SELL, 2780, 6, lot_id=lot1)
    s.rest(S2, SELL, 2800, 2, lot_id=lot2)
    s.rest(S3, SELL, 2820, 3, lot_id=lot3)
    # price:                2780  2800  2820
    # bids at or above:       10     6     6
    # asks at or below:        6     8    11
    # volume:                  6     6     6
    # imbalance:               4     2     5   -> 2800, although 2820 is the reference
    s.expect(uncross_cmd(), [
        trade(1, 2800, 6, buy=(b1, B1, 0), sell=(a1, S1, 0), lot_id=lot1, taker=0),
        level(BUY, 2820, 0),
        level(SELL, 2780, 0),
        uncrossed(2800, 6),
        state(CONTINUOUS),
    ])  # fmt: skip
    assert s.depth() == ([(2780, 4)], [(2800, 2), (2820, 3)])


@pytest.mark.parametrize(
    ("reference_price_fen", "price_fen"),
    [
        (2810, 2820),  # 10 from 2820, 30 from 2780
        (2790, 2780),  # 10 from 2780, 30 from 2820
        (2800, 2780),  # 20 from both: the lower price
    ],
)
def test_equal_volume_and_imbalance_go_to_the_price_nearest_the_reference_then_the_lower(
    reference_price_fen: int, price_fen: int
) -> None:
    s, lot1, _, _ = auction(reference_price_fen)
    b = s.rest(B1, BUY, 2820, 5)
    a = s.rest(S1, SELL, 2780, 5, lot_id=lot1)
    # both candidates 2780 and 2820 trade 5 with no imbalance; the reference itself is no candidate
    s.expect(uncross_cmd(), [
        trade(1, price_fen, 5, buy=(b, B1, 0), sell=(a, S1, 0), lot_id=lot1, taker=0),
        level(BUY, 2820, 0),
        level(SELL, 2780, 0),
        uncrossed(price_fen, 5),
        state(CONTINUOUS),
    ])  # fmt: skip


def test_uncross_with_nothing_crossing_trades_nothing_and_opens_the_market() -> None:
    s, lot1, _, _ = auction()
    s.rest(B1, BUY, 2790, 5)
    s.rest(S1, SELL, 2810, 5, lot_id=lot1)
    s.expect(uncross_cmd(), [uncrossed(0, 0), state(CONTINUOUS)])
    assert s.depth() == ([(2790, 5)], [(2810, 5)])


# -- allocation -----------------------------------------------------------------------------------------


def test_allocation_is_by_price_then_time_on_both_sides() -> None:
    s, lot1, lot2, _ = auction()
    b1 = s.rest(B1, BUY, 2800, 4)
    b2 = s.rest(B2, BUY, 2800, 4)
    b3 = s.rest(B3, BUY, 2810, 4)  # last in, but the best price
    a1 = s.rest(S1, SELL, 2790, 6, lot_id=lot1)
    a2 = s.rest(S2, SELL, 2790, 4, lot_id=lot2)
    # price:                2790  2800  2810
    # bids at or above:       12    12     4
    # asks at or below:       10    10    10
    # volume:                 10    10     4;  imbalance 2 and 2; 2800 is the reference
    s.expect(uncross_cmd(), [
        trade(1, 2800, 4, buy=(b3, B3, 0), sell=(a1, S1, 2), lot_id=lot1, taker=0),
        trade(2, 2800, 2, buy=(b1, B1, 2), sell=(a1, S1, 0), lot_id=lot1, taker=0),
        trade(3, 2800, 2, buy=(b1, B1, 0), sell=(a2, S2, 2), lot_id=lot2, taker=0),
        trade(4, 2800, 2, buy=(b2, B2, 2), sell=(a2, S2, 0), lot_id=lot2, taker=0),
        level(BUY, 2810, 0),
        level(BUY, 2800, 2),
        level(SELL, 2790, 0),
        uncrossed(2800, 10),
        state(CONTINUOUS),
    ])  # fmt: skip
    assert s.depth() == ([(2800, 2)], [])


# -- what an auction refuses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tif": TimeInForce.IOC},
        {"tif": TimeInForce.FOK},
        {"order_type": OrderType.MARKET, "tif": TimeInForce.IOC},
        {"order_type": OrderType.MARKET, "tif": TimeInForce.FOK},
        {"min_quantity_heads": 1},
    ],
    ids=["ioc", "fok", "market-ioc", "market-fok", "min-quantity"],
)
def test_orders_that_need_immediate_matching_are_not_allowed_in_auction(kwargs: dict) -> None:
    s, lot1, _, _ = auction()
    s.rest(S1, SELL, 2800, 10, lot_id=lot1)
    s.reject(order(B1, BUY, 2800, 5, **kwargs), R.NOT_ALLOWED_IN_AUCTION)


def test_a_market_order_that_is_not_ioc_or_fok_is_invalid_before_it_is_not_allowed() -> None:
    s, _, _, _ = auction()
    s.reject(order(B1, BUY, 0, 5, order_type=OrderType.MARKET), R.INVALID_ORDER)


def test_crossing_ones_own_order_in_auction_is_rejected_on_place_and_amend() -> None:
    s, _, _, _ = auction()
    own_lot = s.lot(B1, 50)
    s.rest(B1, BUY, 2800, 5)
    s.reject(order(B1, SELL, 2800, 5, lot_id=own_lot), R.SELF_TRADE_PREVENTED)
    s.reject(order(B1, SELL, 2750, 5, lot_id=own_lot), R.SELF_TRADE_PREVENTED)
    a = s.rest(B1, SELL, 2810, 5, lot_id=own_lot)  # does not cross: fine
    s.reject(amend_cmd(B1, a, price_fen=2800), R.SELF_TRADE_PREVENTED)
    s.rest(B2, SELL, 2790, 5, lot_id=s.lot(B2, 5))  # another participant may cross it


def test_an_own_all_or_none_sell_is_not_a_self_cross_and_is_never_traded_with_oneself() -> None:
    s, lot1, _, _ = auction()
    s.rest(S1, SELL, 2790, 10, lot_id=lot1, all_or_none=True)
    s.rest(S1, BUY, 2800, 10)  # the all-or-none sell takes no part in the uncross
    s.expect(uncross_cmd(), [uncrossed(0, 0), state(CONTINUOUS)])
    assert s.depth() == ([(2800, 10)], [(2790, 10)])


# -- all-or-none sells ----------------------------------------------------------------------------------


def test_all_or_none_sells_sit_out_the_uncross_and_are_swept_afterwards() -> None:
    s, lot1, lot2, _ = auction()
    aon = s.rest(S1, SELL, 2790, 6, lot_id=lot1, all_or_none=True)
    a2 = s.rest(S2, SELL, 2800, 5, lot_id=lot2)
    b1 = s.rest(B1, BUY, 2800, 7)
    b2 = s.rest(B2, BUY, 2810, 8)
    # without the all-or-none sell:
    # price:                2800  2810
    # bids at or above:       15     8
    # asks at or below:        5     5
    # volume:                  5     5;  imbalance 10 and 3 -> 2810 (with it, 2800 would trade 11)
    # then the sweep: b2 has 3 left (too few), b1 7 takes all 6 at the earlier order's price 2790
    s.expect(uncross_cmd(), [
        trade(1, 2810, 5, buy=(b2, B2, 3), sell=(a2, S2, 0), lot_id=lot2, taker=0),
        level(BUY, 2810, 3),
        level(SELL, 2800, 0),
        uncrossed(2810, 5),
        state(CONTINUOUS),
        trade(2, 2790, 6, buy=(b1, B1, 1), sell=(aon, S1, 0), lot_id=lot1, taker=BUY),
        level(BUY, 2800, 1),
        level(SELL, 2790, 0),
    ])  # fmt: skip
    assert s.depth() == ([(2810, 3), (2800, 1)], [])
    assert s.core.lots[lot1].sold_heads == 6


def test_an_all_or_none_sell_no_bid_can_take_whole_stays_after_the_uncross() -> None:
    s, lot1, lot2, _ = auction()
    s.rest(S1, SELL, 2790, 9, lot_id=lot1, all_or_none=True)
    a2 = s.rest(S2, SELL, 2800, 5, lot_id=lot2)
    b1 = s.rest(B1, BUY, 2800, 8)
    s.expect(uncross_cmd(), [
        trade(1, 2800, 5, buy=(b1, B1, 3), sell=(a2, S2, 0), lot_id=lot2, taker=0),
        level(BUY, 2800, 3),
        level(SELL, 2800, 0),
        uncrossed(2800, 5),
        state(CONTINUOUS),
    ])  # fmt: skip
    assert s.depth() == ([(2800, 3)], [(2790, 9)])


# -- around the uncross ---------------------------------------------------------------------------------


def test_cancel_and_amend_work_in_auction_and_an_amend_does_not_match() -> None:
    s, lot1, _, _ = auction()
    b = s.rest(B1, BUY, 2790, 5)
    a = s.rest(S1, SELL, 2810, 5, lot_id=lot1)
    s.expect(amend_cmd(B1, b, price_fen=2820), [  # now crosses the ask, and still only rests
        amended(b, B1, 2820, 5, 5, False), level(BUY, 2790, 0), level(BUY, 2820, 5),
    ])  # fmt: skip
    s.expect(cancel_cmd(S1, a), [cancelled(a, S1, 5), level(SELL, 2810, 0)])
    s.expect(uncross_cmd(), [uncrossed(0, 0), state(CONTINUOUS)])


def test_a_gtd_order_that_expires_during_the_auction_takes_no_part() -> None:
    s, lot1, _, _ = auction()
    t0 = s.now_ns
    b = s.rest(B1, BUY, 2800, 5, tif=TimeInForce.GTD, expire_at_ns=t0 + 10)
    s.rest(S1, SELL, 2800, 5, lot_id=lot1)
    s.expect(tick_cmd(), [], at_ns=t0 + 9)
    s.expect(uncross_cmd(), [
        expired(b, B1, 5, ExpireReason.GTD),
        level(BUY, 2800, 0),
        uncrossed(0, 0),
        state(CONTINUOUS),
    ], at_ns=t0 + 10)  # fmt: skip
    assert s.depth() == ([], [(2800, 5)])


def test_continuous_matching_follows_the_uncross() -> None:
    s, lot1, lot2, _ = auction()
    b1 = s.rest(B1, BUY, 2820, 6)
    b2 = s.rest(B2, BUY, 2810, 4)
    b3 = s.rest(B3, BUY, 2800, 2)
    a = s.rest(S2, SELL, 2810, 8, lot_id=lot2)
    # price:                2800  2810  2820
    # bids at or above:       12    10     6
    # asks at or below:        0     8     8
    # volume:                  0     8     6   -> 2810: b1 takes 6, b2 2 of its 4
    s.expect(uncross_cmd(), [
        trade(1, 2810, 6, buy=(b1, B1, 0), sell=(a, S2, 2), lot_id=lot2, taker=0),
        trade(2, 2810, 2, buy=(b2, B2, 2), sell=(a, S2, 0), lot_id=lot2, taker=0),
        level(BUY, 2820, 0),
        level(BUY, 2810, 2),
        level(SELL, 2810, 0),
        uncrossed(2810, 8),
        state(CONTINUOUS),
    ])  # fmt: skip
    s.expect(order(S1, SELL, 2800, 5, cid="after", lot_id=lot1), [
        accepted(5, S1, "after", SELL, 2800, 5, lot1),
        trade(3, 2810, 2, buy=(b2, B2, 0), sell=(5, S1, 3), lot_id=lot1, taker=SELL),
        level(BUY, 2810, 0),
        trade(4, 2800, 2, buy=(b3, B3, 0), sell=(5, S1, 1), lot_id=lot1, taker=SELL),
        level(BUY, 2800, 0),
        level(SELL, 2800, 1),
    ])  # fmt: skip
    assert s.depth() == ([], [(2800, 1)])
