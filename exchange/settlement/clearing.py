"""Clearing: every money flow from a buyer's bid to a farmer's bank account, on the double-entry ledger.

``Clearing`` owns the ``Ledger``, the participants registry, buy-order holds, trade obligations,
deliveries, disputes, credit lines, advances, payouts and their references. It is pure, synchronous
and deterministic like the core that owns it: time is the ``ts_ns`` of the command being applied.

Hooks the core calls (see ``Clearing`` for signatures)
------------------------------------------------------
``check_buy`` before accepting a buy and ``check_sell`` before a sell (a seller must be a registered
farmer or cooperative); ``check_amend_buy`` before an amendment that could raise the hold;
``on_events`` exactly once at the end of every command (it reads ``InstrumentListed``,
``LotRegistered``, ``OrderAccepted`` — which places a buy's hold unless ``on_buy_accepted`` already
did — ``Trade``, ``OrderCancelled``, ``OrderExpired``, ``OrderAmended``, appends its own events and
queues the command's ledger rows); ``handlers()`` for the settlement commands; ``on_clock`` on every
``ClockTick``, after ``on_events``; ``snapshot``/``restore``/``state_hash``; ``command_rows`` /
``take_command_rows`` for the rows the sequencer writes in the batch transaction (pgstore.LedgerWriter).

Money flows (accounts: the chart in ledger.py; rounding: rules.py)
------------------------------------------------------------------
1. Deposit: BANK -> BUYER_CASH | FINANCIER_FUNDS | POVERTY_SUBSIDY_FUND, once per bank reference.
   Withdrawal: pending cash -> BANK, posted on the bank's confirmation, voided on failure. There is
   no timeout: money that may have left the bank is only ever resolved by a confirmation.
2. Hold: a buy holds ``hold_fen`` (pending cash -> ESCROW), against cash when it covers the hold,
   else against the first credit line (by financier id) of a financier the buyer consents to at that
   moment that does; never split. Cancel and expiry void the rest.
3. Trade: the fill posts heads x hold-per-head at the *trade* price into ESCROW (the trade's
   obligation) and re-holds the unfilled rest at the limit, in one linked chain; a fill below the
   limit thereby returns the difference.
4. Weigh-in: on an instrument whose ``quarantine_region`` checks certificates, the weigh-in's
   certificate must have the region's shape (``INVALID_QUARANTINE_CERT``, also at lot registration)
   and be the lot's (``QUARANTINE_CERT_MISMATCH``). It counts the heads delivered, their live weight,
   and the heads dead on arrival or refused at the scale, which are paid nothing: their part of the
   obligation (obligation / heads traded each, ``rules.payable_cap_fen``) is never paid: it returns
   to the buyer. Unfasted pigs lose the instrument's ``shrink_bps`` of their live weight before grading
   and pricing (``rules.shrink_g``). ``delivery_terms`` fixes the amount; ESCROW -> SELLER_RECEIVABLE
   (amount) and ESCROW -> the buyer's source (the rest). The amount stays in the receivable, held in
   trust, through the dispute window (``dispute_window_ns`` of the instrument after the weigh-in).
   Either party may dispute within the window; the trade then waits for an operator. A buyer's
   dispute can only lower the amount (the difference returns to the buyer). A seller's dispute (the
   scale under-read) holds ``rules.dispute_raise_limit_fen`` of the amount (5 %) from the trade's own
   source, the buyer's cash or the credit line that funded it (while the buyer consents), as a pending
   transfer source -> SELLER_RECEIVABLE; what the source lacks is not held and the dispute opens all
   the same, with what could be held (possibly nothing: then it can only lower). Its resolution may
   lower the amount (the hold voided) or raise it by at most what was held (that much posted, the rest
   released); the resolution settles the trade, a raise of a credit-funded trade becoming loan
   principal with the rest of the amount. A buyer may reject an OUT_OF_GRADE delivery within the
   window (all back, a seller's dispute hold voided).
5. Settlement (first clock tick at or after the window's end; trades in (deadline, trade id) order):
   fee: SELLER_RECEIVABLE -> FEE_INCOME, or for a verified poor household POVERTY_SUBSIDY_FUND ->
   FEE_INCOME (as far as the fund reaches; the rest is forgone, never charged to the farmer); then the
   seller's advances, the trade's own first, then by loan id, interest before principal:
   SELLER_RECEIVABLE -> FINANCIER_FUNDS (a poor household's interest is paid by the subsidy fund);
   the rest -> FARMER_PAYABLE; a cooperative's payable is split to its members (rules.py). A
   cooperative is the seller: it pays the fee and repays its own advances before the split, except
   the part of the fee on its verified poor members' shares, which the subsidy fund pays as for a poor
   household (as far as it reaches, the rest forgone) and which is added to those members' parts
   (their gross share); a poor member's share is also paid first at payout. A credit-funded
   trade's amount becomes the buyer's loan principal now (the financier paid the seller).
6. Payouts: a run creates one PAYOUT instruction per payee with money payable and a verified bank
   account, poor households first (SAME_DAY), then by participant id, each a pending transfer
   FARMER_PAYABLE -> BANK: PENDING -> SENT -> CONFIRMED (posted), or FAILED -> retried (PENDING,
   attempt + 1) or RETURNED (voided: back on the payable, with its trade sources).
7. Financing: credit lines earmark financier funds (FINANCIER_FUNDS -> BUYER_CREDIT_LINE); advances
   pay FINANCIER_FUNDS -> FARMER_PAYABLE at once; principal is tracked as LOANS_RECEIVABLE against
   LOANS_FUNDED; interest accrues one day for each midnight (CST) a loan is outstanding across, on the
   principal at that midnight, on the first clock tick after it (and before any change of the loan's
   principal), as INTEREST_RECEIVABLE -> INTEREST_INCOME: the financier's income, earned as it accrues.
   Collecting interest moves the cash payer -> FINANCIER_FUNDS and closes the receivable against
   INTEREST_COLLECTED (INTEREST_COLLECTED -> INTEREST_RECEIVABLE), never reversing the income, so
   INTEREST_INCOME = INTEREST_RECEIVABLE + INTEREST_COLLECTED (less what was written off).
   ``RepayLoan`` repays interest first, by loan id: credit-line loans from the buyer's cash, advances
   from the seller's payable;
   once per ``repayment_ref`` of the borrower when it names one (a retry gets the same answer).
   Credit lines do not revolve: repaid principal returns to the financier's funds, to grant again.
   ``WriteOffLoan``: the financier gives up a loan's principal and interest due (accrued through
   today); the claims close against their contras (interest against INTEREST_INCOME: income that will
   never be received is reversed) and the loan stops accruing.
   Advance, credit line and every new hold on a line need the borrower's consent to that financier
   (SetConsent); a financier always sees its own lines and loans and the trades they financed,
   consent lets it see the rest of the borrower's settlement (views.py).

Memory: only what is open
-------------------------
The clearing holds participants, accounts, holds, unsettled trades, loans, credit lines, payables,
payouts not yet final, and, for idempotency, final records and their references inside the retention
window. A record that becomes final is queued (``_final_at``): a trade settled or rejected, a payout
confirmed or returned, a withdrawal paid or failed, and at once a deposit, a repayment, a payout run,
a bank file sent and a bank file imported. ``forget(before_ns)``, called by the core on every clock
tick with the tick's time less its window (``ClockTick.retention_ns``, default 24 h), drops what was
queued before that time, oldest first, then lets the ledger forget its final transfers. Inside the
window a retried reference gets the original answer (``DUPLICATE_REFERENCE`` if it differs); after it:

* a settled trade is kept while money from it is still payable or in a payout not yet final (how long
  a payee has waited is read from it); then, like the others,
* a trade, payout, run, bank file or import is unknown to the clearing (UNKNOWN_TRADE,
  UNKNOWN_REFERENCE). The records the API shows (trades, payouts, withdrawals, deposits, bank files)
  are kept for ``take_archived`` when forgotten: the sequencer's writer (pgstore.LedgerWriter) writes
  them to ``settlement_history`` (migration 0014) in the forgetting tick's transaction, and the API
  reads them from there;
* a deposit's bank reference, a withdrawal reference and a repayment reference must never take
  effect twice: each is written to ``settlement_refs`` (migration 0014) in the transaction of the
  batch that used it (pgstore.LedgerWriter), whose primary key refuses a second use for ever, and the
  gateway answers a reference it finds there with 409 ``reference_expired`` before submitting. Inside
  the window the clearing itself recognises it (the sequencer commits long before the window ends);
* a payout run reference, a bank file reference or an import reference is free again (another run
  pays only what is payable; a file or import lists payouts by id and attempt, which a final payout
  refuses).

Compiled (mypyc, ``setup.py``): the records it keeps (``model.py``), the events and the commands are
msgspec structs defined in plain modules; the clearing dispatches the core's events by exact type and
keeps derived lookups that save recomputing (``_payout_trade_ids``). A msgspec field read from compiled
code is a generic attribute lookup: on a hot path, read a field once into a local, or read the whole
record or event once as a tuple (``msgspec.structs.astuple``; the field orders it relies on are checked at
import). An int typed ``int`` is unboxed, and boxed anew (an allocation above 256) into every struct, dict
key, list or tuple it goes into: ids, amounts and times that only pass through are typed ``Boxed`` (Any),
so they stay the objects they came as (the core's ``ts_ns`` included), and a new sum is boxed once.

Authorisation: "operator" commands come from a registered operator or from participant 0 (the
system); other commands name who may send them in their docstring. Every rejection is a ``Rejected``
event with ``seq`` 0 and the command's reference in ``client_order_id``; a rejected command changes
nothing. A transfer the clearing computed that the ledger refuses is a bug: ``ClearingInvariantError``.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, NoReturn, TypeAlias

import msgspec
from mypy_extensions import mypyc_attr

from exchange.commands import (
    BankConfirmation,
    ConfirmDeposit,
    ConfirmWithdrawal,
    FundsAccount,
    GrantAdvance,
    GrantCreditLine,
    ImportBankConfirmations,
    MarkPayoutsSent,
    OpenDispute,
    ParticipantRole,
    RecordWeighIn,
    ReduceCreditLine,
    RegisterParticipant,
    RejectDelivery,
    RepayLoan,
    RequestWithdrawal,
    ResolveDispute,
    RetryPayout,
    ReturnPayout,
    RunPayouts,
    SetConsent,
    SetCooperativeMembers,
    SetFeeSchedule,
    SetFinancingPolicy,
    UpdateParticipant,
    VerifyBankAccount,
    VerifyPoorHousehold,
    WriteOffLoan,
)
from exchange.domain import InstrumentSpec, QuarantineRegion, RejectReason, Side
from exchange.events import (
    AdvanceGranted,
    BankImportApplied,
    ConsentChanged,
    CooperativeMembersSet,
    CooperativeSplitPaid,
    CreditLineChanged,
    DeliveryGrade,
    DeliveryRecorded,
    DeliveryResolved,
    DisputeOpened,
    FeeScheduleSet,
    FinancingPolicySet,
    FundsDeposited,
    InstrumentListed,
    InterestAccrued,
    LoanDrawn,
    LoanKind,
    LoanPayer,
    LoanRepaid,
    LoanWrittenOff,
    LotRegistered,
    ObligationRecorded,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    ParticipantChanged,
    PayoutChanged,
    PayoutPriority,
    PayoutRunCreated,
    PayoutState,
    Rejected,
    Trade,
    TradeFacts,
    TradeSettled,
    WithdrawalCompleted,
    WithdrawalRequested,
)
from exchange.settlement import rules
from exchange.settlement.ledger import (
    CHART,
    MAX_INT64,
    NO_ROWS,
    Account,
    AccountCode,
    CreateAccountResult,
    CreateTransferResult,
    Ledger,
    Posting,
    Transfer,
    TransferCode,
    TransferFlags,
)
from exchange.settlement.model import (
    AccountKey,
    BankImport,
    ClearingSnapshot,
    Counters,
    CreditLine,
    Deposit,
    FinalKind,
    Hold,
    Loan,
    Participant,
    PayableSource,
    Payout,
    PayoutRun,
    Registration,
    Repayment,
    SentFile,
    SourceKind,
    TradeRecord,
    TradeState,
    Withdrawal,
    WithdrawalState,
)
from exchange.settlement.rules import DeliveryTerms

R = RejectReason
AC = AccountCode
TC = TransferCode
ROLE = ParticipantRole
SYSTEM_ID: Final = 0  # the system (sequencer, bootstrap): may send operator commands
SNAPSHOT_VERSION: Final = 1
MAX_RATE_BPS: Final = 10_000  # 100 % a year: anything above is a typo, not a loan
MAX_FEE_BPS: Final = 1_000  # 10 % of the amount
MAX_REF_LEN: Final = 64
HOUSE: Final = (AC.BANK_SETTLEMENT, AC.ESCROW, AC.FEE_INCOME, AC.POVERTY_SUBSIDY_FUND)
TRADING_ROLES: Final = frozenset({ROLE.BUYER, ROLE.FARMER, ROLE.COOPERATIVE})
SELLING_ROLES: Final = frozenset({ROLE.FARMER, ROLE.COOPERATIVE})
FUNDS_CODE: Final = {
    FundsAccount.TRADING_CASH: AC.BUYER_CASH,
    FundsAccount.FINANCIER_FUNDS: AC.FINANCIER_FUNDS,
    FundsAccount.POVERTY_SUBSIDY_FUND: AC.POVERTY_SUBSIDY_FUND,
}

# A value the clearing passes on unchanged (ids, amounts, times read from an event, a command or a
# record): typed Any, so that compiled it stays the int object it arrived as instead of being unboxed
# and boxed anew (an allocation above 256) into every transfer, record and event (ledger.Boxed).
Boxed: TypeAlias = Any
# Module-level constants the hot paths name are Final: compiled, each is a C static instead of a
# module-dict lookup; the objects (ints, enum members) are typed Final[Boxed] so that no use boxes them.
_OK: Final[Boxed] = CreateTransferResult.OK
_ACCOUNT_OK: Final[Boxed] = CreateAccountResult.OK
_LINKED: Final[Boxed] = TransferFlags.LINKED
_PENDING: Final[Boxed] = TransferFlags.PENDING
_POST: Final[Boxed] = TransferFlags.POST_PENDING
_VOID: Final[Boxed] = TransferFlags.VOID_PENDING
_POST_LINKED: Final[Boxed] = TransferFlags.POST_PENDING | TransferFlags.LINKED
# house account ids are their codes
_BANK: Final[Boxed] = int(AC.BANK_SETTLEMENT)
_ESCROW: Final[Boxed] = int(AC.ESCROW)
_FEES: Final[Boxed] = int(AC.FEE_INCOME)
_SUBSIDY: Final[Boxed] = int(AC.POVERTY_SUBSIDY_FUND)
_ZERO: Final[Boxed] = 0  # the 0s that go into transfers and events, as one object
_SHORT_MAX: Final = 2**62 - 1  # the largest int compiled code holds unboxed (see _valid_delivery)
# Enum members the hot paths name, as module globals (the same member objects): on Python 3.11 an
# attribute of an enum class costs ~100 ns (the enum metaclass defines ``__getattr__``, which takes
# every class attribute lookup off the fast path), a global ~10 ns.
_BUY: Final[Boxed] = Side.BUY
_OPERATOR: Final[Boxed] = ROLE.OPERATOR
_COOPERATIVE: Final[Boxed] = ROLE.COOPERATIVE
_CASH: Final[Boxed] = AC.BUYER_CASH
_RECEIVABLE: Final[Boxed] = AC.SELLER_RECEIVABLE
_PAYABLE: Final[Boxed] = AC.FARMER_PAYABLE
_TC_HOLD: Final[Boxed] = TC.ORDER_HOLD
_TC_RELEASE: Final[Boxed] = TC.ORDER_RELEASE
_TC_TRADE: Final[Boxed] = TC.TRADE
_TC_PAYOUT: Final[Boxed] = TC.PAYOUT
_TC_ADJUSTMENT: Final[Boxed] = TC.DELIVERY_ADJUSTMENT
_TC_SETTLEMENT: Final[Boxed] = TC.SETTLEMENT
_TC_FEE: Final[Boxed] = TC.FEE
_TC_FEE_SUBSIDY: Final[Boxed] = TC.FEE_SUBSIDY
_TC_SPLIT: Final[Boxed] = TC.COOP_SPLIT
_OPEN: Final[Boxed] = TradeState.OPEN
_DELIVERED: Final[Boxed] = TradeState.DELIVERED
_DISPUTED: Final[Boxed] = TradeState.DISPUTED
_UNCHECKED_CERTS: Final[Boxed] = QuarantineRegion.UNCHECKED
_SETTLED: Final[Boxed] = TradeState.SETTLED
_ADVANCE: Final[Boxed] = LoanKind.ADVANCE
_FROM_TRADE: Final[Boxed] = SourceKind.TRADE
_FROM_SPLIT: Final[Boxed] = SourceKind.COOP_SPLIT
_FROM_ADVANCE: Final[Boxed] = SourceKind.ADVANCE
_P_PENDING: Final[Boxed] = PayoutState.PENDING
_P_SENT: Final[Boxed] = PayoutState.SENT
_P_CONFIRMED: Final[Boxed] = PayoutState.CONFIRMED
_P_FAILED: Final[Boxed] = PayoutState.FAILED
_SAME_DAY: Final[Boxed] = PayoutPriority.SAME_DAY
_NORMAL: Final[Boxed] = PayoutPriority.NORMAL
_FINAL_TRADE: Final[Boxed] = int(FinalKind.TRADE)  # the kinds queued on hot paths, as plain ints
_FINAL_PAYOUT: Final[Boxed] = int(FinalKind.PAYOUT)
# what the API reads back from settlement_history once forgotten (forget keeps them for take_archived)
_ARCHIVED_KINDS: Final = frozenset({int(FinalKind.TRADE), int(FinalKind.PAYOUT), int(FinalKind.DEPOSIT),
                                    int(FinalKind.WITHDRAWAL), int(FinalKind.SENT_FILE)})
# The hot paths call rules.* by the module's name: compiled (rules is compiled with the clearing), that
# is a direct native call, where a module-global alias of the function would be a Python call.
# msgspec.structs.astuple, Final: compiled, a record or an event read as one tuple when several of its
# fields are needed (each attribute read of a msgspec struct is a generic lookup); the field order is
# checked against the structs at import.
_astuple: Final = msgspec.structs.astuple
# The records and events the hot paths make, Final: compiled, C statics instead of module-dict lookups.
_TRANSFER: Final = Transfer
_HOLD: Final = Hold
_TRADE_RECORD: Final = TradeRecord
_PAYOUT: Final = Payout
_PAYABLE_SOURCE: Final = PayableSource
_OBLIGATION_RECORDED: Final = ObligationRecorded
_DELIVERY_RECORDED: Final = DeliveryRecorded
_TRADE_SETTLED: Final = TradeSettled
_PAYOUT_CHANGED: Final = PayoutChanged
# The core's events the clearing follows (on_events), Final: compiled, C statics.
_TRADE: Final = Trade
_ORDER_ACCEPTED: Final = OrderAccepted
_ORDER_CANCELLED: Final = OrderCancelled
_ORDER_EXPIRED: Final = OrderExpired
_ORDER_AMENDED: Final = OrderAmended
_LOT_REGISTERED: Final = LotRegistered
_INSTRUMENT_LISTED: Final = InstrumentListed
if (
    Trade.__struct_fields__ != (
        "seq", "ts_ns", "instrument", "trade_id", "price_fen", "quantity_heads", "buy_order_id", "sell_order_id",
        "buyer_id", "seller_id", "lot_id", "taker_side", "buy_remaining_heads", "sell_remaining_heads",
    )
    or OrderAccepted.__struct_fields__ != (
        "seq", "ts_ns", "order_id", "participant_id", "client_order_id", "instrument", "side", "price_fen",
        "quantity_heads", "lot_id",
    )
    or Hold.__struct_fields__ != (
        "order_id", "buyer_id", "instrument", "price_fen", "per_head_fen", "remaining_heads", "pending_id",
        "source_account_id", "financier_id",
    )
    or RecordWeighIn.__struct_fields__ != (
        "participant_id", "ts_ns", "trade_id", "heads_delivered", "total_weight_g", "quarantine_cert",
        "quarantine_checked", "heads_refused", "unfasted",
    )
    or DeliveryTerms.__struct_fields__ != ("avg_weight_g", "grade", "discount_fen_per_kg", "amount_fen", "shrink_g")
    or TradeRecord.__struct_fields__ != (
        "trade_id", "instrument", "buyer_id", "seller_id", "lot_id", "buy_order_id", "heads", "price_fen",
        "obligation_fen", "source_account_id", "financier_id", "traded_at_ns", "state", "heads_delivered",
        "total_weight_g", "avg_weight_g", "grade", "discount_fen_per_kg", "quarantine_cert", "delivered_at_ns",
        "dispute_until_ns", "disputed_by", "dispute_reason", "amount_fen", "refund_fen", "advance_loan_id",
        "settled_at_ns", "fee_fen", "fee_subsidy_fen", "fee_forgone_fen", "interest_paid_fen",
        "principal_repaid_fen", "payable_fen", "heads_refused", "shrink_g", "raise_pending_id", "raise_held_fen",
        "raised_fen",
    )
    or PayableSource.__struct_fields__ != ("kind", "ref_id", "amount_fen")
    or Payout.__struct_fields__ != (
        "payout_id", "run_id", "payee_id", "amount_fen", "priority", "pending_id", "bank_account", "sources",
        "created_at_ns", "state", "attempt", "file_ref", "bank_ref", "reason", "updated_at_ns", "bank_code",
        "branch_code",
    )
):  # fmt: skip
    raise ImportError("a struct the clearing reads by position changed: update how clearing.py unpacks it")
_ENCODER = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(ClearingSnapshot)
# ClearingSnapshot's fields through bank_imports; the optional ones after them are left out when empty
_SNAPSHOT_REQUIRED_FIELDS: Final = ClearingSnapshot.__struct_fields__.index("bank_imports") + 1

Handler = Callable[[Any, list], None]


@mypyc_attr(native_class=False)  # compiled: a native class cannot derive from AssertionError
class ClearingInvariantError(AssertionError):
    """The ledger refused a transfer the clearing computed, or an event contradicts the clearing's
    records: a bug. The core must be rebuilt from the journal."""


class Clearing:
    """All settlement state of one shard. See the module docstring for the flows."""

    command_rows: deque[tuple[Sequence[Account], Sequence[Posting]]]

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.counters = Counters()
        self.accounts: dict[tuple[int, int, int], int] = {}  # (code, owner, user_data) -> account id
        self.instruments: dict[str, InstrumentSpec] = {}
        self.fee_bps: dict[str, int] = {}
        self.lots: dict = {}  # lot id -> Lot
        self.participants: dict[int, Participant] = {}
        self.holds: dict[int, Hold] = {}  # buy order id -> hold
        self.trades: dict[int, TradeRecord] = {}
        self.loans: dict[int, Loan] = {}
        self.credit_lines: dict[tuple[int, int], CreditLine] = {}  # (buyer, financier)
        self.payables: dict[int, list[PayableSource]] = {}  # payee -> FIFO of what its payable holds
        self.payouts: dict[int, Payout] = {}
        self.runs: dict[str, PayoutRun] = {}
        self.withdrawals: dict[tuple[int, str], Withdrawal] = {}
        self.deposits: dict[str, Deposit] = {}
        self.sent_files: dict[str, SentFile] = {}
        self.bank_imports: dict[str, BankImport] = {}
        self.repayments: dict[tuple[int, str], Repayment] = {}  # (borrower, repayment ref)
        # (final_at_ns, FinalKind, key) of every final record held, oldest first (see "Memory")
        # (from ``_final_head`` on: compiled, a list append is native, a deque's a generic method call)
        self.final: list[tuple[Boxed, int, Boxed]] = []
        self._final_head = 0
        # (tick ts_ns, [(FinalKind, record), ...]) of what each tick forgot, until the sequencer's writer
        # takes it into settlement_history with the tick's batch (take_archived); not state: not in snapshots
        self.archived: deque[tuple[Boxed, list[tuple[int, Any]]]] = deque()
        self._unqueued_final = False  # restored from a snapshot without ``final``: forget() queues first
        self.bank_codes: dict[int, tuple[str, str]] = {}  # participant -> (bank code, branch code), when given
        self.file_digests: dict[str, str] = {}  # payout file ref -> SHA-256 of the bytes sent (when recorded)
        self.registrations: dict[str, Registration] = {}  # registration ref -> what it made
        self._rebuild_indexes()
        self.ledger.create_accounts([_account(int(code), int(code), 0, 0) for code in HOUSE], 0)

    # ------------------------------------------------------------------------------ hooks of the core

    def check_buy(self, participant_id: int, spec: InstrumentSpec, limit_price_fen: int, heads: int) -> R | None:
        """Why a buy of ``heads`` at ``limit_price_fen`` (a market buy: the band's upper edge, 0 if none)
        cannot be accepted, or None: the participant must be a registered trader and cash or one
        credit line must cover the whole hold."""
        who = self.participants.get(participant_id)
        if who is None:
            return R.UNKNOWN_PARTICIPANT
        if who.role not in TRADING_ROLES:
            return R.NOT_AUTHORIZED
        if limit_price_fen <= 0:
            return R.UNBOUNDED_HOLD
        if self._hold_source(participant_id, heads * rules.hold_per_head_fen(spec, limit_price_fen)) is None:
            return R.INSUFFICIENT_FUNDS
        return None

    def check_sell(self, participant_id: int) -> R | None:
        """Optional: a seller must be a registered farmer or cooperative (else its proceeds wait)."""
        who = self.participants.get(participant_id)
        if who is None:
            return R.UNKNOWN_PARTICIPANT
        return None if who.role in SELLING_ROLES else R.NOT_AUTHORIZED

    def on_buy_accepted(
        self, order_id: int, participant_id: int, spec: InstrumentSpec, limit_price_fen: int, heads: int, ts_ns: int
    ) -> None:
        """Place the hold of an accepted buy (``check_buy`` passed in the same command). Idempotent: the
        ``OrderAccepted`` event places it too if the core did not call this."""
        if order_id not in self.holds:
            self._place_hold(order_id, participant_id, spec, limit_price_fen, heads, ts_ns, spec.symbol)

    def _place_hold(
        self, order_id: Boxed, participant_id: Boxed, spec: InstrumentSpec, limit_price_fen: Boxed, heads: Boxed,
        ts_ns: Boxed, instrument: Boxed,
    ) -> None:
        # ids, price, heads and time pass on as the objects they came as (Boxed); the sums are ints
        per_head: int = rules.hold_per_head_fen(spec, limit_price_fen)
        heads_n: int = heads
        amount: Boxed = heads_n * per_head  # boxed once: the hold's transfer
        source = self._hold_source(participant_id, amount)
        if source is None:
            raise ClearingInvariantError(f"buy {order_id} accepted without funds for its hold of {amount} fen")
        account_id: Boxed = source[0]
        financier_id: Boxed = source[1]
        tid = self._next_tid()
        self._commit_one(_TRANSFER(tid, account_id, _ESCROW, amount, _TC_HOLD, order_id, _PENDING), ts_ns)
        self.holds[order_id] = _HOLD(order_id, participant_id, instrument, limit_price_fen, per_head, heads, tid,
                                     account_id, financier_id)

    def check_amend_buy(self, order_id: int, new_price_fen: int, new_remaining_heads: int) -> R | None:
        """Why amending a buy to this price and remaining quantity cannot be covered, or None (also for
        orders that hold nothing: sells). The old hold is released before the new one is taken."""
        hold = self.holds.get(order_id)
        if hold is None:
            return None
        spec = self.instruments[hold.instrument]
        need = new_remaining_heads * rules.hold_per_head_fen(spec, new_price_fen)
        if need <= hold.held_fen:
            return None
        if hold.financier_id and not self.has_consented(hold.buyer_id, hold.financier_id):
            return R.INSUFFICIENT_FUNDS  # the line may hold no more than it did once consent is withdrawn
        if need <= hold.held_fen + self.ledger.available_fen(hold.source_account_id):
            return None
        return R.INSUFFICIENT_FUNDS

    # Lot auctions (exchange/matching/lot_auction.py): a bidder's maximum is held exactly like a buy's
    # limit, under a hold id the core allocates from the order ids; the winning bid's ``Trade`` names
    # it as ``buy_order_id``, so ``_on_trade`` turns it into the obligation as for a book fill.

    def check_bid(
        self, participant_id: int, spec: InstrumentSpec, price_fen: int, heads: int, hold_id: int
    ) -> R | None:
        """Why ``heads`` at ``price_fen`` cannot be held for this bidder, or None: ``check_buy``'s rule,
        counting what the bidder's current hold ``hold_id`` (which the new one replaces) frees."""
        who = self.participants.get(participant_id)
        if who is None:
            return R.UNKNOWN_PARTICIPANT
        if who.role not in TRADING_ROLES:
            return R.NOT_AUTHORIZED
        need = heads * rules.hold_per_head_fen(spec, price_fen)
        old = self.holds.get(hold_id)
        if (
            old is not None
            and (not old.financier_id or self.has_consented(participant_id, old.financier_id))
            and need <= old.per_head_fen * old.remaining_heads + self.ledger.available_fen(old.source_account_id)
        ):
            return None
        return None if self._hold_source(participant_id, need) is not None else R.INSUFFICIENT_FUNDS

    def hold_bid(
        self, hold_id: int, participant_id: int, spec: InstrumentSpec, price_fen: int, heads: int, ts_ns: int
    ) -> None:
        """(Re)place the bidder's hold at ``price_fen`` (``check_bid`` passed in the same command)."""
        self.release_bid(hold_id, ts_ns)
        self._place_hold(hold_id, participant_id, spec, price_fen, heads, ts_ns, spec.symbol)

    def release_bid(self, hold_id: int, ts_ns: int) -> None:
        """Void a bidder's hold (outbid, passed in, withdrawn); nothing if it holds nothing."""
        hold = self.holds.pop(hold_id, None)
        if hold is not None:
            self._commit_one(_TRANSFER(self._next_tid(), _ZERO, _ZERO, _ZERO, _TC_RELEASE, _ZERO, _VOID,
                                       hold.pending_id), ts_ns)

    def on_events(self, events: list, ts_ns: Boxed) -> None:
        """Follow one command's events; appends the clearing's own events to ``events``. The core calls
        this exactly once at the end of every command: it also closes the command's ledger rows."""
        # No copy of the list: the events the handlers append are the clearing's own, none of which has
        # a handler, so visiting them at the end of the loop changes nothing (and costs less than a copy
        # of every command's events). Dispatch by exact type: compiled, a direct call (a bound method
        # taken from a dict would be a generic Python call).
        for event in events:
            kind = type(event)  # compiled, Py_TYPE: ``event.__class__`` would be a generic attribute lookup
            if kind is _TRADE:
                self._on_trade(event, ts_ns, events)
            elif kind is _ORDER_ACCEPTED:
                self._on_accepted(event, ts_ns, events)
            elif kind is _ORDER_CANCELLED or kind is _ORDER_EXPIRED:
                self._on_order_gone(event, ts_ns, events)
            elif kind is _ORDER_AMENDED:
                self._on_amended(event, ts_ns, events)
            elif kind is _LOT_REGISTERED:
                self._on_lot(event, ts_ns, events)
            elif kind is _INSTRUMENT_LISTED:
                self._on_listed(event, ts_ns, events)
        self.command_rows.append(self.ledger.drain_rows())

    def handlers(self) -> dict[type, Handler]:
        """The settlement commands' handlers: ``handler(command, events)``."""
        return dict(self._command_handlers)

    def on_clock(self, ts_ns: Boxed, events: list) -> None:
        """A clock tick: accrue a day's interest if a midnight passed, then settle every trade whose
        dispute window has closed."""
        day = rules.cst_day(ts_ns)
        if day > self.counters.last_accrual_day:
            self.counters.last_accrual_day = day
            for loan in list(self.loans.values()):
                if loan.is_open:
                    self._bring_interest_up_to(loan, day, ts_ns, events, 0)
        # every due (deadline, trade id) in order: the smaller head of the two sorted queues each time
        # both queues as objects (Any): compiled, their (deadline, trade id) tuples are compared and
        # unpacked as they are, with no unboxing into C tuples and boxing into new ones
        deadlines: Any = self._deadlines
        late: Any = self._late_deadlines
        trades = self.trades
        while True:
            if deadlines and deadlines[0][0] <= ts_ns:
                _, trade_id = heapq.heappop(late) if late and late[0] < deadlines[0] else deadlines.popleft()
            elif late and late[0][0] <= ts_ns:
                _, trade_id = heapq.heappop(late)
            else:
                break
            trade = trades.get(trade_id)
            if trade is not None and trade.state == _DELIVERED:  # disputed, rejected, settled (or gone): stale
                self._settle(trade, ts_ns, events)
        # the tick's rows belong to the tick, whose on_events already closed its entry
        more = self.ledger.drain_rows()
        if more is not NO_ROWS:
            rows = self.command_rows
            if rows:
                accounts, postings = rows.pop()
                more = ([*accounts, *more[0]], [*postings, *more[1]])
            rows.append(more)

    # ------------------------------------------------------------------------------------- memory

    def _final_at(self, ts_ns: Boxed, kind: FinalKind, key: Boxed) -> None:
        """Queue a record that became final at ``ts_ns`` (see "Memory")."""
        self.final.append((ts_ns, int(kind), key))

    def _trade_closed(self, lot_id: Boxed) -> None:
        """A trade of this lot became final: one open trade fewer that may need the lot's record."""
        open_by_lot = self._open_trades_by_lot
        left: int = open_by_lot[lot_id] - 1
        if left:
            open_by_lot[lot_id] = left
        else:
            del open_by_lot[lot_id]

    def lot_in_use(self, lot_id: int) -> bool:
        """Whether a trade of this lot is still open (its record is needed: ``advance_limit_fen``)."""
        return lot_id in self._open_trades_by_lot

    def forget_lot(self, lot_id: int) -> None:
        """The core forgot this lot (sold out, final for the window, no open trade): drop its record."""
        self.lots.pop(lot_id, None)

    def forget(self, before_ns: int, now_ns: Boxed = 0) -> None:
        """Drop every record queued final before ``before_ns``, then the ledger's final transfers. The
        records the API reads history from (trades, payouts, withdrawals, deposits, bank files sent) are
        kept for ``take_archived(now_ns)``: the tick at ``now_ns`` writes them to settlement_history."""
        if self._unqueued_final:
            self._queue_unqueued_final()
        final = self.final
        head = self._final_head
        gone: list[tuple[int, Any]] = []
        awaiting: set[int] | None = None  # trades whose proceeds still wait for their payee
        while head < len(final) and final[head][0] < before_ns:
            _, kind, key = final[head]
            head += 1
            if kind == _FINAL_TRADE:
                if awaiting is None:
                    awaiting = self._trades_awaiting_payout()
                if key in awaiting:  # its money is still payable: looked at again a window later
                    final.append((now_ns if now_ns > before_ns else before_ns, kind, key))
                    continue
                record: Any = self.trades.pop(key, None)
            elif kind == _FINAL_PAYOUT:
                record = self.payouts.pop(key, None)
                self._payout_trade_ids.pop(key, None)
            else:
                record = self._records_of(kind).pop(key, None)  # (a file's digest stays: a few a day)
            if record is not None and kind in _ARCHIVED_KINDS:
                gone.append((kind, record))
        if head > 1024 and 2 * head > len(final):  # drop the forgotten front now and then (amortised O(1))
            del final[:head]
            head = 0
        self._final_head = head
        if gone:
            self.archived.append((now_ns, gone))
        self.ledger.forget(before_ns)

    def _trades_awaiting_payout(self) -> set[int]:
        """Trades a payable or a payout not yet final still draws on (their settlement time is how long
        a payee has waited: kept until the money left)."""
        awaiting: set[int] = set()
        for sources in self.payables.values():
            for source in sources:
                if source.kind != _FROM_ADVANCE:  # a trade's proceeds or a member's share of them
                    awaiting.add(source.ref_id)
        for p in self.payouts.values():
            if p.state != _P_CONFIRMED and p.state != PayoutState.RETURNED:
                for source in p.sources:
                    if source.kind != _FROM_ADVANCE:
                        awaiting.add(source.ref_id)
        return awaiting

    def take_archived(self, ts_ns: int) -> list[tuple[int, Any]]:
        """What the ticks at ``ts_ns`` forgot that goes to history ([] if nothing); older entries (ticks
        replayed by recovery: in the database already) are dropped. Ticks stamped alike are taken
        together (a copy written twice is harmless: history rows are unique by the tick's seq)."""
        archived = self.archived
        while archived and archived[0][0] < ts_ns:
            archived.popleft()
        taken: list[tuple[int, Any]] = []
        while archived and archived[0][0] == ts_ns:
            taken.extend(archived.popleft()[1])
        return taken

    def _records_of(self, kind: int) -> dict:
        """The dict a final record of this kind is held in (trades and payouts: see forget)."""
        if kind == FinalKind.DEPOSIT:
            return self.deposits
        if kind == FinalKind.WITHDRAWAL:
            return self.withdrawals
        if kind == FinalKind.REPAYMENT:
            return self.repayments
        if kind == FinalKind.RUN:
            return self.runs
        if kind == FinalKind.SENT_FILE:
            return self.sent_files
        if kind == FinalKind.BANK_IMPORT:
            return self.bank_imports
        raise ClearingInvariantError(f"no final records of kind {kind}")

    def _queue_unqueued_final(self) -> None:
        """Queue the final records a snapshot of an earlier version held (final from now on)."""
        self._unqueued_final = False
        now = self.ledger.now_ns
        held = {(kind, key) for _, kind, key in self.final[self._final_head:]}
        final_trades = (TradeState.SETTLED, TradeState.REJECTED)
        keys: list[tuple[int, Any]] = [(_FINAL_TRADE, k) for k in sorted(self.trades)
                                       if self.trades[k].state in final_trades]
        keys += [(_FINAL_PAYOUT, k) for k in sorted(self.payouts)
                 if self.payouts[k].state in (PayoutState.CONFIRMED, PayoutState.RETURNED)]
        keys += [(int(FinalKind.WITHDRAWAL), k) for k in sorted(self.withdrawals)
                 if self.withdrawals[k].state != WithdrawalState.PENDING]
        for of_kind in (FinalKind.DEPOSIT, FinalKind.REPAYMENT, FinalKind.RUN, FinalKind.SENT_FILE,
                        FinalKind.BANK_IMPORT):
            keys += [(int(of_kind), k) for k in sorted(self._records_of(of_kind))]
        for kind, key in keys:
            if (kind, key) not in held:
                self.final.append((now, kind, key))

    def held_counts(self) -> dict[str, int]:
        """How many records of each kind memory holds (tests and benchmarks count them against what is open)."""
        return {
            "trades": len(self.trades), "payouts": len(self.payouts), "deposits": len(self.deposits),
            "withdrawals": len(self.withdrawals), "repayments": len(self.repayments), "runs": len(self.runs),
            "sent_files": len(self.sent_files), "bank_imports": len(self.bank_imports),
            "final_queued": len(self.final) - self._final_head, "transfers": self.ledger.held_counts()[0],
        }

    # ------------------------------------------------------------------------------- persistence
    # Ledger rows leave the clearing per command: ``on_events`` (and ``on_clock`` for a tick) moves
    # what the ledger drained into ``command_rows``, one (new accounts, postings) entry per command in
    # the order applied. The sequencer's ``extra_writes`` takes a batch's entries with
    # ``take_command_rows`` (pgstore.LedgerWriter); tools and tests may use ``drain_*`` instead. The
    # queue is not state: it is not in the snapshot, and rows of commands replayed during recovery
    # (durable already) must be dropped (``discard_command_rows``; LedgerWriter aligns by seq).

    def take_command_rows(self, n: int) -> list[tuple[Sequence[Account], Sequence[Posting]]]:
        """The oldest ``n`` commands' (new accounts, postings), removed from the queue."""
        rows = self.command_rows
        if n > len(rows):
            raise ClearingInvariantError(f"{n} commands' ledger rows asked for, {len(rows)} queued")
        if n == len(rows):
            taken = list(rows)
            rows.clear()
            return taken
        return [rows.popleft() for _ in range(n)]

    def discard_command_rows(self) -> None:
        """Forget queued rows (after a recovery replay: they are in the database already)."""
        self.command_rows.clear()
        self.archived.clear()
        self.ledger.drain_rows()

    def drain_postings(self) -> list[Posting]:
        """Every posting not yet taken, in order (for callers that do not write per command)."""
        postings = [p for _, command_postings in self.command_rows for p in command_postings]
        postings.extend(self.ledger.drain_postings())
        self._keep_queued(accounts=True, postings=False)
        return postings

    def drain_new_accounts(self) -> list[Account]:
        """Every new account not yet taken, in order (see ``drain_postings``)."""
        accounts = [a for command_accounts, _ in self.command_rows for a in command_accounts]
        accounts.extend(self.ledger.drain_new_accounts())
        self._keep_queued(accounts=False, postings=True)
        return accounts

    def _keep_queued(self, *, accounts: bool, postings: bool) -> None:
        """Keep only one kind of the queued rows (the other was drained), dropping emptied entries at
        the front so the queue still starts at the first command with rows left."""
        kept = deque((a if accounts else (), p if postings else ()) for a, p in self.command_rows)
        while kept and not kept[0][0] and not kept[0][1]:
            kept.popleft()
        self.command_rows = kept

    def snapshot(self) -> bytes:
        """The whole state, canonically ordered (everything sorted by its key)."""
        snap = self._snapshot_struct()
        fields = msgspec.structs.astuple(snap)
        # An array-like struct encodes as the tuple of its fields; leaving out the empty optional fields at
        # its end keeps a state without them at exactly the bytes (and hash) earlier versions wrote.
        end = len(fields)
        while end > _SNAPSHOT_REQUIRED_FIELDS and not fields[end - 1]:
            end -= 1
        return _ENCODER.encode(fields[:end])

    def state_hash(self) -> str:
        return hashlib.blake2b(self.snapshot(), digest_size=32).hexdigest()

    @classmethod
    def restore(cls, data: bytes) -> Clearing:
        snap = _SNAPSHOT_DECODER.decode(data)
        if snap.version != SNAPSHOT_VERSION:
            raise ValueError(f"clearing snapshot version {snap.version} is not {SNAPSHOT_VERSION}")
        c = cls()  # compiled: a native class has no bare __new__; every field is replaced below
        c.ledger = Ledger.restore(snap.ledger)
        c.counters = snap.counters
        c.accounts = {(k.code, k.owner_id, k.user_data): k.account_id for k in snap.accounts}
        c.instruments = {s.symbol: s for s in snap.instruments}
        c.fee_bps = dict(snap.fee_bps)
        c.lots = {lot.lot_id: lot for lot in snap.lots}
        c.participants = {p.participant_id: p for p in snap.participants}
        c.holds = {h.order_id: h for h in snap.holds}
        c.trades = {t.trade_id: t for t in snap.trades}
        c.loans = {loan.loan_id: loan for loan in snap.loans}
        c.credit_lines = {(line.buyer_id, line.financier_id): line for line in snap.credit_lines}
        c.payables = dict(snap.payables)
        c.payouts = {p.payout_id: p for p in snap.payouts}
        c.runs = {r.run_ref: r for r in snap.runs}
        c.withdrawals = {(w.owner_id, w.withdrawal_ref): w for w in snap.withdrawals}
        c.deposits = {d.deposit_ref: d for d in snap.deposits}
        c.sent_files = {f.file_ref: f for f in snap.sent_files}
        c.bank_imports = {b.file_ref: b for b in snap.bank_imports}
        c.repayments = {(r.borrower_id, r.repayment_ref): r for r in snap.repayments}
        c.bank_codes = {pid: (bank, branch) for pid, bank, branch in snap.bank_codes}
        c.file_digests = dict(snap.file_digests)
        c.registrations = {r.registration_ref: r for r in snap.registrations}
        c.final = [(at, kind, tuple(key) if isinstance(key, list) else key) for at, kind, key in snap.final]
        c._final_head = 0
        c._unqueued_final = not snap.final
        c._rebuild_indexes()
        return c

    def _snapshot_struct(self) -> ClearingSnapshot:
        def by_key(d: dict) -> list:
            return [d[k] for k in sorted(d)]

        return ClearingSnapshot(
            SNAPSHOT_VERSION, self.counters, self.ledger.snapshot(allow_undrained=True),
            sorted((AccountKey(*k, v) for k, v in self.accounts.items()), key=lambda a: a.account_id),
            by_key(self.instruments), sorted(self.fee_bps.items()), by_key(self.lots), by_key(self.participants),
            by_key(self.holds), by_key(self.trades), by_key(self.loans), by_key(self.credit_lines),
            [(k, self.payables[k]) for k in sorted(self.payables) if self.payables[k]], by_key(self.payouts),
            by_key(self.runs), by_key(self.withdrawals), by_key(self.deposits), by_key(self.sent_files),
            by_key(self.bank_imports), by_key(self.repayments),
            [(pid, codes[0], codes[1]) for pid, codes in sorted(self.bank_codes.items())],
            sorted(self.file_digests.items()), by_key(self.registrations), self.final[self._final_head:],
        )  # fmt: skip

    def _rebuild_indexes(self) -> None:
        """Derived lookups, rebuilt from the records after a restore (never snapshotted)."""
        self.command_rows = deque()
        self._payout_trade_ids: dict[int, tuple[int, ...]] = {}  # see _payout_event
        # lot id -> how many of its trades are open (neither settled nor rejected): the core keeps a lot,
        # and the clearing its record, while it has one (lot_in_use)
        self._open_trades_by_lot: dict[Boxed, int] = {}
        for t in self.trades.values():
            if t.state != TradeState.SETTLED and t.state != TradeState.REJECTED:
                self._open_trades_by_lot[t.lot_id] = self._open_trades_by_lot.get(t.lot_id, 0) + 1
        # Dispute deadlines, (deadline, trade id), as two sorted queues (see _add_deadline).
        self._deadlines: deque[tuple[int, int]] = deque(sorted(
            (t.dispute_until_ns, t.trade_id) for t in self.trades.values() if t.state == TradeState.DELIVERED
        ))
        self._late_deadlines: list[tuple[int, int]] = []  # a heap
        self._loans_by_borrower: dict[int, list[int]] = {}
        for loan_id in sorted(self.loans):
            self._loans_by_borrower.setdefault(self.loans[loan_id].borrower_id, []).append(loan_id)
        self._payable_accounts = {owner: account_id for (code, owner, _), account_id in self.accounts.items()
                                  if code == _PAYABLE}  # payee -> its FARMER_PAYABLE account, for payout runs
        # buyer -> its BUYER_CASH account: every buy looks it up twice (check_buy, the hold), by an int
        # instead of a (code, owner, 0) tuple
        self._cash_accounts = {owner: account_id for (code, owner, _), account_id in self.accounts.items()
                               if code == _CASH}
        # seller -> its SELLER_RECEIVABLE account: every weigh-in and settlement looks it up
        self._receivable_accounts = {owner: account_id for (code, owner, _), account_id in self.accounts.items()
                                     if code == _RECEIVABLE}
        self._lines_by_buyer: dict[int, list[CreditLine]] = {}
        for key in sorted(self.credit_lines):
            self._lines_by_buyer.setdefault(key[0], []).append(self.credit_lines[key])
        self._command_handlers: dict[type, Handler] = {
            RegisterParticipant: self._register_participant,
            UpdateParticipant: self._update_participant,
            VerifyBankAccount: self._verify_bank_account,
            VerifyPoorHousehold: self._verify_poor_household,
            SetCooperativeMembers: self._set_cooperative_members,
            SetConsent: self._set_consent,
            ConfirmDeposit: self._confirm_deposit,
            RequestWithdrawal: self._request_withdrawal,
            ConfirmWithdrawal: self._confirm_withdrawal,
            RecordWeighIn: self._record_weigh_in,
            OpenDispute: self._open_dispute,
            ResolveDispute: self._resolve_dispute,
            RejectDelivery: self._reject_delivery,
            GrantCreditLine: self._grant_credit_line,
            ReduceCreditLine: self._reduce_credit_line,
            GrantAdvance: self._grant_advance,
            RepayLoan: self._repay_loan,
            WriteOffLoan: self._write_off_loan,
            RunPayouts: self._run_payouts,
            MarkPayoutsSent: self._mark_payouts_sent,
            ImportBankConfirmations: self._import_bank_confirmations,
            RetryPayout: self._retry_payout,
            ReturnPayout: self._return_payout,
            SetFeeSchedule: self._set_fee_schedule,
            SetFinancingPolicy: self._set_financing_policy,
        }

    # ---------------------------------------------------------------------------------- ledger plumbing

    def _next_tid(self) -> Boxed:
        counters = self.counters
        tid: Boxed = counters.next_transfer_id  # the object itself goes into the transfer
        counters.next_transfer_id = tid + 1
        return tid

    def _commit_one(self, transfer: Transfer, ts_ns: Boxed) -> None:
        """Apply one transfer (not LINKED); a refusal is a bug."""
        result = self.ledger.create_transfer(transfer, ts_ns)
        if result is not _OK:
            _refused(transfer, result)

    def _commit(self, transfers: Sequence[Transfer], ts_ns: Boxed) -> None:
        """Apply transfers (several: a chain, every one but the last flagged LINKED by the caller); any
        refusal is a bug."""
        if len(transfers) < 2:
            if transfers:
                self._commit_one(transfers[0], ts_ns)
            return
        results = self.ledger.create_transfers(transfers, ts_ns)
        if results.count(_OK) != len(transfers):
            _refused_chain(transfers, results)

    def _account_id(self, code: int, owner_id: Boxed, user_data: Boxed, ts_ns: Boxed) -> Boxed:
        """The account of this kind, owner and counterparty, created on first use."""
        # owner, counterparty and the id pass as objects (Boxed): compiled, the key and the legs box none
        # of them anew; the code is an int, so that the key holds a plain int for an AccountCode
        key = (code, owner_id, user_data)
        account_id = self.accounts.get(key)
        if account_id is None:
            counters = self.counters
            account_id = counters.next_account_id
            counters.next_account_id = account_id + 1
            result = self.ledger.create_accounts([_account(account_id, code, owner_id, user_data)], ts_ns)[0]
            if result is not _ACCOUNT_OK:
                raise ClearingInvariantError(f"ledger refused account {key}: {result.name}")
            self.accounts[key] = account_id
            if code == _PAYABLE:
                self._payable_accounts[owner_id] = account_id
            elif code == _CASH:
                self._cash_accounts[owner_id] = account_id
            elif code == _RECEIVABLE:
                self._receivable_accounts[owner_id] = account_id
        return account_id

    def _balance(self, code: int, owner_id: int = 0, user_data: int = 0) -> int:
        """Available balance (credits - debits - pending debits) of a credit-normal account; 0 if none."""
        account_id = self.accounts.get((code, owner_id, user_data))
        if code in HOUSE:
            account_id = code
        return 0 if account_id is None else self.ledger.available_fen(account_id)

    # ------------------------------------------------------------------------------ core's events

    def _on_listed(self, e: InstrumentListed, ts_ns: Boxed, out: list) -> None:
        self.instruments[e.spec.symbol] = e.spec
        self.fee_bps[e.spec.symbol] = e.spec.seller_fee_bps

    def _on_lot(self, e: LotRegistered, ts_ns: Boxed, out: list) -> None:
        lot = e.lot
        self.lots[lot.lot_id] = lot

    def _on_accepted(self, e: OrderAccepted, ts_ns: Boxed, out: list) -> None:
        # (seq, ts_ns, order_id, participant_id, client_order_id, instrument, side, price_fen, quantity_heads,
        # lot_id): one tuple instead of six attribute reads
        f = _astuple(e)
        order_id: Boxed = f[2]
        if f[6] == _BUY and order_id not in self.holds:
            instrument: Boxed = f[5]
            self._place_hold(order_id, f[3], self.instruments[instrument], f[7], f[8], ts_ns, instrument)

    def _on_trade(self, e: Trade, ts_ns: Boxed, out: list) -> None:
        # The trade and the hold read as one tuple each (field order checked at import); ids, price and
        # heads pass on as the objects they came as (Boxed), the sums are ints boxed once each.
        # (seq, ts_ns, instrument, trade_id, price_fen, quantity_heads, buy_order_id, sell_order_id, buyer_id,
        # seller_id, lot_id, taker_side, buy_remaining_heads, sell_remaining_heads)
        f = _astuple(e)
        trade_id: Boxed = f[3]
        buy_order_id: Boxed = f[6]
        hold = self.holds.get(buy_order_id)
        if hold is None:
            raise ClearingInvariantError(f"trade {trade_id}: buy order {buy_order_id} holds no funds")
        # (order_id, buyer_id, instrument, price_fen, per_head_fen, remaining_heads, pending_id,
        # source_account_id, financier_id)
        h = _astuple(hold)
        heads: Boxed = f[5]
        heads_n: int = heads
        remaining: int = h[5] - heads_n
        buy_remaining: int = f[12]
        if remaining != buy_remaining or remaining < 0:
            raise ClearingInvariantError(f"trade {trade_id}: hold has {h[5]} heads")
        instrument: Boxed = f[2]
        price: Boxed = f[4]
        per_head: int = h[4]
        obligation_n: int = heads_n * rules.hold_per_head_fen(self.instruments[instrument], price)
        released: int = heads_n * per_head - obligation_n
        if obligation_n <= 0 or released < 0:
            raise ClearingInvariantError(f"trade {trade_id} at {price} above the limit {h[3]}")
        obligation: Boxed = obligation_n  # boxed once: the transfer, the record and the event
        source_account_id: Boxed = h[7]
        counters = self.counters
        tid: Boxed = counters.next_transfer_id
        # the ledger calls of _commit and _commit_one, inline: once per fill
        if remaining:
            rehold_id: Boxed = tid + 1
            counters.next_transfer_id = rehold_id + 1
            chain = [_TRANSFER(tid, _ZERO, _ZERO, obligation, _TC_TRADE, trade_id, _POST_LINKED, h[6]),
                     _TRANSFER(rehold_id, source_account_id, _ESCROW, remaining * per_head, _TC_HOLD,
                               h[0], _PENDING)]
            results = self.ledger.create_transfers(chain, ts_ns)
            if results.count(_OK) != 2:
                _refused_chain(chain, results)
            hold.pending_id = rehold_id
            hold.remaining_heads = remaining
        else:
            counters.next_transfer_id = tid + 1
            post = _TRANSFER(tid, _ZERO, _ZERO, obligation, _TC_TRADE, trade_id, _POST, h[6])
            result = self.ledger.create_transfer(post, ts_ns)
            if result is not _OK:
                _refused(post, result)
            del self.holds[h[0]]
        buyer_id: Boxed = f[8]
        seller_id: Boxed = f[9]
        financier_id: Boxed = h[8]
        lot_id: Boxed = f[10]
        self.trades[trade_id] = _TRADE_RECORD(
            trade_id, instrument, buyer_id, seller_id, lot_id, buy_order_id, heads, price,
            obligation, source_account_id, financier_id, ts_ns,
        )  # fmt: skip
        open_by_lot = self._open_trades_by_lot
        open_by_lot[lot_id] = open_by_lot.get(lot_id, 0) + 1
        out.append(_OBLIGATION_RECORDED(_ZERO, ts_ns, trade_id, buyer_id, seller_id, instrument, heads, price,
                                        obligation, released, financier_id))

    def _on_order_gone(self, e: OrderCancelled | OrderExpired, ts_ns: Boxed, out: list) -> None:
        hold = self.holds.pop(e.order_id, None)
        if hold is None:
            return  # a sell: nothing held
        self._commit_one(_TRANSFER(self._next_tid(), _ZERO, _ZERO, _ZERO, _TC_RELEASE, _ZERO, _VOID, hold.pending_id),
                         ts_ns)

    def _on_amended(self, e: OrderAmended, ts_ns: Boxed, out: list) -> None:
        hold = self.holds.get(e.order_id)
        if hold is None:
            return
        per_head = rules.hold_per_head_fen(self.instruments[hold.instrument], e.price_fen)
        hold.price_fen = e.price_fen
        if per_head == hold.per_head_fen and e.remaining_heads == hold.remaining_heads:
            return
        void = Transfer(self._next_tid(), 0, 0, 0, TC.ORDER_RELEASE, 0, _VOID | _LINKED, hold.pending_id)
        rehold = Transfer(self._next_tid(), hold.source_account_id, _ESCROW, e.remaining_heads * per_head,
                          TC.ORDER_HOLD, hold.order_id, _PENDING)
        self._commit([void, rehold], ts_ns)  # a failure here means the core skipped check_amend_buy
        hold.per_head_fen = per_head
        hold.remaining_heads = e.remaining_heads
        hold.pending_id = rehold.transfer_id

    def _hold_source(self, buyer_id: Boxed, amount_fen: int) -> tuple[Boxed, Boxed] | None:
        """(account id, financier id or 0) that covers ``amount_fen`` whole: cash first, then the credit
        lines by financier id, only those of financiers the buyer consents to now (a withdrawn consent
        ends new holds on that line; what it already holds stays until filled or cancelled)."""
        # ids as the objects they are (Boxed): compiled, none is unboxed and boxed anew
        cash: Boxed = self._cash_accounts.get(buyer_id)
        if cash is not None and self.ledger.available_fen(cash) >= amount_fen:
            return cash, _ZERO
        for line in self._lines_by_buyer.get(buyer_id, ()):
            account_id: Boxed = line.account_id
            if self.ledger.available_fen(account_id) >= amount_fen:
                financier_id: Boxed = line.financier_id
                if self.has_consented(buyer_id, financier_id):
                    return account_id, financier_id
        return None

    # ------------------------------------------------------------------------------- helpers

    def _add_deadline(self, until_ns: Boxed, trade_id: Boxed) -> None:
        """Queue a trade's settlement. Deadlines nearly always come in order (one dispute window, time
        moving forward): those go at the end of a deque, whose pops cost less than a heap's; one that
        sorts before the deque's last goes into the heap ``_late_deadlines``. ``on_clock`` merges both."""
        item: Any = (until_ns, trade_id)  # the objects as they came, in one tuple object: compiled, made once
        # the queue as an object (Any): compiled, its (int, int) entries are compared as the tuples they
        # are, where a typed deque's would be unboxed and boxed into new tuples for the comparison
        deadlines: Any = self._deadlines
        if not deadlines or deadlines[-1] < item:
            deadlines.append(item)
        else:
            heapq.heappush(self._late_deadlines, item)

    def _reject(self, cmd: object, reason: R, ref: str, out: list, instrument: str = "") -> None:
        out.append(Rejected(0, cmd.ts_ns, cmd.participant_id, reason, ref, 0, instrument))  # type: ignore[attr-defined]

    def _is_operator(self, participant_id: int) -> bool:
        if participant_id == SYSTEM_ID:
            return True
        who = self.participants.get(participant_id)
        return who is not None and who.role == _OPERATOR

    def _is_poor(self, participant_id: int) -> bool:
        who = self.participants.get(participant_id)
        return who is not None and who.poor_verified

    def _has_role(self, participant_id: int, roles: Iterable[ParticipantRole]) -> bool:
        who = self.participants.get(participant_id)
        return who is not None and who.role in roles

    def _credit_payable(self, payee_id: int, kind: SourceKind, ref_id: int, amount_fen: int) -> None:
        if amount_fen:
            self.payables.setdefault(payee_id, []).append(PayableSource(kind, ref_id, amount_fen))

    def _take_payable(self, payee_id: int, amount_fen: int) -> list[PayableSource]:
        """Take ``amount_fen`` off the front of the payee's payable sources (oldest first)."""
        fifo = self.payables.get(payee_id, [])
        total = 0
        for s in fifo:  # a loop: summing a generator costs more for the one or two sources a payee has
            total += s.amount_fen
        if fifo and total == amount_fen:  # all of it (a payout run): the list itself
            self.payables[payee_id] = []
            return fifo
        taken: list[PayableSource] = []
        while amount_fen:
            head = fifo[0]
            part = min(head.amount_fen, amount_fen)
            taken.append(PayableSource(head.kind, head.ref_id, part))
            amount_fen -= part
            head.amount_fen -= part
            if not head.amount_fen:
                fifo.pop(0)
        return taken

    def _participant_event(self, who: Participant, by: int, ts_ns: int) -> ParticipantChanged:
        return ParticipantChanged(0, ts_ns, who.participant_id, who.role, who.name, who.bank_account[-4:],
                                  who.bank_verified, who.poor_verified, by)

    # ------------------------------------------------------------------------------ participants

    def _register_participant(self, cmd: RegisterParticipant, out: list) -> None:
        ref = f"U{cmd.subject_id}"
        if not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        if not _valid_profile(cmd):
            return self._reject(cmd, R.INVALID_PARTICIPANT, ref, out)
        if cmd.registration_ref:
            return self._register_with_reference(cmd, out)
        existing = self.participants.get(cmd.subject_id)
        if existing is not None:
            same = (existing.role, existing.name, existing.id_number_masked) == (cmd.role, cmd.name,
                                                                                cmd.id_number_masked)
            if not same:
                return self._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
            out.append(self._participant_event(existing, cmd.participant_id, cmd.ts_ns))
            return None
        who = Participant(cmd.subject_id, cmd.role, cmd.name.strip(), cmd.id_number_masked, cmd.bank_account.strip(),
                          False, cmd.poor_registration_no.strip(), False)
        self.participants[cmd.subject_id] = who
        if cmd.bank_code or cmd.branch_code:
            self.bank_codes[cmd.subject_id] = (cmd.bank_code, cmd.branch_code)
        out.append(self._participant_event(who, cmd.participant_id, cmd.ts_ns))
        return None

    def _register_with_reference(self, cmd: RegisterParticipant, out: list) -> None:
        """A registration through the API: once per reference; a repeat with the same profile answers the
        participant the first one made (whatever id and key the repeat carries), another profile is refused."""
        ref = cmd.registration_ref
        digest = _profile_digest(cmd)
        done = self.registrations.get(ref)
        if done is not None:
            if done.profile_digest != digest:
                return self._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
            out.append(self._participant_event(self.participants[done.participant_id], cmd.participant_id, cmd.ts_ns))
            return None
        # the key's row is written with the batch (the api_keys table's CHECKs): refused here, never there
        if (len(ref) > MAX_REF_LEN or not 8 <= len(cmd.api_key) <= 64 or len(cmd.api_secret) < 16
                or cmd.subject_id in self.participants):
            return self._reject(cmd, R.INVALID_PARTICIPANT, ref, out)
        who = Participant(cmd.subject_id, cmd.role, cmd.name.strip(), cmd.id_number_masked, cmd.bank_account.strip(),
                          False, cmd.poor_registration_no.strip(), False)
        self.participants[cmd.subject_id] = who
        if cmd.bank_code or cmd.branch_code:
            self.bank_codes[cmd.subject_id] = (cmd.bank_code, cmd.branch_code)
        self.registrations[ref] = Registration(ref, cmd.subject_id, digest, cmd.api_key, cmd.ts_ns)
        out.append(self._participant_event(who, cmd.participant_id, cmd.ts_ns))
        return None

    def _update_participant(self, cmd: UpdateParticipant, out: list) -> None:
        ref = f"U{cmd.subject_id}"
        who = self.participants.get(cmd.subject_id)
        if cmd.participant_id != cmd.subject_id and not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        if who is None:
            return self._reject(cmd, R.UNKNOWN_PARTICIPANT, ref, out)
        if (not cmd.name.strip() or len(cmd.name) > 100 or len(cmd.bank_account) > 64
                or not _valid_bank_codes(cmd.bank_code, cmd.branch_code)):
            return self._reject(cmd, R.INVALID_PARTICIPANT, ref, out)
        bank, name, codes = cmd.bank_account.strip(), cmd.name.strip(), (cmd.bank_code, cmd.branch_code)
        if bank != who.bank_account or name != who.name or codes != self.bank_codes.get(who.participant_id, ("", "")):
            # The bank checks the account against its holder's name: a new account (or bank, or branch),
            # or a new name on the old one, must be verified again before money goes there.
            who.bank_verified = False
        who.bank_account, who.name = bank, name
        if codes[0] or codes[1]:
            self.bank_codes[who.participant_id] = codes
        else:
            self.bank_codes.pop(who.participant_id, None)
        out.append(self._participant_event(who, cmd.participant_id, cmd.ts_ns))
        return None

    def _verified_subject(self, cmd: VerifyBankAccount | VerifyPoorHousehold, out: list) -> Participant | None:
        """The participant an operator's verification names, or None after rejecting the command."""
        if not self._is_operator(cmd.participant_id):
            self._reject(cmd, R.NOT_AUTHORIZED, f"U{cmd.subject_id}", out)
            return None
        who = self.participants.get(cmd.subject_id)
        if who is None:
            self._reject(cmd, R.UNKNOWN_PARTICIPANT, f"U{cmd.subject_id}", out)
        return who

    def _verify_bank_account(self, cmd: VerifyBankAccount, out: list) -> None:
        ref = f"U{cmd.subject_id}"
        who = self._verified_subject(cmd, out)
        if who is None:
            return None
        if not who.bank_account or cmd.bank_account.strip() != who.bank_account:
            return self._reject(cmd, R.INVALID_PARTICIPANT, ref, out)
        who.bank_verified = True
        out.append(self._participant_event(who, cmd.participant_id, cmd.ts_ns))
        return None

    def _verify_poor_household(self, cmd: VerifyPoorHousehold, out: list) -> None:
        ref = f"U{cmd.subject_id}"
        who = self._verified_subject(cmd, out)
        if who is None:
            return None
        number = cmd.registration_no.strip()
        if who.role != ROLE.FARMER or (cmd.verified and not number) or len(number) > 32:
            return self._reject(cmd, R.INVALID_PARTICIPANT, ref, out)
        if cmd.verified:
            who.poor_registration_no = number
        who.poor_verified = cmd.verified
        out.append(self._participant_event(who, cmd.participant_id, cmd.ts_ns))
        return None

    def _set_cooperative_members(self, cmd: SetCooperativeMembers, out: list) -> None:
        ref = f"U{cmd.cooperative_id}"
        if not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        coop = self.participants.get(cmd.cooperative_id)
        if coop is None:
            return self._reject(cmd, R.UNKNOWN_PARTICIPANT, ref, out)
        if coop.role != ROLE.COOPERATIVE or not self._valid_shares(cmd.member_ids, cmd.shares_bps):
            return self._reject(cmd, R.INVALID_SHARES, ref, out)
        coop.member_ids = list(cmd.member_ids)
        coop.shares_bps = list(cmd.shares_bps)
        out.append(CooperativeMembersSet(0, cmd.ts_ns, cmd.cooperative_id, cmd.member_ids, cmd.shares_bps))
        return None

    def _valid_shares(self, member_ids: tuple[int, ...], shares_bps: tuple[int, ...]) -> bool:
        return (
            len(member_ids) == len(shares_bps)
            and len(set(member_ids)) == len(member_ids)
            and all(self._has_role(m, (ROLE.FARMER,)) for m in member_ids)
            and all(share > 0 for share in shares_bps)
            and sum(shares_bps) <= rules.BPS
        )

    def _set_consent(self, cmd: SetConsent, out: list) -> None:
        ref = f"F{cmd.financier_id}"
        who = self.participants.get(cmd.participant_id)
        if who is None or who.role not in TRADING_ROLES:
            return self._reject(cmd, R.UNKNOWN_PARTICIPANT, ref, out)
        if not self._has_role(cmd.financier_id, (ROLE.FINANCIER,)):
            return self._reject(cmd, R.UNKNOWN_PARTICIPANT, ref, out)
        consents = set(who.consents)
        if cmd.granted:
            consents.add(cmd.financier_id)
        else:
            consents.discard(cmd.financier_id)
        who.consents = sorted(consents)
        out.append(ConsentChanged(0, cmd.ts_ns, cmd.participant_id, cmd.financier_id, cmd.granted))
        return None

    def has_consented(self, participant_id: int, financier_id: int) -> bool:
        who = self.participants.get(participant_id)
        return who is not None and financier_id in who.consents

    # ------------------------------------------------------------------------ deposits, withdrawals

    def _funds_owner_reason(self, account: FundsAccount, owner_id: int) -> R | None:
        if account == FundsAccount.POVERTY_SUBSIDY_FUND:
            return None if owner_id == 0 else R.INVALID_PARTICIPANT
        roles = TRADING_ROLES if account == FundsAccount.TRADING_CASH else (ROLE.FINANCIER,)
        return None if self._has_role(owner_id, roles) else R.UNKNOWN_PARTICIPANT

    def _funds_account_id(self, account: FundsAccount, owner_id: int, ts_ns: int) -> int:
        code = FUNDS_CODE[account]
        return int(code) if code in HOUSE else self._account_id(code, owner_id, 0, ts_ns)

    def _confirm_deposit(self, cmd: ConfirmDeposit, out: list) -> None:
        ref = cmd.deposit_ref
        if not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        if not 0 < len(ref) <= MAX_REF_LEN or type(cmd.amount_fen) is not int or not 0 < cmd.amount_fen <= MAX_INT64:
            return self._reject(cmd, R.INVALID_AMOUNT, ref, out)
        done = self.deposits.get(ref)
        if done is not None:
            if (done.owner_id, done.account, done.amount_fen) != (cmd.owner_id, cmd.account, cmd.amount_fen):
                return self._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
            out.append(FundsDeposited(0, done.ts_ns, done.owner_id, done.account, done.amount_fen, ref,
                                      done.transfer_id))
            return None
        reason = self._funds_owner_reason(cmd.account, cmd.owner_id)
        if reason is not None:
            return self._reject(cmd, reason, ref, out)
        account_id = self._funds_account_id(cmd.account, cmd.owner_id, cmd.ts_ns)
        tid = self._next_tid()
        self._commit_one(Transfer(tid, _BANK, account_id, cmd.amount_fen, TC.DEPOSIT, 0), cmd.ts_ns)
        self.deposits[ref] = Deposit(ref, cmd.owner_id, cmd.account, cmd.amount_fen, tid, cmd.ts_ns)
        self._final_at(cmd.ts_ns, FinalKind.DEPOSIT, ref)
        out.append(FundsDeposited(0, cmd.ts_ns, cmd.owner_id, cmd.account, cmd.amount_fen, ref, tid))
        return None

    def _request_withdrawal(self, cmd: RequestWithdrawal, out: list) -> None:
        ref, owner = cmd.withdrawal_ref, cmd.participant_id
        if not 0 < len(ref) <= MAX_REF_LEN or cmd.amount_fen <= 0 or type(cmd.amount_fen) is not int:
            return self._reject(cmd, R.INVALID_AMOUNT, ref, out)
        done = self.withdrawals.get((owner, ref))
        if done is not None:
            if (done.account, done.amount_fen) != (cmd.account, cmd.amount_fen):
                return self._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
            out.append(WithdrawalRequested(0, done.ts_ns, owner, done.account, done.amount_fen, ref, done.pending_id))
            return None
        if cmd.account == FundsAccount.POVERTY_SUBSIDY_FUND:
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        reason = self._funds_owner_reason(cmd.account, owner)
        if reason is not None:
            return self._reject(cmd, reason, ref, out)
        if not self.participants[owner].bank_verified:
            return self._reject(cmd, R.BANK_ACCOUNT_NOT_VERIFIED, ref, out)
        if self._balance(FUNDS_CODE[cmd.account], owner) < cmd.amount_fen:
            return self._reject(cmd, R.INSUFFICIENT_FUNDS, ref, out)
        account_id = self._funds_account_id(cmd.account, owner, cmd.ts_ns)
        tid = self._next_tid()
        self._commit_one(Transfer(tid, account_id, _BANK, cmd.amount_fen, TC.WITHDRAWAL, 0, _PENDING), cmd.ts_ns)
        self.withdrawals[(owner, ref)] = Withdrawal(owner, ref, cmd.account, cmd.amount_fen, tid, cmd.ts_ns)
        out.append(WithdrawalRequested(0, cmd.ts_ns, owner, cmd.account, cmd.amount_fen, ref, tid))
        return None

    def _confirm_withdrawal(self, cmd: ConfirmWithdrawal, out: list) -> None:
        ref = cmd.withdrawal_ref
        if not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        w = self.withdrawals.get((cmd.owner_id, ref))
        if w is None:
            return self._reject(cmd, R.UNKNOWN_REFERENCE, ref, out)
        outcome = WithdrawalState.PAID if cmd.ok else WithdrawalState.FAILED
        if w.state != WithdrawalState.PENDING:
            if (w.state, w.bank_ref) != (outcome, cmd.bank_ref):
                return self._reject(cmd, R.INVALID_PAYOUT_STATE, ref, out)
        else:
            flag, code = (_POST, TC.WITHDRAWAL) if cmd.ok else (_VOID, TC.WITHDRAWAL)
            self._commit_one(Transfer(self._next_tid(), 0, 0, 0, code, 0, flag, w.pending_id), cmd.ts_ns)
            w.state, w.bank_ref = outcome, cmd.bank_ref
            self._final_at(cmd.ts_ns, FinalKind.WITHDRAWAL, (w.owner_id, ref))
        out.append(WithdrawalCompleted(0, cmd.ts_ns, w.owner_id, ref, w.amount_fen, cmd.ok, w.bank_ref))
        return None

    # ------------------------------------------------------------------------- delivery and disputes

    def _trade_for(self, cmd: object, trade_id: int, out: list) -> TradeRecord | None:
        trade = self.trades.get(trade_id)
        if trade is None:
            self._reject(cmd, R.UNKNOWN_TRADE, f"T{trade_id}", out)
        return trade

    def _record_weigh_in(self, cmd: RecordWeighIn, out: list) -> None:
        # The command, the trade and the terms read as one tuple each (field order checked at import); ids,
        # weights and amounts pass on as the objects they came as (Boxed), each new sum boxed once.
        # (participant_id, ts_ns, trade_id, heads_delivered, total_weight_g, quarantine_cert, quarantine_checked,
        # heads_refused, unfasted)
        c = _astuple(cmd)
        trade = self.trades.get(c[2])
        if trade is None:
            return self._reject(cmd, R.UNKNOWN_TRADE, f"T{c[2]}", out)
        # (trade_id, instrument, buyer_id, seller_id, lot_id, buy_order_id, heads, price_fen, obligation_fen,
        # source_account_id, financier_id, traded_at_ns, state, ...)
        t = _astuple(trade)
        instrument: Boxed = t[1]
        spec = self.instruments[instrument]
        terms = self._weigh_in_terms(c, t, spec)
        if not isinstance(terms, DeliveryTerms):
            return self._reject(cmd, terms, f"T{c[2]}", out, instrument)
        ts_ns: Boxed = c[1]
        trade_id: Boxed = t[0]
        heads: Boxed = c[3]
        weight_g: Boxed = c[4]
        refused_heads: Boxed = c[7]
        # (avg_weight_g, grade, discount_fen_per_kg, amount_fen, shrink_g)
        avg_g, grade, discount, amount, shrink = _astuple(terms)
        amount_n: int = amount
        obligation_n: int = t[8]
        refund: Boxed = obligation_n - amount_n  # boxed once: the transfer, the record and the event
        seller_id: Boxed = t[3]
        receivable: Boxed = self._receivable_accounts.get(seller_id)  # accounts[(_RECEIVABLE, seller_id, 0)]
        if receivable is None:
            receivable = self._account_id(_RECEIVABLE, seller_id, 0, ts_ns)
        # The chain of two legs, written out (as _Chain would make it, without its calls): the amount to the
        # seller's receivable, the rest back to the buyer's source, a leg of 0 left out. Both are >= 0 and
        # not both 0: the amount is at most the obligation, which is positive (_on_trade).
        counters = self.counters
        tid: Boxed = counters.next_transfer_id
        if amount_n and refund:
            refund_id: Boxed = tid + 1
            counters.next_transfer_id = refund_id + 1
            chain = [_TRANSFER(tid, _ESCROW, receivable, amount, _TC_SETTLEMENT, trade_id, _LINKED),
                     _TRANSFER(refund_id, _ESCROW, t[9], refund, _TC_ADJUSTMENT, trade_id, _ZERO)]
            results = self.ledger.create_transfers(chain, ts_ns)
            if results.count(_OK) != 2:
                _refused_chain(chain, results)
        else:
            counters.next_transfer_id = tid + 1
            leg = _TRANSFER(tid, _ESCROW, receivable, amount, _TC_SETTLEMENT, trade_id, _ZERO) if amount_n else \
                _TRANSFER(tid, _ESCROW, t[9], refund, _TC_ADJUSTMENT, trade_id, _ZERO)
            result = self.ledger.create_transfer(leg, ts_ns)
            if result is not _OK:
                _refused(leg, result)
        until_ns: Boxed = ts_ns + spec.dispute_window_ns  # boxed once: the record, the deadline, the event
        trade.state = _DELIVERED
        trade.heads_delivered, trade.total_weight_g = heads, weight_g
        trade.heads_refused, trade.shrink_g = refused_heads, shrink
        trade.avg_weight_g, trade.grade = avg_g, grade
        trade.discount_fen_per_kg = discount
        cert: str = c[5]  # a str: compiled, strip is a native call
        trade.quarantine_cert = cert.strip()
        trade.amount_fen, trade.refund_fen = amount, refund
        trade.delivered_at_ns = ts_ns
        trade.dispute_until_ns = until_ns
        self._add_deadline(until_ns, trade_id)
        out.append(_DELIVERY_RECORDED(_ZERO, ts_ns, trade_id, heads, weight_g, avg_g, grade, discount, amount,
                                      refund, until_ns, refused_heads, shrink))
        return None

    def _weigh_in_terms(self, c: tuple, t: tuple, spec: InstrumentSpec) -> DeliveryTerms | R:
        """The terms of this weigh-in (``c``: the RecordWeighIn's fields) of a known trade (``t``: its
        record's fields), or why it must be rejected (checked in this order; the terms are computed once,
        for the last check and the amount). The certificate: checked and named, then (an instrument
        whose ``quarantine_region`` checks it) of the region's shape and the lot's own."""
        participant_id: Boxed = c[0]
        if participant_id != t[3] and not self._is_operator(participant_id):
            return R.NOT_AUTHORIZED
        if t[12] != _OPEN:
            return R.INVALID_TRADE_STATE
        cert: str = c[5]  # a str: compiled, strip is a native call
        if not c[6] or not cert.strip():
            return R.QUARANTINE_NOT_CHECKED
        region = spec.quarantine_region
        if region != _UNCHECKED_CERTS:
            if not rules.quarantine_cert_ok(region, cert):
                return R.INVALID_QUARANTINE_CERT
            lot = self.lots.get(t[4])
            if lot is None or not rules.same_quarantine_cert(lot.quarantine_cert, cert):
                return R.QUARANTINE_CERT_MISMATCH
        heads: Boxed = c[3]
        weight_g: Boxed = c[4]
        refused: Boxed = c[7]
        heads_traded: Boxed = t[6]
        if not _valid_delivery(heads_traded, heads, weight_g, refused):
            return R.INVALID_DELIVERY
        cap: Boxed = t[8] if not refused else rules.payable_cap_fen(t[8], heads_traded, refused)
        terms = rules.priced_delivery_terms(spec, t[7], cap, heads, weight_g, c[8])
        if terms is None:
            return R.INVALID_DELIVERY  # its discount would take the whole price: refused, never paid as 0
        return terms

    def _open_dispute(self, cmd: OpenDispute, out: list) -> None:
        ref = f"T{cmd.trade_id}"
        trade = self._trade_for(cmd, cmd.trade_id, out)
        if trade is None:
            return None
        if cmd.participant_id not in (trade.buyer_id, trade.seller_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out, trade.instrument)
        if trade.state != TradeState.DELIVERED:
            return self._reject(cmd, R.INVALID_TRADE_STATE, ref, out, trade.instrument)
        if cmd.ts_ns >= trade.dispute_until_ns:
            return self._reject(cmd, R.DISPUTE_WINDOW_CLOSED, ref, out, trade.instrument)
        trade.state = TradeState.DISPUTED
        trade.disputed_by, trade.dispute_reason = cmd.participant_id, cmd.reason[:500]
        if cmd.participant_id == trade.seller_id:
            self._hold_raise(trade, cmd.ts_ns)
        out.append(DisputeOpened(0, cmd.ts_ns, trade.trade_id, cmd.participant_id, trade.dispute_reason,
                                 trade.raise_held_fen))
        return None

    def _hold_raise(self, trade: TradeRecord, ts_ns: int) -> None:
        """A seller's dispute: hold what a raise may cost the buyer, ``rules.dispute_raise_limit_fen`` of the
        weigh-in amount, on the trade's own source (its cash, or the credit line that funded it while the
        buyer still consents to that financier), as far as it has it available: the dispute never waits
        for the buyer's money, and the resolution may raise by at most what is held (possibly 0). A
        pending transfer source -> SELLER_RECEIVABLE, posted in part by a raise, else voided."""
        limit = rules.dispute_raise_limit_fen(trade.amount_fen)
        source = trade.source_account_id
        usable = not trade.financier_id or self.has_consented(trade.buyer_id, trade.financier_id)
        held = min(limit, self.ledger.available_fen(source)) if usable else 0
        if held <= 0:
            return
        tid = self._next_tid()
        receivable = self._receivable_accounts[trade.seller_id]
        self._commit_one(Transfer(tid, source, receivable, held, TC.DELIVERY_ADJUSTMENT, trade.trade_id, _PENDING),
                         ts_ns)
        trade.raise_pending_id, trade.raise_held_fen = tid, held

    def _end_raise_hold(self, trade: TradeRecord, raise_fen: int, ts_ns: int) -> None:
        """Post ``raise_fen`` of a seller's dispute hold to the seller's receivable (the rest is released),
        or void it for 0; nothing if nothing was held."""
        if not trade.raise_pending_id:
            return
        flag = _POST if raise_fen else _VOID
        self._commit_one(Transfer(self._next_tid(), 0, 0, raise_fen, TC.DELIVERY_ADJUSTMENT, trade.trade_id, flag,
                                  trade.raise_pending_id), ts_ns)
        trade.raise_pending_id = 0
        trade.amount_fen += raise_fen
        trade.raised_fen = raise_fen

    def _resolve_dispute(self, cmd: ResolveDispute, out: list) -> None:
        """The operator's decision: 0 .. the weigh-in amount, lowered ones returning the difference to the
        buyer, or for a seller's dispute up to the amount plus what was held, the raise posted from the
        hold to the seller's receivable (the rest of the hold released). The trade settles at once."""
        ref = f"T{cmd.trade_id}"
        if not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        trade = self._trade_for(cmd, cmd.trade_id, out)
        if trade is None:
            return None
        if trade.state != TradeState.DISPUTED:
            return self._reject(cmd, R.INVALID_TRADE_STATE, ref, out, trade.instrument)
        weighed = trade.amount_fen
        if type(cmd.amount_fen) is not int or not 0 <= cmd.amount_fen <= weighed + trade.raise_held_fen:
            return self._reject(cmd, R.INVALID_AMOUNT, ref, out, trade.instrument)
        raise_fen = max(cmd.amount_fen - weighed, 0)
        self._end_raise_hold(trade, raise_fen, cmd.ts_ns)
        if not raise_fen:
            self._refund_from_receivable(trade, weighed - cmd.amount_fen, cmd.ts_ns)
        out.append(DeliveryResolved(0, cmd.ts_ns, trade.trade_id, trade.amount_fen, trade.refund_fen, False,
                                    cmd.participant_id, raise_fen))
        self._settle(trade, cmd.ts_ns, out)
        return None

    def _reject_delivery(self, cmd: RejectDelivery, out: list) -> None:
        ref = f"T{cmd.trade_id}"
        trade = self._trade_for(cmd, cmd.trade_id, out)
        if trade is None:
            return None
        if cmd.participant_id != trade.buyer_id:
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out, trade.instrument)
        if trade.state not in (TradeState.DELIVERED, TradeState.DISPUTED):
            return self._reject(cmd, R.INVALID_TRADE_STATE, ref, out, trade.instrument)
        if trade.grade != DeliveryGrade.OUT_OF_GRADE:
            return self._reject(cmd, R.DELIVERY_NOT_REJECTABLE, ref, out, trade.instrument)
        if cmd.ts_ns >= trade.dispute_until_ns:
            return self._reject(cmd, R.DISPUTE_WINDOW_CLOSED, ref, out, trade.instrument)
        self._end_raise_hold(trade, 0, cmd.ts_ns)  # a seller's dispute ends with the rejection: released
        self._refund_from_receivable(trade, trade.amount_fen, cmd.ts_ns)
        trade.state = TradeState.REJECTED
        trade.settled_at_ns = cmd.ts_ns
        self._final_at(cmd.ts_ns, FinalKind.TRADE, trade.trade_id)
        self._trade_closed(trade.lot_id)
        out.append(DeliveryResolved(0, cmd.ts_ns, trade.trade_id, 0, trade.refund_fen, True, cmd.participant_id, 0,
                                    self._trade_facts(_astuple(trade))))
        return None

    def _refund_from_receivable(self, trade: TradeRecord, refund_fen: int, ts_ns: int) -> None:
        chain = _Chain(self)
        receivable = self.accounts[(AC.SELLER_RECEIVABLE, trade.seller_id, 0)]
        chain.add(receivable, trade.source_account_id, refund_fen, TC.DELIVERY_ADJUSTMENT, trade.trade_id)
        chain.commit(ts_ns)
        trade.amount_fen -= refund_fen
        trade.refund_fen += refund_fen

    # ------------------------------------------------------------------------------------- settlement

    def _settle(self, trade: TradeRecord, ts_ns: Boxed, out: list) -> None:
        """Pay the trade's amount out of the seller's receivable: fee, advances, payable, split."""
        t = _astuple(trade)  # the fields read before anything changes the record (positions checked at import)
        seller: Boxed = t[3]
        amount: int = t[23]
        tid: Boxed = t[0]
        financier_id: Boxed = t[10]
        who = self.participants.get(seller)
        poor = who is not None and who.poor_verified  # _is_poor, with the participant in hand
        # a cooperative with members to split its proceeds to, else None
        coop = who if who is not None and who.role == _COOPERATIVE and who.member_ids else None
        advances = self._seller_advances(trade) if seller in self._loans_by_borrower else ()
        if advances or (financier_id and amount):
            day = rules.cst_day(ts_ns)
            for loan in advances:  # interest up to today's midnight first; a poor household's from the fund
                self._bring_interest_up_to(loan, day, ts_ns, out, tid)
            if financier_id and amount:
                self._draw_credit_line(trade, day, ts_ns, out)
        receivable: Boxed = self._receivable_accounts[seller]  # accounts[(_RECEIVABLE, seller, 0)]
        chain = _Chain(self)
        fee = rules.fee_fen(amount, self.fee_bps.get(t[1], 0))
        waivers = self._poor_member_waivers(coop, fee) if coop is not None and fee else ()
        waived = fee if poor else sum(waivers) if waivers else 0
        if waived:
            trade.fee_subsidy_fen = subsidy = min(waived, self.ledger.available_fen(_SUBSIDY))
            trade.fee_forgone_fen = waived - subsidy
            chain.add(_SUBSIDY, _FEES, subsidy, _TC_FEE_SUBSIDY, tid)
        charged: Boxed = fee - waived  # boxed once: the record and the leg
        trade.fee_fen = charged
        chain.add(receivable, _FEES, charged, _TC_FEE, tid)
        # a poor household keeps its whole amount; a cooperative's poor members' waivers are kept apart
        # from its advances and reach those members in the split
        left = amount if poor else amount - fee
        repaid: list[tuple[Loan, int, int]] = []
        for loan in advances:
            interest = 0 if poor else min(loan.interest_due_fen, left)
            principal = min(loan.principal_fen, left - interest)
            left -= interest + principal
            self._repayment_legs(chain, loan, receivable, interest, principal, tid, ts_ns)
            repaid.append((loan, interest, principal))
        payable: Boxed = self._payable_accounts.get(seller)
        if payable is None:
            payable = self._account_id(_PAYABLE, seller, 0, ts_ns)
        net: Boxed = left + (0 if poor else waived)  # boxed once: the leg, the record, the event
        chain.add(receivable, payable, net, _TC_SETTLEMENT, tid)
        splits = self._split_legs(chain, trade, coop, payable, left, waivers, ts_ns) if coop is not None else []
        chain.commit(ts_ns)
        self._after_settlement(trade, net, splits, repaid, ts_ns, out)

    def _seller_advances(self, trade: TradeRecord) -> list[Loan]:
        """The seller's open advances: the trade's own first, then by loan id."""
        loan_ids = self._loans_by_borrower.get(trade.seller_id)
        if not loan_ids:
            return []
        loans = [self.loans[i] for i in loan_ids]
        advances = [loan for loan in loans if loan.kind == _ADVANCE and loan.is_open]
        advances.sort(key=lambda loan: (loan.loan_id != trade.advance_loan_id, loan.loan_id))
        return advances

    def _repayment_legs(
        self, chain: _Chain, loan: Loan, payer: int, interest: int, principal: int, ref: int, ts_ns: int
    ) -> None:
        """Cash from ``payer`` to the financier's funds, and the claims closed by as much."""
        funds = self._account_id(AC.FINANCIER_FUNDS, loan.financier_id, 0, ts_ns)
        if interest:
            chain.add(payer, funds, interest, TC.INTEREST_PAYMENT, ref)
            self._close_interest_claim(chain, loan, interest, TC.INTEREST_PAYMENT, ts_ns)
        if principal:
            chain.add(payer, funds, principal, TC.REPAYMENT, ref)
            self._close_principal_claim(chain, loan, principal, TC.REPAYMENT, ts_ns)

    def _close_interest_claim(self, chain: _Chain, loan: Loan, amount_fen: int, code: int, ts_ns: int) -> None:
        """The financier's claim to ``amount_fen`` of the loan's interest ends: paid (``code``
        INTEREST_PAYMENT: the income stays earned, INTEREST_COLLECTED records it received) or written off
        (the income that will never be received is reversed)."""
        fin = loan.financier_id
        contra = AC.INTEREST_COLLECTED if code == TC.INTEREST_PAYMENT else AC.INTEREST_INCOME
        chain.add(self._account_id(contra, fin, 0, ts_ns),
                  self._account_id(AC.INTEREST_RECEIVABLE, fin, loan.borrower_id, ts_ns),
                  amount_fen, code, loan.loan_id)

    def _close_principal_claim(self, chain: _Chain, loan: Loan, amount_fen: int, code: int, ts_ns: int) -> None:
        """The financier's claim to ``amount_fen`` of the loan's principal ends (repaid or written off)."""
        fin, borrower = loan.financier_id, loan.borrower_id
        chain.add(self._account_id(AC.LOANS_FUNDED, fin, borrower, ts_ns),
                  self._account_id(AC.LOANS_RECEIVABLE, fin, borrower, ts_ns),
                  amount_fen, code, loan.loan_id)

    def _poor_member_waivers(self, coop: Participant, fee_fen: int) -> tuple[int, ...]:
        """The fee waived for each member of ``coop`` (rules.poor_member_fee_waivers_fen), in member order."""
        poor = tuple(self._is_poor(m) for m in coop.member_ids)
        return rules.poor_member_fee_waivers_fen(fee_fen, tuple(coop.shares_bps), poor) if any(poor) else ()

    def _split_legs(
        self, chain: _Chain, trade: TradeRecord, coop: Participant, payable: int, net_fen: int,
        waivers: tuple[int, ...], ts_ns: int,
    ) -> list[tuple[int, int]]:
        """Each member's part of ``net_fen`` (after the whole fee and the advances), plus the fee waived
        for it, from the cooperative's payable."""
        parts = rules.cooperative_split_fen(net_fen, tuple(coop.shares_bps))
        if waivers:
            parts = tuple(part + waiver for part, waiver in zip(parts, waivers, strict=True))
        splits = list(zip(coop.member_ids, parts, strict=True))
        for member_id, part in splits:
            member_payable = self._account_id(_PAYABLE, member_id, 0, ts_ns)
            chain.add(payable, member_payable, part, _TC_SPLIT, trade.trade_id)
        return splits

    def _after_settlement(
        self, trade: TradeRecord, net_fen: Boxed, splits: list[tuple[int, int]], repaid: list[tuple[Loan, int, int]],
        ts_ns: Boxed, out: list,
    ) -> None:
        for loan, interest, principal in repaid:
            self._loan_repaid(loan, interest, principal, LoanPayer.BORROWER, trade.trade_id, ts_ns, out)
            trade.interest_paid_fen += interest
            trade.principal_repaid_fen += principal
        t = _astuple(trade)  # the fields the event reads, as one tuple (positions checked at import)
        tid: Boxed = t[0]
        seller: Boxed = t[3]
        trade.payable_fen = net_fen
        trade.state = _SETTLED
        trade.settled_at_ns = ts_ns
        self.final.append((ts_ns, _FINAL_TRADE, tid))
        self._trade_closed(t[4])
        kept_fen: Boxed = net_fen - sum(part for _, part in splits) if splits else net_fen
        if kept_fen:  # _credit_payable, inline: once per settlement
            fifo = self.payables.get(seller)
            if fifo is None:
                self.payables[seller] = fifo = []
            fifo.append(_PAYABLE_SOURCE(_FROM_TRADE, tid, kept_fen))
        # (amount, fee, fee subsidy, fee forgone, interest paid, principal repaid)
        out.append(_TRADE_SETTLED(_ZERO, ts_ns, tid, seller, t[23], t[27], t[28], t[29], t[30], t[31], net_fen,
                                  self._trade_facts(t)))
        for member_id, part in splits:
            self._credit_payable(member_id, _FROM_SPLIT, tid, part)
            out.append(CooperativeSplitPaid(0, ts_ns, tid, seller, member_id, part, self._is_poor(member_id)))

    def _trade_facts(self, t: tuple) -> TradeFacts:
        """What the report states of a trade (read as one tuple, positions checked at import) as it is now,
        carried on the event that settles or rejects it."""
        advance = self.loans.get(t[25]) if t[25] else None
        return TradeFacts(t[1], t[2], t[3], t[6], t[7], t[8], t[10], t[13], t[14], t[15], t[16], t[17], t[24],
                          t[25], 0 if advance is None else advance.financier_id, self._is_poor(t[3]), t[33], t[34],
                          t[37])

    def _loan_repaid(
        self, loan: Loan, interest: int, principal: int, payer: LoanPayer, ref: int, ts_ns: int, out: list
    ) -> None:
        if not interest and not principal:
            return
        loan.interest_due_fen -= interest
        loan.principal_fen -= principal
        loan.principal_repaid_fen += principal
        if payer == LoanPayer.SUBSIDY_FUND:
            loan.interest_subsidised_fen += interest
        else:
            loan.interest_paid_fen += interest
        out.append(LoanRepaid(0, ts_ns, loan.loan_id, loan.financier_id, loan.borrower_id, principal, interest,
                              payer, ref))

    # -------------------------------------------------------------------------------------- financing

    def _accrue(self, loan: Loan, day: int, ts_ns: int, out: list) -> None:
        """Charge the interest of every midnight since the loan's last accrual, on today's principal
        (callers accrue before every change of principal, so it is the principal of those midnights)."""
        days = day - loan.accrued_day
        if days <= 0:
            return
        loan.accrued_day = day
        interest, loan.carry = rules.accrue_interest(loan.principal_fen, loan.rate_bps, days, loan.carry)
        if not interest:
            return
        fin = loan.financier_id
        chain = _Chain(self)
        chain.add(self._account_id(AC.INTEREST_RECEIVABLE, fin, loan.borrower_id, ts_ns),
                  self._account_id(AC.INTEREST_INCOME, fin, 0, ts_ns), interest, TC.INTEREST_ACCRUAL, loan.loan_id)
        chain.commit(ts_ns)
        loan.interest_due_fen += interest
        loan.interest_accrued_fen += interest
        out.append(InterestAccrued(0, ts_ns, loan.loan_id, fin, loan.borrower_id, day, days, interest))

    def _bring_interest_up_to(self, loan: Loan, day: int, ts_ns: int, out: list, ref: int) -> None:
        """Interest accrued through ``day``, and a poor household's paid by the subsidy fund as far as it
        reaches (``_interest_left_after_subsidy`` says what this leaves, without doing it)."""
        self._accrue(loan, day, ts_ns, out)
        self._collect_subsidised_interest(loan, ts_ns, out, ref)

    def _collect_subsidised_interest(self, loan: Loan, ts_ns: int, out: list, ref: int) -> None:
        """A poor household's accrued interest, paid by the subsidy fund as far as the fund reaches."""
        if not loan.interest_due_fen or loan.kind != LoanKind.ADVANCE or not self._is_poor(loan.borrower_id):
            return
        interest = min(loan.interest_due_fen, self._balance(AC.POVERTY_SUBSIDY_FUND))
        if not interest:
            return
        chain = _Chain(self)
        self._repayment_legs(chain, loan, _SUBSIDY, interest, 0, loan.loan_id, ts_ns)
        chain.commit(ts_ns)
        self._loan_repaid(loan, interest, 0, LoanPayer.SUBSIDY_FUND, ref, ts_ns, out)

    def _new_loan(self, kind: LoanKind, financier_id: int, borrower_id: int, trade_id: int, rate_bps: int,
                  ts_ns: int) -> Loan:
        loan_id = self.counters.next_loan_id
        self.counters.next_loan_id = loan_id + 1
        loan = Loan(loan_id, kind, financier_id, borrower_id, trade_id, rate_bps, rules.cst_day(ts_ns))
        self.loans[loan_id] = loan
        self._loans_by_borrower.setdefault(borrower_id, []).append(loan_id)
        return loan

    def _lend_legs(self, chain: _Chain, loan: Loan, amount_fen: int, code: int, ts_ns: int) -> None:
        fin, borrower = loan.financier_id, loan.borrower_id
        chain.add(self._account_id(AC.LOANS_RECEIVABLE, fin, borrower, ts_ns),
                  self._account_id(AC.LOANS_FUNDED, fin, borrower, ts_ns), amount_fen, code, loan.loan_id)

    def _draw_credit_line(self, trade: TradeRecord, day: int, ts_ns: int, out: list) -> None:
        """A credit-funded trade settles: the financier's money paid the seller; the buyer owes it."""
        line = self.credit_lines[(trade.buyer_id, trade.financier_id)]
        loan = self.loans[line.loan_id]
        self._accrue(loan, day, ts_ns, out)
        chain = _Chain(self)
        self._lend_legs(chain, loan, trade.amount_fen, TC.CREDIT_LINE_DRAW, ts_ns)
        chain.commit(ts_ns)
        loan.principal_fen += trade.amount_fen
        loan.lent_fen += trade.amount_fen
        out.append(LoanDrawn(0, ts_ns, loan.loan_id, loan.financier_id, loan.borrower_id, trade.trade_id,
                             trade.amount_fen))

    def _financier_reason(self, cmd: object, borrower_id: int, amount_fen: int, rate_bps: int | None) -> R | None:
        financier_id = cmd.participant_id  # type: ignore[attr-defined]
        if not self._has_role(financier_id, (ROLE.FINANCIER,)):
            return R.NOT_AUTHORIZED
        if not self._has_role(borrower_id, TRADING_ROLES):
            return R.UNKNOWN_PARTICIPANT
        if not self.has_consented(borrower_id, financier_id):
            return R.NO_CONSENT
        if type(amount_fen) is not int or amount_fen <= 0:
            return R.INVALID_AMOUNT
        if rate_bps is not None and not 0 <= rate_bps <= MAX_RATE_BPS:
            return R.INVALID_SETTINGS
        return None

    def _grant_credit_line(self, cmd: GrantCreditLine, out: list) -> None:
        ref, fin = f"L{cmd.buyer_id}", cmd.participant_id
        reason = self._financier_reason(cmd, cmd.buyer_id, cmd.amount_fen, cmd.rate_bps)
        if reason is None and self._balance(AC.FINANCIER_FUNDS, fin) < cmd.amount_fen:
            reason = R.INSUFFICIENT_FUNDS
        if reason is not None:
            return self._reject(cmd, reason, ref, out)
        line = self.credit_lines.get((cmd.buyer_id, fin))
        if line is None:
            loan = self._new_loan(LoanKind.CREDIT_LINE, fin, cmd.buyer_id, 0, cmd.rate_bps, cmd.ts_ns)
            account_id = self._account_id(AC.BUYER_CREDIT_LINE, cmd.buyer_id, fin, cmd.ts_ns)
            line = CreditLine(fin, cmd.buyer_id, account_id, loan.loan_id)
            self.credit_lines[(cmd.buyer_id, fin)] = line
            lines = self._lines_by_buyer.setdefault(cmd.buyer_id, [])
            lines.append(line)
            lines.sort(key=lambda x: x.financier_id)
        loan = self.loans[line.loan_id]
        self._accrue(loan, rules.cst_day(cmd.ts_ns), cmd.ts_ns, out)  # the old rate up to today
        loan.rate_bps = cmd.rate_bps
        chain = _Chain(self)
        chain.add(self._account_id(AC.FINANCIER_FUNDS, fin, 0, cmd.ts_ns), line.account_id, cmd.amount_fen,
                  TC.CREDIT_LINE_GRANT, cmd.buyer_id)
        chain.commit(cmd.ts_ns)
        line.granted_fen += cmd.amount_fen
        out.append(CreditLineChanged(0, cmd.ts_ns, fin, cmd.buyer_id, cmd.rate_bps, cmd.amount_fen,
                                     self.ledger.available_fen(line.account_id)))
        return None

    def _reduce_credit_line(self, cmd: ReduceCreditLine, out: list) -> None:
        ref, fin = f"L{cmd.buyer_id}", cmd.participant_id
        line = self.credit_lines.get((cmd.buyer_id, fin))
        if not self._has_role(fin, (ROLE.FINANCIER,)):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        if line is None:
            return self._reject(cmd, R.UNKNOWN_REFERENCE, ref, out)
        if type(cmd.amount_fen) is not int or cmd.amount_fen <= 0:
            return self._reject(cmd, R.INVALID_AMOUNT, ref, out)
        if self.ledger.available_fen(line.account_id) < cmd.amount_fen:
            return self._reject(cmd, R.INSUFFICIENT_FUNDS, ref, out)
        chain = _Chain(self)
        chain.add(line.account_id, self.accounts[(AC.FINANCIER_FUNDS, fin, 0)], cmd.amount_fen,
                  TC.CREDIT_LINE_REDUCE, cmd.buyer_id)
        chain.commit(cmd.ts_ns)
        line.reduced_fen += cmd.amount_fen
        out.append(CreditLineChanged(0, cmd.ts_ns, fin, cmd.buyer_id, self.loans[line.loan_id].rate_bps,
                                     -cmd.amount_fen, self.ledger.available_fen(line.account_id)))
        return None

    def advance_limit_fen(self, trade: TradeRecord) -> int:
        """The most a financier may advance on this trade (policy share of its estimated value)."""
        spec = self.instruments[trade.instrument]
        lot = self.lots.get(trade.lot_id)
        declared_g = lot.avg_weight_g if lot is not None else spec.lot_avg_min_g
        estimated = rules.estimated_value_fen(spec, trade.price_fen, trade.heads, declared_g)
        return rules.advance_limit_fen(estimated, self.counters.advance_max_bps)

    def _grant_advance(self, cmd: GrantAdvance, out: list) -> None:
        ref, fin = f"T{cmd.trade_id}", cmd.participant_id
        trade = self._trade_for(cmd, cmd.trade_id, out)
        if trade is None:
            return None
        if trade.advance_loan_id:
            loan = self.loans[trade.advance_loan_id]
            if (loan.financier_id, loan.lent_fen, loan.rate_bps) != (fin, cmd.amount_fen, cmd.rate_bps):
                return self._reject(cmd, R.DUPLICATE_REFERENCE, ref, out, trade.instrument)
            out.append(AdvanceGranted(0, cmd.ts_ns, loan.loan_id, fin, loan.borrower_id, trade.trade_id,
                                      loan.lent_fen, loan.rate_bps))
            return None
        reason = self._financier_reason(cmd, trade.seller_id, cmd.amount_fen, cmd.rate_bps)
        if reason is None and trade.state != TradeState.OPEN:
            reason = R.INVALID_TRADE_STATE
        if reason is None and cmd.amount_fen > self.advance_limit_fen(trade):
            reason = R.ADVANCE_TOO_LARGE
        if reason is None and self._balance(AC.FINANCIER_FUNDS, fin) < cmd.amount_fen:
            reason = R.INSUFFICIENT_FUNDS
        if reason is not None:
            return self._reject(cmd, reason, ref, out, trade.instrument)
        loan = self._new_loan(LoanKind.ADVANCE, fin, trade.seller_id, trade.trade_id, cmd.rate_bps, cmd.ts_ns)
        chain = _Chain(self)
        chain.add(self.accounts[(AC.FINANCIER_FUNDS, fin, 0)],
                  self._account_id(AC.FARMER_PAYABLE, trade.seller_id, 0, cmd.ts_ns),
                  cmd.amount_fen, TC.ADVANCE, loan.loan_id)
        self._lend_legs(chain, loan, cmd.amount_fen, TC.ADVANCE, cmd.ts_ns)
        chain.commit(cmd.ts_ns)
        loan.principal_fen = loan.lent_fen = cmd.amount_fen
        trade.advance_loan_id = loan.loan_id
        self._credit_payable(trade.seller_id, SourceKind.ADVANCE, loan.loan_id, cmd.amount_fen)
        out.append(AdvanceGranted(0, cmd.ts_ns, loan.loan_id, fin, trade.seller_id, trade.trade_id, cmd.amount_fen,
                                  cmd.rate_bps))
        return None

    def borrower_owes_fen(self, borrower_id: int, financier_id: int, day: int) -> int:
        """What the borrower itself owes this financier on CST ``day``: principal, and the interest
        accrued through that day's midnight unless the subsidy fund pays it (a poor household's advances)."""
        total = 0
        for loan in self._open_loans(borrower_id, financier_id):
            total += loan.principal_fen + self._borrower_interest(loan, day)
        return total

    def _borrower_interest(self, loan: Loan, day: int) -> int:
        if loan.kind == LoanKind.ADVANCE and self._is_poor(loan.borrower_id):
            return 0
        return loan.interest_due_fen + _interest_since(loan, day)

    def _interest_left_after_subsidy(self, loan: Loan, day: int) -> int:
        """The interest due once accrued through ``day`` and, for a poor household's advance, paid by the
        subsidy fund as far as it reaches, as ``_bring_interest_up_to`` would leave it, without doing it."""
        interest = loan.interest_due_fen + _interest_since(loan, day)
        if loan.kind == LoanKind.ADVANCE and self._is_poor(loan.borrower_id):
            interest -= min(interest, self._balance(AC.POVERTY_SUBSIDY_FUND))
        return interest

    def _open_loans(self, borrower_id: int, financier_id: int) -> list[Loan]:
        loans = (self.loans[i] for i in self._loans_by_borrower.get(borrower_id, ()))
        return [loan for loan in loans if loan.financier_id == financier_id and loan.is_open]

    def _repay_loan(self, cmd: RepayLoan, out: list) -> None:
        """Borrower: repay ``amount_fen`` to a financier over its loans by loan id, interest first;
        credit-line loans from the borrower's cash, advances from its payable."""
        ref, borrower, fin = cmd.repayment_ref or f"F{cmd.financier_id}", cmd.participant_id, cmd.financier_id
        if type(cmd.amount_fen) is not int or cmd.amount_fen <= 0 or len(cmd.repayment_ref) > MAX_REF_LEN:
            return self._reject(cmd, R.INVALID_AMOUNT, ref, out)
        done = self.repayments.get((borrower, cmd.repayment_ref)) if cmd.repayment_ref else None
        if done is not None:
            return self._retried_repayment(cmd, done, out)
        day = rules.cst_day(cmd.ts_ns)
        loans = self._open_loans(borrower, fin)
        # checked against the interest accrued through today, without accruing it yet: a rejected
        # command changes nothing
        if not loans or cmd.amount_fen > self.borrower_owes_fen(borrower, fin, day):
            return self._reject(cmd, R.INVALID_AMOUNT, ref, out)
        plan, need = self._repayment_plan(loans, cmd.amount_fen, day)
        for key, amount in need.items():
            if self._balance(*key) < amount:
                return self._reject(cmd, R.INSUFFICIENT_FUNDS, ref, out)
        for loan in loans:
            self._accrue(loan, day, cmd.ts_ns, out)
        chain = _Chain(self)
        for loan, interest, principal in plan:
            payer = self.accounts[_repayment_source(loan)]
            self._repayment_legs(chain, loan, payer, interest, principal, loan.loan_id, cmd.ts_ns)
        chain.commit(cmd.ts_ns)
        for loan, interest, principal in plan:
            if loan.kind == LoanKind.ADVANCE:
                self._take_payable(borrower, interest + principal)
            self._loan_repaid(loan, interest, principal, LoanPayer.BORROWER, 0, cmd.ts_ns, out)
        if cmd.repayment_ref:
            legs = [(loan.loan_id, principal, interest) for loan, interest, principal in plan]
            self.repayments[(borrower, cmd.repayment_ref)] = Repayment(
                borrower, cmd.repayment_ref, fin, cmd.amount_fen, cmd.ts_ns, legs)
            self._final_at(cmd.ts_ns, FinalKind.REPAYMENT, (borrower, cmd.repayment_ref))
        return None

    def _retried_repayment(self, cmd: RepayLoan, done: Repayment, out: list) -> None:
        """A retry of a repayment that took effect: its ``LoanRepaid`` events again, changing nothing
        (no accrual either), or DUPLICATE_REFERENCE if it is not the same repayment."""
        if (done.financier_id, done.amount_fen) != (cmd.financier_id, cmd.amount_fen):
            return self._reject(cmd, R.DUPLICATE_REFERENCE, cmd.repayment_ref, out)
        for loan_id, principal, interest in done.legs:
            out.append(LoanRepaid(0, done.ts_ns, loan_id, done.financier_id, done.borrower_id, principal, interest,
                                  LoanPayer.BORROWER, 0))
        return None

    def _repayment_plan(
        self, loans: list[Loan], amount_fen: int, day: int
    ) -> tuple[list[tuple[Loan, int, int]], dict[tuple[int, int, int], int]]:
        """(loan, interest, principal) to pay from each loan by loan id, interest first, and the total
        needed from each source account."""
        plan: list[tuple[Loan, int, int]] = []
        need: dict[tuple[int, int, int], int] = {}
        for loan in loans:
            interest = min(self._borrower_interest(loan, day), amount_fen)
            principal = min(loan.principal_fen, amount_fen - interest)
            amount_fen -= interest + principal
            if interest or principal:
                plan.append((loan, interest, principal))
                key = _repayment_source(loan)
                need[key] = need.get(key, 0) + interest + principal
        return plan, need

    def _write_off_loan(self, cmd: WriteOffLoan, out: list) -> None:
        """Financier: give up what is still owed on a loan of its own. Interest is accrued through today
        first (and a poor household's paid by the subsidy fund as far as it reaches, as on every tick),
        so the write-off is exactly the claim the financier held. Each claim closes against its contra
        (LOANS_FUNDED; INTEREST_INCOME, reversing income that will never be received): no cash moves,
        the loss is the lent cash that never returns to FINANCIER_FUNDS. A credit line itself is
        untouched: a later draw opens its loan again, so a financier that stops lending reduces the line
        too."""
        ref = f"L{cmd.loan_id}"
        loan = self.loans.get(cmd.loan_id) if type(cmd.loan_id) is int else None
        if loan is None or loan.financier_id != cmd.participant_id:
            return self._reject(cmd, R.UNKNOWN_LOAN, ref, out)
        day = rules.cst_day(cmd.ts_ns)
        if not loan.principal_fen and not self._interest_left_after_subsidy(loan, day):
            return self._reject(cmd, R.LOAN_CLOSED, ref, out)
        self._bring_interest_up_to(loan, day, cmd.ts_ns, out, 0)
        principal, interest = loan.principal_fen, loan.interest_due_fen
        chain = _Chain(self)
        if principal:
            self._close_principal_claim(chain, loan, principal, TC.LOAN_WRITE_OFF, cmd.ts_ns)
        if interest:
            self._close_interest_claim(chain, loan, interest, TC.LOAN_WRITE_OFF, cmd.ts_ns)
        chain.commit(cmd.ts_ns)
        loan.principal_fen = loan.interest_due_fen = loan.carry = 0
        loan.principal_written_off_fen += principal
        loan.interest_written_off_fen += interest
        out.append(LoanWrittenOff(0, cmd.ts_ns, loan.loan_id, loan.financier_id, loan.borrower_id, principal, interest,
                                  cmd.reason[:500]))
        return None

    def _set_financing_policy(self, cmd: SetFinancingPolicy, out: list) -> None:
        if not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, "", out)
        if not 0 <= cmd.advance_max_bps <= rules.BPS:
            return self._reject(cmd, R.INVALID_SETTINGS, "", out)
        self.counters.advance_max_bps = cmd.advance_max_bps
        out.append(FinancingPolicySet(0, cmd.ts_ns, cmd.advance_max_bps))
        return None

    def _set_fee_schedule(self, cmd: SetFeeSchedule, out: list) -> None:
        if not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, "", out, cmd.instrument)
        if cmd.instrument not in self.instruments:
            return self._reject(cmd, R.UNKNOWN_INSTRUMENT, "", out, cmd.instrument)
        if not 0 <= cmd.seller_fee_bps <= MAX_FEE_BPS:
            return self._reject(cmd, R.INVALID_SETTINGS, "", out, cmd.instrument)
        self.fee_bps[cmd.instrument] = cmd.seller_fee_bps
        out.append(FeeScheduleSet(0, cmd.ts_ns, cmd.instrument, cmd.seller_fee_bps))
        return None

    # ----------------------------------------------------------------------------------------- payouts

    def _payout_event(self, p: Payout, ts_ns: Boxed) -> PayoutChanged:
        # A payout's sources never change once it is made, so its trade ids are worked out once (a
        # derived lookup, not state: rebuilt empty on restore). The payout is read as one tuple (positions
        # checked at import): (payout_id, run_id, payee_id, amount_fen, priority, pending_id, bank_account,
        # sources, created_at_ns, state, attempt, file_ref, bank_ref, reason, updated_at_ns)
        f = _astuple(p)
        payout_id: Boxed = f[0]
        trade_ids = self._payout_trade_ids.get(payout_id)
        if trade_ids is None:
            trade_ids = self._payout_trade_ids[payout_id] = payout_trade_ids(f[7])
        return _PAYOUT_CHANGED(_ZERO, ts_ns, payout_id, f[1], f[2], f[9], f[10], f[3], f[4], f[12], f[13], trade_ids)

    def _run_payouts(self, cmd: RunPayouts, out: list) -> None:
        ref = cmd.run_ref
        if not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        if not 0 < len(ref) <= MAX_REF_LEN:
            return self._reject(cmd, R.INVALID_AMOUNT, ref, out)
        run = self.runs.get(ref)
        if run is not None:
            if run.poor_only != cmd.poor_only:
                return self._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
            out.append(PayoutRunCreated(0, run.ts_ns, run.run_id, ref, tuple(run.payout_ids), run.total_fen,
                                        tuple(run.skipped_ids)))
            return None
        run_id = self.counters.next_run_id
        self.counters.next_run_id = run_id + 1
        run = PayoutRun(run_id, ref, cmd.poor_only, cmd.ts_ns, [], [], 0)
        self.runs[ref] = run
        self._final_at(cmd.ts_ns, FinalKind.RUN, ref)
        for payee_id in self._payees(cmd.poor_only):
            who = self.participants.get(payee_id)
            if who is None or not who.bank_verified:
                run.skipped_ids.append(payee_id)
                continue
            payout = self._create_payout(run, who, cmd.ts_ns)
            out.append(self._payout_event(payout, cmd.ts_ns))
        out.append(PayoutRunCreated(0, cmd.ts_ns, run_id, ref, tuple(run.payout_ids), run.total_fen,
                                    tuple(run.skipped_ids)))
        return None

    def _payees(self, poor_only: bool) -> list[int]:
        """Payees with money payable: registered poor households first, then by participant id."""
        # Two lists of ids, each sorted: ints sort on list.sort's fast path, (not poor, id) pairs would not.
        # The ledger's method is called on the ledger (compiled: a native call; a bound method taken
        # once would be a generic Python call on every payee).
        poor: list[int] = []
        others: list[int] = []
        ledger = self.ledger
        for owner, account_id in self._payable_accounts.items():
            if ledger.available_fen(account_id) > 0:
                if self._is_poor(owner):
                    poor.append(owner)
                elif not poor_only:
                    others.append(owner)
        poor.sort()
        others.sort()
        return poor + others

    def _create_payout(self, run: PayoutRun, who: Participant, ts_ns: Boxed) -> Payout:
        # ids, amount and time pass on as objects (Boxed): compiled, each is boxed once at most
        payee_id: Boxed = who.participant_id
        payable: Boxed = self._payable_accounts[payee_id]  # accounts[(_PAYABLE, payee_id, 0)]
        amount: Boxed = self.ledger.available_fen(payable)
        counters = self.counters
        payout_id: Boxed = counters.next_payout_id
        counters.next_payout_id = payout_id + 1
        tid = self._next_tid()
        self._commit_one(_TRANSFER(tid, payable, _BANK, amount, _TC_PAYOUT, payout_id, _PENDING), ts_ns)
        priority = _SAME_DAY if who.poor_verified else _NORMAL
        sources = self._take_payable(payee_id, amount)
        # every field by position (a keyword call costs more): the defaults of state, attempt, file_ref,
        # bank_ref and reason, then updated_at_ns and the account's bank and branch codes
        bank_code, branch_code = self.bank_codes.get(payee_id, ("", ""))
        payout = _PAYOUT(payout_id, run.run_id, payee_id, amount, priority, tid, who.bank_account, sources,
                         ts_ns, _P_PENDING, 1, "", "", "", ts_ns, bank_code, branch_code)
        self.payouts[payout_id] = payout
        run.payout_ids.append(payout_id)
        run.total_fen += amount
        return payout

    def _mark_payouts_sent(self, cmd: MarkPayoutsSent, out: list) -> None:
        ref = cmd.file_ref
        if not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        # (payout id, attempt) pairs of the objects as they came (Boxed): compiled, none is boxed anew
        payouts: Boxed = cmd.payouts
        pairs = [(p[0], p[1]) for p in payouts]
        if not all(_id_range(p) for p in pairs):
            return self._reject(cmd, R.INVALID_AMOUNT, ref, out)
        sent = self.sent_files.get(ref)
        if sent is not None:
            if sent.payouts != pairs:
                return self._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
            for payout_id, _ in pairs:
                out.append(self._payout_event(self.payouts[payout_id], cmd.ts_ns))
            return None
        if not 0 < len(ref) <= MAX_REF_LEN or not pairs or len(set(pairs)) != len(pairs) or len(cmd.sha256) > 64:
            return self._reject(cmd, R.INVALID_AMOUNT, ref, out)
        for payout_id, attempt in pairs:
            p = self.payouts.get(payout_id)
            if p is None:
                return self._reject(cmd, R.UNKNOWN_REFERENCE, f"P{payout_id}", out)
            if p.state != _P_PENDING or p.attempt != attempt:
                return self._reject(cmd, R.INVALID_PAYOUT_STATE, f"P{payout_id}", out)
        self.sent_files[ref] = SentFile(ref, pairs)
        self._final_at(cmd.ts_ns, FinalKind.SENT_FILE, ref)
        if cmd.sha256:
            self.file_digests[ref] = cmd.sha256
        ts_ns: Boxed = cmd.ts_ns
        for payout_id, _ in pairs:
            p = self.payouts[payout_id]
            p.state, p.file_ref, p.updated_at_ns = _P_SENT, ref, ts_ns
            out.append(self._payout_event(p, ts_ns))
        return None

    def _import_bank_confirmations(self, cmd: ImportBankConfirmations, out: list) -> None:
        ref = cmd.file_ref
        if not self._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        # ids out of the journal's integer range are refused before anything is encoded (they would not encode)
        if not 0 < len(ref) <= MAX_REF_LEN or not all(_id_range((r.payout_id, r.attempt)) for r in cmd.rows):
            return self._reject(cmd, R.INVALID_AMOUNT, ref, out)
        rows_hash = hashlib.blake2b(_ENCODER.encode(cmd.rows), digest_size=16).hexdigest()
        done = self.bank_imports.get(ref)
        if done is not None:
            if done.rows_hash != rows_hash:
                return self._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
            out.append(BankImportApplied(0, cmd.ts_ns, ref, done.applied, done.duplicates, tuple(done.errors)))
            return None
        if cmd.whole_file:
            problems = self.confirmation_problems(cmd.rows)
            if problems:  # the file is refused whole and its reference stays free for the corrected file
                first = problems[0][1]
                reason = R.UNKNOWN_REFERENCE if first == "unknown_payout" else R.INVALID_PAYOUT_STATE
                return self._reject(cmd, reason, ref, out)
        applied = duplicates = 0
        errors: list[tuple[int, str]] = []
        ts_ns: Boxed = cmd.ts_ns
        for row in cmd.rows:
            outcome = self._apply_confirmation(row, ts_ns, out)
            if outcome == "applied":
                applied += 1
            elif outcome == "duplicate":
                duplicates += 1
            else:
                errors.append((row.payout_id, outcome))
        self.bank_imports[ref] = BankImport(ref, rows_hash, applied, duplicates, errors)
        self._final_at(cmd.ts_ns, FinalKind.BANK_IMPORT, ref)
        out.append(BankImportApplied(0, cmd.ts_ns, ref, applied, duplicates, tuple(errors)))
        return None

    def confirmation_problems(self, rows: Sequence[BankConfirmation]) -> list[tuple[int, str]]:
        """(index, code) of every row of a confirmation file that cannot be applied now: ``unknown_payout``,
        ``not_current_attempt`` (an answer for an older or a later attempt), ``invalid_payout_state``
        (not sent, or already answered otherwise) or ``repeated_payout`` (a second row for a payout). A
        row that repeats the payout's recorded answer is a harmless duplicate, not a problem."""
        problems: list[tuple[int, str]] = []
        seen: set[int] = set()
        for index, row in enumerate(rows):
            payout_id = row.payout_id
            code = self._confirmation_problem(row) or ("repeated_payout" if payout_id in seen else "")
            seen.add(payout_id)
            if code:
                problems.append((index, code))
        return problems

    def _confirmation_problem(self, row: BankConfirmation) -> str:
        p = self.payouts.get(row.payout_id)
        if p is None:
            return "unknown_payout"
        if row.attempt != p.attempt:
            return "not_current_attempt"
        state = p.state
        if state == _P_SENT or (state == _P_CONFIRMED and row.ok and row.bank_ref == p.bank_ref) or (
                state == _P_FAILED and not row.ok):
            return ""
        return "invalid_payout_state"

    def _apply_confirmation(self, row: object, ts_ns: Boxed, out: list) -> str:
        """One bank answer: "applied", "duplicate" or why it was not applied."""
        p = self.payouts.get(row.payout_id)  # type: ignore[attr-defined]
        if p is None:
            return "unknown payout"
        ok, attempt, bank_ref = row.ok, row.attempt, row.bank_ref  # type: ignore[attr-defined]
        if attempt != p.attempt:
            return f"attempt {attempt} is not the current attempt {p.attempt}"
        state = p.state
        if state == _P_CONFIRMED and ok and bank_ref == p.bank_ref:
            return "duplicate"
        if state == _P_FAILED and not ok:
            return "duplicate"
        if state != _P_SENT:
            return f"payout is {state.name}"
        if ok:
            self._commit_one(_TRANSFER(self._next_tid(), _ZERO, _ZERO, _ZERO, _TC_PAYOUT, _ZERO, _POST, p.pending_id),
                             ts_ns)
            p.state, p.bank_ref, p.reason = _P_CONFIRMED, bank_ref, ""
            self.final.append((ts_ns, _FINAL_PAYOUT, p.payout_id))
        else:
            p.state, p.bank_ref, p.reason = _P_FAILED, bank_ref, row.reason[:200]  # type: ignore[attr-defined]
        p.updated_at_ns = ts_ns
        out.append(self._payout_event(p, ts_ns))
        return "applied"

    def _retry_payout(self, cmd: RetryPayout, out: list) -> None:
        ref = f"P{cmd.payout_id}"
        p = self._failed_payout(cmd, ref, out, allow_pending=False)
        if p is None:
            return None
        who = self.participants[p.payee_id]
        if not who.bank_verified:
            return self._reject(cmd, R.BANK_ACCOUNT_NOT_VERIFIED, ref, out)
        p.state, p.attempt, p.bank_account = PayoutState.PENDING, p.attempt + 1, who.bank_account
        p.bank_code, p.branch_code = self.bank_codes.get(who.participant_id, ("", ""))
        p.file_ref = p.bank_ref = p.reason = ""
        p.updated_at_ns = cmd.ts_ns
        out.append(self._payout_event(p, cmd.ts_ns))
        return None

    def _return_payout(self, cmd: ReturnPayout, out: list) -> None:
        ref = f"P{cmd.payout_id}"
        p = self._failed_payout(cmd, ref, out, allow_pending=True)
        if p is None:
            return None
        self._commit_one(Transfer(self._next_tid(), 0, 0, 0, TC.PAYOUT_RETURN, 0, _VOID, p.pending_id), cmd.ts_ns)
        # its money is payable again, still traceable to the same trades, ahead of newer proceeds
        self.payables[p.payee_id] = [msgspec.structs.replace(s) for s in p.sources] + self.payables.get(p.payee_id, [])
        p.state, p.updated_at_ns = PayoutState.RETURNED, cmd.ts_ns
        self._final_at(cmd.ts_ns, FinalKind.PAYOUT, p.payout_id)
        out.append(self._payout_event(p, cmd.ts_ns))
        return None

    def _failed_payout(
        self, cmd: RetryPayout | ReturnPayout, ref: str, out: list, allow_pending: bool
    ) -> Payout | None:
        if not self._is_operator(cmd.participant_id):
            self._reject(cmd, R.NOT_AUTHORIZED, ref, out)
            return None
        p = self.payouts.get(cmd.payout_id)
        if p is None:
            self._reject(cmd, R.UNKNOWN_REFERENCE, ref, out)
            return None
        if p.state != PayoutState.FAILED and not (allow_pending and p.state == PayoutState.PENDING):
            self._reject(cmd, R.INVALID_PAYOUT_STATE, ref, out)
            return None
        return p


def _refused(transfer: Transfer, result: CreateTransferResult) -> NoReturn:
    raise ClearingInvariantError(f"ledger refused transfer {transfer}: {result.name}")


def _refused_chain(transfers: Sequence[Transfer], results: Sequence[CreateTransferResult]) -> NoReturn:
    """Raise for the first transfer of a chain the ledger did not apply."""
    t, result = next((t, r) for t, r in zip(transfers, results, strict=True) if r is not _OK)
    _refused(t, result)


class _Chain:
    """Transfers collected for one linked commit (all or nothing); zero amounts are left out. Ids are
    taken as legs are added, so they follow the order of the legs. The latest leg is kept as its
    fields until another follows it (then it is a LINKED transfer) or the chain is committed (then it
    closes the chain, unflagged): each leg is made once, with its flags."""

    __slots__ = ("clearing", "counters", "last", "transfers")

    def __init__(self, clearing: Clearing) -> None:
        self.clearing = clearing
        self.counters = clearing.counters
        self.transfers: list[Transfer] = []
        # (id, dr, cr, amount, code, user data): the objects as they came (Boxed), so that compiled no leg
        # boxes its ids and amount anew
        self.last: tuple[Boxed, Boxed, Boxed, Boxed, Boxed, Boxed] | None = None

    def add(self, dr: Boxed, cr: Boxed, amount_fen: Boxed, code: Boxed, user_data: Boxed) -> None:
        if amount_fen:
            if amount_fen < 0:
                raise ClearingInvariantError(f"negative amount {amount_fen} from {dr} to {cr}")
            counters = self.counters
            tid: Boxed = counters.next_transfer_id
            counters.next_transfer_id = tid + 1
            last = self.last
            if last is not None:
                self.transfers.append(_TRANSFER(last[0], last[1], last[2], last[3], last[4], last[5], _LINKED))
            self.last = (tid, dr, cr, amount_fen, code, user_data)

    def commit(self, ts_ns: Boxed) -> None:
        """Apply the chain (``Clearing._commit``: one transfer alone, several linked); a refusal is a bug."""
        last = self.last
        if last is None:
            return
        self.transfers.append(_TRANSFER(last[0], last[1], last[2], last[3], last[4], last[5], _ZERO))
        self.clearing._commit(self.transfers, ts_ns)


def payout_trade_ids(sources: list[PayableSource]) -> tuple[int, ...]:
    """The trades a payout with these sources pays (``Payout.trade_ids``), sorted, without repeats. Here,
    not in model.py, to run compiled: interpreted it costs several times this. Most payouts pay one
    trade's proceeds: no set, no sort."""
    if len(sources) == 1:
        kind, ref_id, _ = _astuple(sources[0])  # (kind, ref_id, amount_fen)
        return () if kind == _FROM_ADVANCE else (ref_id,)
    # a few sources: a list with no repeats, sorted, costs less than a set; the ids stay the objects (Boxed)
    ids: list[Boxed] = []
    for source in sources:
        kind, ref_id, _ = _astuple(source)
        if kind != _FROM_ADVANCE and ref_id not in ids:
            ids.append(ref_id)
    ids.sort()
    return tuple(ids)


def _account(account_id: int, code: int, owner_id: int, user_data: int) -> Account:
    return Account(account_id, code, owner_id, flags=CHART[code].limit_flags, user_data=user_data)


def _interest_since(loan: Loan, day: int) -> int:
    """Interest the loan will accrue when brought up to ``day`` (not yet charged)."""
    days = day - loan.accrued_day
    return rules.accrue_interest(loan.principal_fen, loan.rate_bps, days, loan.carry)[0] if days > 0 else 0


def _repayment_source(loan: Loan) -> tuple[int, int, int]:
    """Account key a borrower repays a loan from: its cash (credit lines) or its payable (advances)."""
    code = AC.BUYER_CASH if loan.kind == LoanKind.CREDIT_LINE else AC.FARMER_PAYABLE
    return (code, loan.borrower_id, 0)


def _valid_profile(cmd: RegisterParticipant) -> bool:
    """A name, a masked ID number (with ``*``, never a full one), and a poor-household number only
    for a farmer."""
    masked = cmd.id_number_masked
    return (
        cmd.subject_id > 0
        and bool(cmd.name.strip())
        and len(cmd.name) <= 100
        and "*" in masked
        and len(masked) <= 32
        and sum(ch.isdigit() for ch in masked) <= 8
        and len(cmd.bank_account) <= 64
        and (not cmd.poor_registration_no or cmd.role == ROLE.FARMER)
        and _valid_bank_codes(cmd.bank_code, cmd.branch_code)
    )


def _profile_digest(cmd: RegisterParticipant) -> str:
    """What a repeat of a registration must have in common with it: the profile, not the id or key."""
    profile = (int(cmd.role), cmd.name, cmd.id_number_masked, cmd.bank_account, cmd.poor_registration_no,
               cmd.bank_code, cmd.branch_code)
    return hashlib.blake2b(_ENCODER.encode(profile), digest_size=16).hexdigest()


def _valid_bank_codes(bank_code: str, branch_code: str) -> bool:
    """A bank code of 3 ASCII digits and a branch code of 12 that starts with it; either may be left empty,
    but not the bank of a given branch."""
    if bank_code and not (len(bank_code) == 3 and bank_code.isascii() and bank_code.isdigit()):
        return False
    if branch_code and not (len(branch_code) == 12 and branch_code.isascii() and branch_code.isdigit()):
        return False
    return not branch_code or branch_code[:3] == bank_code


def _id_range(values: tuple) -> bool:
    """Whether every value is a whole number 1..MAX_INT64 (ids, attempts): what the journal, the ledger and
    PostgreSQL can hold."""
    return all(type(v) is int and 0 < v <= MAX_INT64 for v in values)


def _valid_delivery(heads_traded: int, heads_delivered: int, total_weight_g: int, heads_refused: int) -> bool:
    """Heads delivered and refused, each >= 0, together at most the heads traded; a weight exactly when
    heads were delivered, that PostgreSQL can hold."""
    if heads_refused < 0 or not 0 <= heads_delivered <= heads_traded - heads_refused or total_weight_g < 0:
        return False
    # compiled, an int up to _SHORT_MAX is held unboxed; comparing one with MAX_INT64 (not short) would box it
    if not (total_weight_g <= _SHORT_MAX or total_weight_g <= MAX_INT64):
        return False
    return (heads_delivered == 0) == (total_weight_g == 0)
