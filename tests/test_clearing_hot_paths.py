"""The clearing's shortcuts on its hot paths give what the plain rules give: one grading per weigh-in
(``rules.priced_delivery_terms``) and dispute deadlines kept as a deque plus a heap for the ones that
come out of order (``Clearing._add_deadline``), before and after a restore; a buy's hold from the source its
check chose (only where that is the same answer), and the set of sellers ``check_sell`` answers from."""

from __future__ import annotations

import msgspec
import pytest

from exchange.commands import FundsAccount, GrantCreditLine, ParticipantRole, RequestWithdrawal, SetConsent
from exchange.domain import RejectReason, Side
from exchange.events import OrderAccepted, TradeSettled
from exchange.settlement import rules
from exchange.settlement.ledger import AccountCode as AC
from exchange.settlement.state import HeldOrder
from tests.factories import order
from tests.settlement_support import (
    BUYER,
    BUYER2,
    COOP,
    FARMER,
    FINANCIER,
    HOUR_NS,
    MEMBER_A,
    MEMBER_B,
    POOR_FARMER,
    SYMBOL,
    Exchange,
    dce_spec,
    piglet_spec,
    world,
)

LONG = "RC-LH-LONG"  # a dispute window of 10 hours; SYMBOL's is 1 hour


@pytest.mark.parametrize("price_fen", [40, 41, 60, 61, 2800])
@pytest.mark.parametrize(
    ("heads", "weight_g"),
    [(0, 0), (10, 1_100_000), (10, 1_250_000), (10, 1_300_010), (10, 950_000), (10, 970_000), (8, 880_000)],
)
def test_priced_delivery_terms_are_the_terms_or_none_where_the_discount_takes_the_price(
    price_fen: int, heads: int, weight_g: int
) -> None:
    for spec in (dce_spec(), piglet_spec()):
        obligation = rules.hold_fen(spec, price_fen, 10)
        terms = rules.priced_delivery_terms(spec, price_fen, obligation, heads, weight_g)
        if rules.discount_leaves_price(spec, price_fen, heads, weight_g):
            assert terms == rules.delivery_terms(spec, price_fen, obligation, heads, weight_g)
        else:
            assert terms is None
            with pytest.raises(ValueError, match="leaves nothing of the price"):
                rules.delivery_terms(spec, price_fen, obligation, heads, weight_g)


def _market() -> Exchange:
    x = Exchange(
        msgspec.structs.replace(dce_spec(), dispute_window_ns=HOUR_NS),
        msgspec.structs.replace(dce_spec(LONG), dispute_window_ns=10 * HOUR_NS),
    )
    x.register(BUYER, ParticipantRole.BUYER)
    x.register(FARMER, ParticipantRole.FARMER)
    x.register(POOR_FARMER, ParticipantRole.FARMER, poor=True)
    x.deposit(BUYER, 10**10)
    return x


@pytest.mark.parametrize("restore", [False, True])
def test_trades_settle_in_deadline_then_trade_id_order_when_deadlines_come_out_of_order(restore: bool) -> None:
    x = _market()
    weighed: list[tuple[int, int]] = []  # (deadline, trade id)
    # a long window first, then two short ones whose deadlines sort before it, then a long one again
    for instrument, seller in ((LONG, FARMER), (SYMBOL, POOR_FARMER), (SYMBOL, FARMER), (LONG, POOR_FARMER)):
        trade = x.trade(BUYER, seller, 2800, 2, instrument=instrument)
        x.weigh_in(trade.trade_id, 2, 220_000)
        weighed.append((x.clearing.trades[trade.trade_id].dispute_until_ns, trade.trade_id))
        x.advance(60 * 1_000_000_000)
    assert len(x.clearing._late_deadlines) == 2  # the short windows' deadlines came after a later one
    if restore:
        x.restore_from_snapshot()
    early = x.tick(2 * HOUR_NS)
    due = sorted(weighed)
    assert [e.trade_id for e in x.of(TradeSettled, early)] == [tid for _, tid in due[:2]]
    late = x.tick(10 * HOUR_NS)
    assert [e.trade_id for e in x.of(TradeSettled, late)] == [tid for _, tid in due[2:]]
    assert not x.clearing._deadlines and not x.clearing._late_deadlines


# -- buys and sells: what check_buy/check_sell keep for the rest of the command ---------------------------

PER_HEAD_2900 = 406_000  # ceil(140 kg x 2900 fen/kg): dce_spec's hold a head at 2900 fen/kg


def _buyer_with_cash_and_a_line() -> Exchange:
    """BUYER2: cash for exactly one head at 2900, and a consented credit line for ten."""
    x = world()
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.consent(BUYER2, FINANCIER)
    x.ok(GrantCreditLine(FINANCIER, 0, BUYER2, 10 * PER_HEAD_2900, 730))
    x.deposit(BUYER2, PER_HEAD_2900)
    return x


def _accept(x: Exchange, order_id: int, heads: int) -> HeldOrder:
    """The clearing follows an OrderAccepted of BUYER2 as the core's command would end: its hold."""
    x.clearing.on_events([OrderAccepted(0, x.ts_ns, order_id, BUYER2, f"c{order_id}", SYMBOL, Side.BUY, 2900, heads,
                                        0)], x.ts_ns)
    return x.clearing.holds[order_id]


def test_a_buy_checked_against_cash_is_held_from_cash_and_one_beyond_the_cash_from_the_line() -> None:
    x = _buyer_with_cash_and_a_line()
    assert x.clearing.check_buy(BUYER2, dce_spec(), 2900, 1) is None  # cash covers it
    hold = _accept(x, 9_001, 1)  # the check's answer, reused
    assert (hold.source_account_id, hold.financier_id) == (x.clearing.accounts[(AC.BUYER_CASH, BUYER2, 0)], 0)
    # a check that chose cash for one head says nothing of a hold of five: the line holds them
    x.deposit(BUYER2, PER_HEAD_2900)
    assert x.clearing.check_buy(BUYER2, dce_spec(), 2900, 1) is None
    hold = _accept(x, 9_002, 5)
    assert hold.financier_id == FINANCIER
    assert x.clearing.ledger.available_fen(hold.source_account_id) == 5 * PER_HEAD_2900  # ten on the line, five held
    x.clearing.ledger.validate()


def test_a_buy_checked_against_cash_that_a_transfer_then_took_is_held_from_the_line() -> None:
    x = _buyer_with_cash_and_a_line()
    assert x.clearing.check_buy(BUYER2, dce_spec(), 2900, 1) is None  # cash covers it, then
    x.ok(RequestWithdrawal(BUYER2, 0, "W1", FundsAccount.TRADING_CASH, 1))  # holds a fen of the cash
    hold = _accept(x, 9_001, 1)  # the same buyer and amount, but the cash no longer covers it
    assert hold.financier_id == FINANCIER
    x.clearing.ledger.validate()


def test_a_buy_checked_against_a_line_is_held_from_the_line_and_a_withdrawn_consent_stops_the_next() -> None:
    x = _buyer_with_cash_and_a_line()
    assert x.clearing.check_buy(BUYER2, dce_spec(), 2900, 2) is None  # beyond the cash: the line
    assert _accept(x, 9_001, 2).financier_id == FINANCIER
    x.ok(SetConsent(BUYER2, 0, FINANCIER, False))
    assert x.clearing.check_buy(BUYER2, dce_spec(), 2900, 2) == RejectReason.INSUFFICIENT_FUNDS
    x.reject(order(BUYER2, Side.BUY, 2900, 2), RejectReason.INSUFFICIENT_FUNDS)  # through the core too


@pytest.mark.parametrize("restore", [False, True])
def test_sellers_are_the_farmers_and_cooperatives_registered_also_after_a_restore(restore: bool) -> None:
    x = world()
    if restore:
        x.restore_from_snapshot()
    x.register(9_101, ParticipantRole.FARMER)
    x.register(9_102, ParticipantRole.BUYER)
    hash_before = x.clearing.state_hash()
    if restore:
        x.restore_from_snapshot()
        assert x.clearing.state_hash() == hash_before  # derived: not part of the state
    assert x.clearing._sellers == {FARMER, POOR_FARMER, COOP, MEMBER_A, MEMBER_B, 9_101}
    for seller in (FARMER, COOP, 9_101):
        assert x.clearing.check_sell(seller) is None
    assert x.clearing.check_sell(BUYER) == RejectReason.NOT_AUTHORIZED
    assert x.clearing.check_sell(9_102) == RejectReason.NOT_AUTHORIZED
    assert x.clearing.check_sell(FINANCIER) == RejectReason.NOT_AUTHORIZED
    assert x.clearing.check_sell(9_999) == RejectReason.UNKNOWN_PARTICIPANT
