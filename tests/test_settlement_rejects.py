"""Every settlement reject reason is produced by some command through the exchange's core, and a
rejected command changes nothing: not the core's state hash (clearing and ledger included), not the
postings waiting to be written."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from exchange.commands import (
    Command,
    ConfirmDeposit,
    ConfirmWithdrawal,
    FundsAccount,
    GrantAdvance,
    GrantCreditLine,
    OpenDispute,
    ParticipantRole,
    PlaceOrder,
    RecordWeighIn,
    RegisterLot,
    RegisterParticipant,
    RejectDelivery,
    RepayLoan,
    RequestWithdrawal,
    RetryPayout,
    RunPayouts,
    SetCooperativeMembers,
    SetFinancingPolicy,
    UpdateParticipant,
    WriteOffLoan,
)
from exchange.domain import OrderType, QuarantineRegion, RejectReason, Side, TimeInForce
from exchange.events import PayoutRunCreated, Rejected, Trade
from tests.factories import list_instrument, order
from tests.settlement_support import (
    BUYER,
    BUYER2,
    COOP,
    FARMER,
    FINANCIER,
    HOUR_NS,
    MEMBER_A,
    OPERATOR,
    PIGLETS,
    Exchange,
    dce_spec,
    world,
)

R = RejectReason
Case = Callable[[], tuple[Exchange, Command]]
SETTLEMENT_REASONS = [r for r in RejectReason if r >= R.INSUFFICIENT_FUNDS and r is not R.UNSUPPORTED_COMMAND]


def traded() -> tuple[Exchange, int]:
    x = world()
    x.deposit(BUYER, 10_000_000)
    return x, x.trade(BUYER, FARMER, 2800, 10).trade_id


def delivered(weight_g: int = 1_150_000) -> tuple[Exchange, int]:
    x, tid = traded()
    x.weigh_in(tid, 10, weight_g)
    return x, tid


def buy(participant: int, price_fen: int = 2800, **kwargs: object) -> PlaceOrder:
    return order(participant, Side.BUY, price_fen, 1, **kwargs)  # type: ignore[arg-type]


def case_insufficient_funds() -> tuple[Exchange, Command]:
    return world(), buy(BUYER)


def case_unknown_participant() -> tuple[Exchange, Command]:
    return world(), buy(99)


def case_not_authorized() -> tuple[Exchange, Command]:
    return world(), RegisterParticipant(FARMER, 0, 77, ParticipantRole.OPERATOR, "me", "5001**********001X")


def case_invalid_participant() -> tuple[Exchange, Command]:
    # a full ID number must never be stored
    return world(), RegisterParticipant(OPERATOR, 0, 77, ParticipantRole.FARMER, "李", "500226199001011234")


def case_unknown_trade() -> tuple[Exchange, Command]:
    return world(), RecordWeighIn(OPERATOR, 0, 999, 1, 110_000, "CQ-1", True)


def case_invalid_delivery() -> tuple[Exchange, Command]:
    x, tid = traded()
    return x, RecordWeighIn(FARMER, 0, tid, 11, 1_210_000, "CQ-1", True)


def case_quarantine_not_checked() -> tuple[Exchange, Command]:
    x, tid = traded()
    return x, RecordWeighIn(FARMER, 0, tid, 10, 1_100_000, "", True)


def cn_traded() -> tuple[Exchange, int]:
    """A trade on an instrument of the Chinese certificate rule, its lot certified 5001530001."""
    x = world()
    x.ok(list_instrument(msgspec.structs.replace(dce_spec("RC-LH-CN"), quarantine_region=QuarantineRegion.CN)))
    x.deposit(BUYER, 10_000_000)
    lot = x.ok(RegisterLot(FARMER, 0, "RC-LH-CN", 10, 110_000, "荣昌", "5001530001"))[0].lot.lot_id
    x.sell(FARMER, 2800, 10, lot, instrument="RC-LH-CN")
    return x, x.of(Trade, x.buy(BUYER, 2800, 10, instrument="RC-LH-CN"))[0].trade_id


def case_invalid_quarantine_cert() -> tuple[Exchange, Command]:
    x, tid = cn_traded()
    return x, RecordWeighIn(FARMER, 0, tid, 10, 1_100_000, "CQ-1", True)


def case_quarantine_cert_mismatch() -> tuple[Exchange, Command]:
    x, tid = cn_traded()
    return x, RecordWeighIn(FARMER, 0, tid, 10, 1_100_000, "5001530002", True)


def case_invalid_trade_state() -> tuple[Exchange, Command]:
    x, tid = traded()
    return x, OpenDispute(BUYER, 0, tid, "not weighed yet")


def case_dispute_window_closed() -> tuple[Exchange, Command]:
    x, tid = delivered()
    x.advance(48 * HOUR_NS)
    return x, OpenDispute(BUYER, 0, tid, "too late")


def case_delivery_not_rejectable() -> tuple[Exchange, Command]:
    x, tid = delivered()
    return x, RejectDelivery(BUYER, 0, tid)


def case_no_consent() -> tuple[Exchange, Command]:
    x = world()
    x.deposit(FINANCIER, 1_000_000, FundsAccount.FINANCIER_FUNDS)
    return x, GrantCreditLine(FINANCIER, 0, BUYER, 1_000_000, 500)


def case_advance_too_large() -> tuple[Exchange, Command]:
    x, tid = traded()
    x.deposit(FINANCIER, 10_000_000, FundsAccount.FINANCIER_FUNDS)
    x.consent(FARMER, FINANCIER)
    return x, GrantAdvance(FINANCIER, 0, tid, 2_156_001, 500)  # 70 % of 3,080,000 is 2,156,000


def case_duplicate_reference() -> tuple[Exchange, Command]:
    x = world()
    x.deposit(BUYER, 100, ref="B-1")
    return x, ConfirmDeposit(OPERATOR, 0, "B-1", BUYER, FundsAccount.TRADING_CASH, 200)


def case_unknown_reference() -> tuple[Exchange, Command]:
    return world(), ConfirmWithdrawal(OPERATOR, 0, BUYER, "W-404", True, "X")


def case_invalid_payout_state() -> tuple[Exchange, Command]:
    x, _ = delivered()
    x.tick(48 * HOUR_NS)
    run = x.ok(RunPayouts(OPERATOR, 0, "R1"))
    (payout_id,) = x.of(PayoutRunCreated, run)[0].payout_ids
    return x, RetryPayout(OPERATOR, 0, payout_id)  # pending, not failed


def case_invalid_amount() -> tuple[Exchange, Command]:
    x = world()
    x.deposit(FINANCIER, 1_000_000, FundsAccount.FINANCIER_FUNDS)
    return x, RepayLoan(BUYER, 0, FINANCIER, 1)  # owes nothing


def case_invalid_shares() -> tuple[Exchange, Command]:
    return world(), SetCooperativeMembers(OPERATOR, 0, COOP, (MEMBER_A, BUYER), (5000, 5000))  # a buyer


def case_unbounded_hold() -> tuple[Exchange, Command]:
    x = world()
    x.deposit(BUYER, 10_000_000)
    return x, buy(BUYER, 0, order_type=OrderType.MARKET, tif=TimeInForce.IOC, instrument=PIGLETS)


def case_bank_account_not_verified() -> tuple[Exchange, Command]:
    x = world()
    x.deposit(BUYER2, 1_000)
    x.ok(UpdateParticipant(BUYER2, 0, BUYER2, "new name", "6222000011112222"))
    return x, RequestWithdrawal(BUYER2, 0, "W-1", FundsAccount.TRADING_CASH, 1_000)


def case_invalid_settings() -> tuple[Exchange, Command]:
    return world(), SetFinancingPolicy(OPERATOR, 0, 10_001)


def advanced() -> tuple[Exchange, int]:
    x, tid = traded()
    x.deposit(FINANCIER, 1_000_000, FundsAccount.FINANCIER_FUNDS)
    x.consent(FARMER, FINANCIER)
    x.ok(GrantAdvance(FINANCIER, 0, tid, 500_000, 500))
    return x, next(iter(x.clearing.loans))


def case_unknown_loan() -> tuple[Exchange, Command]:
    x, loan_id = advanced()
    return x, WriteOffLoan(FARMER, 0, loan_id, "forgive me")  # only its financier may write it off


def case_loan_closed() -> tuple[Exchange, Command]:
    x, loan_id = advanced()
    x.ok(RepayLoan(FARMER, 0, FINANCIER, 500_000))
    return x, WriteOffLoan(FINANCIER, 0, loan_id, "repaid already")


CASES: dict[RejectReason, Case] = {
    R.INSUFFICIENT_FUNDS: case_insufficient_funds,
    R.UNKNOWN_PARTICIPANT: case_unknown_participant,
    R.NOT_AUTHORIZED: case_not_authorized,
    R.INVALID_PARTICIPANT: case_invalid_participant,
    R.UNKNOWN_TRADE: case_unknown_trade,
    R.INVALID_DELIVERY: case_invalid_delivery,
    R.QUARANTINE_NOT_CHECKED: case_quarantine_not_checked,
    R.INVALID_TRADE_STATE: case_invalid_trade_state,
    R.DISPUTE_WINDOW_CLOSED: case_dispute_window_closed,
    R.DELIVERY_NOT_REJECTABLE: case_delivery_not_rejectable,
    R.NO_CONSENT: case_no_consent,
    R.ADVANCE_TOO_LARGE: case_advance_too_large,
    R.DUPLICATE_REFERENCE: case_duplicate_reference,
    R.UNKNOWN_REFERENCE: case_unknown_reference,
    R.INVALID_PAYOUT_STATE: case_invalid_payout_state,
    R.INVALID_AMOUNT: case_invalid_amount,
    R.INVALID_SHARES: case_invalid_shares,
    R.UNBOUNDED_HOLD: case_unbounded_hold,
    R.BANK_ACCOUNT_NOT_VERIFIED: case_bank_account_not_verified,
    R.INVALID_SETTINGS: case_invalid_settings,
    R.UNKNOWN_LOAN: case_unknown_loan,
    R.LOAN_CLOSED: case_loan_closed,
    R.INVALID_QUARANTINE_CERT: case_invalid_quarantine_cert,
    R.QUARANTINE_CERT_MISMATCH: case_quarantine_cert_mismatch,
}



# -- lot auctions (exchange/matching/lot_auction.py) ------------------------------------------------------


def _auction(**terms: object) -> tuple[Exchange, int]:
    from tests.test_lot_auction import offer, piglet_lot, piglet_world

    x = piglet_world()
    return x, offer(x, piglet_lot(x), **terms).auction_id  # type: ignore[arg-type]


def _passed_in() -> tuple[Exchange, int]:
    from exchange.commands import BidLotAuction
    from tests.settlement_support import HOUR_NS

    x, auction_id = _auction(reserve=90_000)
    x.ok(BidLotAuction(BUYER, 0, auction_id, 75_000))
    x.tick(HOUR_NS)
    return x, auction_id


def _auction_cases() -> dict[RejectReason, Case]:
    from exchange.commands import (
        BidLotAuction,
        BuyNowLotAuction,
        NegotiateLotAuction,
        OfferLotAuction,
        WithdrawLotAuction,
    )
    from tests.settlement_support import PIGLETS, T0
    from tests.test_lot_auction import CLOSE, STEPS

    def unknown() -> tuple[Exchange, Command]:
        x, _ = _auction()
        return x, BidLotAuction(BUYER, 0, 99, 80_000)

    def invalid() -> tuple[Exchange, Command]:
        x = world()
        lot_id = x.lot(FARMER, 10, 20_000, PIGLETS)
        return x, OfferLotAuction(FARMER, 0, lot_id, 80_000, 70_000, STEPS, T0, CLOSE)

    def not_open() -> tuple[Exchange, Command]:
        x, auction_id = _auction(opens_at_ns=CLOSE - 1)
        return x, BidLotAuction(BUYER, 0, auction_id, 80_000)

    def too_low() -> tuple[Exchange, Command]:
        x, auction_id = _auction()
        return x, BidLotAuction(BUYER, 0, auction_id, 60_000)

    def has_bids() -> tuple[Exchange, Command]:
        x, auction_id = _auction()
        x.ok(BidLotAuction(BUYER, 0, auction_id, 80_000))
        return x, WithdrawLotAuction(FARMER, 0, auction_id)

    def no_buy_now() -> tuple[Exchange, Command]:
        x, auction_id = _auction()
        return x, BuyNowLotAuction(BUYER, 0, auction_id)

    def not_negotiating() -> tuple[Exchange, Command]:
        x, auction_id = _auction()
        return x, NegotiateLotAuction(FARMER, 0, auction_id, 80_000)

    def no_offer() -> tuple[Exchange, Command]:
        x, auction_id = _passed_in()
        return x, NegotiateLotAuction(FARMER, 0, auction_id, accept=True)

    return {
        R.UNKNOWN_AUCTION: unknown, R.INVALID_AUCTION: invalid, R.AUCTION_NOT_OPEN: not_open,
        R.BID_TOO_LOW: too_low, R.AUCTION_HAS_BIDS: has_bids, R.BUY_NOW_UNAVAILABLE: no_buy_now,
        R.NOT_NEGOTIATING: not_negotiating, R.NO_OFFER_TO_ACCEPT: no_offer,
    }


CASES.update(_auction_cases())

# -- the trading day (exchange/calendar.py): T0 is 08:00 CST, before the default session's pre-open ----------


def case_market_closed() -> tuple[Exchange, Command]:
    import msgspec

    from exchange.commands import ListInstrument
    from exchange.domain import TradingSession
    from tests.settlement_support import dce_spec

    x = world()
    x.ok(ListInstrument(OPERATOR, 0, msgspec.structs.replace(dce_spec("CAL"), session=TradingSession())))
    return x, order(BUYER, Side.BUY, 2800, 1, instrument="CAL")


def case_invalid_calendar_day() -> tuple[Exchange, Command]:
    from exchange.commands import SetNonTradingDay

    return world(), SetNonTradingDay(OPERATOR, 0, 2026_01_01)  # today: only later days may be set


CASES.update({R.MARKET_CLOSED: case_market_closed, R.INVALID_CALENDAR_DAY: case_invalid_calendar_day})


@pytest.mark.parametrize("reason", SETTLEMENT_REASONS, ids=lambda r: r.name)
def test_every_settlement_reject_reason_is_produced_and_changes_nothing(reason: RejectReason) -> None:
    x, command = CASES[reason]()  # a new settlement reason without a case fails here
    x.clearing.drain_postings()
    x.clearing.drain_new_accounts()
    before = x.core.state_hash()  # the matching core's state and the clearing's
    rejected = x.reject(command, reason)
    assert isinstance(rejected, Rejected) and rejected.seq == 0 and rejected.ts_ns == x.ts_ns
    assert x.core.state_hash() == before
    assert x.clearing.drain_postings() == [] and x.clearing.drain_new_accounts() == []
