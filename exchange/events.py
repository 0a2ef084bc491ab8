"""Events: everything the core says happened, one tagged union ``Event``.

Each event carries ``seq``, the sequence number of its instrument (1, 2, 3, ... per instrument, so a
market-data consumer can detect gaps), and ``ts_ns`` of the command that caused it. Events that
belong to no instrument (a rejection naming an unknown one) carry ``seq`` 0.

``BookChanged`` carries the absolute number of heads now resting at one price level of one side;
0 means the level is gone. The events of one command are complete: applying a command's
``BookChanged`` events to an L2 picture of the book gives the book after the command.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Union

import msgspec

from exchange.commands import FundsAccount, ParticipantRole
from exchange.domain import (
    ExpireReason,
    InstrumentSpec,
    Lot,
    LotAuction,
    RejectReason,
    Side,
    TradingState,
)


class _Event(msgspec.Struct, frozen=True, tag=True, array_like=True, gc=False):
    seq: int
    ts_ns: int


class InstrumentListed(_Event, frozen=True):
    spec: InstrumentSpec


class LotRegistered(_Event, frozen=True):
    lot: Lot


class OrderAccepted(_Event, frozen=True):
    order_id: int
    participant_id: int
    client_order_id: str
    instrument: str
    side: Side
    price_fen: int  # the limit; for a market order the band edge it may trade up to, 0 if unbanded
    quantity_heads: int
    lot_id: int


class Rejected(_Event, frozen=True):
    """A command that changed nothing. It takes no sequence number (``seq`` is 0)."""

    participant_id: int
    reason: RejectReason
    client_order_id: str = ""  # for a rejected PlaceOrder
    order_id: int = 0  # for a rejected CancelOrder / AmendOrder
    instrument: str = ""


class Trade(_Event, frozen=True):
    """One fill. ``taker_side`` is the aggressor's side, or 0 for an auction uncross."""

    instrument: str
    trade_id: int
    price_fen: int
    quantity_heads: int
    buy_order_id: int
    sell_order_id: int
    buyer_id: int
    seller_id: int
    lot_id: int
    taker_side: int
    buy_remaining_heads: int
    sell_remaining_heads: int


class OrderCancelled(_Event, frozen=True):
    order_id: int
    participant_id: int
    instrument: str
    cancelled_heads: int


class OrderExpired(_Event, frozen=True):
    order_id: int
    participant_id: int
    instrument: str
    expired_heads: int
    reason: ExpireReason


class OrderAmended(_Event, frozen=True):
    order_id: int
    participant_id: int
    instrument: str
    price_fen: int
    quantity_heads: int  # new total: filled + remaining
    remaining_heads: int
    priority_kept: bool


class BookChanged(_Event, frozen=True):
    instrument: str
    side: Side
    price_fen: int
    level_heads: int


class TradingStateChanged(_Event, frozen=True):
    instrument: str
    state: TradingState
    reason: str = ""  # a halt's reason; the calendar's phase ("pre_open", "open", "break", "close")


class NonTradingDaySet(_Event, frozen=True):
    """An operator's ``SetNonTradingDay``; ``seq`` 0 (no instrument)."""

    day: int  # yyyymmdd, China Standard Time
    closed: bool


class TradingDayClosed(_Event, frozen=True):
    """An instrument's close (exchange/calendar.py): the day's trades and the next day's reference.

    ``average_price_fen``: the head-weighted average price of the day's trades, rounded half up to the
    fen (0 if none); ``reference_price_fen`` the band reference from now on (unchanged if none traded)."""

    instrument: str
    day: int  # yyyymmdd, China Standard Time
    heads: int
    average_price_fen: int
    reference_price_fen: int


class ReferencePriceSet(_Event, frozen=True):
    instrument: str
    price_fen: int


class AuctionUncrossed(_Event, frozen=True):
    instrument: str
    price_fen: int  # 0 when nothing could trade
    quantity_heads: int


class LotAuctionChanged(_Event, frozen=True):
    """A lot auction after a change (exchange/matching/lot_auction.py): ``change`` names it (offered,
    opened, bid, extended, bought_now, sold, passed_in, offer, unsold, withdrawn); ``participant_id``
    who caused it (0 for the clock). ``seq`` is 0: lot auctions are not part of the book's stream; the
    ``Trade`` of a sold lot takes the instrument's seq like any other."""

    change: str
    participant_id: int
    auction: LotAuction


# -- settlement (exchange/settlement/clearing.py) ---------------------------------------------------------
# Settlement events belong to no instrument: ``seq`` is 0. Rejections of settlement commands are plain
# ``Rejected`` events whose ``client_order_id`` carries the command's reference (deposit, withdrawal,
# run or file reference, or "T<trade id>", "P<payout id>", "L<buyer id>", "F<financier id>").


class DeliveryGrade(IntEnum):
    IN_GRADE = 1  # average weight inside the instrument's lot band
    SUBSTITUTE = 2  # within the tolerance beyond the band: paid at the discounted price
    OUT_OF_GRADE = 3  # beyond the tolerance: discounted, and the buyer may reject within the window


class PayoutState(IntEnum):
    PENDING = 1  # instruction created, money held on the payee's payable; to be sent
    SENT = 2  # in a bank file
    CONFIRMED = 3  # the bank paid it (final)
    FAILED = 4  # the bank refused it; an operator retries it or returns it
    RETURNED = 5  # given up: the money is back on the payee's payable (final)


class PayoutPriority(IntEnum):
    SAME_DAY = 1  # registered poor households
    NORMAL = 2


class LoanKind(IntEnum):
    ADVANCE = 1  # to a seller against a matched trade
    CREDIT_LINE = 2  # to a buyer: what its credit-funded trades drew at settlement


class LoanPayer(IntEnum):
    BORROWER = 1
    SUBSIDY_FUND = 2  # interest of a registered poor household


class ParticipantChanged(_Event, frozen=True):
    """The settlement profile after a registration or change (never the full bank account)."""

    participant_id: int
    role: ParticipantRole
    name: str
    bank_account_tail: str  # last four characters
    bank_verified: bool
    poor_verified: bool
    changed_by: int


class CooperativeMembersSet(_Event, frozen=True):
    cooperative_id: int
    member_ids: tuple[int, ...]
    shares_bps: tuple[int, ...]


class ConsentChanged(_Event, frozen=True):
    participant_id: int
    financier_id: int
    granted: bool


class FundsDeposited(_Event, frozen=True):
    owner_id: int
    account: FundsAccount
    amount_fen: int
    deposit_ref: str
    transfer_id: int


class WithdrawalRequested(_Event, frozen=True):
    owner_id: int
    account: FundsAccount
    amount_fen: int
    withdrawal_ref: str
    transfer_id: int


class WithdrawalCompleted(_Event, frozen=True):
    """``ok``: paid out; otherwise failed (or timed out) and the money is back on the account."""

    owner_id: int
    withdrawal_ref: str
    amount_fen: int
    ok: bool
    bank_ref: str


class ObligationRecorded(_Event, frozen=True):
    """A fill's part of the buyer's hold moved into escrow; ``released_fen`` returned (fill below limit)."""

    trade_id: int
    buyer_id: int
    seller_id: int
    instrument: str
    heads: int
    price_fen: int
    obligation_fen: int
    released_fen: int
    financier_id: int  # 0: the buyer's cash; else the credit line of this financier


class DeliveryRecorded(_Event, frozen=True):
    trade_id: int
    heads_delivered: int
    total_weight_g: int
    avg_weight_g: int
    grade: DeliveryGrade
    discount_fen_per_kg: int
    amount_fen: int  # what the seller will get before fees, unless a dispute changes it
    refund_fen: int  # escrow returned to the buyer now
    dispute_until_ns: int
    heads_refused: int = 0  # dead on arrival or refused at the scale: paid nothing
    shrink_g: int = 0  # deducted from the live weight (unfasted pigs) before grading and pricing


class TradeFacts(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A trade as it stood when it settled or was rejected: what its report row states, forever (the
    report is projected from the events alone, and a later change of a profile never reaches it)."""

    instrument: str
    buyer_id: int
    seller_id: int
    heads: int
    price_fen: int
    obligation_fen: int
    funded_by_financier_id: int  # 0: the buyer's cash; else the credit line's financier
    heads_delivered: int
    total_weight_g: int
    avg_weight_g: int
    grade: DeliveryGrade
    discount_fen_per_kg: int
    refund_fen: int
    advance_loan_id: int  # the advance against this trade, 0 if none
    advance_financier_id: int
    seller_poor_household: bool  # a registered poor household then
    # Issue 11 deliveries (appended with defaults: facts journaled before them decode as 0)
    heads_refused: int = 0  # dead on arrival or refused at the scale: paid nothing
    shrink_g: int = 0  # the unfasted shrink taken off the live weight before grading and pricing
    raised_fen: int = 0  # a seller's dispute resolved above the weigh-in: amount + refund = obligation + this


class DisputeOpened(_Event, frozen=True):
    trade_id: int
    opened_by: int
    reason: str
    raise_held_fen: int = 0  # a seller's dispute: held from the buyer, the most a resolution may raise


class DeliveryResolved(_Event, frozen=True):
    """An operator's dispute decision, or the buyer's rejection (``rejected``: amount 0)."""

    trade_id: int
    amount_fen: int
    refund_fen: int
    rejected: bool
    resolved_by: int
    raised_fen: int = 0  # a seller's dispute resolved above the weigh-in amount: by this much
    facts: TradeFacts | None = None  # a rejection's: the trade as it ended (a resolution's: TradeSettled's)


class TradeSettled(_Event, frozen=True):
    """The trade's money went where it belongs; exactly one per trade that was not rejected."""

    trade_id: int
    seller_id: int
    amount_fen: int
    fee_fen: int  # the fee the seller paid
    fee_subsidy_fen: int  # the waived fee the subsidy fund paid
    fee_forgone_fen: int  # the waived fee nobody paid (subsidy fund empty)
    interest_paid_fen: int
    principal_repaid_fen: int
    payable_fen: int  # to the seller's payable (a cooperative's before the split)
    facts: TradeFacts | None = None  # the trade as it settled (None in journals written before it was added)


class CooperativeSplitPaid(_Event, frozen=True):
    trade_id: int
    cooperative_id: int
    member_id: int
    amount_fen: int  # the member's part, with the fee waived for it if it is a registered poor household
    member_poor_household: bool = False  # then


class CreditLineChanged(_Event, frozen=True):
    financier_id: int
    buyer_id: int
    rate_bps: int
    change_fen: int  # + granted, - reduced
    available_fen: int


class AdvanceGranted(_Event, frozen=True):
    loan_id: int
    financier_id: int
    borrower_id: int
    trade_id: int
    amount_fen: int
    rate_bps: int


class LoanDrawn(_Event, frozen=True):
    """A credit-funded trade settled: the buyer now owes the financier this principal."""

    loan_id: int
    financier_id: int
    borrower_id: int
    trade_id: int
    amount_fen: int


class InterestAccrued(_Event, frozen=True):
    loan_id: int
    financier_id: int
    borrower_id: int
    through_day: int  # days since 1970-01-01 in China Standard Time
    days: int
    interest_fen: int


class LoanRepaid(_Event, frozen=True):
    loan_id: int
    financier_id: int
    borrower_id: int
    principal_fen: int
    interest_fen: int
    payer: LoanPayer
    trade_id: int  # the settlement that repaid it, 0 for a RepayLoan or an accrual tick


class LoanWrittenOff(_Event, frozen=True):
    """The financier gave up the rest of a loan: what was still owed when it did."""

    loan_id: int
    financier_id: int
    borrower_id: int
    principal_fen: int
    interest_fen: int
    reason: str


class PayoutRunCreated(_Event, frozen=True):
    run_id: int
    run_ref: str
    payout_ids: tuple[int, ...]
    total_fen: int
    skipped_ids: tuple[int, ...]  # payees with money payable but no verified bank account


class PayoutChanged(_Event, frozen=True):
    payout_id: int
    run_id: int
    payee_id: int
    state: PayoutState
    attempt: int
    amount_fen: int
    priority: PayoutPriority
    bank_ref: str
    reason: str
    trade_ids: tuple[int, ...]  # the trades whose proceeds it pays


class BankImportApplied(_Event, frozen=True):
    file_ref: str
    applied: int
    duplicates: int
    errors: tuple[tuple[int, str], ...]  # (payout_id, why the row was not applied)


class FeeScheduleSet(_Event, frozen=True):
    instrument: str
    seller_fee_bps: int


class FinancingPolicySet(_Event, frozen=True):
    advance_max_bps: int


Event = Union[  # noqa: UP007 - msgspec needs a real Union object to build a tagged decoder
    InstrumentListed,
    LotRegistered,
    OrderAccepted,
    Rejected,
    Trade,
    OrderCancelled,
    OrderExpired,
    OrderAmended,
    BookChanged,
    TradingStateChanged,
    ReferencePriceSet,
    AuctionUncrossed,
    ParticipantChanged,
    CooperativeMembersSet,
    ConsentChanged,
    FundsDeposited,
    WithdrawalRequested,
    WithdrawalCompleted,
    ObligationRecorded,
    DeliveryRecorded,
    DisputeOpened,
    DeliveryResolved,
    TradeSettled,
    CooperativeSplitPaid,
    CreditLineChanged,
    AdvanceGranted,
    LoanDrawn,
    InterestAccrued,
    LoanRepaid,
    LoanWrittenOff,
    PayoutRunCreated,
    PayoutChanged,
    BankImportApplied,
    FeeScheduleSet,
    FinancingPolicySet,
    LotAuctionChanged,
    NonTradingDaySet,
    TradingDayClosed,
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    return _decoder.decode(data)
