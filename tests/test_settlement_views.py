"""Read-only views: balances, financiers' views only with consent, the daily settlement report, bank files."""

from __future__ import annotations

import msgspec
import pytest

from exchange.commands import (
    FundsAccount,
    GrantAdvance,
    GrantCreditLine,
    ParticipantRole,
    RunPayouts,
    SetConsent,
)
from exchange.settlement.bankfiles import Payer, bank_file_csv, parse_confirmations_csv, payouts_to_send
from exchange.settlement.rules import cst_day
from exchange.settlement.views import (
    REPORT_COLUMNS,
    date_to_day,
    day_to_date,
    financier_portfolio,
    financier_view,
    participant_balances,
    report_csv,
)
from tests.settlement_support import (
    BUYER,
    BUYER2,
    FARMER,
    FINANCIER,
    HOUR_NS,
    OPERATOR,
    POOR_FARMER,
    T0,
    Exchange,
    report,
    world,
)

WINDOW_NS = 48 * HOUR_NS


def test_balances_show_posted_held_and_available() -> None:
    x = world()
    x.deposit(BUYER, 1_000_000)
    x.buy(BUYER, 2800, 2)  # holds 2 x 392,000
    (cash,) = participant_balances(x.clearing, BUYER)
    assert (cash.kind, cash.balance_fen, cash.held_fen, cash.available_fen) == ("BUYER_CASH", 1_000_000, 784_000,
                                                                                 216_000)


def financed_world() -> tuple[Exchange, int, int]:
    x = world()
    x.deposit(FINANCIER, 10_000_000, FundsAccount.FINANCIER_FUNDS)
    x.deposit(BUYER, 10_000_000)
    x.consent(BUYER2, FINANCIER)
    x.consent(FARMER, FINANCIER)
    x.ok(GrantCreditLine(FINANCIER, 0, BUYER2, 5_000_000, 500))
    credit_trade = x.trade(BUYER2, POOR_FARMER, 2800, 10)
    advanced = x.trade(BUYER, FARMER, 2800, 10)
    x.ok(GrantAdvance(FINANCIER, 0, advanced.trade_id, 1_000_000, 600))
    return x, credit_trade.trade_id, advanced.trade_id


def test_financier_sees_only_consenting_participants_and_their_financed_trades() -> None:
    x, credit_tid, advance_tid = financed_world()
    assert financier_view(x.clearing, FINANCIER, BUYER) is None  # no consent: nothing at all
    buyer_view = financier_view(x.clearing, FINANCIER, BUYER2)
    assert buyer_view is not None
    # 5,000,000 granted; 3,920,000 now in escrow for the trade; nothing held for open bids
    assert (buyer_view.credit_line_available_fen, buyer_view.credit_line_held_fen) == (1_080_000, 0)
    assert buyer_view.exposure_fen == 3_920_000
    assert [(t.trade_id, t.side, t.state) for t in buyer_view.trades] == [(credit_tid, "buy", "OPEN")]
    farmer_view = financier_view(x.clearing, FINANCIER, FARMER)
    assert farmer_view is not None
    assert [(t.trade_id, t.side) for t in farmer_view.trades] == [(advance_tid, "sell")]
    assert [(loan.kind, loan.lent_fen, loan.principal_outstanding_fen) for loan in farmer_view.loans] == [
        ("ADVANCE", 1_000_000, 1_000_000)]
    assert [v.participant_id for v in financier_portfolio(x.clearing, FINANCIER)] == [BUYER2, FARMER]
    assert (buyer_view.consented, farmer_view.consented) == (True, True)
    x.ok(SetConsent(FARMER, 0, FINANCIER, False))  # consent withdrawn: the financier still sees its advance
    farmer_view = financier_view(x.clearing, FINANCIER, FARMER)
    assert farmer_view is not None and not farmer_view.consented
    assert [(loan.kind, loan.principal_outstanding_fen) for loan in farmer_view.loans] == [("ADVANCE", 1_000_000)]


def test_after_settlement_the_buyers_exposure_is_its_loan() -> None:
    x, credit_tid, _ = financed_world()
    x.weigh_in(credit_tid, 10, 1_150_000)
    x.tick(WINDOW_NS)
    view = financier_view(x.clearing, FINANCIER, BUYER2)
    assert view is not None
    assert view.exposure_fen == 3_220_000  # the loan principal; nothing accrued on the settlement day
    assert view.trades[0].state == "SETTLED"


def test_daily_settlement_report_rows_and_csv() -> None:
    x, credit_tid, advance_tid = financed_world()
    x.deposit(0, 100_000, FundsAccount.POVERTY_SUBSIDY_FUND)
    x.weigh_in(credit_tid, 10, 1_150_000)
    x.weigh_in(advance_tid, 9, 990_000)
    x.tick(WINDOW_NS)
    day = cst_day(T0 + WINDOW_NS)
    assert day_to_date(day) == "2026-01-03" and date_to_day("2026-01-03") == day
    rows = report(x, day, kind="TRADE")
    assert [r.trade_id for r in rows] == [credit_tid, advance_tid]
    poor, ordinary = rows
    assert (poor.seller_poor_household, poor.fee_fen, poor.fee_subsidy_fen, poor.funded_by_financier_id) == (
        True, 0, 16_100, FINANCIER)
    # 990 kg x 2800 = 2,772,000; fee 13,860; interest 2 days on 1,000,000 at 6 %: 328.76 -> 328
    assert (ordinary.amount_fen, ordinary.fee_fen, ordinary.interest_paid_fen, ordinary.principal_repaid_fen,
            ordinary.payable_fen) == (2_772_000, 13_860, 328, 1_000_000, 1_757_812)
    # the seller's own report: not who financed the buyer (the operator's shows FARMER's buyer paid cash)
    assert report(x, day, FARMER, kind="TRADE") == [msgspec.structs.replace(ordinary, funded_by_financier_id=None)]
    assert report(x, day - 1) == []
    lines = report_csv(rows).decode().split("\r\n")
    assert lines[0] == ",".join(REPORT_COLUMNS)
    assert lines[2].startswith(f"2026-01-03,{advance_tid},RC-LH-WSY,SETTLED,{BUYER},{FARMER},False,10,9,990000,")
    loan_id = x.clearing.trades[advance_tid].advance_loan_id
    # ... funded by cash (0); then kind, participant, the advance, no share or member, no loan columns,
    # no heads refused, no shrink, no raise
    assert lines[2].endswith(
        f",2772000,1148000,13860,0,0,328,1000000,1757812,0,TRADE,0,{loan_id},,,0,0,,0,0,0,0")
    assert report_csv([]) == b""


def test_bank_file_puts_same_day_payouts_first_and_quotes_formula_like_names() -> None:
    x = world()
    x.register(77, ParticipantRole.FARMER, "=HYPERLINK(1)")
    x.deposit(BUYER, 20_000_000)
    for seller in (77, POOR_FARMER):
        trade = x.trade(BUYER, seller, 2800, 1)
        x.weigh_in(trade.trade_id, 1, 100_001)  # 280,002.8 -> 280,002
    x.tick(WINDOW_NS)
    x.ok(RunPayouts(OPERATOR, 0, "R1"))
    payer = Payer(name="+payer", account="31000001", bank_code="102", branch_code="102653000019")
    text = bank_file_csv(x.clearing, payouts_to_send(x.clearing), file_ref="F", value_day=0, payer=payer).decode()
    lines = text.split("\r\n")
    assert lines[0].split(",")[3:6] == ["19700101", "CNY", "'+payer"]
    assert lines[1].split(",")[4:7] == ["SAME_DAY", str(POOR_FARMER), "张三"]  # 280,002 - fee 1,400 waived
    assert lines[1].split(",")[10:12] == ["280002", "2800.02"]
    assert lines[2].split(",")[4:7] == ["NORMAL", "77", "'=HYPERLINK(1)"]
    assert lines[2].split(",")[10:12] == ["278602", "2786.02"]  # fee 1,400
    assert lines[3:] == ["T,2,558604,5586.04", ""]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("payout_id,attempt,status\n", "line 1: header"),
        ("payout_id,attempt,status,bank_ref,reason\n1,1,MAYBE,x,\n", "line 2: status must be OK or FAILED"),
        ("payout_id,attempt,status,bank_ref,reason\n1,x,OK,x,\n", "line 2: attempt must be a whole number"),
        ("payout_id,attempt,status,bank_ref,reason\n1,1,OK\n", "line 2: expected 5 fields"),
    ],
)
def test_confirmation_file_is_refused_whole_on_the_first_bad_line(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_confirmations_csv(text.encode())
