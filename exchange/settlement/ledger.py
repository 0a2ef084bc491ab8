"""The double-entry ledger of hogx, modelled on TigerBeetle.

This module owns the accounts, the transfers between them and the posting rows that persist them.
It is pure, synchronous and deterministic: no I/O, no clock, no randomness. Time enters as ``now_ns``.

Model
-----
* An ``Account`` keeps four cumulative counters in fen: ``debits_pending_fen``, ``debits_posted_fen``,
  ``credits_pending_fen``, ``credits_posted_fen``. Its kind is an ``AccountCode`` from the chart of
  accounts (``CHART``), which also fixes its normal balance and its limit flag:
  ``DEBITS_MUST_NOT_EXCEED_CREDITS`` (e.g. a buyer's cash cannot go negative) or
  ``CREDITS_MUST_NOT_EXCEED_DEBITS``. Limits count pending *and* posted amounts, so holds are
  pessimistic: money reserved for an order cannot be spent twice.
* A ``Transfer`` is immutable and moves ``amount_fen > 0`` from one debit account to one credit account.
  Its ``transfer_id`` is chosen by the client, so a retry is recognised: an identical retry answers
  ``EXISTS``, a conflicting one ``EXISTS_WITH_DIFFERENT_*``.
* Two-phase transfers: a ``PENDING`` transfer reserves money (the pending counters); a later transfer
  with ``POST_PENDING`` (all or part: the rest is released) or ``VOID_PENDING`` resolves it, or it
  times out (``timeout_ns``) and ``expire_pending(now_ns)`` releases it. Resolving never edits the
  pending transfer; it creates a new one (or, for expiry, records the status).
* A run of transfers flagged ``LINKED`` plus the first one after them without the flag is a chain: it
  succeeds or fails as a whole; on failure earlier members are rolled back.

Validation happens in a fixed order (``CreateTransferResult`` lists the codes; the order is spelled out
in ``Ledger.create_transfers``); state is changed only after the last check passes.
``create_transfer(t, now_ns)`` answers exactly as ``create_transfers([t], now_ns)[0]`` without the
lists: the clearing's path for a lone transfer (most of its transfers), chains go through
``create_transfers``. Every check runs on both paths; the hot paths avoid only Python overhead (enum
attribute lookups, repeated sums, calls), which the ledger benchmark measures.

Postings (what PostgreSQL stores)
---------------------------------
Every applied transfer, and every expiry, becomes ONE ``Posting`` row naming both of its accounts,
drained with ``drain_postings()`` (or ``drain_rows()``, with the new accounts, after every command of
the clearing) and written in the journal batch's transaction
(table ``ledger_transfers``, ``exchange/migrations/0006_ledger_transfers.sql``). Its ``entry`` says
which counters of the debit account and, by the same amounts, of the credit account it changes:

==================  ============================================  ======================================
entry               debit account (credit account alike)          emitted by
==================  ============================================  ======================================
POSTED (1)          debits_posted_fen += amount_fen               single-phase transfer
PENDING (2)         debits_pending_fen += amount_fen              pending transfer
RELEASE (3)         debits_pending_fen -= released_fen            void or expiry of a pending transfer
POST_PENDING (4)    debits_pending_fen -= released_fen,           post (all or part) of a pending one
                    debits_posted_fen += amount_fen
==================  ============================================  ======================================

Because one row moves the same amount on both sides of the same counter pair, any set of rows
balances by construction: there is no half of a transfer that could be written alone. ``amount_fen``
is > 0 except for RELEASE (0); ``released_fen`` is the pending transfer's whole amount for RELEASE and
POST_PENDING (so >= ``amount_fen``), else 0. Expiry rows carry the pending transfer's own id as both
``transfer_id`` and ``pending_id``; rows are unique by (transfer_id, entry).

Fields stored in PostgreSQL ``bigint`` must fit it: ids, amounts and counters are at most ``MAX_INT64``.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Final, NamedTuple

import msgspec

MAX_INT64: Final = 2**63 - 1  # PostgreSQL bigint: every id, amount, counter and deadline must fit
MAX_CODE: Final = 2**31 - 1  # PostgreSQL integer

LEDGER_CNY: Final = 1  # the one asset ledger: Chinese yuan, counted in fen
LEDGERS: Final = frozenset({LEDGER_CNY})


class AccountFlags:
    """Bit flags of ``Account.flags``.

    Plain ``int`` constants rather than ``IntFlag``: ``IntFlag.__and__`` runs Python code, and the
    flags are tested on every transfer.
    """

    NONE: Final = 0
    LINKED: Final = 1  # this account and the next one in the batch are created together or not at all
    DEBITS_MUST_NOT_EXCEED_CREDITS: Final = 2  # debits_pending + debits_posted <= credits_posted
    CREDITS_MUST_NOT_EXCEED_DEBITS: Final = 4  # credits_pending + credits_posted <= debits_posted


class TransferFlags:
    """Bit flags of ``Transfer.flags`` (plain ``int`` constants, see ``AccountFlags``)."""

    NONE: Final = 0
    LINKED: Final = 1  # this transfer and the next one succeed or fail together
    PENDING: Final = 2  # reserve the amount; resolve later by post, void or timeout
    POST_PENDING: Final = 4  # post (all or part of) the pending transfer ``pending_id``
    VOID_PENDING: Final = 8  # release the pending transfer ``pending_id``


class AccountCode(IntEnum):
    """The chart of accounts: the kind of every account. ``CHART`` documents each one."""

    BANK_SETTLEMENT = 100
    ESCROW = 200
    FEE_INCOME = 300
    POVERTY_SUBSIDY_FUND = 310
    BUYER_CASH = 400
    BUYER_CREDIT_LINE = 410
    SELLER_RECEIVABLE = 500
    FARMER_PAYABLE = 510
    FINANCIER_FUNDS = 600
    LOANS_RECEIVABLE = 610
    LOANS_FUNDED = 615
    INTEREST_RECEIVABLE = 620
    INTEREST_INCOME = 630


class ChartEntry(NamedTuple):
    normal_balance: str  # "debit": the balance is debits - credits (assets); "credit": credits - debits
    limit_flags: int  # the AccountFlags limit an account of this kind must carry
    house: bool  # True: one per exchange, owner_id 0; False: one per participant, owner_id > 0
    description: str


_DR_LIMIT: Final = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
_CR_LIMIT: Final = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS

CHART: Final[dict[int, ChartEntry]] = {  # keyed by AccountCode
    AccountCode.BANK_SETTLEMENT: ChartEntry(
        "debit", _CR_LIMIT, True,
        "External: the exchange's client-money account at the bank. Debited by confirmed deposits, "
        "credited by payouts and withdrawals; cannot pay out more than came in."),
    AccountCode.ESCROW: ChartEntry(
        "credit", _DR_LIMIT, True,
        "Trade obligations between the trade and its settlement: credited when a buyer's hold is "
        "posted at a fill, debited when the trade settles or the buyer is refunded."),
    AccountCode.FEE_INCOME: ChartEntry(
        "credit", _DR_LIMIT, True,
        "The exchange's fee revenue. Credited by fees charged at settlement."),
    AccountCode.POVERTY_SUBSIDY_FUND: ChartEntry(
        "credit", _DR_LIMIT, True,
        "Fund that pays the waived fees and the advance interest of registered poor households; "
        "credited when sponsors fund it, cannot spend more than it holds."),
    AccountCode.BUYER_CASH: ChartEntry(
        "credit", _DR_LIMIT, False,
        "A buyer's money held by the exchange. Credited by deposits; order holds are pending debits "
        "(there is no separate hold account); must never go negative."),
    AccountCode.BUYER_CREDIT_LINE: ChartEntry(
        "credit", _DR_LIMIT, False,
        "Undrawn credit a financier extends to a buyer (user_data: the financier). Credited by the "
        "grant, debited by holds and draws; cannot be overdrawn."),
    AccountCode.SELLER_RECEIVABLE: ChartEntry(
        "credit", _DR_LIMIT, False,
        "What a seller is due for delivered trades during the dispute window, before settlement."),
    AccountCode.FARMER_PAYABLE: ChartEntry(
        "credit", _DR_LIMIT, False,
        "Settled proceeds owed to a farmer or cooperative, waiting for a payout run; debited by "
        "payouts and cooperative splits, credited back by returned payouts."),
    AccountCode.FINANCIER_FUNDS: ChartEntry(
        "credit", _DR_LIMIT, False,
        "Money a financial partner placed with the exchange to lend; cannot go negative."),
    AccountCode.LOANS_RECEIVABLE: ChartEntry(
        "debit", _CR_LIMIT, False,
        "Principal a borrower owes a financier (owner: financier, user_data: borrower): debited by "
        "advances and credit-line draws, credited by repayments; cannot be repaid beyond what is owed."),
    AccountCode.LOANS_FUNDED: ChartEntry(
        "credit", _DR_LIMIT, False,
        "Contra of LOANS_RECEIVABLE (owner: financier, user_data: borrower): the financier's principal "
        "out on loan. Credited together with every debit of LOANS_RECEIVABLE, debited with every "
        "credit, so both always show the same outstanding principal. The cash itself moves between "
        "FINANCIER_FUNDS and the borrower's accounts."),
    AccountCode.INTEREST_RECEIVABLE: ChartEntry(
        "debit", _CR_LIMIT, False,
        "Interest accrued and not yet paid (owner: financier, user_data: borrower): debited by daily "
        "accrual, credited when the borrower or the subsidy fund pays it."),
    AccountCode.INTEREST_INCOME: ChartEntry(
        "credit", AccountFlags.NONE, False,
        "Interest a financier has earned (owner: financier): credited by daily accrual, debited when "
        "the interest is collected into FINANCIER_FUNDS, so its balance is earned and not yet collected."),
}


class TransferCode(IntEnum):
    """Why money moved. The ledger only requires a code in 1..MAX_CODE; these are the known reasons."""

    DEPOSIT = 1  # bank -> buyer cash / financier funds / subsidy fund
    WITHDRAWAL = 2  # cash -> bank
    ORDER_HOLD = 10  # pending: buyer cash or credit line -> escrow; user_data: order id
    ORDER_RELEASE = 11  # void of an order hold (cancel, expiry, unfilled rest); user_data: order id
    TRADE = 12  # post of the filled part of a hold into escrow; user_data: trade id
    DELIVERY_ADJUSTMENT = 20  # escrow <-> buyer after the weigh-in fixes the final amount
    SETTLEMENT = 21  # escrow -> seller receivable / payable
    FEE = 22  # payable -> fee income
    FEE_SUBSIDY = 23  # subsidy fund -> fee income, for a registered poor farmer's waived fee
    ADVANCE = 30  # a financier's advance to a farmer
    REPAYMENT = 31  # principal back to the financier at settlement
    INTEREST_ACCRUAL = 32
    INTEREST_PAYMENT = 33
    CREDIT_LINE_GRANT = 34
    CREDIT_LINE_DRAW = 35  # at settlement of a credit-funded trade: the buyer's loan principal starts
    CREDIT_LINE_REDUCE = 36  # undrawn credit back to the financier's funds
    COOP_SPLIT = 40  # a cooperative's payable -> its members' payables
    PAYOUT = 41  # farmer payable -> bank
    PAYOUT_RETURN = 42  # bank -> farmer payable for a failed payout


class PendingStatus(IntEnum):
    PENDING = 1
    POSTED = 2
    VOIDED = 3
    EXPIRED = 4


class Entry(IntEnum):
    """Which counters a posting row changes (see the module docstring). A statement line (the
    ``ledger_postings`` view) shows POSTED, PENDING or RELEASE: a POST_PENDING row is two lines there."""

    POSTED = 1
    PENDING = 2
    RELEASE = 3
    POST_PENDING = 4


class PostingSide(IntEnum):
    """An account's side in a statement line (the ``ledger_postings`` view splits every row in two)."""

    DEBIT = 1
    CREDIT = -1


class CreateAccountResult(IntEnum):
    """Result of one account in ``create_accounts``; checks run in this order (after the chain codes)."""

    OK = 0
    LINKED_EVENT_FAILED = 1  # another member of its chain failed; nothing of the chain was applied
    LINKED_EVENT_CHAIN_OPEN = 2  # the batch ended inside a chain (last account flagged LINKED)
    RESERVED_FLAG = 3
    ID_OUT_OF_RANGE = 4  # account_id must be 1..MAX_INT64
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 5  # both limit flags
    DEBITS_PENDING_MUST_BE_ZERO = 6
    DEBITS_POSTED_MUST_BE_ZERO = 7
    CREDITS_PENDING_MUST_BE_ZERO = 8
    CREDITS_POSTED_MUST_BE_ZERO = 9
    TIMESTAMP_MUST_BE_ZERO = 10  # ts_ns is set by the ledger
    LEDGER_UNKNOWN = 11
    CODE_NOT_IN_CHART = 12
    FLAGS_MUST_MATCH_CHART = 13  # the limit flag must be the one CHART gives the account's code
    OWNER_ID_OUT_OF_RANGE = 14  # 0..MAX_INT64
    OWNER_ID_MUST_BE_ZERO = 15  # house accounts belong to nobody
    OWNER_ID_MUST_NOT_BE_ZERO = 16  # participant accounts belong to someone
    USER_DATA_OUT_OF_RANGE = 17  # 0..MAX_INT64
    EXISTS_WITH_DIFFERENT_FLAGS = 18
    EXISTS_WITH_DIFFERENT_CODE = 19
    EXISTS_WITH_DIFFERENT_OWNER_ID = 20
    EXISTS_WITH_DIFFERENT_USER_DATA = 21
    EXISTS = 22  # an identical account exists: success-equivalent


class CreateTransferResult(IntEnum):
    """Result of one transfer in ``create_transfers``. The check order is in ``create_transfers``."""

    OK = 0
    LINKED_EVENT_FAILED = 1
    LINKED_EVENT_CHAIN_OPEN = 2
    RESERVED_FLAG = 3
    ID_OUT_OF_RANGE = 4
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 5
    PENDING_ID_MUST_BE_ZERO = 6
    PENDING_ID_OUT_OF_RANGE = 7
    PENDING_ID_MUST_BE_DIFFERENT = 8
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 9
    TIMEOUT_OUT_OF_RANGE = 10
    ACCOUNTS_MUST_BE_DIFFERENT = 11
    CODE_OUT_OF_RANGE = 12
    USER_DATA_OUT_OF_RANGE = 13
    AMOUNT_MUST_BE_INTEGER = 14
    AMOUNT_MUST_BE_POSITIVE = 15
    AMOUNT_MUST_NOT_BE_NEGATIVE = 16
    DEBIT_ACCOUNT_NOT_FOUND = 17
    CREDIT_ACCOUNT_NOT_FOUND = 18
    PENDING_TRANSFER_NOT_FOUND = 19
    PENDING_TRANSFER_NOT_PENDING = 20
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 21
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 22
    EXCEEDS_PENDING_TRANSFER_AMOUNT = 23
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 24
    EXISTS_WITH_DIFFERENT_FLAGS = 25
    EXISTS_WITH_DIFFERENT_PENDING_ID = 26
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 27
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 28
    EXISTS_WITH_DIFFERENT_AMOUNT = 29
    EXISTS_WITH_DIFFERENT_TIMEOUT = 30
    EXISTS_WITH_DIFFERENT_CODE = 31
    EXISTS_WITH_DIFFERENT_USER_DATA = 32
    EXISTS = 33  # an identical transfer exists: success-equivalent, nothing changes
    PENDING_TRANSFER_ALREADY_POSTED = 34
    PENDING_TRANSFER_ALREADY_VOIDED = 35
    PENDING_TRANSFER_EXPIRED = 36
    OVERFLOWS_DEBITS = 37
    OVERFLOWS_CREDITS = 38
    OVERFLOWS_TIMEOUT = 39
    EXCEEDS_CREDITS = 40  # the debit account's DEBITS_MUST_NOT_EXCEED_CREDITS limit
    EXCEEDS_DEBITS = 41  # the credit account's CREDITS_MUST_NOT_EXCEED_DEBITS limit


class Account(msgspec.Struct, gc=False):
    """An account. Create it with zero counters and ``ts_ns=0``; the ledger owns the stored copy."""

    account_id: int
    code: int  # AccountCode
    owner_id: int = 0  # participant id; 0 for house accounts
    ledger: int = LEDGER_CNY
    flags: int = AccountFlags.NONE  # must carry CHART[code].limit_flags
    user_data: int = 0  # e.g. the counterparty of a loan account
    debits_pending_fen: int = 0
    debits_posted_fen: int = 0
    credits_pending_fen: int = 0
    credits_posted_fen: int = 0
    ts_ns: int = 0  # creation time, set by the ledger


class Transfer(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """An immutable transfer request and, once stored, record.

    For ``POST_PENDING`` / ``VOID_PENDING``: ``amount_fen`` 0 means the pending amount, and
    ``debit_account_id``, ``credit_account_id``, ``code``, ``user_data`` 0 mean "as the pending transfer";
    the stored record has them filled in.
    """

    transfer_id: int
    debit_account_id: int = 0
    credit_account_id: int = 0
    amount_fen: int = 0
    code: int = 0  # TransferCode
    user_data: int = 0  # order id, trade id, payout id ... for traceability
    flags: int = TransferFlags.NONE
    pending_id: int = 0  # the pending transfer a post or void resolves
    timeout_ns: int = 0  # pending only: expires at creation time + timeout_ns; 0 = never


class Posting(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One row of ``ledger_transfers`` (without the batch ``seq``, which the sequencer adds): both
    accounts of one transfer or expiry. The module docstring gives what each ``entry`` changes."""

    transfer_id: int
    entry: int  # Entry
    debit_account_id: int
    credit_account_id: int
    amount_fen: int  # posted (POSTED, POST_PENDING) or pended (PENDING); 0 for RELEASE
    released_fen: int  # taken off the pending counters (RELEASE, POST_PENDING); else 0
    code: int
    user_data: int
    pending_id: int  # the pending transfer released (RELEASE, POST_PENDING); else 0
    ts_ns: int


class LedgerSnapshot(msgspec.Struct, array_like=True):
    now_ns: int
    accounts: list[Account]
    transfers: list[Transfer]
    pending_status: dict[int, int]
    expires_at_ns: dict[int, int]


# Columns of ``ledger_transfers`` (exchange/migrations/0006_ledger_transfers.sql) and ``ledger_accounts``
# (0002_ledger.sql) in the order of ``posting_records`` / ``account_records``, for COPY (asyncpg
# ``copy_records_to_table(table, records=..., columns=...)``; the sequencer's writer uses pgstore's
# binary encoding of the same rows).
POSTING_COLUMNS: Final = ("seq", "transfer_id", "entry", "debit_account_id", "credit_account_id", "amount_fen",
                          "released_fen", "code", "user_data", "pending_id", "ts_ns")
ACCOUNT_COLUMNS: Final = ("account_id", "code", "owner_id", "ledger", "flags", "user_data", "ts_ns")


def posting_records(seq: int, postings: Iterable[Posting]) -> list[tuple[int, ...]]:
    """Rows for ``ledger_transfers`` in ``POSTING_COLUMNS`` order, all tagged with the batch ``seq``."""
    return [(seq, *msgspec.structs.astuple(p)) for p in postings]


def account_records(accounts: Iterable[Account]) -> list[tuple[int, ...]]:
    """Rows for ``ledger_accounts`` in ``ACCOUNT_COLUMNS`` order (balances live in the postings)."""
    return [(a.account_id, a.code, a.owner_id, a.ledger, a.flags, a.user_data, a.ts_ns) for a in accounts]


# Module-level aliases: a global lookup is cheaper than an enum attribute on the hot path.
_R = CreateTransferResult
_A = CreateAccountResult
_OK = _R.OK
_EXISTS = _R.EXISTS
_LINKED = TransferFlags.LINKED
_PENDING = TransferFlags.PENDING
_POST = TransferFlags.POST_PENDING
_VOID = TransferFlags.VOID_PENDING
_KNOWN_TRANSFER_FLAGS = _LINKED | _PENDING | _POST | _VOID
_RESERVED_TRANSFER_FLAGS = ~_KNOWN_TRANSFER_FLAGS
_PHASE_FLAGS = _PENDING | _POST | _VOID
_RESOLVE_FLAGS = _POST | _VOID
_KNOWN_ACCOUNT_FLAGS = AccountFlags.LINKED | _DR_LIMIT | _CR_LIMIT
_POSTED_E, _PENDING_E, _RELEASE_E, _POST_E = (int(e) for e in Entry)
_ST_PENDING, _ST_POSTED, _ST_VOIDED, _ST_EXPIRED = (int(s) for s in PendingStatus)
_RESOLVED_STATUS_RESULT = {
    _ST_POSTED: _R.PENDING_TRANSFER_ALREADY_POSTED,
    _ST_VOIDED: _R.PENDING_TRANSFER_ALREADY_VOIDED,
    _ST_EXPIRED: _R.PENDING_TRANSFER_EXPIRED,
}
NO_ROWS: Final[tuple[tuple[()], tuple[()]]] = ((), ())  # drain_rows() when nothing was added
_SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(LedgerSnapshot)

# Undo record of one applied chain member: (transfer_id, debit account, its 4 counters before,
# credit account, its 4 counters before, pending id whose status changed or 0, its status before).
_Undo = tuple[int, Account, tuple[int, int, int, int], Account, tuple[int, int, int, int], int, int]


def _counters(a: Account) -> tuple[int, int, int, int]:
    return (a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen, a.credits_posted_fen)


def _set_counters(a: Account, c: tuple[int, int, int, int]) -> None:
    a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen, a.credits_posted_fen = c


class Ledger:
    """Accounts, transfers and the posting rows not yet drained. One instance per core (shard)."""

    def __init__(self) -> None:
        self._accounts: dict[int, Account] = {}
        self._transfers: dict[int, Transfer] = {}
        self._pending_status: dict[int, int] = {}  # pending transfer id -> PendingStatus
        self._expires_at_ns: dict[int, int] = {}  # pending transfer id -> deadline (timeout > 0 only)
        self._expiry_heap: list[tuple[int, int]] = []  # (expires_at_ns, id); stale entries skipped
        self._postings: list[Posting] = []
        self._new_accounts: list[Account] = []
        self._undo: list[_Undo] | None = None  # set while a linked chain runs
        self._now_ns = 0

    # ----------------------------------------------------------------------------------------- accounts

    def create_accounts(self, accounts: Sequence[Account], now_ns: int) -> list[CreateAccountResult]:
        """Create accounts; one result per account, in order (``OK`` or ``EXISTS`` mean success).

        Checks run in the order of ``CreateAccountResult``; chains behave as in ``create_transfers``.
        """
        self._advance_clock(now_ns)
        results: list[CreateAccountResult] = []
        for chain in _chains(accounts, AccountFlags.LINKED):
            if chain[-1].flags & AccountFlags.LINKED:
                results.extend([_A.LINKED_EVENT_FAILED] * (len(chain) - 1))
                results.append(_A.LINKED_EVENT_CHAIN_OPEN)
                continue
            mark = len(self._new_accounts)
            chain_results = [self._create_account(a, now_ns) for a in chain[:1]]
            for a in chain[1:]:
                if chain_results[-1] not in (_A.OK, _A.EXISTS):
                    break
                chain_results.append(self._create_account(a, now_ns))
            if len(chain) > 1 and chain_results[-1] not in (_A.OK, _A.EXISTS):
                for created in self._new_accounts[mark:]:
                    del self._accounts[created.account_id]
                del self._new_accounts[mark:]
                failed = [_A.LINKED_EVENT_FAILED] * len(chain)
                failed[len(chain_results) - 1] = chain_results[-1]
                chain_results = failed
            results.extend(chain_results)
        return results

    def _create_account(self, a: Account, now_ns: int) -> CreateAccountResult:
        flags = a.flags
        if flags & ~_KNOWN_ACCOUNT_FLAGS:
            return _A.RESERVED_FLAG
        if not 0 < a.account_id <= MAX_INT64:
            return _A.ID_OUT_OF_RANGE
        if flags & _DR_LIMIT and flags & _CR_LIMIT:
            return _A.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if a.debits_pending_fen:
            return _A.DEBITS_PENDING_MUST_BE_ZERO
        if a.debits_posted_fen:
            return _A.DEBITS_POSTED_MUST_BE_ZERO
        if a.credits_pending_fen:
            return _A.CREDITS_PENDING_MUST_BE_ZERO
        if a.credits_posted_fen:
            return _A.CREDITS_POSTED_MUST_BE_ZERO
        if a.ts_ns:
            return _A.TIMESTAMP_MUST_BE_ZERO
        if a.ledger not in LEDGERS:
            return _A.LEDGER_UNKNOWN
        chart = CHART.get(a.code)
        if chart is None:
            return _A.CODE_NOT_IN_CHART
        if flags & (_DR_LIMIT | _CR_LIMIT) != chart.limit_flags:
            return _A.FLAGS_MUST_MATCH_CHART
        if not 0 <= a.owner_id <= MAX_INT64:
            return _A.OWNER_ID_OUT_OF_RANGE
        if chart.house and a.owner_id:
            return _A.OWNER_ID_MUST_BE_ZERO
        if not chart.house and not a.owner_id:
            return _A.OWNER_ID_MUST_NOT_BE_ZERO
        if not 0 <= a.user_data <= MAX_INT64:
            return _A.USER_DATA_OUT_OF_RANGE
        e = self._accounts.get(a.account_id)
        if e is not None:
            return _account_exists(a, e)
        # After this point the account must be created.
        stored = Account(a.account_id, a.code, a.owner_id, a.ledger, flags & ~AccountFlags.LINKED,
                         a.user_data, ts_ns=now_ns)
        self._accounts[a.account_id] = stored
        self._new_accounts.append(stored)
        return _A.OK

    # ---------------------------------------------------------------------------------------- transfers

    def create_transfers(self, transfers: Sequence[Transfer], now_ns: int) -> list[CreateTransferResult]:
        """Apply transfers in order; one result per transfer (``OK`` or ``EXISTS`` mean success).

        Checks, in this order (the first failing one is the result):

        1. ``RESERVED_FLAG``, ``ID_OUT_OF_RANGE`` (1..MAX_INT64), ``FLAGS_ARE_MUTUALLY_EXCLUSIVE`` (at
           most one of PENDING, POST_PENDING, VOID_PENDING).
        2. Single-phase and ``PENDING``: ``PENDING_ID_MUST_BE_ZERO``,
           ``TIMEOUT_RESERVED_FOR_PENDING_TRANSFER``, ``TIMEOUT_OUT_OF_RANGE`` (negative),
           ``ACCOUNTS_MUST_BE_DIFFERENT``, ``CODE_OUT_OF_RANGE`` (1..MAX_CODE),
           ``USER_DATA_OUT_OF_RANGE``, ``AMOUNT_MUST_BE_INTEGER``, ``AMOUNT_MUST_BE_POSITIVE``,
           ``DEBIT_ACCOUNT_NOT_FOUND``, ``CREDIT_ACCOUNT_NOT_FOUND``, then the exists family (``EXISTS_WITH_DIFFERENT_``
           FLAGS, DEBIT_ACCOUNT_ID, CREDIT_ACCOUNT_ID, AMOUNT, TIMEOUT, CODE, USER_DATA, else
           ``EXISTS``), ``OVERFLOWS_DEBITS``, ``OVERFLOWS_CREDITS``, ``OVERFLOWS_TIMEOUT``,
           ``EXCEEDS_CREDITS``, ``EXCEEDS_DEBITS``.
        3. ``POST_PENDING`` / ``VOID_PENDING``: ``PENDING_ID_OUT_OF_RANGE``,
           ``PENDING_ID_MUST_BE_DIFFERENT``, ``TIMEOUT_RESERVED_FOR_PENDING_TRANSFER``,
           ``CODE_OUT_OF_RANGE`` (0 allowed), ``USER_DATA_OUT_OF_RANGE``, ``AMOUNT_MUST_BE_INTEGER``,
           ``AMOUNT_MUST_NOT_BE_NEGATIVE``, ``PENDING_TRANSFER_NOT_FOUND``,
           ``PENDING_TRANSFER_NOT_PENDING``, ``PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID`` /
           ``..._CREDIT_ACCOUNT_ID`` (when given), ``EXCEEDS_PENDING_TRANSFER_AMOUNT`` (post) /
           ``PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT`` (void with an amount), the exists family
           (FLAGS, PENDING_ID, AMOUNT, CODE, USER_DATA, else ``EXISTS``),
           ``PENDING_TRANSFER_ALREADY_POSTED`` / ``_VOIDED`` / ``PENDING_TRANSFER_EXPIRED`` (status,
           or ``now_ns`` at or past its deadline). Posting or voiding only lowers the counters'
           totals, so no overflow or limit check can fail.

        The exists family comes before state-dependent checks, so a retry of an applied transfer answers
        ``EXISTS`` even if it could not be applied again. ``LINKED`` is ignored when comparing flags.

        Chains: ``EXISTS`` counts as success inside a chain (retrying a whole applied chain answers
        ``EXISTS`` for each member). When a member fails, it gets its code, every other member
        ``LINKED_EVENT_FAILED``, and the members before it are rolled back. If the batch ends inside a
        chain, its last transfer gets ``LINKED_EVENT_CHAIN_OPEN`` and the others ``LINKED_EVENT_FAILED``.
        """
        if now_ns < self._now_ns:
            self._advance_clock(now_ns)  # raises
        self._now_ns = now_ns
        results: list[CreateTransferResult] = []
        create = self._create_transfer
        n = len(transfers)
        i = 0
        while i < n:
            t = transfers[i]
            if not t.flags & _LINKED:
                results.append(create(t, now_ns))
                i += 1
                continue
            j = i  # the chain is transfers[i:j + 1]: the LINKED run plus the one that closes it
            while j < n and transfers[j].flags & _LINKED:
                j += 1
            if j == n:
                results.extend([_R.LINKED_EVENT_FAILED] * (n - 1 - i))
                results.append(_R.LINKED_EVENT_CHAIN_OPEN)
                break
            if j == n - 1 and i == 0:
                return self._create_transfer_chain(transfers, now_ns)  # the whole batch is one chain
            results.extend(self._create_transfer_chain(transfers[i:j + 1], now_ns))
            i = j + 1
        return results

    def create_transfer(self, t: Transfer, now_ns: int) -> CreateTransferResult:
        """``create_transfers([t], now_ns)[0]`` without the lists: the clearing's path for one transfer."""
        if now_ns < self._now_ns:
            self._advance_clock(now_ns)  # raises
        self._now_ns = now_ns
        if t.flags & _LINKED:  # a batch of one that opens a chain
            return _R.LINKED_EVENT_CHAIN_OPEN
        return self._create_transfer(t, now_ns)

    def _create_transfer_chain(self, chain: Sequence[Transfer], now_ns: int) -> list[CreateTransferResult]:
        undo: list[_Undo] = []
        self._undo = undo
        mark = len(self._postings)
        results: list[CreateTransferResult] = []
        try:
            for t in chain:
                result = self._create_transfer(t, now_ns)
                if result is not _OK and result is not _EXISTS:
                    self._rollback_transfers(undo, mark)
                    failed = [_R.LINKED_EVENT_FAILED] * len(chain)
                    failed[len(results)] = result
                    return failed
                results.append(result)
        finally:
            self._undo = None
        return results

    def _rollback_transfers(self, undo: list[_Undo], posting_mark: int) -> None:
        for transfer_id, dr, dr_before, cr, cr_before, pending_id, status_before in reversed(undo):
            _set_counters(dr, dr_before)
            _set_counters(cr, cr_before)
            t = self._transfers.pop(transfer_id)
            if t.flags & _PENDING:
                del self._pending_status[transfer_id]
                self._expires_at_ns.pop(transfer_id, None)  # its heap entry goes stale
            if pending_id:
                self._pending_status[pending_id] = status_before
        del self._postings[posting_mark:]

    def _create_transfer(self, t: Transfer, now_ns: int) -> CreateTransferResult:
        flags = t.flags
        if flags & _RESERVED_TRANSFER_FLAGS:
            return _R.RESERVED_FLAG
        tid = t.transfer_id
        if not 0 < tid <= MAX_INT64:
            return _R.ID_OUT_OF_RANGE
        phase = flags & _PHASE_FLAGS
        if phase & (phase - 1):  # more than one bit set
            return _R.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if phase & _RESOLVE_FLAGS:
            return self._resolve_pending(t, now_ns)
        if t.pending_id:
            return _R.PENDING_ID_MUST_BE_ZERO
        timeout_ns = t.timeout_ns
        if timeout_ns:  # the two timeout checks, in order, only when there is one
            if not phase:
                return _R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
            if timeout_ns < 0:
                return _R.TIMEOUT_OUT_OF_RANGE
        dr_id = t.debit_account_id
        cr_id = t.credit_account_id
        if dr_id == cr_id:
            return _R.ACCOUNTS_MUST_BE_DIFFERENT
        code = t.code
        if not 0 < code <= MAX_CODE:
            return _R.CODE_OUT_OF_RANGE
        user_data = t.user_data
        if not 0 <= user_data <= MAX_INT64:
            return _R.USER_DATA_OUT_OF_RANGE
        amount = t.amount_fen
        if type(amount) is not int:  # a float or a bool must never become money
            return _R.AMOUNT_MUST_BE_INTEGER
        if amount <= 0:
            return _R.AMOUNT_MUST_BE_POSITIVE
        accounts = self._accounts
        dr = accounts.get(dr_id)
        if dr is None:
            return _R.DEBIT_ACCOUNT_NOT_FOUND
        cr = accounts.get(cr_id)
        if cr is None:
            return _R.CREDIT_ACCOUNT_NOT_FOUND
        # One asset ledger (CNY) exists, so accounts always share it; a second currency would add
        # an ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER check here.
        transfers = self._transfers
        e = transfers.get(tid)
        if e is not None:
            return _transfer_exists(t, e)
        dr_pending, dr_posted = dr.debits_pending_fen, dr.debits_posted_fen
        cr_pending, cr_posted = cr.credits_pending_fen, cr.credits_posted_fen
        dr_debits = dr_pending + dr_posted + amount  # the debit account's debits after the transfer
        if dr_debits > MAX_INT64:
            return _R.OVERFLOWS_DEBITS
        cr_credits = cr_pending + cr_posted + amount
        if cr_credits > MAX_INT64:
            return _R.OVERFLOWS_CREDITS
        if timeout_ns and now_ns + timeout_ns > MAX_INT64:
            return _R.OVERFLOWS_TIMEOUT
        if dr.flags & _DR_LIMIT and dr_debits > dr.credits_posted_fen:
            return _R.EXCEEDS_CREDITS
        if cr.flags & _CR_LIMIT and cr_credits > cr.debits_posted_fen:
            return _R.EXCEEDS_DEBITS
        # After this point the transfer must succeed.
        if self._undo is not None:
            self._undo.append((tid, dr, (dr_pending, dr_posted, dr.credits_pending_fen, dr.credits_posted_fen),
                               cr, (cr.debits_pending_fen, cr.debits_posted_fen, cr_pending, cr_posted), 0, 0))
        transfers[tid] = t
        if phase:
            dr.debits_pending_fen = dr_pending + amount
            cr.credits_pending_fen = cr_pending + amount
            self._pending_status[tid] = _ST_PENDING
            if timeout_ns:
                expires_at_ns = now_ns + timeout_ns
                self._expires_at_ns[tid] = expires_at_ns
                heapq.heappush(self._expiry_heap, (expires_at_ns, tid))
            self._postings.append(Posting(tid, _PENDING_E, dr_id, cr_id, amount, 0, code, user_data, 0, now_ns))
        else:
            dr.debits_posted_fen = dr_posted + amount
            cr.credits_posted_fen = cr_posted + amount
            self._postings.append(Posting(tid, _POSTED_E, dr_id, cr_id, amount, 0, code, user_data, 0, now_ns))
        return _OK

    def _resolve_pending(self, t: Transfer, now_ns: int) -> CreateTransferResult:
        """Post or void the pending transfer ``t.pending_id`` (checks of step 3, then apply)."""
        flags = t.flags
        pending_id = t.pending_id
        tid = t.transfer_id
        if not 0 < pending_id <= MAX_INT64:
            return _R.PENDING_ID_OUT_OF_RANGE
        if pending_id == tid:
            return _R.PENDING_ID_MUST_BE_DIFFERENT
        if t.timeout_ns:
            return _R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if not 0 <= t.code <= MAX_CODE:
            return _R.CODE_OUT_OF_RANGE
        if not 0 <= t.user_data <= MAX_INT64:
            return _R.USER_DATA_OUT_OF_RANGE
        amount = t.amount_fen
        if type(amount) is not int:
            return _R.AMOUNT_MUST_BE_INTEGER
        if amount < 0:
            return _R.AMOUNT_MUST_NOT_BE_NEGATIVE
        transfers = self._transfers
        p = transfers.get(pending_id)
        if p is None:
            return _R.PENDING_TRANSFER_NOT_FOUND
        if not p.flags & _PENDING:
            return _R.PENDING_TRANSFER_NOT_PENDING
        dr_id, cr_id, held = p.debit_account_id, p.credit_account_id, p.amount_fen
        if t.debit_account_id and t.debit_account_id != dr_id:
            return _R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id and t.credit_account_id != cr_id:
            return _R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        post = flags & _POST
        if post:
            if amount > held:
                return _R.EXCEEDS_PENDING_TRANSFER_AMOUNT
        elif amount and amount != held:
            return _R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        code, user_data = t.code or p.code, t.user_data or p.user_data
        resolved = Transfer(tid, dr_id, cr_id, (amount or held) if post else held, code, user_data, flags,
                            pending_id, 0)
        e = transfers.get(tid)
        if e is not None:
            return _transfer_exists(resolved, e)
        status = self._pending_status[pending_id]
        if status != _ST_PENDING:
            return _RESOLVED_STATUS_RESULT[status]
        if self._expires_at_ns:  # empty unless some transfer ever had a timeout
            expires_at_ns = self._expires_at_ns.get(pending_id)
            if expires_at_ns is not None and now_ns >= expires_at_ns:
                return _R.PENDING_TRANSFER_EXPIRED
        # After this point the transfer must succeed.
        dr = self._accounts[dr_id]
        cr = self._accounts[cr_id]
        if self._undo is not None:
            self._undo.append((tid, dr, _counters(dr), cr, _counters(cr), pending_id, status))
        transfers[tid] = resolved
        dr.debits_pending_fen -= held
        cr.credits_pending_fen -= held
        if post:
            posted = resolved.amount_fen
            dr.debits_posted_fen += posted
            cr.credits_posted_fen += posted
            self._pending_status[pending_id] = _ST_POSTED
            self._postings.append(
                Posting(tid, _POST_E, dr_id, cr_id, posted, held, code, user_data, pending_id, now_ns))
        else:
            self._pending_status[pending_id] = _ST_VOIDED
            self._postings.append(
                Posting(tid, _RELEASE_E, dr_id, cr_id, 0, held, code, user_data, pending_id, now_ns))
        return _OK

    def expire_pending(self, now_ns: int) -> list[int]:
        """Release every pending transfer whose deadline is at or before ``now_ns``.

        Returns their ids in the order expired: by deadline, then by id (deterministic). The core calls
        this on every clock tick; until then a timed-out transfer still holds its amount, but it can no
        longer be posted or voided (``PENDING_TRANSFER_EXPIRED``).
        """
        self._advance_clock(now_ns)
        heap = self._expiry_heap
        expired: list[int] = []
        while heap and heap[0][0] <= now_ns:
            expires_at_ns, pid = heapq.heappop(heap)
            # Skip stale entries: resolved since, or rolled back and re-created with another deadline.
            if self._pending_status.get(pid) != _ST_PENDING or self._expires_at_ns.get(pid) != expires_at_ns:
                continue
            p = self._transfers[pid]
            held = p.amount_fen
            self._accounts[p.debit_account_id].debits_pending_fen -= held
            self._accounts[p.credit_account_id].credits_pending_fen -= held
            self._postings.append(Posting(pid, _RELEASE_E, p.debit_account_id, p.credit_account_id, 0, held, p.code,
                                          p.user_data, pid, now_ns))
            self._pending_status[pid] = _ST_EXPIRED
            expired.append(pid)
        return expired

    def _advance_clock(self, now_ns: int) -> None:
        if now_ns < self._now_ns:
            raise ValueError(f"ledger time must not go backwards: {now_ns} < {self._now_ns}")
        self._now_ns = now_ns

    # ------------------------------------------------------------------------------------- persistence

    def drain_postings(self) -> list[Posting]:
        """Posting rows produced since the last drain, in order."""
        postings = self._postings
        self._postings = []
        return postings

    def drain_rows(self) -> tuple[Sequence[Account], Sequence[Posting]]:
        """``(drain_new_accounts(), drain_postings())``, but ``NO_ROWS`` (empty tuples, no allocation)
        when there is nothing: the clearing drains after every command, and most add no account."""
        if self._new_accounts:
            return self.drain_new_accounts(), self.drain_postings()
        if not self._postings:
            return NO_ROWS
        postings = self._postings
        self._postings = []
        return (), postings

    def drain_new_accounts(self) -> list[Account]:
        """Accounts created since the last drain (copies; counters as created: zero)."""
        new = [msgspec.structs.replace(a, debits_pending_fen=0, debits_posted_fen=0,
                                       credits_pending_fen=0, credits_posted_fen=0)
               for a in self._new_accounts]
        self._new_accounts = []
        return new

    def snapshot(self, *, allow_undrained: bool = False) -> bytes:
        """Encode the whole state (msgpack). Drain postings and new accounts first: they are not kept.

        ``allow_undrained=True`` is for a caller that drains them into the same durable batch itself
        (the clearing's snapshot is taken when a batch is sealed, before its postings are written).
        """
        if (self._postings or self._new_accounts) and not allow_undrained:
            raise ValueError("drain postings and new accounts before taking a snapshot")
        return _SNAPSHOT_ENCODER.encode(self._snapshot_struct())

    @classmethod
    def restore(cls, data: bytes) -> Ledger:
        """Rebuild a ledger from ``snapshot()`` bytes."""
        snap = _SNAPSHOT_DECODER.decode(data)
        ledger = cls()
        ledger._now_ns = snap.now_ns
        ledger._accounts = {a.account_id: a for a in snap.accounts}
        ledger._transfers = {t.transfer_id: t for t in snap.transfers}
        ledger._pending_status = dict(snap.pending_status)
        ledger._expires_at_ns = dict(snap.expires_at_ns)
        ledger._expiry_heap = sorted(
            (at, pid) for pid, at in ledger._expires_at_ns.items()
            if ledger._pending_status[pid] == _ST_PENDING
        )
        return ledger

    def state_hash(self) -> str:
        """blake2b (hex) of the canonical encoding: everything sorted by id, so equal state, equal hash."""
        return hashlib.blake2b(_SNAPSHOT_ENCODER.encode(self._snapshot_struct()), digest_size=32).hexdigest()

    def _snapshot_struct(self) -> LedgerSnapshot:
        return LedgerSnapshot(
            now_ns=self._now_ns,
            accounts=[self._accounts[k] for k in sorted(self._accounts)],
            transfers=[self._transfers[k] for k in sorted(self._transfers)],
            pending_status={k: self._pending_status[k] for k in sorted(self._pending_status)},
            expires_at_ns={k: self._expires_at_ns[k] for k in sorted(self._expires_at_ns)},
        )

    # ----------------------------------------------------------------------------------------- queries

    @property
    def now_ns(self) -> int:
        return self._now_ns

    def account(self, account_id: int) -> Account | None:
        """A copy of the account, or None."""
        a = self._accounts.get(account_id)
        return None if a is None else msgspec.structs.replace(a)

    def accounts(self) -> list[Account]:
        """Copies of all accounts, by id."""
        return [msgspec.structs.replace(self._accounts[k]) for k in sorted(self._accounts)]

    def available_fen(self, account_id: int) -> int:
        """credits_posted - debits_posted - debits_pending: what a DEBITS_MUST_NOT_EXCEED_CREDITS account
        can still be debited (pending holds count). 0 for an unknown account. No copy: for hot paths."""
        a = self._accounts.get(account_id)
        if a is None:
            return 0
        return a.credits_posted_fen - a.debits_posted_fen - a.debits_pending_fen

    def transfer(self, transfer_id: int) -> Transfer | None:
        """The stored transfer (a post or void with its fields resolved), or None."""
        return self._transfers.get(transfer_id)

    def pending_status(self, transfer_id: int) -> PendingStatus | None:
        status = self._pending_status.get(transfer_id)
        return None if status is None else PendingStatus(status)

    def validate(self) -> None:
        """Check internal invariants; raise AssertionError naming the first one broken."""
        totals = [0, 0, 0, 0]
        for a in self._accounts.values():
            c = _counters(a)
            if min(c) < 0:
                raise AssertionError(f"account {a.account_id} has a negative counter {c}")
            if a.flags & _DR_LIMIT and c[0] + c[1] > c[3]:
                raise AssertionError(f"account {a.account_id} debits exceed credits {c}")
            if a.flags & _CR_LIMIT and c[2] + c[3] > c[1]:
                raise AssertionError(f"account {a.account_id} credits exceed debits {c}")
            totals = [x + y for x, y in zip(totals, c, strict=True)]
        if totals[0] != totals[2] or totals[1] != totals[3]:
            raise AssertionError(f"ledger does not balance: {totals}")
        held = sum(self._transfers[pid].amount_fen
                   for pid, s in self._pending_status.items() if s == _ST_PENDING)
        if held != totals[0]:
            raise AssertionError(f"pending counters {totals[0]} != open pending transfers {held}")


def _account_exists(a: Account, e: Account) -> CreateAccountResult:
    if (a.flags & ~AccountFlags.LINKED) != e.flags:
        return _A.EXISTS_WITH_DIFFERENT_FLAGS
    if a.code != e.code:
        return _A.EXISTS_WITH_DIFFERENT_CODE
    if a.owner_id != e.owner_id:
        return _A.EXISTS_WITH_DIFFERENT_OWNER_ID
    if a.user_data != e.user_data:
        return _A.EXISTS_WITH_DIFFERENT_USER_DATA
    return _A.EXISTS


def _transfer_exists(t: Transfer, e: Transfer) -> CreateTransferResult:
    """Compare a request (for post/void: already resolved against its pending transfer) with the record."""
    if (t.flags ^ e.flags) & ~_LINKED:
        return _R.EXISTS_WITH_DIFFERENT_FLAGS
    if t.pending_id != e.pending_id:
        return _R.EXISTS_WITH_DIFFERENT_PENDING_ID
    if t.debit_account_id != e.debit_account_id:
        return _R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if t.credit_account_id != e.credit_account_id:
        return _R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    if t.amount_fen != e.amount_fen:
        return _R.EXISTS_WITH_DIFFERENT_AMOUNT
    if t.timeout_ns != e.timeout_ns:
        return _R.EXISTS_WITH_DIFFERENT_TIMEOUT
    if t.code != e.code:
        return _R.EXISTS_WITH_DIFFERENT_CODE
    if t.user_data != e.user_data:
        return _R.EXISTS_WITH_DIFFERENT_USER_DATA
    return _R.EXISTS


def _chains(items: Sequence[Account], linked_flag: int) -> Iterable[Sequence[Account]]:
    """Split a batch into chains: a run of linked items plus the one that closes it, or one item."""
    start = 0
    for k, item in enumerate(items):
        if not item.flags & linked_flag:
            yield items[start:k + 1]
            start = k + 1
    if start < len(items):
        yield items[start:]  # an open chain: its last item is still flagged
