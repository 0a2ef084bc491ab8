"""The clearing's state and the plumbing every money flow shares (``Clearing`` in clearing.py is its one subclass).

``ClearingState`` owns the records the clearing holds (model.py), the derived lookups rebuilt from them
after a restore (never snapshotted), the ledger and the id counters; it applies transfers (a refusal is
``ClearingInvariantError``: a bug), creates accounts on first use, reads balances, and has the helpers
the flows share: rejections, roles, payable sources, final records (clearing.py, "Memory"), settlement
deadlines. ``Chain`` collects one linked commit. The flows are modules of functions taking the state:
holds.py, participants.py, funds.py, delivery.py, settling.py, financing.py, payouts.py.

Compiled (mypyc, ``setup.py``): the constants the flows' hot paths name are ``Final`` here (C statics),
and the field orders the flows unpack records and events by (``msgspec.structs.astuple``) are checked
at import (clearing.py's docstring says why).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final, NoReturn, TypeAlias

import msgspec
from mypy_extensions import mypyc_attr

from exchange.commands import (
    FundsAccount,
    ParticipantRole,
    RecordWeighIn,
)
from exchange.domain import InstrumentSpec, QuarantineRegion, RejectReason, Side
from exchange.events import (
    DeliveryGrade,
    DeliveryRecorded,
    InstrumentListed,
    LoanKind,
    LotRegistered,
    ObligationRecorded,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    PayoutChanged,
    PayoutPriority,
    PayoutState,
    Rejected,
    Trade,
    TradeSettled,
)
from exchange.settlement.ledger import (
    CHART,
    Account,
    AccountCode,
    CreateAccountResult,
    CreateTransferResult,
    Ledger,
    Transfer,
    TransferCode,
    TransferFlags,
)
from exchange.settlement.model import (
    BankImport,
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
)
from exchange.settlement.rules import DeliveryTerms, hold_grams

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
_EMPTY: Final[Boxed] = ""
_IN_GRADE: Final[Boxed] = DeliveryGrade.IN_GRADE
_SHORT_MAX: Final = 2**62 - 1  # the largest int compiled code holds unboxed (see _valid_delivery)
# Enum members the hot paths name, as module globals (the same member objects): on Python 3.11 an
# attribute of an enum class costs ~100 ns (the enum metaclass defines ``__getattr__``, which takes
# every class attribute lookup off the fast path), a global ~10 ns.
_BUY: Final[Boxed] = Side.BUY
_BUY_SIDE: Final = int(Side.BUY)  # a side read as a native int compares with this
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
                                    int(FinalKind.WITHDRAWAL), int(FinalKind.SENT_FILE), int(FinalKind.LOAN)})
# The hot paths call rules.* by the module's name: compiled (rules is compiled with the clearing), that
# is a direct native call, where a module-global alias of the function would be a Python call.
# msgspec.structs.astuple, Final: compiled, a record or an event read as one tuple when several of its
# fields are needed (each attribute read of a msgspec struct is a generic lookup); the field order is
# checked against the structs at import.
_astuple: Final = msgspec.structs.astuple
# The records and events the hot paths make, Final: compiled, C statics instead of module-dict lookups.
_TRANSFER: Final = Transfer
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
    raise ImportError("a struct the clearing reads by position changed: update how the clearing's flows unpack it")
# holds.on_trade gives a new TradeRecord every field, its defaults as these objects (see there why)
if TradeRecord.__struct_defaults__ != (
    TradeState.OPEN, 0, 0, 0, DeliveryGrade.IN_GRADE, 0, "", 0, 0, 0, "", *(0,) * 15
) or TradeRecord.__struct_fields__.index("state") != 12:  # fmt: skip
    raise ImportError("TradeRecord's defaults changed: update holds.on_trade, which passes them all")
_ENCODER = msgspec.msgpack.Encoder()
# the accounts of a financier and a borrower that a loan uses (financing.py), parked once every loan between
# them is closed (ClearingState.park_loan_accounts)
_LOAN_CODES: Final = (int(AC.LOANS_RECEIVABLE), int(AC.LOANS_FUNDED), int(AC.INTEREST_RECEIVABLE))



class HeldOrder:
    """An open hold as the clearing keeps it: ``model.Hold``'s fields as native fields (compiled, every field
    of a msgspec struct is a generic attribute access, and every fill, cancel and expiry reads and moves its
    hold). ``record()`` is the ``Hold`` a snapshot lists, ``of()`` the way back. Ids, price and instrument are
    the objects they came as (``Boxed``: they go on into transfers and events); heads and fen per head are
    native ints (arithmetic). ``hold_grams`` is the instrument's ``rules.hold_grams`` (every fill prices its
    obligation by it: a native field read, not a lookup by symbol; derived, not in the record)."""

    __slots__ = ("buyer_id", "financier_id", "hold_grams", "instrument", "order_id", "pending_id", "per_head_fen",
                 "price_fen", "remaining_heads", "source_account_id")  # fmt: skip

    def __init__(
        self, order_id: Boxed, buyer_id: Boxed, instrument: Boxed, price_fen: Boxed, per_head_fen: int,
        remaining_heads: int, pending_id: Boxed, source_account_id: Boxed, financier_id: Boxed, hold_grams: int,
    ) -> None:
        self.order_id = order_id
        self.buyer_id = buyer_id
        self.instrument = instrument
        self.price_fen = price_fen
        self.per_head_fen = per_head_fen
        self.remaining_heads = remaining_heads
        self.pending_id = pending_id  # the open ORDER_HOLD transfer
        self.source_account_id = source_account_id  # BUYER_CASH or a BUYER_CREDIT_LINE
        self.financier_id = financier_id  # 0 for cash
        self.hold_grams = hold_grams

    @property
    def held_fen(self) -> int:
        return self.remaining_heads * self.per_head_fen

    def record(self) -> Hold:
        return Hold(self.order_id, self.buyer_id, self.instrument, self.price_fen, self.per_head_fen,
                    self.remaining_heads, self.pending_id, self.source_account_id, self.financier_id)  # fmt: skip

    @staticmethod
    def of(h: Hold, hold_grams: int) -> HeldOrder:
        return HeldOrder(h.order_id, h.buyer_id, h.instrument, h.price_fen, h.per_head_fen, h.remaining_heads,
                         h.pending_id, h.source_account_id, h.financier_id, hold_grams)  # fmt: skip


class OpenTrades:
    """How many trades of one lot are open (``ClearingState._open_trades_by_lot``): a native counter, so that a
    fill of a lot with open trades adds to a field instead of storing a new count in the dict."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


@mypyc_attr(native_class=False)  # compiled: a native class cannot derive from AssertionError
class ClearingInvariantError(AssertionError):
    """The ledger refused a transfer the clearing computed, or an event contradicts the clearing's
    records: a bug. The core must be rebuilt from the journal."""



class ClearingState:
    """All settlement state of one shard, and the ledger plumbing the flows share (see the module docstring)."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self._counters = Counters()
        # the next transfer id as a native field (every hold, fill and release takes one): ``counters``
        # writes it back into the snapshotted record whenever the record is read
        self._next_transfer_id: int = self._counters.next_transfer_id
        self.accounts: dict[tuple[int, int, int], int] = {}  # (code, owner, user_data) -> account id
        # Parked accounts whose key a snapshot lists in ``accounts`` (restored from one that did, an earlier
        # version's): a parked account's key is otherwise left out and derived from the ledger's parked list
        # on restore (clearing.py, Clearing.restore). Unparking one drops it from here: listed while
        # unparked, as every account, and left out once parked again.
        self._listed_parked_keys: set[int] = set()
        self.instruments: dict[str, InstrumentSpec] = {}
        self.fee_bps: dict[str, int] = {}
        self.lots: dict = {}  # lot id -> Lot
        self.participants: dict[int, Participant] = {}
        self.holds: dict[int, HeldOrder] = {}  # buy order id (or lot-auction hold id) -> its open hold
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
        # (financier, borrower) of every loan closed by the command being applied: its loan accounts are
        # parked at the command's end if empty (``park_loan_accounts``); empty between commands, so not state
        self.closed_loan_pairs: list[tuple[int, int]] = []
        # set by a replay while it rebuilds the state (exchange/replay.py), which drops every event: the
        # flows then build no ObligationRecorded (output only, nothing reads one); not state, False otherwise
        self.quiet = False
        self._rebuild_indexes()
        self.ledger.create_accounts([_account(int(code), int(code), 0, 0) for code in HOUSE], 0)

    def _rebuild_indexes(self) -> None:
        """Derived lookups, rebuilt from the records after a restore (never snapshotted)."""
        # The ledger rows of every command applied and not yet taken, oldest first (clearing.py, "persistence"):
        # the rows stay in the ledger's own lists, and each command's end in them is queued here, the postings'
        # and the new accounts' counts after it (one entry per command in each list). No tuple and no list per
        # command: compiled, two appends of an int (the collector tracks neither; a benchmark or a core whose
        # rows are never taken would otherwise keep two tracked objects per command, each young collection
        # traversing them).
        self._posting_ends: list[int] = []
        self._account_ends: list[int] = []
        self._payout_trade_ids: dict[int, tuple[int, ...]] = {}  # see payouts.payout_event
        # lot id -> how many of its trades are open (neither settled nor rejected): the core keeps a lot,
        # and the clearing its record, while it has one (lot_in_use)
        self._open_trades_by_lot: dict[Boxed, OpenTrades] = {}
        for t in self.trades.values():
            if t.state != TradeState.SETTLED and t.state != TradeState.REJECTED:
                self._trade_opened(t.lot_id)
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
        # instrument -> rules.hold_grams of its specification: every buy's hold and every fill prices by it
        self._hold_grams: dict[str, int] = {symbol: hold_grams(spec) for symbol, spec in self.instruments.items()}
        # the participants whose role may sell (SELLING_ROLES): every sell is checked against it. A role is
        # fixed at registration and no participant is forgotten, so registration adds to it and nothing removes
        self._sellers: set[int] = {pid for pid, who in self.participants.items() if who.role in SELLING_ROLES}
        # likewise the participants whose role may trade (TRADING_ROLES): every buy is checked against it
        self._traders: set[int] = {pid for pid, who in self.participants.items() if who.role in TRADING_ROLES}
        # check_buy's cash answer (holds.place_hold reuses it): valid while _next_transfer_id equals
        # _checked_at_tid; -1 keeps none (a restore starts without one)
        self._checked_buyer: int = -1
        self._checked_amount: int = -1
        self._checked_account: Boxed = _ZERO
        self._checked_at_tid: int = -1

    @property
    def counters(self) -> Counters:
        """The id counters as snapshotted, the next transfer id (a native field) written back first."""
        counters = self._counters
        counters.next_transfer_id = self._next_transfer_id
        return counters

    @counters.setter
    def counters(self, counters: Counters) -> None:
        self._counters = counters
        self._next_transfer_id = counters.next_transfer_id

    # ---------------------------------------------------------------------------------- ledger plumbing

    def _next_tid(self) -> Boxed:
        """A new transfer id, boxed once (the object goes into the transfer, its posting and the ledger's maps)."""
        tid = self._next_transfer_id
        self._next_transfer_id = tid + 1
        return tid

    def _commit_one(self, transfer: Transfer, ts_ns: Boxed) -> None:
        """Apply one transfer (not LINKED); a refusal is a bug."""
        result = self.ledger.create_transfer(transfer, ts_ns)
        if result is not _OK:
            refused(transfer, result)

    def _commit(self, transfers: Sequence[Transfer], ts_ns: Boxed) -> None:
        """Apply transfers (several: a chain, every one but the last flagged LINKED by the caller); any
        refusal is a bug."""
        if len(transfers) < 2:
            if transfers:
                self._commit_one(transfers[0], ts_ns)
            return
        results = self.ledger.create_transfers(transfers, ts_ns)
        if results.count(_OK) != len(transfers):
            refused_chain(transfers, results)

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
        elif account_id in self.ledger.parked:  # a repaid borrower's loan account, used again (park_loan_accounts)
            self.ledger.unpark(account_id)
            self._listed_parked_keys.discard(account_id)
        return account_id

    def _balance(self, code: int, owner_id: int = 0, user_data: int = 0) -> int:
        """Available balance (credits - debits - pending debits) of a credit-normal account; 0 if none."""
        account_id = self.accounts.get((code, owner_id, user_data))
        if code in HOUSE:
            account_id = code
        return 0 if account_id is None else self.ledger.available_fen(account_id)


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

    def _trade_for(self, cmd: object, trade_id: int, out: list) -> TradeRecord | None:
        """The trade a command names, or None after rejecting the command (UNKNOWN_TRADE)."""
        trade = self.trades.get(trade_id)
        if trade is None:
            self._reject(cmd, R.UNKNOWN_TRADE, f"T{trade_id}", out)
        return trade

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



    def has_consented(self, participant_id: int, financier_id: int) -> bool:
        who = self.participants.get(participant_id)
        return who is not None and financier_id in who.consents

    def park_loan_accounts(self) -> None:
        """Park the loan accounts (principal, its contra, interest receivable) of every financier and
        borrower a loan was closed between by the command just applied, unless another of their loans is
        still open: a repaid borrower's accounts are empty and wait, perhaps for ever, for its next loan
        from that financier (``_account_id`` unparks them then). The ledger parks only empty accounts."""
        pairs = self.closed_loan_pairs
        self.closed_loan_pairs = []
        ledger = self.ledger
        for financier_id, borrower_id in pairs:
            if any(self.loans[k].financier_id == financier_id and self.loans[k].is_open
                   for k in self._loans_by_borrower.get(borrower_id, ())):
                continue
            for code in _LOAN_CODES:
                account_id = self.accounts.get((code, financier_id, borrower_id))
                if account_id is not None:
                    ledger.park(account_id)

    def _final_at(self, ts_ns: Boxed, kind: FinalKind, key: Boxed) -> None:
        """Queue a record that became final at ``ts_ns`` (see "Memory")."""
        self.final.append((ts_ns, int(kind), key))

    def _trade_opened(self, lot_id: Boxed) -> None:
        """A trade of this lot is open: one more that needs the lot's record (a native counter: a fill of a lot
        with open trades adds to a field, no dict store)."""
        open_of_lot = self._open_trades_by_lot.get(lot_id)
        if open_of_lot is None:
            self._open_trades_by_lot[lot_id] = OpenTrades(1)
        else:
            open_of_lot.count += 1

    def _trade_closed(self, lot_id: Boxed) -> None:
        """A trade of this lot became final: one open trade fewer that may need the lot's record."""
        open_of_lot = self._open_trades_by_lot[lot_id]
        open_of_lot.count -= 1
        if not open_of_lot.count:
            del self._open_trades_by_lot[lot_id]


def refused(transfer: Transfer, result: CreateTransferResult) -> NoReturn:
    raise ClearingInvariantError(f"ledger refused transfer {transfer}: {result.name}")


def refused_chain(transfers: Sequence[Transfer], results: Sequence[CreateTransferResult]) -> NoReturn:
    """Raise for the first transfer of a chain the ledger did not apply."""
    t, result = next((t, r) for t, r in zip(transfers, results, strict=True) if r is not _OK)
    refused(t, result)


class Chain:
    """Transfers collected for one linked commit (all or nothing); zero amounts are left out. Ids are
    taken as legs are added, so they follow the order of the legs. The latest leg is kept as its
    fields until another follows it (then it is a LINKED transfer) or the chain is committed (then it
    closes the chain, unflagged): each leg is made once, with its flags."""

    __slots__ = ("clearing", "last", "transfers")

    def __init__(self, clearing: ClearingState) -> None:
        self.clearing = clearing
        self.transfers: list[Transfer] = []
        # (id, dr, cr, amount, code, user data): the objects as they came (Boxed), so that compiled no leg
        # boxes its ids and amount anew
        self.last: tuple[Boxed, Boxed, Boxed, Boxed, Boxed, Boxed] | None = None

    def add(self, dr: Boxed, cr: Boxed, amount_fen: Boxed, code: Boxed, user_data: Boxed) -> None:
        if amount_fen:
            if amount_fen < 0:
                raise ClearingInvariantError(f"negative amount {amount_fen} from {dr} to {cr}")
            tid: Boxed = self.clearing._next_tid()
            last = self.last
            if last is not None:
                self.transfers.append(_TRANSFER(last[0], last[1], last[2], last[3], last[4], last[5], _LINKED))
            self.last = (tid, dr, cr, amount_fen, code, user_data)

    def commit(self, ts_ns: Boxed) -> None:
        """Apply the chain (``ClearingState._commit``: one transfer alone, several linked); a refusal is a bug."""
        last = self.last
        if last is None:
            return
        self.transfers.append(_TRANSFER(last[0], last[1], last[2], last[3], last[4], last[5], _ZERO))
        self.clearing._commit(self.transfers, ts_ns)


def _account(account_id: int, code: int, owner_id: int, user_data: int) -> Account:
    return Account(account_id, code, owner_id, flags=CHART[code].limit_flags, user_data=user_data)

