"""The money rules, one rounding rule each, pinned with exact figures (exchange/settlement/rules.py)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.events import DeliveryGrade
from exchange.settlement import rules
from tests.settlement_support import T0, dce_spec, piglet_spec

HOG = dce_spec()
PIGLET = piglet_spec()
G = DeliveryGrade


@pytest.mark.parametrize(
    ("animal_max_g", "price_fen", "per_head_fen"),
    [
        (140_000, 2800, 392_000),  # exact
        (140_001, 2810, 393_403),  # 393,402.81 rounds up
        (140_001, 1000, 140_001),  # 140,001.0 exact
        (1, 1, 1),  # 0.001 fen rounds up to a whole fen
    ],
)
def test_hold_per_head_rounds_up(animal_max_g: int, price_fen: int, per_head_fen: int) -> None:
    spec = msgspec.structs.replace(HOG, animal_max_g=animal_max_g)
    assert rules.hold_per_head_fen(spec, price_fen) == per_head_fen
    assert rules.hold_fen(spec, price_fen, 7) == 7 * per_head_fen


def test_piglets_hold_the_price_per_head() -> None:
    assert rules.hold_fen(PIGLET, 80_000, 20) == 1_600_000


@pytest.mark.parametrize(
    ("heads", "weight_g", "avg_g", "grade", "discount", "amount_fen"),
    [
        (10, 1_150_000, 115_000, G.IN_GRADE, 0, 3_220_000),
        (10, 1_150_003, 115_000, G.IN_GRADE, 0, 3_220_008),  # 3,220,008.4: the buyer keeps 0.4 fen
        (10, 1_200_009, 120_000, G.IN_GRADE, 0, 3_360_025),  # avg floors to 120.000 kg: still in grade
        (10, 1_200_010, 120_001, G.SUBSTITUTE, 60, 3_288_027),  # 1 g over: (2800-60) x 1200.01 = 3288027.4
        (10, 1_300_000, 130_000, G.SUBSTITUTE, 60, 3_562_000),  # the edge of the tolerance
        (10, 1_300_010, 130_001, G.OUT_OF_GRADE, 60, 3_562_027),
        (10, 990_000, 99_000, G.SUBSTITUTE, 40, 2_732_400),  # 1 kg under: (2800-40) x 990
        (10, 970_000, 97_000, G.OUT_OF_GRADE, 40, 2_677_200),
        (8, 880_000, 110_000, G.IN_GRADE, 0, 2_464_000),  # short: paid pro rata
        (0, 0, 0, G.IN_GRADE, 0, 0),  # nothing delivered
        (10, 1_500_000, 150_000, G.OUT_OF_GRADE, 60, 3_920_000),  # capped at the obligation (4,110,000)
    ],
)
def test_delivery_terms(heads: int, weight_g: int, avg_g: int, grade: DeliveryGrade, discount: int,
                        amount_fen: int) -> None:
    obligation = rules.hold_fen(HOG, 2800, 10)  # 3,920,000
    terms = rules.delivery_terms(HOG, 2800, obligation, heads, weight_g)
    assert terms == rules.DeliveryTerms(avg_g, grade, discount, amount_fen)


def test_piglets_take_no_weight_discount() -> None:
    terms = rules.delivery_terms(PIGLET, 80_000, 1_600_000, 19, 19 * 40_000)  # far over 25 kg average
    assert terms == rules.DeliveryTerms(40_000, G.OUT_OF_GRADE, 0, 1_520_000)


@pytest.mark.parametrize(("amount", "bps", "fee"), [(3_220_008, 50, 16_100), (199, 50, 0), (200, 50, 1),
                                                    (1_520_000, 100, 15_200)])
def test_fee_rounds_down_in_the_sellers_favour(amount: int, bps: int, fee: int) -> None:
    assert rules.fee_fen(amount, bps) == fee


def test_cooperative_split_floors_each_member_and_the_cooperative_keeps_the_rest() -> None:
    assert rules.cooperative_split_fen(3_203_908, (6000, 3500)) == (1_922_344, 1_121_367)
    assert rules.cooperative_split_fen(10, (3333, 3333, 3334)) == (3, 3, 3)  # 1 fen stays


def test_advance_limit_and_estimated_value_round_down_for_the_financier() -> None:
    est = rules.estimated_value_fen(HOG, 2810, 3, 110_001)  # 3 x 110.001 kg x 2810 = 927,308.43
    assert est == 927_308
    assert rules.advance_limit_fen(est, 7000) == 649_115  # 649,115.6
    assert rules.estimated_value_fen(PIGLET, 80_000, 20, 20_000) == 1_600_000


def test_daily_interest_carries_the_fraction_so_a_year_costs_the_exact_interest_less_under_a_fen() -> None:
    principal, rate = 1_234_567, 435  # 4.35 %: 53,703.66 fen a year
    total, carry = 0, 0
    for _ in range(365):
        interest, carry = rules.accrue_interest(principal, rate, 1, carry)
        total += interest
    assert total == 53_703  # floor(1,234,567 x 0.0435) = 53,703 (53,703.66)
    assert rules.accrue_interest(principal, rate, 365, 0) == (53_703, carry)


@given(st.integers(1, 10**10), st.integers(0, 10_000), st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_interest_is_the_same_however_the_days_are_grouped(principal: int, rate: int, groups: list[int]) -> None:
    total, carry = 0, 0
    for days in groups:
        interest, carry = rules.accrue_interest(principal, rate, days, carry)
        total += interest
    assert (total, carry) == rules.accrue_interest(principal, rate, sum(groups), 0)


def test_days_change_at_midnight_in_chongqing() -> None:
    midnight_cst = T0 + 16 * 3600 * 10**9  # T0 is 08:00 CST
    assert rules.cst_day(midnight_cst - 1) == rules.cst_day(T0)
    assert rules.cst_day(midnight_cst) == rules.cst_day(T0) + 1


@pytest.mark.parametrize(("fen", "text"), [(0, "0.00"), (5, "0.05"), (123_456, "1234.56"), (-5, "-0.05")])
def test_yuan(fen: int, text: str) -> None:
    assert rules.yuan(fen) == text
