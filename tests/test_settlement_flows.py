"""Exact-figure examples of every money flow of settlement (issue 5), through a real core and clearing.

Figures are worked out by hand in the comments from the rules in exchange/settlement/rules.py: the
DCE-grade hog instrument (``dce_spec``: 0.5 % seller fee, +10 kg substitute at 60 fen/kg off, hold per
head = ceil(140 kg x price)), a 48 h dispute window, and the piglet instrument (¥800 a head, 1 % fee).
"""

from __future__ import annotations

from typing import Any

import msgspec

from exchange.commands import (
    AmendOrder,
    CancelOrder,
    ConfirmDeposit,
    ConfirmWithdrawal,
    FundsAccount,
    GrantAdvance,
    GrantCreditLine,
    ImportBankConfirmations,
    MarkPayoutsSent,
    OpenDispute,
    ParticipantRole,
    PlaceOrder,
    RecordWeighIn,
    ReduceCreditLine,
    RejectDelivery,
    RepayLoan,
    RequestWithdrawal,
    ResolveDispute,
    RetryPayout,
    ReturnPayout,
    RunPayouts,
    SetCooperativeMembers,
    SetFeeSchedule,
    UpdateParticipant,
    VerifyBankAccount,
    WriteOffLoan,
)
from exchange.domain import OrderType, RejectReason, Side, TimeInForce
from exchange.events import (
    AdvanceGranted,
    BankImportApplied,
    CooperativeSplitPaid,
    DeliveryGrade,
    DeliveryRecorded,
    DeliveryResolved,
    FundsDeposited,
    InterestAccrued,
    LoanDrawn,
    LoanPayer,
    LoanRepaid,
    LoanWrittenOff,
    ObligationRecorded,
    PayoutChanged,
    PayoutPriority,
    PayoutRunCreated,
    PayoutState,
    TradeFacts,
    TradeSettled,
    WithdrawalCompleted,
)
from exchange.settlement.bankfiles import Payer, bank_file_csv, parse_confirmations_csv, payouts_to_send, sent_pairs
from exchange.settlement.clearing import Clearing
from exchange.settlement.ledger import AccountCode as AC
from exchange.settlement.model import TradeState
from tests.factories import order
from tests.settlement_support import (
    BUYER,
    BUYER2,
    COOP,
    DAY_NS,
    FARMER,
    FINANCIER,
    HOUR_NS,
    MEMBER_A,
    MEMBER_B,
    OPERATOR,
    PIGLETS,
    POOR_FARMER,
    Exchange,
    accepted_order_id,
    dce_spec,
    world,
)

R = RejectReason
ROLE = ParticipantRole
WINDOW_NS = 48 * HOUR_NS


def check_books(x: Exchange) -> None:
    x.clearing.ledger.validate()  # sums to zero, limits hold, pending counters match
    restored = Clearing.restore(x.clearing.snapshot())
    assert restored.state_hash() == x.clearing.state_hash()


# -- 1. deposits and withdrawals -------------------------------------------------------------------------


def test_deposit_is_idempotent_by_bank_reference_and_withdrawal_is_held_until_confirmed() -> None:
    x = world()
    deposit = ConfirmDeposit(OPERATOR, 0, "ICBC-0001", BUYER, FundsAccount.TRADING_CASH, 1_000_000)
    first = x.of(FundsDeposited, x.ok(deposit))[0]
    assert x.of(FundsDeposited, x.ok(deposit)) == [first]  # a retry answers the original
    assert x.balance(AC.BUYER_CASH, BUYER) == 1_000_000  # and changes nothing
    assert x.balance(AC.BANK_SETTLEMENT) == 1_000_000
    x.reject(msgspec.structs.replace(deposit, amount_fen=999_999), R.DUPLICATE_REFERENCE)

    x.ok(RequestWithdrawal(BUYER, 0, "W1", FundsAccount.TRADING_CASH, 300_000))
    assert x.held(AC.BUYER_CASH, BUYER) == 300_000
    x.reject(RequestWithdrawal(BUYER, 0, "W2", FundsAccount.TRADING_CASH, 700_001), R.INSUFFICIENT_FUNDS)
    x.ok(ConfirmWithdrawal(OPERATOR, 0, BUYER, "W1", True, "ICBC-OUT-9"))
    assert x.balance(AC.BUYER_CASH, BUYER) == 700_000
    assert x.balance(AC.BANK_SETTLEMENT) == 700_000
    x.ok(RequestWithdrawal(BUYER, 0, "W2", FundsAccount.TRADING_CASH, 700_000))
    done = x.ok(ConfirmWithdrawal(OPERATOR, 0, BUYER, "W2", False, "RETURNED"))
    assert x.of(WithdrawalCompleted, done)[0].ok is False
    assert x.balance(AC.BUYER_CASH, BUYER) == 700_000 and x.held(AC.BUYER_CASH, BUYER) == 0
    x.reject(ConfirmWithdrawal(OPERATOR, 0, BUYER, "W2", True, "X"), R.INVALID_PAYOUT_STATE)

    x.ok(UpdateParticipant(BUYER, 0, BUYER, "重庆肉联", "6217999999999999"))  # a new account: unverified
    x.reject(RequestWithdrawal(BUYER, 0, "W3", FundsAccount.TRADING_CASH, 1), R.BANK_ACCOUNT_NOT_VERIFIED)
    x.ok(VerifyBankAccount(OPERATOR, 0, BUYER, "6217999999999999"))
    x.ok(RequestWithdrawal(BUYER, 0, "W3", FundsAccount.TRADING_CASH, 1))
    check_books(x)


# -- 2. pre-trade holds ------------------------------------------------------------------------------------


def test_buy_holds_heads_times_heaviest_animal_times_price_and_cancel_releases() -> None:
    x = world()
    x.deposit(BUYER, 4_060_000)
    # ceil(140 kg x 2900 fen/kg) = 406,000 fen a head; 10 heads = 4,060,000 fen: exactly covered
    order_id = accepted_order_id(x.buy(BUYER, 2900, 10))
    assert x.held(AC.BUYER_CASH, BUYER) == 4_060_000
    x.reject(order_instance(BUYER2, 2800, 1), R.INSUFFICIENT_FUNDS)  # BUYER2 has nothing
    x.ok(CancelOrder(BUYER, 0, order_id))
    assert x.held(AC.BUYER_CASH, BUYER) == 0
    assert x.clearing.ledger.available_fen(x.clearing.accounts[(AC.BUYER_CASH, BUYER, 0)]) == 4_060_000
    check_books(x)


def order_instance(buyer: int, price_fen: int, heads: int, **kwargs: Any) -> PlaceOrder:
    return order(buyer, Side.BUY, price_fen, heads, **kwargs)


def test_hold_rounds_up_to_the_fen_and_a_one_fen_shortfall_is_rejected() -> None:
    x = Exchange(msgspec.structs.replace(dce_spec(), animal_max_g=140_001))
    x.register(BUYER, ROLE.BUYER)
    # 140.001 kg x 2810 fen/kg = 393,402.81 fen -> 393,403 a head
    x.deposit(BUYER, 393_402)
    x.reject(order_instance(BUYER, 2810, 1), R.INSUFFICIENT_FUNDS)
    x.deposit(BUYER, 1)
    x.buy(BUYER, 2810, 1)
    assert x.held(AC.BUYER_CASH, BUYER) == 393_403


def test_fill_below_the_limit_returns_the_difference_and_the_rest_stays_held() -> None:
    x = world()
    x.deposit(BUYER, 10_000_000)
    lot = x.lot(FARMER, 4)
    x.sell(FARMER, 2800, 4, lot)
    events = x.buy(BUYER, 2900, 10)  # 4 fill at 2800, 6 rest at 2900
    ob = x.of(ObligationRecorded, events)[0]
    # obligation 4 x ceil(140 x 2800) = 4 x 392,000 = 1,568,000; released 4 x (406,000 - 392,000) = 56,000
    assert (ob.obligation_fen, ob.released_fen, ob.heads) == (1_568_000, 56_000, 4)
    assert x.balance(AC.ESCROW) == 1_568_000
    assert x.held(AC.BUYER_CASH, BUYER) == 6 * 406_000
    assert x.balance(AC.BUYER_CASH, BUYER) == 10_000_000 - 1_568_000
    order_id = accepted_order_id(events)
    x.ok(AmendOrder(BUYER, 0, order_id, price_fen=2700))  # 6 x ceil(140 x 2700) = 6 x 378,000
    assert x.held(AC.BUYER_CASH, BUYER) == 2_268_000
    x.reject(AmendOrder(BUYER, 0, order_id, quantity_heads=400), R.INSUFFICIENT_FUNDS)
    x.ok(AmendOrder(BUYER, 0, order_id, quantity_heads=20))  # 16 remaining x 378,000 = 6,048,000
    assert x.held(AC.BUYER_CASH, BUYER) == 6_048_000
    check_books(x)


def test_market_buy_holds_at_the_band_edge_and_an_unbanded_market_buy_is_refused() -> None:
    x = world()
    x.deposit(BUYER, 100_000_000)
    lot = x.lot(FARMER, 2)
    x.sell(FARMER, 2800, 2, lot)
    # band ±4 % of 2800 = 2688..2912, rounded inwards to the tick: 2690..2910; hold at 2910
    events = x.ok(order_instance(BUYER, 0, 3, order_type=OrderType.MARKET, tif=TimeInForce.IOC))
    ob = x.of(ObligationRecorded, events)[0]
    assert ob.obligation_fen == 2 * 392_000 and ob.released_fen == 2 * (407_400 - 392_000)
    assert x.held(AC.BUYER_CASH, BUYER) == 0  # the IOC rest expired and its hold was voided
    x.reject(order_instance(BUYER, 0, 1, order_type=OrderType.MARKET, tif=TimeInForce.IOC, instrument=PIGLETS),
             R.UNBOUNDED_HOLD)


# -- 3, 4, 5. trade, weigh-in, settlement -------------------------------------------------------------------


def settle_one(x: Exchange, seller: int, heads: int, weight_g: int, price_fen: int = 2800) -> int:
    x.deposit(BUYER, 10_000_000)
    trade = x.trade(BUYER, seller, price_fen, heads)
    x.weigh_in(trade.trade_id, heads, weight_g)
    return trade.trade_id


def test_in_grade_delivery_settles_after_the_window_with_the_fee_and_the_buyer_keeps_the_odd_fen() -> None:
    x = world()
    tid = settle_one(x, FARMER, 10, 1_150_003)
    d = x.of(DeliveryRecorded)[0]
    # 1,150,003 g x 2800 fen/kg / 1000 = 3,220,008.4 -> 3,220,008 (the 0.4 fen stays with the buyer)
    assert (d.avg_weight_g, d.grade, d.amount_fen) == (115_000, DeliveryGrade.IN_GRADE, 3_220_008)
    assert d.refund_fen == 3_920_000 - 3_220_008
    assert x.balance(AC.SELLER_RECEIVABLE, FARMER) == 3_220_008 and x.balance(AC.ESCROW) == 0
    assert x.of(TradeSettled, x.tick(WINDOW_NS - 1)) == []  # one nanosecond early: still in the window
    settled = x.of(TradeSettled, x.tick(1))
    # fee floor(3,220,008 x 50 / 10,000) = 16,100 (0.04 fen to the seller); payable 3,203,908
    # and the facts of the trade as it settled, for the report
    facts = TradeFacts("RC-LH-WSY", BUYER, FARMER, 10, 2800, 3_920_000, 0, 10, 1_150_003, 115_000,
                       DeliveryGrade.IN_GRADE, 0, 3_920_000 - 3_220_008, 0, 0, False)
    assert settled == [TradeSettled(0, x.ts_ns, tid, FARMER, 3_220_008, 16_100, 0, 0, 0, 0, 3_203_908, facts)]
    assert x.balance(AC.FEE_INCOME) == 16_100
    assert x.balance(AC.FARMER_PAYABLE, FARMER) == 3_203_908
    assert x.balance(AC.BUYER_CASH, BUYER) == 10_000_000 - 3_220_008
    assert x.of(TradeSettled, x.tick(DAY_NS)) == []  # exactly once
    check_books(x)


def test_short_delivery_is_paid_pro_rata_and_the_rest_refunded_at_the_weigh_in() -> None:
    x2 = world()
    x2.deposit(BUYER, 10_000_000)
    trade = x2.trade(BUYER, FARMER, 2800, 10)
    d = x2.of(DeliveryRecorded, x2.weigh_in(trade.trade_id, 8, 880_000))[0]
    # 8 heads, 880 kg, avg 110 kg: 880 x 2800 = 2,464,000; refund 3,920,000 - 2,464,000 = 1,456,000
    assert (d.heads_delivered, d.amount_fen, d.refund_fen) == (8, 2_464_000, 1_456_000)
    assert x2.balance(AC.BUYER_CASH, BUYER) == 10_000_000 - 2_464_000
    settled = x2.of(TradeSettled, x2.tick(WINDOW_NS))[0]
    assert (settled.fee_fen, settled.payable_fen) == (12_320, 2_451_680)  # 0.5 % of 2,464,000


def test_overweight_substitute_is_discounted_and_cannot_be_rejected() -> None:
    x = world()
    tid = settle_one(x, FARMER, 10, 1_250_000)  # avg 125 kg: 5 kg over 120, within +10 kg
    d = x.of(DeliveryRecorded)[0]
    # (2800 - 60) fen/kg x 1250 kg = 3,425,000
    assert (d.grade, d.discount_fen_per_kg, d.amount_fen) == (DeliveryGrade.SUBSTITUTE, 60, 3_425_000)
    x.reject(RejectDelivery(BUYER, 0, tid), R.DELIVERY_NOT_REJECTABLE)
    assert x.of(TradeSettled, x.tick(WINDOW_NS))[0].amount_fen == 3_425_000


def test_out_of_grade_delivery_may_be_rejected_by_the_buyer_within_the_window() -> None:
    x = world()
    tid = settle_one(x, FARMER, 10, 1_320_000)  # avg 132 kg: beyond 120 + 10
    d = x.of(DeliveryRecorded)[0]
    assert (d.grade, d.amount_fen) == (DeliveryGrade.OUT_OF_GRADE, 3_616_800)  # 1320 x 2740
    x.reject(RejectDelivery(FARMER, 0, tid), R.NOT_AUTHORIZED)
    x.advance(WINDOW_NS - 1)
    resolved = x.of(DeliveryResolved, x.ok(RejectDelivery(BUYER, 0, tid)))[0]
    assert (resolved.amount_fen, resolved.refund_fen, resolved.rejected) == (0, 3_920_000, True)
    assert x.balance(AC.BUYER_CASH, BUYER) == 10_000_000
    assert x.balance(AC.SELLER_RECEIVABLE, FARMER) == 0
    assert x.of(TradeSettled, x.tick(DAY_NS)) == []  # a rejected trade never settles
    assert x.clearing.trades[tid].state == TradeState.REJECTED


def test_out_of_grade_not_rejected_settles_at_the_discount_and_rejection_after_the_window_is_refused() -> None:
    x = world()
    tid = settle_one(x, FARMER, 10, 1_320_000)
    x.advance(WINDOW_NS)
    x.reject(RejectDelivery(BUYER, 0, tid), R.DISPUTE_WINDOW_CLOSED)
    assert x.of(TradeSettled, x.tick())[0].amount_fen == 3_616_800


def test_piglets_are_paid_per_head_delivered() -> None:
    x = world()
    x.deposit(BUYER, 2_000_000)
    trade = x.trade(BUYER, FARMER, 80_000, 20, instrument=PIGLETS, avg_weight_g=20_000)
    assert x.of(ObligationRecorded)[0].obligation_fen == 1_600_000  # 20 x ¥800
    d = x.of(DeliveryRecorded, x.weigh_in(trade.trade_id, 19, 380_000))[0]
    assert (d.amount_fen, d.refund_fen) == (1_520_000, 80_000)
    settled = x.of(TradeSettled, x.tick(WINDOW_NS))[0]
    assert (settled.fee_fen, settled.payable_fen) == (15_200, 1_504_800)  # 1 %


# -- disputes -------------------------------------------------------------------------------------------------


def test_dispute_holds_the_trade_until_an_operator_lowers_the_amount() -> None:
    x = world()
    tid = settle_one(x, FARMER, 10, 1_150_000)  # 3,220,000
    x.advance(WINDOW_NS - 1)
    x.reject(OpenDispute(BUYER2, 0, tid, "not mine"), R.NOT_AUTHORIZED)
    x.ok(OpenDispute(BUYER, 0, tid, "two pigs lame"))
    assert x.of(TradeSettled, x.tick(DAY_NS)) == []  # the window closed, but the dispute holds it
    x.reject(ResolveDispute(BUYER, 0, tid, 3_000_000), R.NOT_AUTHORIZED)
    x.reject(ResolveDispute(OPERATOR, 0, tid, 3_220_001), R.INVALID_AMOUNT)
    events = x.ok(ResolveDispute(OPERATOR, 0, tid, 3_000_000))
    assert x.of(DeliveryResolved, events)[0].refund_fen == 700_000 + 220_000
    settled = x.of(TradeSettled, events)[0]
    assert (settled.amount_fen, settled.fee_fen, settled.payable_fen) == (3_000_000, 15_000, 2_985_000)
    assert x.balance(AC.BUYER_CASH, BUYER) == 10_000_000 - 3_000_000
    x.reject(OpenDispute(BUYER, 0, tid, "again"), R.INVALID_TRADE_STATE)


def test_dispute_after_the_window_is_refused_and_the_trade_settles() -> None:
    x = world()
    tid = settle_one(x, FARMER, 10, 1_150_000)
    x.advance(WINDOW_NS)
    x.reject(OpenDispute(BUYER, 0, tid, "late"), R.DISPUTE_WINDOW_CLOSED)
    assert len(x.of(TradeSettled, x.tick())) == 1


# -- a registered poor farmer with an advance -----------------------------------------------------------------


def test_poor_farmer_with_an_advance_pays_no_fee_and_no_interest_and_is_paid_first_same_day() -> None:
    x = world()
    x.deposit(0, 100_000, FundsAccount.POVERTY_SUBSIDY_FUND)
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.deposit(BUYER, 20_000_000)
    ordinary = x.trade(BUYER, FARMER, 2800, 10)
    trade = x.trade(BUYER, POOR_FARMER, 2800, 10)
    x.consent(POOR_FARMER, FINANCIER)
    # advance limit: 70 % of 10 x 110 kg (declared) x 2800 = 70 % of 3,080,000 = 2,156,000
    x.reject(GrantAdvance(FINANCIER, 0, trade.trade_id, 2_156_001, 600), R.ADVANCE_TOO_LARGE)
    advance = x.of(AdvanceGranted, x.ok(GrantAdvance(FINANCIER, 0, trade.trade_id, 2_000_000, 600)))[0]
    assert x.balance(AC.FARMER_PAYABLE, POOR_FARMER) == 2_000_000  # paid at once
    assert x.balance(AC.LOANS_RECEIVABLE, FINANCIER, POOR_FARMER) == 2_000_000
    x.weigh_in(trade.trade_id, 10, 1_150_000)
    x.weigh_in(ordinary.trade_id, 10, 1_150_000)
    # day 1: 2,000,000 x 6 % / 365 = 328.77 -> 328 (carry 0.77), day 2: 328.77 + 0.77 -> 329
    day1 = x.tick(DAY_NS)
    assert [e.interest_fen for e in x.of(InterestAccrued, day1)] == [328]
    assert [(e.interest_fen, e.payer) for e in x.of(LoanRepaid, day1)] == [(328, LoanPayer.SUBSIDY_FUND)]
    day2 = x.tick(DAY_NS)
    assert [e.interest_fen for e in x.of(InterestAccrued, day2)] == [329]
    settled = {e.trade_id: e for e in x.of(TradeSettled, day2)}
    poor = settled[trade.trade_id]
    # fee 16,100 waived and paid by the fund; the advance's principal repaid first; interest by the fund
    assert (poor.fee_fen, poor.fee_subsidy_fen, poor.fee_forgone_fen) == (0, 16_100, 0)
    assert (poor.interest_paid_fen, poor.principal_repaid_fen, poor.payable_fen) == (0, 2_000_000, 1_220_000)
    assert x.balance(AC.POVERTY_SUBSIDY_FUND) == 100_000 - 328 - 329 - 16_100
    assert x.balance(AC.FINANCIER_FUNDS, FINANCIER) == 5_000_000 + 657
    assert x.balance(AC.LOANS_RECEIVABLE, FINANCIER, POOR_FARMER) == 0
    assert x.balance(AC.INTEREST_RECEIVABLE, FINANCIER, POOR_FARMER) == 0
    assert x.clearing.loans[advance.loan_id].interest_subsidised_fen == 657
    # the farmer received the whole 3,220,000: 2,000,000 advanced + 1,220,000 at settlement
    assert x.balance(AC.FARMER_PAYABLE, POOR_FARMER) == 3_220_000
    run = x.ok(RunPayouts(OPERATOR, 0, "2026-01-03"))
    payouts = x.of(PayoutChanged, run)
    assert [(p.payee_id, p.priority, p.amount_fen) for p in payouts] == [
        (POOR_FARMER, PayoutPriority.SAME_DAY, 3_220_000), (FARMER, PayoutPriority.NORMAL, 3_203_900)]
    assert payouts[0].trade_ids == (trade.trade_id,)
    check_books(x)


def test_poor_farmers_fee_is_forgone_when_the_subsidy_fund_is_empty_never_charged_to_the_farmer() -> None:
    x = world()
    x.deposit(0, 10_000, FundsAccount.POVERTY_SUBSIDY_FUND)
    settle_one(x, POOR_FARMER, 10, 1_150_000)
    settled = x.of(TradeSettled, x.tick(WINDOW_NS))[0]
    assert (settled.fee_fen, settled.fee_subsidy_fen, settled.fee_forgone_fen) == (0, 10_000, 6_100)
    assert settled.payable_fen == 3_220_000
    assert x.balance(AC.FEE_INCOME) == 10_000 and x.balance(AC.POVERTY_SUBSIDY_FUND) == 0


def test_ordinary_farmer_repays_advance_interest_and_principal_from_the_proceeds() -> None:
    x = world()
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.deposit(BUYER, 10_000_000)
    trade = x.trade(BUYER, FARMER, 2800, 10)
    x.reject(GrantAdvance(FINANCIER, 0, trade.trade_id, 1_000_000, 600), R.NO_CONSENT)
    x.consent(FARMER, FINANCIER)
    x.ok(GrantAdvance(FINANCIER, 0, trade.trade_id, 2_000_000, 600))
    x.weigh_in(trade.trade_id, 10, 1_150_000)
    settled = x.of(TradeSettled, x.tick(WINDOW_NS))[0]  # two midnights at once: 657.53 -> 657
    assert (settled.fee_fen, settled.interest_paid_fen, settled.principal_repaid_fen) == (16_100, 657, 2_000_000)
    assert settled.payable_fen == 3_220_000 - 16_100 - 657 - 2_000_000 == 1_203_243
    assert x.balance(AC.FINANCIER_FUNDS, FINANCIER) == 5_000_657
    # the interest earned is the financier's income, and it is all collected
    assert (x.balance(AC.INTEREST_INCOME, FINANCIER), x.balance(AC.INTEREST_COLLECTED, FINANCIER),
            x.balance(AC.INTEREST_RECEIVABLE, FINANCIER, FARMER)) == (657, 657, 0)


def advanced(seller: int, rate_bps: int) -> tuple[Exchange, int, int]:
    """A funded financier's advance of 2,000,000 fen to a consenting ``seller`` against its trade of 10 heads
    at 28.00: the exchange, the trade id and the loan id."""
    x = world()
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.deposit(BUYER, 10_000_000)
    trade = x.trade(BUYER, seller, 2800, 10)
    x.consent(seller, FINANCIER)
    granted = x.of(AdvanceGranted, x.ok(GrantAdvance(FINANCIER, 0, trade.trade_id, 2_000_000, rate_bps)))[0]
    return x, trade.trade_id, granted.loan_id


def test_short_proceeds_leave_the_rest_of_the_advance_outstanding_until_the_farmer_repays() -> None:
    x, trade_id, _ = advanced(FARMER, 0)  # interest-free
    x.weigh_in(trade_id, 5, 550_000)  # 1,540,000; fee 7,700; 1,532,300 repays principal
    settled = x.of(TradeSettled, x.tick(WINDOW_NS))[0]
    assert (settled.principal_repaid_fen, settled.payable_fen) == (1_532_300, 0)
    assert x.balance(AC.LOANS_RECEIVABLE, FINANCIER, FARMER) == 467_700
    # the farmer still holds the advance on its payable: it repays the rest from there
    x.reject(RepayLoan(FARMER, 0, FINANCIER, 467_701), R.INVALID_AMOUNT)
    repaid = x.of(LoanRepaid, x.ok(RepayLoan(FARMER, 0, FINANCIER, 467_700)))[0]
    assert (repaid.principal_fen, repaid.interest_fen) == (467_700, 0)
    assert x.balance(AC.FARMER_PAYABLE, FARMER) == 2_000_000 - 467_700
    check_books(x)


# -- a cooperative split ---------------------------------------------------------------------------------------


def test_cooperative_proceeds_are_split_to_members_and_the_cooperative_keeps_the_odd_fen() -> None:
    x = world()
    x.reject(SetCooperativeMembers(OPERATOR, 0, COOP, (MEMBER_A, MEMBER_B), (6000, 4001)), R.INVALID_SHARES)
    x.ok(SetCooperativeMembers(OPERATOR, 0, COOP, (MEMBER_A, MEMBER_B), (6000, 3500)))
    x.deposit(0, 100_000, FundsAccount.POVERTY_SUBSIDY_FUND)
    tid = settle_one(x, COOP, 10, 1_150_003)
    events = x.tick(WINDOW_NS)
    settled = x.of(TradeSettled, events)[0]
    # fee 16,100; MEMBER_A is a registered poor household: the fund pays its 60 %, 9,660, the cooperative
    # the rest, 6,440; the payable is 3,220,008 - 6,440
    assert (settled.fee_fen, settled.fee_subsidy_fen, settled.fee_forgone_fen) == (6_440, 9_660, 0)
    assert settled.payable_fen == 3_213_568
    splits = [(e.member_id, e.amount_fen) for e in x.of(CooperativeSplitPaid, events)]
    # shares of the net after the whole fee, 3,203,908: 60 % = 1,922,344.8 -> 1,922,344, plus MEMBER_A's
    # waiver 9,660 = 1,932,004 (its gross share); 35 % = 1,121,367.8 -> 1,121,367; the cooperative keeps
    # 3,213,568 - 1,932,004 - 1,121,367 = 160,197 (its 5 % share, 160,195.4, and the 1.6 odd fen)
    assert splits == [(MEMBER_A, 1_932_004), (MEMBER_B, 1_121_367)]
    assert x.balance(AC.FARMER_PAYABLE, COOP) == 160_197
    assert x.balance(AC.FEE_INCOME) == 16_100 and x.balance(AC.POVERTY_SUBSIDY_FUND) == 100_000 - 9_660
    run = x.of(PayoutChanged, x.ok(RunPayouts(OPERATOR, 0, "R1")))
    # MEMBER_A is a registered poor household: first; then by participant id
    assert [(p.payee_id, p.amount_fen, p.trade_ids) for p in run] == [
        (MEMBER_A, 1_932_004, (tid,)), (COOP, 160_197, (tid,)), (MEMBER_B, 1_121_367, (tid,))]
    check_books(x)


def test_cooperative_poor_members_fee_waiver_odd_fen_short_fund_and_the_cooperatives_advance() -> None:
    x = world()
    x.ok(SetCooperativeMembers(OPERATOR, 0, COOP, (MEMBER_A, MEMBER_B), (6001, 3500)))
    x.deposit(0, 5_000, FundsAccount.POVERTY_SUBSIDY_FUND)
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.deposit(BUYER, 10_000_000)
    trade = x.trade(BUYER, COOP, 2800, 10)
    x.consent(COOP, FINANCIER)
    x.ok(GrantAdvance(FINANCIER, 0, trade.trade_id, 1_000_000, 0))  # interest-free
    x.weigh_in(trade.trade_id, 10, 1_150_000)  # 3,220,000; fee 16,100
    events = x.tick(WINDOW_NS)
    settled = x.of(TradeSettled, events)[0]
    # MEMBER_A's waiver: 16,100 x 60.01 % = 9,661.61 -> 9,661 (the cooperative pays the odd fen: 6,439);
    # the fund holds only 5,000: the other 4,661 is forgone, never taken from MEMBER_A
    assert (settled.fee_fen, settled.fee_subsidy_fen, settled.fee_forgone_fen) == (6_439, 5_000, 4_661)
    # the advance is repaid from the proceeds after the whole fee (3,203,900), never from the waiver:
    # 2,203,900 left, + 9,661 waived = 2,213,561 to the cooperative's payable
    assert (settled.principal_repaid_fen, settled.payable_fen) == (1_000_000, 2_213_561)
    splits = [(e.member_id, e.amount_fen) for e in x.of(CooperativeSplitPaid, events)]
    # 60.01 % of 2,203,900 = 1,322,560.39 -> 1,322,560 + 9,661; 35 % = 771,365; the cooperative keeps
    # 2,213,561 - 1,332,221 - 771,365 = 109,975 (its 4.99 %, 109,974.61, and the 0.39 odd fen)
    assert splits == [(MEMBER_A, 1_332_221), (MEMBER_B, 771_365)]
    assert x.balance(AC.FARMER_PAYABLE, COOP) == 1_000_000 + 109_975  # the advance, paid at once, and its rest
    assert x.balance(AC.FEE_INCOME) == 6_439 + 5_000 and x.balance(AC.POVERTY_SUBSIDY_FUND) == 0
    assert x.balance(AC.LOANS_RECEIVABLE, FINANCIER, COOP) == 0
    check_books(x)


# -- payouts: a failed payout and its retry, a returned payout ------------------------------------------------------


def test_failed_payout_is_retried_as_a_new_attempt_and_confirmed_once() -> None:
    x = world()
    tid = settle_one(x, FARMER, 10, 1_150_000)
    x.tick(WINDOW_NS)
    run = x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "R1")))[0]
    assert x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "R1")))[0] == run  # idempotent
    (payout_id,) = run.payout_ids
    assert x.held(AC.FARMER_PAYABLE, FARMER) == 3_203_900
    pending = payouts_to_send(x.clearing)
    payer = Payer(name="交易所", account="31000001", bank_code="102", branch_code="102653000019")
    assert bank_file_csv(x.clearing, pending, file_ref="F1", value_day=20_000, payer=payer) == (
        "H,HOGXPAY1,F1,20241004,CNY,交易所,31000001,102,102653000019\r\n"
        f"D,1,{payout_id},1,NORMAL,{FARMER},李四,6217000000000020,,,3203900,32039.00,HOGX-P{payout_id}-A1,{tid}\r\n"
        "T,1,3203900,32039.00\r\n"
    ).encode()
    x.ok(MarkPayoutsSent(OPERATOR, 0, "F1", sent_pairs(pending)))
    failed = parse_confirmations_csv(
        f"payout_id,attempt,status,bank_ref,reason\r\n{payout_id},1,FAILED,B-1,account closed\r\n".encode())
    applied = x.of(BankImportApplied, x.ok(ImportBankConfirmations(OPERATOR, 0, "C1", failed)))[0]
    assert (applied.applied, applied.duplicates, applied.errors) == (1, 0, ())
    assert x.clearing.payouts[payout_id].state == PayoutState.FAILED
    assert x.balance(AC.BANK_SETTLEMENT) == 10_000_000  # nothing left the bank
    retried = x.of(PayoutChanged, x.ok(RetryPayout(OPERATOR, 0, payout_id)))[0]
    assert (retried.state, retried.attempt) == (PayoutState.PENDING, 2)
    x.ok(MarkPayoutsSent(OPERATOR, 0, "F2", ((payout_id, 2),)))
    stale = ImportBankConfirmations(OPERATOR, 0, "C2", failed)  # the old attempt's answer again
    assert x.of(BankImportApplied, x.ok(stale))[0].errors == ((payout_id, "attempt 1 is not the current attempt 2"),)
    ok = parse_confirmations_csv(f"payout_id,attempt,status,bank_ref,reason\n{payout_id},2,OK,B-2,\n".encode())
    x.ok(ImportBankConfirmations(OPERATOR, 0, "C3", ok))
    assert x.clearing.payouts[payout_id].state == PayoutState.CONFIRMED
    dup = x.of(BankImportApplied, x.ok(ImportBankConfirmations(OPERATOR, 0, "C4", ok)))[0]
    assert (dup.applied, dup.duplicates) == (0, 1)
    assert x.balance(AC.BANK_SETTLEMENT) == 10_000_000 - 3_203_900
    assert x.balance(AC.FARMER_PAYABLE, FARMER) == 0
    x.reject(ImportBankConfirmations(OPERATOR, 0, "C3", failed), R.DUPLICATE_REFERENCE)
    check_books(x)


def test_returned_payout_is_payable_again_and_traceable_to_the_same_trades() -> None:
    x = world()
    tid = settle_one(x, FARMER, 10, 1_150_000)
    x.tick(WINDOW_NS)
    (payout_id,) = x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "R1")))[0].payout_ids
    x.reject(ReturnPayout(OPERATOR, 0, 999), R.UNKNOWN_REFERENCE)
    x.ok(MarkPayoutsSent(OPERATOR, 0, "F1", ((payout_id, 1),)))
    x.reject(ReturnPayout(OPERATOR, 0, payout_id), R.INVALID_PAYOUT_STATE)  # sent: wait for the bank
    x.ok(ImportBankConfirmations(OPERATOR, 0, "C1", parse_confirmations_csv(
        f"payout_id,attempt,status,bank_ref,reason\n{payout_id},1,FAILED,B-1,name mismatch\n".encode())))
    x.ok(ReturnPayout(OPERATOR, 0, payout_id))
    assert x.held(AC.FARMER_PAYABLE, FARMER) == 0 and x.balance(AC.FARMER_PAYABLE, FARMER) == 3_203_900
    again = x.of(PayoutChanged, x.ok(RunPayouts(OPERATOR, 0, "R2")))
    assert [(p.amount_fen, p.trade_ids) for p in again] == [(3_203_900, (tid,))]
    check_books(x)


def test_unverified_payees_are_skipped_and_their_money_waits() -> None:
    x = world()
    settle_one(x, FARMER, 10, 1_150_000)
    x.tick(WINDOW_NS)
    x.ok(UpdateParticipant(FARMER, 0, FARMER, "李四", "6228480000000001"))
    run = x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "R1")))[0]
    assert (run.payout_ids, run.skipped_ids) == ((), (FARMER,))
    assert x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "R2", poor_only=True)))[0].skipped_ids == ()


def test_a_changed_account_holder_name_needs_verification_again_before_a_payout() -> None:
    x = world()
    settle_one(x, FARMER, 10, 1_150_000)
    x.tick(WINDOW_NS)
    x.ok(UpdateParticipant(FARMER, 0, FARMER, "李四", "6217000000000020"))  # nothing changed: still verified
    assert x.clearing.participants[FARMER].bank_verified
    x.ok(UpdateParticipant(FARMER, 0, FARMER, "李四四", "6217000000000020"))  # the same account, another holder
    assert not x.clearing.participants[FARMER].bank_verified
    run = x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "R1")))[0]
    assert (run.payout_ids, run.skipped_ids) == ((), (FARMER,))
    x.ok(VerifyBankAccount(OPERATOR, 0, FARMER, "6217000000000020"))
    run = x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "R2")))[0]
    assert (len(run.payout_ids), run.skipped_ids, run.total_fen) == (1, (), 3_203_900)


# -- credit lines --------------------------------------------------------------------------------------------------


def test_credit_line_funds_a_bid_the_financier_pays_at_settlement_and_the_buyer_repays_with_interest() -> None:
    x = world()
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.reject(GrantCreditLine(FINANCIER, 0, BUYER2, 4_000_000, 800), R.NO_CONSENT)
    x.consent(BUYER2, FINANCIER)
    x.reject(GrantCreditLine(FINANCIER, 0, BUYER2, 5_000_001, 800), R.INSUFFICIENT_FUNDS)
    x.ok(GrantCreditLine(FINANCIER, 0, BUYER2, 4_000_000, 730))  # 7.3 %: 2 fen a day per 10,000 fen
    assert x.balance(AC.FINANCIER_FUNDS, FINANCIER) == 1_000_000
    trade = x.trade(BUYER2, FARMER, 2800, 10)  # no cash: held against the line
    assert x.of(ObligationRecorded)[0].financier_id == FINANCIER
    x.weigh_in(trade.trade_id, 10, 1_150_000)
    assert x.balance(AC.BUYER_CREDIT_LINE, BUYER2, FINANCIER) == 4_000_000 - 3_220_000  # refund to the line
    drawn = x.of(LoanDrawn, x.tick(WINDOW_NS))[0]
    assert drawn.amount_fen == 3_220_000
    assert x.balance(AC.LOANS_RECEIVABLE, FINANCIER, BUYER2) == 3_220_000
    accrued = x.of(InterestAccrued, x.tick(DAY_NS))[0]
    assert accrued.interest_fen == 644  # 3,220,000 x 730 / 3,650,000 = 644 exactly
    x.reject(RepayLoan(BUYER2, 0, FINANCIER, 1_000), R.INSUFFICIENT_FUNDS)  # no cash yet
    x.deposit(BUYER2, 3_220_644)
    repaid = x.of(LoanRepaid, x.ok(RepayLoan(BUYER2, 0, FINANCIER, 3_220_644)))[0]
    assert (repaid.interest_fen, repaid.principal_fen) == (644, 3_220_000)
    assert x.balance(AC.FINANCIER_FUNDS, FINANCIER) == 1_000_000 + 3_220_644
    x.ok(ReduceCreditLine(FINANCIER, 0, BUYER2, 780_000))
    assert x.balance(AC.BUYER_CREDIT_LINE, BUYER2, FINANCIER) == 0
    x.reject(ReduceCreditLine(FINANCIER, 0, BUYER2, 1), R.INSUFFICIENT_FUNDS)
    check_books(x)


def test_defaulted_credit_line_loan_is_written_off_with_interest_through_today_and_stops_accruing() -> None:
    x = world()
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.consent(BUYER2, FINANCIER)
    x.ok(GrantCreditLine(FINANCIER, 0, BUYER2, 4_000_000, 730))  # 2 fen a day per 10,000 fen
    trade = x.trade(BUYER2, FARMER, 2800, 10)
    x.weigh_in(trade.trade_id, 10, 1_150_000)
    loan_id = x.of(LoanDrawn, x.tick(WINDOW_NS))[0].loan_id  # 3,220,000 drawn
    assert x.of(InterestAccrued, x.tick(DAY_NS))[0].interest_fen == 644
    x.advance(DAY_NS)  # another midnight, no tick yet: the write-off accrues it first
    x.reject(WriteOffLoan(BUYER2, 0, loan_id, "mine"), R.UNKNOWN_LOAN)  # the borrower cannot forgive itself
    events = x.ok(WriteOffLoan(FINANCIER, 0, loan_id, "buyer insolvent"))
    assert x.of(InterestAccrued, events)[0].interest_fen == 644
    written = x.of(LoanWrittenOff, events)[0]
    assert (written.principal_fen, written.interest_fen, written.reason) == (3_220_000, 1_288, "buyer insolvent")
    # the claims are closed; the lent cash stays lost: funds are what was never lent
    assert x.balance(AC.LOANS_RECEIVABLE, FINANCIER, BUYER2) == x.balance(AC.LOANS_FUNDED, FINANCIER, BUYER2) == 0
    assert x.balance(AC.INTEREST_RECEIVABLE, FINANCIER, BUYER2) == x.balance(AC.INTEREST_INCOME, FINANCIER) == 0
    assert x.balance(AC.FINANCIER_FUNDS, FINANCIER) == 1_000_000
    loan = x.clearing.loans[loan_id]
    assert (loan.principal_written_off_fen, loan.interest_written_off_fen, loan.is_open) == (3_220_000, 1_288, False)
    assert not x.of(InterestAccrued, x.tick(3 * DAY_NS))  # nothing accrues any more
    x.reject(RepayLoan(BUYER2, 0, FINANCIER, 1), R.INVALID_AMOUNT)  # nothing is owed
    x.reject(WriteOffLoan(FINANCIER, 0, loan_id, "again"), R.LOAN_CLOSED)
    # the line is untouched: its undrawn rest is the financier's to reduce
    assert x.balance(AC.BUYER_CREDIT_LINE, BUYER2, FINANCIER) == 780_000
    check_books(x)


def test_written_off_advance_is_not_repaid_at_settlement_and_the_farmer_keeps_the_proceeds() -> None:
    x, trade_id, loan_id = advanced(FARMER, 600)
    written = x.of(LoanWrittenOff, x.ok(WriteOffLoan(FINANCIER, 0, loan_id, "flood relief")))[0]
    assert (written.principal_fen, written.interest_fen) == (2_000_000, 0)  # same day: no interest yet
    x.weigh_in(trade_id, 10, 1_150_000)
    settled = x.of(TradeSettled, x.tick(WINDOW_NS))[0]
    assert (settled.interest_paid_fen, settled.principal_repaid_fen, settled.payable_fen) == (0, 0, 3_203_900)
    assert x.balance(AC.FARMER_PAYABLE, FARMER) == 2_000_000 + 3_203_900
    assert x.balance(AC.FINANCIER_FUNDS, FINANCIER) == 3_000_000
    check_books(x)


def _poor_farmers_settled_advance_with_interest_unpaid() -> tuple[Exchange, int]:
    """A poor household's advance repaid at settlement, its interest (2,000 fen a day, two midnights)
    left due because the subsidy fund was empty."""
    x, trade_id, loan_id = advanced(POOR_FARMER, 3650)
    x.weigh_in(trade_id, 10, 1_150_000)
    x.tick(WINDOW_NS)
    loan = x.clearing.loans[loan_id]
    assert (loan.principal_fen, loan.interest_due_fen, x.balance(AC.POVERTY_SUBSIDY_FUND)) == (0, 4_000, 0)
    return x, loan_id


def test_a_poor_households_interest_is_written_off_only_where_the_subsidy_fund_cannot_pay_it() -> None:
    x, loan_id = _poor_farmers_settled_advance_with_interest_unpaid()
    x.deposit(0, 1_000, FundsAccount.POVERTY_SUBSIDY_FUND)
    events = x.ok(WriteOffLoan(FINANCIER, 0, loan_id, "the fund is short"))
    paid = x.of(LoanRepaid, events)[0]
    assert (paid.interest_fen, paid.payer) == (1_000, LoanPayer.SUBSIDY_FUND)
    assert (x.of(LoanWrittenOff, events)[0].interest_fen, x.balance(AC.POVERTY_SUBSIDY_FUND)) == (3_000, 0)
    # the fund can pay it all: the borrower owes nothing, so there is nothing to write off
    x, loan_id = _poor_farmers_settled_advance_with_interest_unpaid()
    x.deposit(0, 4_000, FundsAccount.POVERTY_SUBSIDY_FUND)
    x.reject(WriteOffLoan(FINANCIER, 0, loan_id, "nothing left"), R.LOAN_CLOSED)
    paid = x.of(LoanRepaid, x.tick(DAY_NS))[0]  # the fund pays on the first tick after the next midnight
    assert (paid.interest_fen, paid.payer, x.clearing.loans[loan_id].is_open) == (4_000, LoanPayer.SUBSIDY_FUND, False)
    check_books(x)


def test_fee_schedule_applies_to_later_settlements() -> None:
    x = world()
    x.reject(SetFeeSchedule(OPERATOR, 0, "RC-LH-WSY", 1001), R.INVALID_SETTINGS)
    x.ok(SetFeeSchedule(OPERATOR, 0, "RC-LH-WSY", 25))
    settle_one(x, FARMER, 10, 1_150_000)
    assert x.of(TradeSettled, x.tick(WINDOW_NS))[0].fee_fen == 8_050  # 0.25 % of 3,220,000


def test_weigh_in_needs_the_quarantine_check_and_sane_figures() -> None:
    x = world()
    x.deposit(BUYER, 10_000_000)
    trade = x.trade(BUYER, FARMER, 2800, 10)
    tid = trade.trade_id
    x.reject(RecordWeighIn(FARMER, 0, tid, 10, 1_150_000, "CQ-1", False), R.QUARANTINE_NOT_CHECKED)
    x.reject(RecordWeighIn(FARMER, 0, tid, 11, 1_150_000, "CQ-1", True), R.INVALID_DELIVERY)
    x.reject(RecordWeighIn(FARMER, 0, tid, 0, 5, "CQ-1", True), R.INVALID_DELIVERY)
    x.reject(RecordWeighIn(BUYER, 0, tid, 10, 1_150_000, "CQ-1", True), R.NOT_AUTHORIZED)
    x.ok(RecordWeighIn(OPERATOR, 0, tid, 10, 1_150_000, "CQ-1", True))
    x.reject(RecordWeighIn(FARMER, 0, tid, 10, 1_150_000, "CQ-1", True), R.INVALID_TRADE_STATE)


def test_nothing_delivered_refunds_everything_and_settles_at_zero() -> None:
    x = world()
    x.deposit(BUYER, 10_000_000)
    trade = x.trade(BUYER, FARMER, 2800, 10)
    x.weigh_in(trade.trade_id, 0, 0)
    assert x.balance(AC.BUYER_CASH, BUYER) == 10_000_000
    settled = x.of(TradeSettled, x.tick(WINDOW_NS))[0]
    assert (settled.amount_fen, settled.fee_fen, settled.payable_fen) == (0, 0, 0)
