"""The ledger's records and codes: accounts, transfers, posting rows, the chart of accounts and the
result codes (``ledger.py`` documents the model and owns the ``Ledger`` that applies them).

They live apart from ``ledger.py`` because that module is compiled (mypyc, ``setup.py``) and these are
msgspec structs and enums, which stay ordinary Python classes: the ledger reads them at its boundary
(``Transfer`` requests in, ``Posting`` rows and ``Account`` copies out) and keeps native records inside.
``ledger.py`` re-exports every name here, so callers import them from either module.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    INTEREST_COLLECTED = 625
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
        "advances and credit-line draws, credited by repayments and write-offs; cannot be repaid beyond "
        "what is owed."),
    AccountCode.LOANS_FUNDED: ChartEntry(
        "credit", _DR_LIMIT, False,
        "Contra of LOANS_RECEIVABLE (owner: financier, user_data: borrower): the financier's principal "
        "out on loan. Credited together with every debit of LOANS_RECEIVABLE, debited with every "
        "credit, so both always show the same outstanding principal. The cash itself moves between "
        "FINANCIER_FUNDS and the borrower's accounts."),
    AccountCode.INTEREST_RECEIVABLE: ChartEntry(
        "debit", _CR_LIMIT, False,
        "Interest accrued and not yet paid (owner: financier, user_data: borrower): debited by daily "
        "accrual, credited when the borrower or the subsidy fund pays it or the financier writes it off."),
    AccountCode.INTEREST_COLLECTED: ChartEntry(
        "debit", _CR_LIMIT, False,
        "Interest a financier has collected (owner: financier): debited with every payment of interest, "
        "as INTEREST_RECEIVABLE is credited, while the cash itself moves from the payer to "
        "FINANCIER_FUNDS; never credited. The part of INTEREST_INCOME received in cash, so INTEREST_INCOME "
        "= INTEREST_RECEIVABLE + INTEREST_COLLECTED for every financier."),
    AccountCode.INTEREST_INCOME: ChartEntry(
        "credit", AccountFlags.NONE, False,
        "Interest a financier has earned (owner: financier): credited by daily accrual; collecting the "
        "interest leaves it as it is (the income was earned when it accrued). Debited only when the "
        "financier writes interest off: income that will never be received is reversed."),
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
    LOAN_WRITE_OFF = 37  # a financier gives up a claim: the loan's principal and interest due are closed
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
    # An id at or below the highest id the ledger has forgotten (``Ledger.forget``) and no longer holds:
    # a retry of a transfer final for longer than the retention window, or an id reused out of order.
    # Nothing is applied; ``ledger_transfers`` (unique by transfer id and entry) holds the original.
    ID_FORGOTTEN = 42


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
    # Optional and last (left out when empty and 0, so a state without them encodes to the bytes earlier
    # versions wrote): the highest forgotten id, and every final transfer still held, oldest first
    # (``Ledger.forget``), as runs of one time: [final_at_ns, transfer id, transfer id, ...].
    forgotten_id: int = 0
    final: list[list[int]] = []
    # Optional and last too: the parked accounts (``Ledger.park``: zero balance, nothing pending, no use
    # expected), each as one array (account_id, code, owner_id, ledger, flags, user_data, ts_ns, posted_fen):
    # its debits and credits posted are both ``posted_fen``, its pending counters 0. An array of 8 ints,
    # where an ``Account`` in ``accounts`` encodes as a map of its 11 named fields.
    parked: list[tuple[int, int, int, int, int, int, int, int]] = []


# Columns of ``ledger_transfers`` (exchange/migrations/0006_ledger_transfers.sql) and ``ledger_accounts``
# (0002_ledger.sql) in the order of ``posting_records`` / ``account_records``, for COPY (asyncpg
# ``copy_records_to_table(table, records=..., columns=...)``; the sequencer's writer uses pgstore's
# binary encoding of the same rows).
POSTING_COLUMNS: Final = ("seq", "transfer_id", "entry", "debit_account_id", "credit_account_id", "amount_fen",
                          "released_fen", "code", "user_data", "pending_id", "ts_ns")
ACCOUNT_COLUMNS: Final = ("account_id", "code", "owner_id", "ledger", "flags", "user_data", "ts_ns")


# Ledger.drain_rows() when nothing was added. Typed as a tuple of any length: compiled code unboxes a
# fixed-length one and boxes a new copy where it hands it on, and callers test ``is NO_ROWS``.
NO_ROWS: tuple[tuple[()], ...] = ((), ())


def posting_records(seq: int, postings: Iterable[Posting]) -> list[tuple[int, ...]]:
    """Rows for ``ledger_transfers`` in ``POSTING_COLUMNS`` order, all tagged with the batch ``seq``."""
    return [(seq, *msgspec.structs.astuple(p)) for p in postings]


def account_records(accounts: Iterable[Account]) -> list[tuple[int, ...]]:
    """Rows for ``ledger_accounts`` in ``ACCOUNT_COLUMNS`` order (balances live in the postings)."""
    return [(a.account_id, a.code, a.owner_id, a.ledger, a.flags, a.user_data, a.ts_ns) for a in accounts]
