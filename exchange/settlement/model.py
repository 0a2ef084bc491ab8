"""The clearing's records: participants, holds, trades, loans, credit lines, payouts and their references.

Plain mutable msgspec structs, so the whole clearing state encodes into one snapshot as it is. Every
amount is integer fen, every weight integer grams. ``Clearing`` (clearing.py) is the only writer. A
final record leaves memory a retention window after it became final (``FinalKind``; clearing.py,
"Memory") and is read back, encoded as it is here, from ``settlement_history`` (migration 0014).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final

import msgspec

from exchange.commands import FundsAccount, ParticipantRole
from exchange.domain import InstrumentSpec, Lot
from exchange.events import DeliveryGrade, LoanKind, PayoutPriority, PayoutState

# Account ids below this are the house accounts, numbered by their codes; participants' accounts follow.
# Migration 0007 indexes only participants' accounts for statements (pgstore.statement).
FIRST_PARTICIPANT_ACCOUNT_ID: Final = 1000


class DeliveryTerms(msgspec.Struct, frozen=True, gc=False):
    """The outcome of a weigh-in (a struct, not a NamedTuple: one is made per weigh-in, at a quarter of the cost)."""

    avg_weight_g: int  # floor(total grams / heads delivered); 0 when nothing was delivered
    grade: DeliveryGrade
    discount_fen_per_kg: int
    amount_fen: int  # what the buyer pays for the delivery, at most the escrowed obligation
    shrink_g: int = 0  # deducted from the live weight of unfasted pigs before grading and pricing


class Participant(msgspec.Struct, array_like=True, gc=False):
    participant_id: int
    role: ParticipantRole
    name: str
    id_number_masked: str
    bank_account: str = ""
    bank_verified: bool = False
    poor_registration_no: str = ""
    poor_verified: bool = False
    member_ids: list[int] = msgspec.field(default_factory=list)  # a cooperative's members
    shares_bps: list[int] = msgspec.field(default_factory=list)
    consents: list[int] = msgspec.field(default_factory=list)  # financiers it consented to, sorted


class Hold(msgspec.Struct, array_like=True, gc=False):
    """The money a buy order reserves: ``remaining_heads x per_head_fen`` as one pending transfer."""

    order_id: int
    buyer_id: int
    instrument: str
    price_fen: int
    per_head_fen: int
    remaining_heads: int
    pending_id: int  # the open ORDER_HOLD transfer
    source_account_id: int  # BUYER_CASH or a BUYER_CREDIT_LINE
    financier_id: int  # 0 for cash

    @property
    def held_fen(self) -> int:
        return self.remaining_heads * self.per_head_fen


class TradeState(IntEnum):
    OPEN = 1  # obligation in escrow, waiting for the weigh-in
    DELIVERED = 2  # weighed in: amount in the seller's receivable, dispute window open
    DISPUTED = 3  # waiting for an operator
    SETTLED = 4  # final
    REJECTED = 5  # final: the buyer rejected an out-of-grade delivery and got everything back


class TradeRecord(msgspec.Struct, array_like=True, gc=False):
    trade_id: int
    instrument: str
    buyer_id: int
    seller_id: int
    lot_id: int
    buy_order_id: int
    heads: int
    price_fen: int
    obligation_fen: int  # escrowed at the fill: heads x hold per head at the trade price
    source_account_id: int  # where refunds go: the buyer's cash or credit line
    financier_id: int  # 0: paid from cash; else the credit line's financier
    traded_at_ns: int
    state: TradeState = TradeState.OPEN
    heads_delivered: int = 0
    total_weight_g: int = 0
    avg_weight_g: int = 0
    grade: DeliveryGrade = DeliveryGrade.IN_GRADE
    discount_fen_per_kg: int = 0
    quarantine_cert: str = ""
    delivered_at_ns: int = 0
    dispute_until_ns: int = 0
    disputed_by: int = 0
    dispute_reason: str = ""
    amount_fen: int = 0  # the final amount: the weigh-in's, or the operator's after a dispute
    refund_fen: int = 0  # total returned to the buyer (obligation - amount)
    advance_loan_id: int = 0
    settled_at_ns: int = 0  # settlement or rejection time
    fee_fen: int = 0
    fee_subsidy_fen: int = 0
    fee_forgone_fen: int = 0
    interest_paid_fen: int = 0
    principal_repaid_fen: int = 0
    payable_fen: int = 0
    # Issue 11 (after every older field, with defaults: old snapshots decode to the old meaning).
    heads_refused: int = 0  # dead on arrival or refused at the scale: paid nothing, their hold returned
    shrink_g: int = 0  # deducted from the live weight (unfasted pigs) before grading and pricing
    raise_pending_id: int = 0  # a seller's dispute: the pending transfer holding the buyer's money
    raise_held_fen: int = 0  # what that hold holds: the most the resolution may raise the amount by
    raised_fen: int = 0  # the resolution's raise (posted from the hold): amount + refund = obligation + raised


class Loan(msgspec.Struct, array_like=True, gc=False):
    """One financing: an advance to a seller, or a buyer's credit line (one loan per financier and buyer)."""

    loan_id: int
    kind: LoanKind
    financier_id: int
    borrower_id: int
    trade_id: int  # the advance's trade; 0 for a credit line
    rate_bps: int  # yearly
    accrued_day: int  # interest is accrued through the midnight that began this CST day
    principal_fen: int = 0  # outstanding
    interest_due_fen: int = 0  # accrued, not yet paid
    carry: int = 0  # fraction of a fen not yet charged, in 1/3,650,000 fen
    lent_fen: int = 0
    principal_repaid_fen: int = 0
    interest_accrued_fen: int = 0
    interest_paid_fen: int = 0  # by the borrower
    interest_subsidised_fen: int = 0  # by the poverty subsidy fund
    principal_written_off_fen: int = 0  # given up by the financier (WriteOffLoan)
    interest_written_off_fen: int = 0

    @property
    def is_open(self) -> bool:
        return self.principal_fen > 0 or self.interest_due_fen > 0


class CreditLine(msgspec.Struct, array_like=True, gc=False):
    financier_id: int
    buyer_id: int
    account_id: int  # BUYER_CREDIT_LINE (owner buyer, user_data financier)
    loan_id: int
    granted_fen: int = 0  # cumulative
    reduced_fen: int = 0  # cumulative


class SourceKind(IntEnum):
    TRADE = 1  # a settled trade's net proceeds
    COOP_SPLIT = 2  # a member's share of its cooperative's trade
    ADVANCE = 3  # an advance (ref: loan id)


class PayableSource(msgspec.Struct, array_like=True, gc=False):
    """Where part of a payee's payable came from: what makes every payout traceable to its trades."""

    kind: SourceKind
    ref_id: int
    amount_fen: int


class Payout(msgspec.Struct, array_like=True, gc=False):
    payout_id: int
    run_id: int
    payee_id: int
    amount_fen: int
    priority: PayoutPriority
    pending_id: int  # PAYOUT transfer held on the payee's payable until confirmed or returned
    bank_account: str
    sources: list[PayableSource]
    created_at_ns: int
    state: PayoutState = PayoutState.PENDING
    attempt: int = 1
    file_ref: str = ""  # the bank file of the current attempt
    bank_ref: str = ""
    reason: str = ""  # the bank's reason for a failure
    updated_at_ns: int = 0
    # The payee's bank and branch codes, fixed with bank_account when the payout is made (or retried), so
    # the file pairs the account with its own codes even if the profile changes before it is sent. Both
    # empty on a payout made before they were kept (the file then takes the profile's).
    bank_code: str = ""
    branch_code: str = ""

    @property
    def trade_ids(self) -> tuple[int, ...]:
        return payout_trade_ids(self.sources)


def payout_trade_ids(sources: list[PayableSource]) -> tuple[int, ...]:
    """The trades a payout with these sources pays (``Payout.trade_ids``, and the clearing's
    ``PayoutChanged`` events, which work it out once per payout), sorted, without repeats. Most payouts
    pay one trade's proceeds: no set, no sort."""
    if len(sources) == 1:
        kind, ref_id, _ = msgspec.structs.astuple(sources[0])  # (kind, ref_id, amount_fen)
        return () if kind == SourceKind.ADVANCE else (ref_id,)
    # a few sources: a list with no repeats, sorted, costs less than a set
    ids: list[int] = []
    for source in sources:
        kind, ref_id, _ = msgspec.structs.astuple(source)
        if kind != SourceKind.ADVANCE and ref_id not in ids:
            ids.append(ref_id)
    ids.sort()
    return tuple(ids)


class PayoutRun(msgspec.Struct, array_like=True, gc=False):
    run_id: int
    run_ref: str
    poor_only: bool
    ts_ns: int
    payout_ids: list[int]
    skipped_ids: list[int]
    total_fen: int


class WithdrawalState(IntEnum):
    PENDING = 1
    PAID = 2
    FAILED = 3


class Withdrawal(msgspec.Struct, array_like=True, gc=False):
    owner_id: int
    withdrawal_ref: str
    account: FundsAccount
    amount_fen: int
    pending_id: int
    ts_ns: int
    state: WithdrawalState = WithdrawalState.PENDING
    bank_ref: str = ""


class Deposit(msgspec.Struct, array_like=True, gc=False):
    deposit_ref: str
    owner_id: int
    account: FundsAccount
    amount_fen: int
    transfer_id: int
    ts_ns: int


class Repayment(msgspec.Struct, array_like=True, gc=False):
    """A RepayLoan with a ``repayment_ref``: what a retry must match and the answer it gets again."""

    borrower_id: int
    repayment_ref: str
    financier_id: int
    amount_fen: int
    ts_ns: int
    legs: list[tuple[int, int, int]]  # (loan_id, principal_fen, interest_fen), in the order repaid


class SentFile(msgspec.Struct, array_like=True, gc=False):
    file_ref: str
    payouts: list[tuple[int, int]]


class BankImport(msgspec.Struct, array_like=True, gc=False):
    file_ref: str
    rows_hash: str  # blake2b of the encoded rows: a different file under the same reference is refused
    applied: int
    duplicates: int
    errors: list[tuple[int, str]]


class FinalKind(IntEnum):
    """What a queued final record is (Clearing.forget): the dict it is dropped from."""

    TRADE = 1  # trades, by trade id: settled or rejected
    PAYOUT = 2  # payouts, by payout id: confirmed or returned
    DEPOSIT = 3  # deposits, by bank reference
    WITHDRAWAL = 4  # withdrawals, by (owner, withdrawal ref): paid or failed
    REPAYMENT = 5  # repayments, by (borrower, repayment ref)
    RUN = 6  # payout runs, by run ref
    SENT_FILE = 7  # bank files sent, by file ref
    BANK_IMPORT = 8  # bank confirmation files imported, by file ref
    REGISTRATION = 9  # registrations, by registration ref: final at once
    FILE_DIGEST = 10  # never queued: a bank file's SHA-256, archived (settlement_history) with its file
    LOAN = 11  # advance loans, by loan id: repaid in full or written off (kept while their trade is held)


class Registration(msgspec.Struct, array_like=True, gc=False):
    """A registration made with an idempotency reference: who it created, a digest of the profile it
    was made with (a repeat must match it), its first API key (not the secret) and when."""

    registration_ref: str
    participant_id: int
    profile_digest: str
    api_key: str
    ts_ns: int


class AccountKey(msgspec.Struct, array_like=True, gc=False):
    code: int
    owner_id: int
    user_data: int
    account_id: int


class Counters(msgspec.Struct, array_like=True, gc=False):
    next_transfer_id: int = 1
    next_account_id: int = FIRST_PARTICIPANT_ACCOUNT_ID
    next_loan_id: int = 1
    next_payout_id: int = 1
    next_run_id: int = 1
    last_accrual_day: int = 0
    advance_max_bps: int = 7000


class ClearingSnapshot(msgspec.Struct, array_like=True, gc=False):
    version: int
    counters: Counters
    ledger: bytes
    accounts: list[AccountKey]
    instruments: list[InstrumentSpec]
    fee_bps: list[tuple[str, int]]
    lots: list[Lot]
    participants: list[Participant]
    holds: list[Hold]
    trades: list[TradeRecord]
    loans: list[Loan]
    credit_lines: list[CreditLine]
    payables: list[tuple[int, list[PayableSource]]]
    payouts: list[Payout]
    runs: list[PayoutRun]
    withdrawals: list[Withdrawal]
    deposits: list[Deposit]
    sent_files: list[SentFile]
    bank_imports: list[BankImport]
    # Optional and last: a snapshot without them decodes, and a state without them encodes to exactly the
    # bytes (and hash) earlier versions wrote (see Clearing.snapshot).
    repayments: list[Repayment] = []
    bank_codes: list[tuple[int, str, str]] = []  # (participant, bank code, branch code)
    file_digests: list[tuple[str, str]] = []  # (payout file ref, SHA-256 of the bytes sent)
    registrations: list[Registration] = []
    # optional and last: (final_at_ns, FinalKind, key) of every final record held, oldest first
    # (Clearing.forget); a key is an id, a reference, or (owner, reference)
    final: list[tuple[int, int, int | str | tuple[int, str]]] = []
    # optional and last: the payouts packed (``packing.pack_payouts``: about half a listed payout's bytes),
    # as [file refs, rows]; ``payouts`` above lists only those restored from a snapshot that listed them so
    # (an earlier version's snapshot restores to its hash: they are listed as they came until forgotten)
    packed_payouts: list[Any] = []
    # optional and last: the final queue's entries packed (``packing.pack_final``), after those ``final``
    # lists (restored from a snapshot that listed them so, an earlier version's)
    packed_final: list[Any] = []
