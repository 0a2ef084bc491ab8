"""Reports and financiers' sight of what they lent (issue 11, items 6 to 9), on the core with its clearing."""

from __future__ import annotations

import msgspec

from exchange.commands import (
    FundsAccount,
    GrantAdvance,
    GrantCreditLine,
    OpenDispute,
    RepayLoan,
    ResolveDispute,
    SetConsent,
    VerifyPoorHousehold,
    WriteOffLoan,
)
from exchange.events import AdvanceGranted, TradeFacts, TradeSettled
from exchange.settlement.ledger import AccountCode as AC
from exchange.settlement.rules import cst_day
from exchange.settlement.views import (
    REPORT_COLUMNS,
    SettlementReportRow,
    TradeSides,
    financier_portfolio,
    financier_view,
    participant_balances,
    report_entries,
    trade_sides,
)
from tests.settlement_support import (
    BUYER,
    BUYER2,
    DAY_NS,
    FARMER,
    FINANCIER,
    HOUR_NS,
    OPERATOR,
    POOR_FARMER,
    Exchange,
    report,
    world,
)
from tests.test_settlement_delivery import OBLIGATION, cn_world, delivered, traded, weigh

WINDOW_NS = 48 * HOUR_NS


def financed_world() -> tuple[Exchange, int, int]:
    """BUYER2 bids on FINANCIER's credit line and buys 10 heads from POOR_FARMER; FINANCIER advances
    1,000,000 to FARMER against its trade of 10 heads with BUYER; both borrowers consent."""
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


def test_a_lender_keeps_sight_of_the_trades_it_financed_when_consent_is_withdrawn() -> None:
    x, credit_tid, advance_tid = financed_world()
    credit, advanced = x.clearing.trades[credit_tid], x.clearing.trades[advance_tid]
    assert trade_sides(x.clearing, FINANCIER, credit) == TradeSides(True, False, True, False)
    assert trade_sides(x.clearing, FINANCIER, advanced) == TradeSides(False, True, False, True)
    x.ok(SetConsent(BUYER2, 0, FINANCIER, False))
    x.ok(SetConsent(FARMER, 0, FINANCIER, False))
    # Without consent the lender still sees each trade, and of the side it lent to only its own loan.
    assert any(trade_sides(x.clearing, FINANCIER, credit)) and any(trade_sides(x.clearing, FINANCIER, advanced))
    assert trade_sides(x.clearing, FINANCIER, credit) == TradeSides(False, False, True, False)
    assert trade_sides(x.clearing, FINANCIER, advanced) == TradeSides(False, False, False, True)
    x.weigh_in(advance_tid, 9, 990_000)
    x.tick(WINDOW_NS)
    view = financier_view(x.clearing, FINANCIER, FARMER)
    assert view is not None and not view.consented
    [row] = view.trades
    # 990 kg x 2800 = 2,772,000; the advance's repayment is in the loan row, not the trade's
    assert (row.trade_id, row.side, row.state, row.amount_fen, row.principal_repaid_fen, row.interest_paid_fen) == (
        advance_tid, "sell", "SETTLED", 2_772_000, None, None)
    [loan] = view.loans
    assert (loan.trade_id, loan.principal_repaid_fen, loan.interest_paid_fen) == (advance_tid, 1_000_000, 328)
    # Another financier sees neither trade.
    assert not any(trade_sides(x.clearing, FINANCIER + 1, credit)) and not any(
        trade_sides(x.clearing, FINANCIER + 1, advanced))


def test_collected_interest_stays_the_financiers_income() -> None:
    x, credit_tid, advance_tid = financed_world()
    x.weigh_in(credit_tid, 10, 1_150_000)
    x.weigh_in(advance_tid, 9, 990_000)
    x.tick(WINDOW_NS)  # two midnights on the advance: 1,000,000 at 6 % for 2 days = 328.76 -> 328, collected
    # the credit-funded trade drew 1,150 kg x 2800 = 3,220,000 at 5 %: 441.09 a day -> 441, then 441 (carry)
    x.tick(DAY_NS)
    x.tick(DAY_NS)
    x.deposit(BUYER2, 500)
    x.ok(RepayLoan(BUYER2, 0, FINANCIER, 500, ""))  # interest first: 500 of the 882 due
    assert (x.balance(AC.INTEREST_INCOME, FINANCIER), x.balance(AC.INTEREST_COLLECTED, FINANCIER)) == (
        328 + 882, 328 + 500)
    assert (x.balance(AC.INTEREST_RECEIVABLE, FINANCIER, FARMER), x.balance(AC.INTEREST_RECEIVABLE, FINANCIER, BUYER2)
            ) == (0, 382)
    # funds: 10,000,000 - 5,000,000 earmarked - 1,000,000 advanced + 1,000,328 repaid + 500 of interest
    assert x.balance(AC.FINANCIER_FUNDS, FINANCIER) == 5_000_828
    kinds = {row.kind: row.balance_fen for row in participant_balances(x.clearing, FINANCIER)}
    assert (kinds["INTEREST_INCOME"], kinds["INTEREST_COLLECTED"]) == (1_210, 828)
    views = {v.participant_id: v for v in financier_portfolio(x.clearing, FINANCIER)}
    assert (views[FARMER].interest_earned_fen, views[FARMER].interest_collected_fen) == (328, 328)
    assert (views[BUYER2].interest_earned_fen, views[BUYER2].interest_collected_fen) == (882, 500)
    # A write-off reverses the income that will never be received: the 382 still due (and 441 more
    # accrued through today first), never what was collected.
    loan_id = x.clearing.credit_lines[(BUYER2, FINANCIER)].loan_id
    x.advance(DAY_NS)
    x.ok(WriteOffLoan(FINANCIER, 0, loan_id, "buyer insolvent"))
    assert (x.balance(AC.INTEREST_INCOME, FINANCIER), x.balance(AC.INTEREST_COLLECTED, FINANCIER),
            x.balance(AC.INTEREST_RECEIVABLE, FINANCIER, BUYER2)) == (828, 828, 0)
    view = financier_view(x.clearing, FINANCIER, BUYER2)
    assert view is not None and (view.interest_earned_fen, view.interest_collected_fen) == (500, 500)


def test_a_poor_households_subsidised_interest_is_in_its_report_and_its_financiers() -> None:
    x = world()
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.deposit(BUYER, 10_000_000)
    x.deposit(0, 100_000, FundsAccount.POVERTY_SUBSIDY_FUND)
    trade_id = x.trade(BUYER, POOR_FARMER, 2800, 10).trade_id
    x.consent(POOR_FARMER, FINANCIER)
    [loan_id] = [e.loan_id for e in x.ok(GrantAdvance(FINANCIER, 0, trade_id, 2_000_000, 3650))
                 if isinstance(e, AdvanceGranted)]
    x.weigh_in(trade_id, 10, 1_150_000)
    x.tick(WINDOW_NS)  # two midnights at 2,000 fen a day: the subsidy fund pays 4,000, then the fee waived
    day = cst_day(x.ts_ns)
    rows = report(x, day, POOR_FARMER)
    assert [(r.kind, r.trade_id, r.loan_id, r.financier_id, r.interest_accrued_fen, r.interest_paid_fen,
             r.principal_repaid_fen, r.paid_by) for r in rows] == [
        # the tick accrues the loans first (no trade: trade id 0), and the fund pays the household's interest
        ("INTEREST_ACCRUAL", 0, loan_id, FINANCIER, 4_000, None, None, ""),
        ("LOAN_REPAYMENT", 0, loan_id, FINANCIER, 0, 4_000, 0, "SUBSIDY_FUND"),
        ("TRADE", trade_id, 0, 0, 0, 0, 2_000_000, ""),  # then the trade settles: no interest left to pay
        ("LOAN_REPAYMENT", trade_id, loan_id, FINANCIER, 0, 0, 2_000_000, "BORROWER")]
    trade_row = rows[2]
    # 1,150 kg x 2800 = 3,220,000; fee 16,100 waived and paid by the fund; 1,220,000 to the payable
    assert (trade_row.seller_poor_household, trade_row.amount_fen, trade_row.fee_fen, trade_row.fee_subsidy_fen,
            trade_row.payable_fen, trade_row.advance_loan_id) == (True, 3_220_000, 0, 16_100, 1_220_000, loan_id)
    assert report(x, day, FINANCIER) == rows  # the lender, with consent: the same rows
    assert [r.kind for r in report(x, day, BUYER)] == ["TRADE"]
    assert report(x, day, FARMER) == []
    # Whatever happens to the profile later, the day's report states the facts of that day.
    x.ok(VerifyPoorHousehold(OPERATOR, 0, POOR_FARMER, "", False))
    x.ok(SetConsent(POOR_FARMER, 0, FINANCIER, False))
    assert report(x, day, POOR_FARMER) == rows
    assert report(x, day) == [*rows[:2], msgspec.structs.replace(trade_row, funded_by_financier_id=0), rows[3]]
    lender = report(x, day, FINANCIER)  # consent withdrawn: its loan rows and its own loan on the trade
    assert [r.kind for r in lender] == [r.kind for r in rows]
    assert (lender[2].advance_loan_id, lender[2].seller_poor_household, lender[2].payable_fen) == (loan_id, None, None)


# -- the deliveries' facts (items 12 and 13) in the report -------------------------------------------------


def _trade_rows(x: Exchange, tid: int, viewer: int | None = None) -> list[SettlementReportRow]:
    return [r for r in report(x, cst_day(x.ts_ns), viewer) if r.trade_id == tid]


def test_refused_heads_and_the_unfasted_shrink_are_in_the_report_row() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = traded(x)
    # 8 delivered unfasted at 920,017 g, 2 dead on arrival: shrink 23,000 g, paid 897,017 g (avg 112,127);
    # floor(897,017 x 2800 / 1000) = 2,511,647, the rest of 3,920,000 (1,408,353) back to the buyer
    x.ok(weigh(tid, 8, 920_017, refused=2, unfasted=True))
    x.tick(WINDOW_NS)
    [row] = _trade_rows(x, tid)
    assert (row.state, row.heads_traded, row.heads_delivered, row.heads_refused, row.total_weight_g, row.shrink_g,
            row.avg_weight_g, row.grade) == ("SETTLED", 10, 8, 2, 920_017, 23_000, 112_127, "IN_GRADE")
    assert (row.obligation_fen, row.amount_fen, row.refund_fen, row.raised_fen, row.fee_fen) == (
        OBLIGATION, 2_511_647, 1_408_353, 0, 12_558)
    assert row.amount_fen + row.refund_fen == row.obligation_fen + row.raised_fen
    # the delivery's facts are the trade's, seen by both parties like its weight and amount
    for party in (BUYER, FARMER):
        [seen] = _trade_rows(x, tid, party)
        assert (seen.heads_refused, seen.shrink_g, seen.raised_fen) == (2, 23_000, 0)


def test_a_sellers_raised_dispute_is_in_the_report_row_and_the_amounts_add_up() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = delivered(x)  # 1100 kg x 2800 = 3,080,000; 840,000 back
    x.ok(OpenDispute(FARMER, 0, tid, "the scale under-read by 30 kg"))  # 154,000 held on the buyer's cash
    x.ok(ResolveDispute(OPERATOR, 0, tid, 3_164_000))  # 30 kg x 2800 = 84,000 more, from the hold
    [row] = _trade_rows(x, tid)
    # fee floor(3,164,000 x 50 / 10,000) = 15,820; payable 3,148,180
    assert (row.state, row.heads_refused, row.shrink_g, row.obligation_fen, row.amount_fen, row.refund_fen,
            row.raised_fen, row.fee_fen, row.payable_fen) == (
        "SETTLED", 0, 0, OBLIGATION, 3_164_000, 840_000, 84_000, 15_820, 3_148_180)
    assert row.amount_fen + row.refund_fen == row.obligation_fen + row.raised_fen  # 4,004,000
    assert "raise_held_fen" not in REPORT_COLUMNS  # what was held is the buyer's, and not a fact of settlement
    for party in (BUYER, FARMER):
        [seen] = _trade_rows(x, tid, party)
        assert seen.raised_fen == 84_000


def test_settlement_facts_journaled_before_the_delivery_facts_report_zeros() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = traded(x)
    x.ok(weigh(tid, 8, 920_017, refused=2, unfasted=True))
    x.tick(WINDOW_NS)
    [settled] = [e for e in x.events if isinstance(e, TradeSettled)]
    assert settled.facts is not None
    # the facts as an older exchange wrote them: the array without the three appended fields
    old = msgspec.msgpack.decode(msgspec.msgpack.encode(settled.facts))[:-3]
    facts = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=TradeFacts)
    assert (facts.heads_refused, facts.shrink_g, facts.raised_fen, facts.heads_delivered) == (0, 0, 0, 8)
    [entry] = report_entries(1, [msgspec.structs.replace(settled, facts=facts)])
    assert (entry.row.heads_refused, entry.row.shrink_g, entry.row.raised_fen, entry.row.amount_fen) == (
        0, 0, 0, 2_511_647)
