"""Every reject reason, each produced by a real command, and the documented validation order.

A rejection must name its reason, take sequence number 0 and change nothing: ``Scenario.reject``
checks all three, comparing ``state_hash()`` before and after.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from exchange.commands import Command, ConfirmDeposit, FundsAccount, ListInstrument, SetReferencePrice
from exchange.domain import OrderType, ProductClass, RejectReason, TimeInForce, TradingState
from tests.factories import OPERATOR, hog_spec, list_instrument, order, register_lot
from tests.scenarios import (
    BUY,
    SELL,
    Scenario,
    amend_cmd,
    cancel_cmd,
    halt_cmd,
    reference_cmd,
    start_auction_cmd,
    uncross_cmd,
)

R = RejectReason
S1, S2 = 11, 12
B1, B2 = 21, 22
OTHER = "RC-LH-NSY"
Case = Callable[[], tuple[Scenario, Command]]


def market() -> Scenario:
    """Continuous, band [2690, 2910], tick 10, 1-500 heads; S1 has lot 1 (10 heads), S2 lot 2 (10)."""
    s = Scenario(hog_spec(), hog_spec(symbol=OTHER))
    assert s.lot(S1, 10) == 1
    assert s.lot(S2, 10) == 2
    return s


def halted() -> Scenario:
    s = market()
    s.submit(halt_cmd())
    return s


def in_auction() -> Scenario:
    s = market()
    s.submit(start_auction_cmd())
    return s


def with_ask(s: Scenario, price_fen: int = 2800, heads: int = 5) -> int:
    return s.rest(S2, SELL, price_fen, heads, lot_id=2)


def case_unknown_instrument() -> tuple[Scenario, Command]:
    return market(), order(B1, BUY, 2800, 1, instrument="RC-LH-NONE")


def case_market_halted() -> tuple[Scenario, Command]:
    return halted(), order(B1, BUY, 2800, 1)


def case_price_off_tick() -> tuple[Scenario, Command]:
    return market(), order(B1, BUY, 2805, 1)


def case_price_outside_band() -> tuple[Scenario, Command]:
    return market(), order(B1, BUY, 2920, 1)


def case_quantity_out_of_range() -> tuple[Scenario, Command]:
    return market(), order(B1, BUY, 2800, 501)


def case_lot_not_found() -> tuple[Scenario, Command]:
    return market(), order(S1, SELL, 2800, 1, lot_id=99)


def case_lot_exhausted() -> tuple[Scenario, Command]:
    return market(), order(S1, SELL, 2800, 11, lot_id=1)


def case_duplicate_client_order_id() -> tuple[Scenario, Command]:
    s = market()
    oid = s.rest(B1, BUY, 2800, 1, cid="once")
    s.submit(cancel_cmd(B1, oid))  # unique forever, not only while the order lives
    return s, order(B1, BUY, 2790, 1, cid="once")


def case_post_only_would_take() -> tuple[Scenario, Command]:
    s = market()
    with_ask(s)
    return s, order(B1, BUY, 2800, 1, post_only=True)


def case_fok_not_fillable() -> tuple[Scenario, Command]:
    s = market()
    with_ask(s)
    return s, order(B1, BUY, 2800, 6, tif=TimeInForce.FOK)


def case_min_quantity_not_met() -> tuple[Scenario, Command]:
    s = market()
    with_ask(s)
    return s, order(B1, BUY, 2800, 10, min_quantity_heads=6)


def case_unknown_order() -> tuple[Scenario, Command]:
    return market(), cancel_cmd(B1, 42)


def case_invalid_order() -> tuple[Scenario, Command]:
    return market(), order(B1, BUY, 0, 1, order_type=OrderType.MARKET)  # a market order must be IOC or FOK


def case_invalid_expiry() -> tuple[Scenario, Command]:
    return market(), order(B1, BUY, 2800, 1, tif=TimeInForce.GTD)  # GTD without a time


def case_not_allowed_in_auction() -> tuple[Scenario, Command]:
    s = in_auction()
    with_ask(s)
    return s, order(B1, BUY, 2800, 1, tif=TimeInForce.IOC)


def case_self_trade_prevented() -> tuple[Scenario, Command]:
    s = in_auction()
    s.rest(S1, BUY, 2800, 1)
    return s, order(S1, SELL, 2800, 1, lot_id=1)


def case_instrument_exists() -> tuple[Scenario, Command]:
    return market(), list_instrument(hog_spec())


def case_invalid_instrument() -> tuple[Scenario, Command]:
    return market(), list_instrument(hog_spec(symbol="RC-LH-TZ", tick_fen=0))


def case_invalid_state_transition() -> tuple[Scenario, Command]:
    return market(), uncross_cmd()


def case_lot_out_of_grade() -> tuple[Scenario, Command]:
    return market(), register_lot(S1, 10, avg_weight_g=99_999)  # grade: 100-120 kg average


def case_invalid_lot() -> tuple[Scenario, Command]:
    return market(), register_lot(S1, 0)


def case_nothing_to_amend() -> tuple[Scenario, Command]:
    s = market()
    oid = s.rest(B1, BUY, 2800, 3)
    return s, amend_cmd(B1, oid, price_fen=2800, heads=3)


def case_invalid_price() -> tuple[Scenario, Command]:
    return market(), order(B1, BUY, 0, 1)


def case_lot_wrong_instrument() -> tuple[Scenario, Command]:
    return market(), order(S1, SELL, 2800, 1, lot_id=1, instrument=OTHER)


def case_unsupported_command() -> tuple[Scenario, Command]:
    # a settlement command reaching the bare matching engine (the exchange runs with clearing)
    deposit = ConfirmDeposit(1, 1, deposit_ref="DEP-1", owner_id=B1, account=FundsAccount.TRADING_CASH, amount_fen=100)
    return market(), deposit


# Settlement reasons come from the clearing stage and have their cases in tests/test_settlement_*.py.
SETTLEMENT_REASONS = frozenset(r for r in RejectReason if r >= R.INSUFFICIENT_FUNDS and r is not R.UNSUPPORTED_COMMAND)

CASES: dict[RejectReason, Case] = {
    R.UNSUPPORTED_COMMAND: case_unsupported_command,
    R.UNKNOWN_INSTRUMENT: case_unknown_instrument,
    R.MARKET_HALTED: case_market_halted,
    R.PRICE_OFF_TICK: case_price_off_tick,
    R.PRICE_OUTSIDE_BAND: case_price_outside_band,
    R.QUANTITY_OUT_OF_RANGE: case_quantity_out_of_range,
    R.LOT_NOT_FOUND: case_lot_not_found,
    R.LOT_EXHAUSTED: case_lot_exhausted,
    R.DUPLICATE_CLIENT_ORDER_ID: case_duplicate_client_order_id,
    R.POST_ONLY_WOULD_TAKE: case_post_only_would_take,
    R.FOK_NOT_FILLABLE: case_fok_not_fillable,
    R.MIN_QUANTITY_NOT_MET: case_min_quantity_not_met,
    R.UNKNOWN_ORDER: case_unknown_order,
    R.INVALID_ORDER: case_invalid_order,
    R.INVALID_EXPIRY: case_invalid_expiry,
    R.NOT_ALLOWED_IN_AUCTION: case_not_allowed_in_auction,
    R.SELF_TRADE_PREVENTED: case_self_trade_prevented,
    R.INSTRUMENT_EXISTS: case_instrument_exists,
    R.INVALID_INSTRUMENT: case_invalid_instrument,
    R.INVALID_STATE_TRANSITION: case_invalid_state_transition,
    R.LOT_OUT_OF_GRADE: case_lot_out_of_grade,
    R.INVALID_LOT: case_invalid_lot,
    R.NOTHING_TO_AMEND: case_nothing_to_amend,
    R.INVALID_PRICE: case_invalid_price,
    R.LOT_WRONG_INSTRUMENT: case_lot_wrong_instrument,
}


@pytest.mark.parametrize("reason", [r for r in RejectReason if r not in SETTLEMENT_REASONS], ids=lambda r: r.name)
def test_every_reject_reason_is_produced_and_changes_nothing(reason: RejectReason) -> None:
    s, command = CASES[reason]()  # a new reason without a case fails here
    rejected = s.reject(command, reason)
    assert rejected.ts_ns == s.now_ns
    assert rejected.client_order_id == getattr(command, "client_order_id", "")
    assert rejected.order_id == getattr(command, "order_id", 0)


def test_a_rejected_client_order_id_stays_free() -> None:
    s = market()
    s.reject(order(B1, BUY, 2805, 1, cid="retry"), R.PRICE_OFF_TICK)
    s.rest(B1, BUY, 2800, 1, cid="retry")
    s.reject(order(B1, BUY, 2790, 1, cid="retry"), R.DUPLICATE_CLIENT_ORDER_ID)
    s.rest(B2, BUY, 2790, 1, cid="retry")  # client order ids are per participant


def test_a_rejection_takes_no_sequence_number() -> None:
    s = market()
    before = s.seq()
    s.reject(order(B1, BUY, 2805, 1), R.PRICE_OFF_TICK)
    [accepted, _] = s.submit(order(B1, BUY, 2800, 1))
    assert accepted.seq == before + 1


# -- validation order: where two problems coexist, the earlier check names the reason -----------------------


def order_unknown_instrument_before_price() -> tuple[Scenario, Command, RejectReason]:
    return market(), order(B1, BUY, 2805, 0, instrument="RC-LH-NONE"), R.UNKNOWN_INSTRUMENT


def order_halted_before_duplicate_id() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    s.rest(B1, BUY, 2800, 1, cid="dup")
    s.submit(halt_cmd())
    return s, order(B1, BUY, 2800, 1, cid="dup"), R.MARKET_HALTED


def order_malformed_id_before_price() -> tuple[Scenario, Command, RejectReason]:
    return market(), order(B1, BUY, 2805, 1, cid="x" * 37), R.INVALID_ORDER


def order_duplicate_id_before_shape() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    s.rest(B1, BUY, 2800, 1, cid="dup")
    return s, order(B1, BUY, 0, 1, cid="dup", order_type=OrderType.MARKET), R.DUPLICATE_CLIENT_ORDER_ID


def order_shape_before_auction() -> tuple[Scenario, Command, RejectReason]:
    return in_auction(), order(B1, BUY, 0, 1, order_type=OrderType.MARKET, post_only=True), R.INVALID_ORDER


def order_auction_before_expiry() -> tuple[Scenario, Command, RejectReason]:
    return in_auction(), order(B1, BUY, 2800, 1, tif=TimeInForce.IOC, expire_at_ns=10**18), R.NOT_ALLOWED_IN_AUCTION


def order_auction_before_fillability() -> tuple[Scenario, Command, RejectReason]:
    return in_auction(), order(B1, BUY, 2800, 1, tif=TimeInForce.FOK), R.NOT_ALLOWED_IN_AUCTION


def order_expiry_before_quantity() -> tuple[Scenario, Command, RejectReason]:
    return market(), order(B1, BUY, 2800, 0, tif=TimeInForce.GTD, expire_at_ns=5), R.INVALID_EXPIRY


def order_quantity_before_price() -> tuple[Scenario, Command, RejectReason]:
    return market(), order(B1, BUY, 2805, 501), R.QUANTITY_OUT_OF_RANGE


def order_non_positive_price_before_tick() -> tuple[Scenario, Command, RejectReason]:
    return market(), order(B1, BUY, -15, 1), R.INVALID_PRICE


def order_tick_before_band() -> tuple[Scenario, Command, RejectReason]:
    return market(), order(B1, BUY, 2925, 1), R.PRICE_OFF_TICK


def order_band_before_lot() -> tuple[Scenario, Command, RejectReason]:
    return market(), order(S1, SELL, 2920, 1, lot_id=99), R.PRICE_OUTSIDE_BAND


def order_foreign_lot_before_wrong_instrument() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    s.lot(S2, 1, instrument=OTHER)  # lot 3: S2's, of the other instrument
    return s, order(S1, SELL, 2800, 5, lot_id=3), R.LOT_NOT_FOUND


def order_wrong_instrument_before_exhausted() -> tuple[Scenario, Command, RejectReason]:
    return market(), order(S1, SELL, 2800, 11, lot_id=1, instrument=OTHER), R.LOT_WRONG_INSTRUMENT


def order_lot_before_post_only() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    s.rest(B1, BUY, 2800, 5)
    return s, order(S1, SELL, 2800, 11, lot_id=1, post_only=True), R.LOT_EXHAUSTED


def order_post_only_before_min_quantity() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    with_ask(s, heads=2)
    return s, order(B1, BUY, 2800, 10, post_only=True, min_quantity_heads=5), R.POST_ONLY_WOULD_TAKE


def order_fok_before_min_quantity() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    with_ask(s, heads=2)
    return s, order(B1, BUY, 2800, 10, tif=TimeInForce.FOK, min_quantity_heads=5), R.FOK_NOT_FILLABLE


def order_lot_before_self_cross_in_auction() -> tuple[Scenario, Command, RejectReason]:
    s = in_auction()
    s.rest(S1, BUY, 2800, 1)
    return s, order(S1, SELL, 2800, 11, lot_id=1), R.LOT_EXHAUSTED


def amend_ownership_before_halt() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    oid = s.rest(B1, BUY, 2800, 3)
    s.submit(halt_cmd())
    return s, amend_cmd(B2, oid, heads=2), R.UNKNOWN_ORDER


def amend_halt_before_nothing_to_amend() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    oid = s.rest(B1, BUY, 2800, 3)
    s.submit(halt_cmd())
    return s, amend_cmd(B1, oid, price_fen=2800, heads=3), R.MARKET_HALTED


def amend_quantity_before_price() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    oid = s.rest(B1, BUY, 2800, 3)
    return s, amend_cmd(B1, oid, price_fen=2805, heads=501), R.QUANTITY_OUT_OF_RANGE


def amend_price_before_lot() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    oid = s.rest(S1, SELL, 2800, 3, lot_id=1)
    return s, amend_cmd(S1, oid, price_fen=2920, heads=11), R.PRICE_OUTSIDE_BAND


def amend_lot_before_post_only() -> tuple[Scenario, Command, RejectReason]:
    s = market()
    s.rest(B1, BUY, 2790, 5)
    oid = s.rest(S1, SELL, 2800, 3, lot_id=1, post_only=True)
    return s, amend_cmd(S1, oid, price_fen=2790, heads=11), R.LOT_EXHAUSTED


def list_exists_before_invalid() -> tuple[Scenario, Command, RejectReason]:
    return market(), list_instrument(hog_spec(tick_fen=0)), R.INSTRUMENT_EXISTS


def listing_halted_is_invalid() -> tuple[Scenario, Command, RejectReason]:
    cmd = ListInstrument(participant_id=OPERATOR, ts_ns=0, spec=hog_spec(symbol="X", initial_state=TradingState.HALTED))
    return market(), cmd, R.INVALID_INSTRUMENT


def lot_unknown_instrument_before_invalid() -> tuple[Scenario, Command, RejectReason]:
    return market(), register_lot(S1, 0, instrument="RC-LH-NONE"), R.UNKNOWN_INSTRUMENT


def lot_invalid_before_grade() -> tuple[Scenario, Command, RejectReason]:
    return market(), register_lot(S1, 0, avg_weight_g=1), R.INVALID_LOT


def reference_non_positive_before_tick() -> tuple[Scenario, Command, RejectReason]:
    return market(), reference_cmd(-5), R.INVALID_PRICE


def reference_off_tick() -> tuple[Scenario, Command, RejectReason]:
    return market(), reference_cmd(2805), R.PRICE_OFF_TICK


ORDER_CASES = [
    order_unknown_instrument_before_price,
    order_halted_before_duplicate_id,
    order_malformed_id_before_price,
    order_duplicate_id_before_shape,
    order_shape_before_auction,
    order_auction_before_expiry,
    order_auction_before_fillability,
    order_expiry_before_quantity,
    order_quantity_before_price,
    order_non_positive_price_before_tick,
    order_tick_before_band,
    order_band_before_lot,
    order_foreign_lot_before_wrong_instrument,
    order_wrong_instrument_before_exhausted,
    order_lot_before_post_only,
    order_post_only_before_min_quantity,
    order_fok_before_min_quantity,
    order_lot_before_self_cross_in_auction,
    amend_ownership_before_halt,
    amend_halt_before_nothing_to_amend,
    amend_quantity_before_price,
    amend_price_before_lot,
    amend_lot_before_post_only,
    list_exists_before_invalid,
    listing_halted_is_invalid,
    lot_unknown_instrument_before_invalid,
    lot_invalid_before_grade,
    reference_non_positive_before_tick,
    reference_off_tick,
]


@pytest.mark.parametrize("case", ORDER_CASES, ids=lambda f: f.__name__)
def test_validation_order(case: Callable[[], tuple[Scenario, Command, RejectReason]]) -> None:
    s, command, reason = case()
    s.reject(command, reason)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"order_type": OrderType.MARKET, "post_only": True, "tif": TimeInForce.IOC},
        {"order_type": OrderType.MARKET, "tif": TimeInForce.GTD, "expire_at_ns": 10**18},
        {"order_type": OrderType.MARKET, "all_or_none": True, "tif": TimeInForce.IOC},
        {"all_or_none": True},  # on a buy
        {"post_only": True, "tif": TimeInForce.IOC},
        {"min_quantity_heads": 2},  # more than the quantity
        {"min_quantity_heads": -1},
        {"lot_id": 1},  # on a buy
    ],
)
def test_invalid_order_combinations(kwargs: dict) -> None:
    s = market()
    s.reject(order(B1, BUY, 2800, 1, **kwargs), R.INVALID_ORDER)


@pytest.mark.parametrize("cid", ["", "x" * 37])
def test_client_order_id_must_have_1_to_36_characters(cid: str) -> None:
    s = market()
    s.reject(msgspec.structs.replace(order(B1, BUY, 2800, 1), client_order_id=cid), R.INVALID_ORDER)
    s.rest(B1, BUY, 2800, 1, cid="x" * 36)


def test_invalid_all_or_none_sell_combinations() -> None:
    s = market()
    s.reject(order(S1, SELL, 2800, 5, lot_id=1, all_or_none=True, tif=TimeInForce.IOC), R.INVALID_ORDER)
    s.reject(order(S1, SELL, 2800, 5, lot_id=1, all_or_none=True, tif=TimeInForce.FOK), R.INVALID_ORDER)
    s.reject(order(S1, SELL, 2800, 5, lot_id=1, all_or_none=True, min_quantity_heads=5), R.INVALID_ORDER)


def test_invalid_expiries() -> None:
    s = market()
    now = s.now_ns
    s.reject(order(B1, BUY, 2800, 1, tif=TimeInForce.GTD, expire_at_ns=now + 1), R.INVALID_EXPIRY, at_ns=now + 1)
    s.reject(order(B1, BUY, 2800, 1, tif=TimeInForce.GTC, expire_at_ns=now + 100), R.INVALID_EXPIRY)
    s.rest(B1, BUY, 2800, 1, tif=TimeInForce.GTD, expire_at_ns=s.now_ns + 2)


@pytest.mark.parametrize(
    "terms",
    [
        {"seller_fee_bps": 10_001},
        {"overweight_limit_g": -1},
        {"underweight_limit_g": 100_000},  # as large as the lot band's lower edge
        {"overweight_discount_fen_per_kg": 2800},  # the whole reference price
        {"overweight_discount_fen_per_kg": 2700},  # below the reference, but the band's low edge is 2690
        {"dispute_window_ns": 2**63},  # would not fit the journal's integers
        {"product_class": ProductClass.PIGLET, "overweight_discount_fen_per_kg": 10},  # piglets go per head
    ],
    ids=lambda terms: next(iter(terms)) if len(terms) == 1 else "piglet_discount",
)
def test_listing_with_impossible_settlement_terms_is_rejected(terms: dict) -> None:
    spec = msgspec.structs.replace(hog_spec(symbol="RC-LH-TZ"), **terms)
    market().reject(list_instrument(spec), R.INVALID_INSTRUMENT)


def test_a_reference_price_whose_band_reaches_the_weight_discount_is_rejected() -> None:
    spec = msgspec.structs.replace(hog_spec(symbol="RC-LH-TZ"), overweight_discount_fen_per_kg=60)
    s = Scenario(spec)
    s.reject(SetReferencePrice(OPERATOR, 1, instrument="RC-LH-TZ", price_fen=60), R.INVALID_PRICE)
