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

Memory: only what is open
-------------------------
The ledger holds its accounts, every pending transfer, and the transfers that became final (posted,
voided, expired, or single-phase) less than a retention window ago. ``forget(before_ns)`` (the
clearing calls it on every clock tick, with the tick's time less the window: default 24 h, carried by
the ``ClockTick`` command, so replay forgets exactly what the live core forgot) drops every transfer
that became final before ``before_ns``, oldest first. What it forgets is in ``ledger_transfers``
for good. A transfer id is recognised as long as it is held: an identical retry answers ``EXISTS``,
a conflicting one ``EXISTS_WITH_DIFFERENT_*``. Once forgotten, any transfer with an id at or below the
highest id forgotten that the ledger does not hold is refused ``ID_FORGOTTEN`` (nothing applied: a
retry from beyond the window cannot apply twice); ids above it are new. So ids must grow, as
TigerBeetle advises for its own: the clearing numbers its transfers from one counter, and a
post or void of a forgotten pending transfer is ``PENDING_TRANSFER_NOT_FOUND``. The primary key of
``ledger_transfers`` (transfer id, entry) would refuse a transfer written twice in any case.
Snapshots hold the same live state, so their size follows what is open, not history.

An account with nothing in it (zero balance, nothing pending) that its owner is not expected to use
soon, such as the loan accounts of a borrower who has repaid everything, may be parked (``park``, the
clearing's choice): it is still an account of the ledger (``account``, ``accounts``, ``validate`` and
``available_fen`` read it as before), but out of the accounts transfers look up until ``unpark`` brings
it back, counters intact, and snapshots list it as one array of 8 ints instead of a map of 11 named
fields. Parking writes no row: the account is in ``ledger_accounts`` already, its balance is the
postings'.

Validation happens in a fixed order (``CreateTransferResult`` lists the codes; the order is spelled out
in ``Ledger.create_transfers``); state is changed only after the last check passes.
``create_transfer(t, now_ns)`` answers exactly as ``create_transfers([t], now_ns)[0]`` without the
lists: the clearing's path for a lone transfer (most of its transfers), chains go through
``create_transfers``. ``create_transfer_of`` is ``create_transfer`` given the fields instead of a struct
(the ledger makes only the transfer it keeps: the clearing's holds, fills and releases),
``create_chain`` is ``create_transfers`` for a batch built as one chain, and ``create_pair_of`` is
``create_chain`` of two transfers given by their fields (a partial fill's post and re-hold). Every
check runs on every path.

Compiled
--------
This module is compiled with mypyc (``setup.py``; it runs as plain Python where no build exists). Its
records and codes (``Account``, ``Transfer``, ``Posting``, the enums, ``CHART``) are msgspec structs and
enums, which stay ordinary classes: they live in ``ledger_records.py`` and are re-exported here. The
ledger keeps its accounts as native records (``_Account``: compiled, its counters are C fields, where
a msgspec struct's fields would be read through the generic attribute protocol), reads a ``Transfer``
once as a tuple (``msgspec.structs.astuple``), and passes ids, codes and times on as the int objects
they arrived as (``Boxed``), so no posting boxes them anew. The ledger benchmark measures it.

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
from typing import Any, Final, TypeAlias

import msgspec
from msgspec.structs import astuple

from exchange.settlement.ledger_records import (
    ACCOUNT_COLUMNS,
    CHART,
    LEDGER_CNY,
    LEDGERS,
    MAX_CODE,
    MAX_INT64,
    NO_ROWS,
    POSTING_COLUMNS,
    Account,
    AccountCode,
    AccountFlags,
    ChartEntry,
    CreateAccountResult,
    CreateTransferResult,
    Entry,
    LedgerSnapshot,
    PendingStatus,
    Posting,
    PostingSide,
    Transfer,
    TransferCode,
    TransferFlags,
    account_records,
    posting_records,
)

__all__ = [
    "ACCOUNT_COLUMNS", "CHART", "LEDGERS", "LEDGER_CNY", "MAX_CODE", "MAX_INT64", "NO_ROWS", "POSTING_COLUMNS",
    "Account", "AccountCode", "AccountFlags", "ChartEntry", "CreateAccountResult", "CreateTransferResult", "Entry",
    "Ledger", "LedgerSnapshot", "PendingStatus", "Posting", "PostingSide", "Transfer", "TransferCode",
    "TransferFlags", "account_records", "posting_records",
]  # fmt: skip

# A value the ledger passes on unchanged (ids, codes, user data, time): typed Any, so that compiled it
# stays the int object it arrived as, instead of being unboxed and boxed anew into every Posting.
Boxed: TypeAlias = Any

# A Transfer's fields by position (``msgspec.structs.astuple``): compiled, one tuple of all fields costs
# less than two attribute reads of a msgspec struct. Checked against the struct at import.
if Transfer.__struct_fields__ != (
    "transfer_id", "debit_account_id", "credit_account_id", "amount_fen", "code", "user_data", "flags",
    "pending_id", "timeout_ns",
):  # fmt: skip
    raise ImportError("Transfer's fields changed: update how ledger.py unpacks them")

# Module-level constants are Final: compiled, each is a C static instead of a module-dict lookup.
_R: Final = CreateTransferResult
_A: Final = CreateAccountResult
_OK: Final = CreateTransferResult.OK
_EXISTS: Final = CreateTransferResult.EXISTS
_A_OK: Final = CreateAccountResult.OK
_A_EXISTS: Final = CreateAccountResult.EXISTS
_DR_LIMIT: Final = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
_CR_LIMIT: Final = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
_LINKED: Final = TransferFlags.LINKED
_PENDING: Final = TransferFlags.PENDING
_POST: Final = TransferFlags.POST_PENDING
_VOID: Final = TransferFlags.VOID_PENDING
_KNOWN_TRANSFER_FLAGS: Final = _LINKED | _PENDING | _POST | _VOID
_RESERVED_TRANSFER_FLAGS: Final = ~_KNOWN_TRANSFER_FLAGS
_PHASE_FLAGS: Final = _PENDING | _POST | _VOID
_RESOLVE_FLAGS: Final = _POST | _VOID
_KNOWN_ACCOUNT_FLAGS: Final = AccountFlags.LINKED | _DR_LIMIT | _CR_LIMIT
_POSTED_E: Final = int(Entry.POSTED)
_PENDING_E: Final = int(Entry.PENDING)
_RELEASE_E: Final = int(Entry.RELEASE)
_POST_E: Final = int(Entry.POST_PENDING)
_ST_PENDING: Final = int(PendingStatus.PENDING)
_ST_POSTED: Final = int(PendingStatus.POSTED)
_ST_VOIDED: Final = int(PendingStatus.VOIDED)
_ST_EXPIRED: Final = int(PendingStatus.EXPIRED)
# The entries, statuses and 0 that go into postings and the status map, as objects: compiled, a native int
# constant is boxed anew at every use where an object is wanted (a call each, for every transfer)
_ZERO_B: Final[Boxed] = 0
_POSTED_EB: Final[Boxed] = _POSTED_E
_PENDING_EB: Final[Boxed] = _PENDING_E
_RELEASE_EB: Final[Boxed] = _RELEASE_E
_POST_EB: Final[Boxed] = _POST_E
_ST_POSTED_B: Final[Boxed] = _ST_POSTED
_ST_VOIDED_B: Final[Boxed] = _ST_VOIDED
_RESOLVED_STATUS_RESULT: Final = {
    _ST_POSTED: CreateTransferResult.PENDING_TRANSFER_ALREADY_POSTED,
    _ST_VOIDED: CreateTransferResult.PENDING_TRANSFER_ALREADY_VOIDED,
    _ST_EXPIRED: CreateTransferResult.PENDING_TRANSFER_EXPIRED,
}
# Compiled, an int up to this is held unboxed ("short"); comparing one with MAX_INT64, which is not,
# would box it first. ``_fits_int64`` compares with this bound first, so the usual case stays unboxed.
_SHORT_MAX: Final = 2**62 - 1
# What drain_rows() returns: (new accounts, postings). Typed Any, not as the tuple it is: compiled, a
# fixed-length tuple is passed unboxed and boxed anew where it leaves, and ``NO_ROWS`` (drain_rows()
# when nothing was added) must stay the one object, which callers test with ``is`` and never allocate.
CommandRows: TypeAlias = Any
_NO_ROWS: Final[CommandRows] = NO_ROWS
_SNAPSHOT_ENCODER: Final = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER: Final = msgspec.msgpack.Decoder(LedgerSnapshot)
_astuple: Final = astuple
_Posting: Final = Posting
_Transfer: Final = Transfer


def _fits_int64(value: int) -> bool:
    """``value <= MAX_INT64`` (PostgreSQL bigint), without boxing ``value`` when compiled."""
    return value <= _SHORT_MAX or value <= MAX_INT64


# Range checks of the ids, codes and user data a transfer passes on as objects (``Boxed``): compiled,
# the call unboxes the value once (a TypeError for what is no int at all) and compares native ints,
# where comparing the objects would take two generic rich comparisons.
def _is_id(value: int) -> bool:
    return value > 0 and _fits_int64(value)


def _is_forgotten(value: int, forgotten_id: int) -> bool:
    """``value <= forgotten_id``, comparing native ints (``value`` is a transfer id passed on as an object)."""
    return value <= forgotten_id


def _is_same(value: int, other: int) -> bool:
    """``value == other`` for two ids passed on as objects, compared as native ints (a generic rich comparison
    inline)."""
    return value == other


def _is_earlier(now_ns: int, clock_ns: int) -> bool:
    """``now_ns < clock_ns`` for a time passed on as an object: compiled, comparing it with the ledger's native
    clock inline would box the clock (a new int object at every transfer) for a generic comparison."""
    return now_ns < clock_ns


def _is_user_data(value: int) -> bool:
    return value >= 0 and _fits_int64(value)


def _is_code(value: int, low: int) -> bool:
    return low <= value <= MAX_CODE


def _is_int(value: object) -> bool:
    """``type(value) is int``, tested in a call: compiled, the test written inline narrows ``value`` to a native
    int, and every record the amount then goes into (the transfer, its posting) would box a new int object
    instead of taking the one that came."""
    return type(value) is int


class _Account:
    """The ledger's own record of an account: its counters are native fields when compiled (reading and
    writing a msgspec struct's fields from compiled code costs more than from the interpreter). The
    msgspec ``Account`` is what enters (``create_accounts``) and leaves (copies, snapshots)."""

    __slots__ = (
        "account_id", "code", "credits_pending_fen", "credits_posted_fen", "debits_pending_fen", "debits_posted_fen",
        "flags", "ledger", "owner_id", "ts_ns", "user_data",
    )  # fmt: skip

    def __init__(self, account_id: int, code: int, owner_id: int, ledger: int, flags: int, user_data: int,
                 ts_ns: int) -> None:  # fmt: skip
        self.account_id = account_id
        self.code = code
        self.owner_id = owner_id
        self.ledger = ledger
        self.flags = flags
        self.user_data = user_data
        self.ts_ns = ts_ns
        self.debits_pending_fen = 0
        self.debits_posted_fen = 0
        self.credits_pending_fen = 0
        self.credits_posted_fen = 0

    @staticmethod
    def of(a: Account) -> _Account:
        """From a snapshot's record, counters included."""
        stored = _Account(a.account_id, a.code, a.owner_id, a.ledger, a.flags, a.user_data, a.ts_ns)
        stored.set_counters((a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen, a.credits_posted_fen))
        return stored

    def record(self, with_counters: bool = True) -> Account:
        """A msgspec copy (counters zero, as created, unless ``with_counters``)."""
        c = self.counters() if with_counters else (0, 0, 0, 0)
        return Account(self.account_id, self.code, self.owner_id, self.ledger, self.flags, self.user_data,
                       c[0], c[1], c[2], c[3], self.ts_ns)  # fmt: skip

    def counters(self) -> tuple[int, int, int, int]:
        return (self.debits_pending_fen, self.debits_posted_fen, self.credits_pending_fen, self.credits_posted_fen)

    def set_counters(self, c: tuple[int, int, int, int]) -> None:
        self.debits_pending_fen, self.debits_posted_fen, self.credits_pending_fen, self.credits_posted_fen = c


# Undo record of one applied chain member: (transfer_id, debit account, credit account, its posting's entry,
# amount, released amount, pending id whose status changed or 0, its status before). The amounts are the
# posting's own objects: rolling back subtracts what the entry added (and adds back what it released), in
# reverse order, which restores every counter exactly without copying any (compiled, a copy of an account's
# four counters boxes four ints into a new tuple, twice per member).
_Undo: TypeAlias = tuple[Boxed, _Account, _Account, int, Boxed, Boxed, Boxed, int]


class Ledger:
    """Accounts, transfers and the posting rows not yet drained. One instance per core (shard)."""

    def __init__(self) -> None:
        self._accounts: dict[int, _Account] = {}
        # parked accounts (see "Memory"): out of ``_accounts``, which transfers look up, until unparked
        self.parked: dict[int, _Account] = {}
        self._transfers: dict[int, Transfer] = {}
        # A held pending transfer's status once it is no longer PENDING (POSTED, VOIDED, EXPIRED); a held
        # pending transfer absent from it is still PENDING. Snapshots list every held pending transfer's status
        # (``pending_status``), built from this; only the resolution writes here, not every hold (compiled, a
        # dict store per pending transfer saved: every buy's hold and every partial fill's re-hold).
        self._resolved: dict[int, int] = {}
        self._expires_at_ns: dict[int, int] = {}  # pending transfer id -> deadline (timeout > 0 only)
        self._expiry_heap: list[tuple[int, int]] = []  # (expires_at_ns, id); stale entries skipped
        self._postings: list[Posting] = []
        self._new_accounts: list[_Account] = []
        # how many of ``_new_accounts`` a caller queueing rows per command has closed (``close_rows``): only an
        # account of the rows still open is too new to park
        self._closed_accounts = 0
        self._undo: list[_Undo] | None = None  # set while a linked chain runs
        self._now_ns = 0
        # Every final transfer held, in the order they became final (ledger time never goes backwards, so
        # oldest first): its id and when, as two lists in step from ``_final_head`` on (the objects the
        # transfer came with: no tuple per transfer for the collector to track; compiled, a list append is
        # a native call where a deque's is a generic method call). A resolved pending transfer is queued
        # at its resolution, with the transfer that resolved it. forget() moves the head.
        self._final: list[Boxed] = []
        self._final_at: list[Boxed] = []
        self._final_head = 0
        self._forgotten_id = 0  # the highest id forget() dropped: ids up to it that are not held are refused
        # At least every id held or forgotten (raised by a new transfer's id as it is checked, kept by a refusal or
        # a rollback): a transfer above it needs neither the lookup of its id nor the forgotten check (not state:
        # restore recomputes it; compiled, one native comparison for the clearing's ever-growing ids)
        self._top_id = 0
        # Set by restore() when the snapshot lists no final transfer: one written before forget()
        # existed may hold final transfers that were never queued; the first forget() queues them.
        self._unqueued_final = False

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
                if chain_results[-1] not in (_A_OK, _A_EXISTS):
                    break
                chain_results.append(self._create_account(a, now_ns))
            if len(chain) > 1 and chain_results[-1] not in (_A_OK, _A_EXISTS):
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
        stored = _Account(a.account_id, a.code, a.owner_id, a.ledger, flags & ~AccountFlags.LINKED, a.user_data,
                          now_ns)  # fmt: skip
        self._accounts[a.account_id] = stored
        self._new_accounts.append(stored)
        return _A_OK

    def park(self, account_id: int) -> bool:
        """Park an account that has nothing in it: zero balance, no pending debit or credit, created before
        the rows last drained or closed (see "Memory"). Whether it was parked (False: unknown, parked already, or not
        empty). Transfers naming it are refused ``*_ACCOUNT_NOT_FOUND`` until ``unpark``."""
        a = self._accounts.get(account_id)
        if (a is None or a.debits_pending_fen or a.credits_pending_fen or a.debits_posted_fen != a.credits_posted_fen
                or a in self._new_accounts[self._closed_accounts:]):  # fmt: skip
            return False
        del self._accounts[account_id]
        self.parked[account_id] = a
        return True

    def unpark(self, account_id: int) -> None:
        """Bring a parked account back among those transfers look up (no-op for any other id)."""
        a = self.parked.pop(account_id, None)
        if a is not None:
            self._accounts[account_id] = a

    # ---------------------------------------------------------------------------------------- transfers

    def create_transfers(self, transfers: Sequence[Transfer], now_ns: Boxed) -> list[CreateTransferResult]:
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
        if _is_earlier(now_ns, self._now_ns):
            self._advance_clock(now_ns)  # raises
        self._now_ns = now_ns
        results: list[CreateTransferResult] = []
        n = len(transfers)
        i = 0
        while i < n:
            t = transfers[i]
            f = _astuple(t)
            if not f[6] & _LINKED:
                results.append(self._create_transfer(t, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], now_ns))
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

    def create_transfer(self, t: Transfer, now_ns: Boxed) -> CreateTransferResult:
        """``create_transfers([t], now_ns)[0]`` without the lists: the clearing's path for one transfer."""
        if _is_earlier(now_ns, self._now_ns):
            self._advance_clock(now_ns)  # raises
        self._now_ns = now_ns
        f = _astuple(t)
        if f[6] & _LINKED:  # a batch of one that opens a chain
            return _R.LINKED_EVENT_CHAIN_OPEN
        return self._create_transfer(t, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], now_ns)

    def create_transfer_of(
        self, tid: Boxed, dr_id: Boxed, cr_id: Boxed, amount: Boxed, code: Boxed, user_data: Boxed, flags: Boxed,
        pending_id: Boxed, now_ns: Boxed,
    ) -> CreateTransferResult:
        """``create_transfer(Transfer(tid, dr_id, cr_id, amount, code, user_data, flags, pending_id), now_ns)``
        without the request's struct: the ledger makes only the transfer it keeps (for a post or a void, the
        resolved one). The clearing's path for its hot transfers (holds, fills, releases)."""
        if _is_earlier(now_ns, self._now_ns):
            self._advance_clock(now_ns)  # raises
        self._now_ns = now_ns
        flag_bits: int = flags  # unboxed for the test; the object itself goes into the transfer
        if flag_bits & _LINKED:
            return _R.LINKED_EVENT_CHAIN_OPEN
        return self._create_transfer(None, tid, dr_id, cr_id, amount, code, user_data, flags, pending_id, 0, now_ns)

    def create_chain(self, chain: Sequence[Transfer], now_ns: Boxed) -> list[CreateTransferResult]:
        """``create_transfers(chain, now_ns)`` for a batch the caller built as one chain (every transfer but
        the last LINKED), without looking for where chains start and end; any other batch takes
        ``create_transfers``'s path."""
        n = len(chain)
        fields = [_astuple(t) for t in chain]
        for k in range(n):
            flag_bits: int = fields[k][6]
            if (not flag_bits & _LINKED) != (k == n - 1):
                return self.create_transfers(chain, now_ns)
        if _is_earlier(now_ns, self._now_ns):
            self._advance_clock(now_ns)  # raises
        self._now_ns = now_ns
        return self._create_transfer_chain(chain, now_ns, fields)

    def create_pair_of(
        self, tid: Boxed, dr_id: Boxed, cr_id: Boxed, amount: Boxed, code: Boxed, user_data: Boxed, flags: Boxed,
        pending_id: Boxed, tid2: Boxed, dr_id2: Boxed, cr_id2: Boxed, amount2: Boxed, code2: Boxed,
        user_data2: Boxed, flags2: Boxed, pending_id2: Boxed, now_ns: Boxed,
    ) -> tuple[CreateTransferResult, CreateTransferResult]:
        """``create_chain`` of two transfers given by their fields (the first LINKED, the second not): the
        clearing's partial fill, a post and the re-hold of the rest. No request structs, field tuples or
        result list (compiled, the two results come back as a C struct); any other flags take
        ``create_transfers``'s path."""
        first_flags: int = flags
        second_flags: int = flags2
        if not first_flags & _LINKED or second_flags & _LINKED:
            results = self.create_transfers([
                _Transfer(tid, dr_id, cr_id, amount, code, user_data, flags, pending_id),
                _Transfer(tid2, dr_id2, cr_id2, amount2, code2, user_data2, flags2, pending_id2),
            ], now_ns)  # fmt: skip
            return results[0], results[1]
        if _is_earlier(now_ns, self._now_ns):
            self._advance_clock(now_ns)  # raises
        self._now_ns = now_ns
        # No undo list while the pair runs: only the first can need undoing, and only if the second fails (a
        # refused transfer changes nothing), so its undo record is made then, from what it stored (``_undo_of``).
        # Compiled, every partial fill saves the list and a tuple per member.
        mark = len(self._postings)
        final_mark = len(self._final)
        first = self._create_transfer(None, tid, dr_id, cr_id, amount, code, user_data, flags, pending_id,
                                      _ZERO_B, now_ns)  # fmt: skip
        if first is not _OK and first is not _EXISTS:
            return first, _R.LINKED_EVENT_FAILED  # nothing applied
        second = self._create_transfer(None, tid2, dr_id2, cr_id2, amount2, code2, user_data2, flags2,
                                       pending_id2, _ZERO_B, now_ns)  # fmt: skip
        if second is not _OK and second is not _EXISTS:
            if first is _OK:  # (EXISTS applied nothing)
                self._roll_back_chain([self._undo_of(tid)], mark, final_mark)
            return _R.LINKED_EVENT_FAILED, second
        return first, second

    def _undo_of(self, tid: Boxed) -> _Undo:
        """The undo record ``_create_transfer`` would have kept for the transfer ``tid`` it just applied (the
        pending status it resolved was PENDING: only an open pending transfer is posted or voided)."""
        t = self._transfers[tid]
        dr = self._accounts[t.debit_account_id]
        cr = self._accounts[t.credit_account_id]
        flags: int = t.flags
        if flags & _RESOLVE_FLAGS:
            held: Boxed = self._transfers[t.pending_id].amount_fen
            posted: Boxed = t.amount_fen if flags & _POST else _ZERO_B
            return (tid, dr, cr, _POST_E if flags & _POST else _RELEASE_E, posted, held, t.pending_id, _ST_PENDING)
        return (tid, dr, cr, _PENDING_E if flags & _PENDING else _POSTED_E, t.amount_fen, _ZERO_B, _ZERO_B, 0)

    def _roll_back_chain(self, undo: list[_Undo], posting_mark: int, final_mark: int) -> None:
        """Undo a failed chain's applied members: counters, records, postings and the final queue."""
        self._rollback_transfers(undo, posting_mark)
        final, final_at = self._final, self._final_at
        while len(final) > final_mark:
            final.pop()
            final_at.pop()

    def _create_transfer_chain(
        self, chain: Sequence[Transfer], now_ns: Boxed, fields: list[tuple[Any, ...]] | None = None
    ) -> list[CreateTransferResult]:
        """Apply one chain (``fields``: its transfers as tuples, if the caller has them)."""
        if fields is None:
            fields = [_astuple(t) for t in chain]
        undo: list[_Undo] = []
        self._undo = undo
        mark = len(self._postings)
        final_mark = len(self._final)
        results: list[CreateTransferResult] = []
        try:
            for k, t in enumerate(chain):
                f = fields[k]
                result = self._create_transfer(t, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], now_ns)
                if result is not _OK and result is not _EXISTS:
                    self._roll_back_chain(undo, mark, final_mark)
                    failed = [_R.LINKED_EVENT_FAILED] * len(chain)
                    failed[len(results)] = result
                    return failed
                results.append(result)
        finally:
            self._undo = None
        return results

    def _rollback_transfers(self, undo: list[_Undo], posting_mark: int) -> None:
        for transfer_id, dr, cr, entry, amount_value, released_value, pending_id, status_before in reversed(undo):
            amount: int = amount_value
            if entry == _PENDING_E:
                dr.debits_pending_fen -= amount
                cr.credits_pending_fen -= amount
            elif entry == _POSTED_E:
                dr.debits_posted_fen -= amount
                cr.credits_posted_fen -= amount
            else:  # a post or a void: the pending amount held again, what it posted taken back
                released: int = released_value
                dr.debits_pending_fen += released
                cr.credits_pending_fen += released
                dr.debits_posted_fen -= amount
                cr.credits_posted_fen -= amount
            t = self._transfers.pop(transfer_id)
            if t.flags & _PENDING:
                self._resolved.pop(transfer_id, None)  # (resolved by a later member, undone before it)
                self._expires_at_ns.pop(transfer_id, None)  # its heap entry goes stale
            if pending_id:
                if status_before == _ST_PENDING:
                    self._resolved.pop(pending_id, None)
                else:
                    self._resolved[pending_id] = status_before
        del self._postings[posting_mark:]


    def _create_transfer(
        self, t: Transfer | None, tid: Boxed, dr_id: Boxed, cr_id: Boxed, amount_value: Boxed, code: Boxed,
        user_data: Boxed, flags_value: Boxed, pending_id: Boxed, timeout_value: Boxed, now_ns: Boxed,
    ) -> CreateTransferResult:
        """One transfer by its fields (the objects as they came: they go into the records as they are);
        ``t`` is the request's struct, kept as the transfer when given, else made here when kept."""
        flags: int = flags_value
        if flags & _RESERVED_TRANSFER_FLAGS:
            return _R.RESERVED_FLAG
        if not _is_id(tid):
            return _R.ID_OUT_OF_RANGE
        phase = flags & _PHASE_FLAGS
        if phase & (phase - 1):  # more than one bit set
            return _R.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if phase & _RESOLVE_FLAGS:
            return self._resolve_pending(tid, dr_id, cr_id, amount_value, code, user_data, flags_value, pending_id,
                                         timeout_value, now_ns)  # fmt: skip
        if pending_id:
            return _R.PENDING_ID_MUST_BE_ZERO
        timeout_ns: int = timeout_value
        if timeout_ns:  # the two timeout checks, in order, only when there is one
            if not phase:
                return _R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
            if timeout_ns < 0:
                return _R.TIMEOUT_OUT_OF_RANGE
        if dr_id == cr_id:
            return _R.ACCOUNTS_MUST_BE_DIFFERENT
        if not _is_code(code, 1):
            return _R.CODE_OUT_OF_RANGE
        if not _is_user_data(user_data):
            return _R.USER_DATA_OUT_OF_RANGE
        if not _is_int(amount_value):  # a float or a bool must never become money
            return _R.AMOUNT_MUST_BE_INTEGER
        amount: int = amount_value
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
        if _is_forgotten(tid, self._top_id):  # an id above every one held or forgotten is neither (_top_id)
            e = transfers.get(tid)
            if e is not None:
                return _transfer_exists(
                    (tid, dr_id, cr_id, amount_value, code, user_data, flags_value, pending_id, timeout_value), e)
            forgotten_id = self._forgotten_id
            if forgotten_id and _is_forgotten(tid, forgotten_id):
                return _R.ID_FORGOTTEN
        else:
            self._top_id = tid
        dr_pending, dr_posted = dr.debits_pending_fen, dr.debits_posted_fen
        cr_pending, cr_posted = cr.credits_pending_fen, cr.credits_posted_fen
        dr_debits = dr_pending + dr_posted + amount  # the debit account's debits after the transfer
        if not _fits_int64(dr_debits):
            return _R.OVERFLOWS_DEBITS
        cr_credits = cr_pending + cr_posted + amount
        if not _fits_int64(cr_credits):
            return _R.OVERFLOWS_CREDITS
        if timeout_ns and not _fits_int64(now_ns + timeout_ns):
            return _R.OVERFLOWS_TIMEOUT
        if dr.flags & _DR_LIMIT and dr_debits > dr.credits_posted_fen:
            return _R.EXCEEDS_CREDITS
        if cr.flags & _CR_LIMIT and cr_credits > cr.debits_posted_fen:
            return _R.EXCEEDS_DEBITS
        # After this point the transfer must succeed.
        if self._undo is not None:
            self._undo.append((tid, dr, cr, _PENDING_E if phase else _POSTED_E, amount_value, _ZERO_B, _ZERO_B, 0))
        if t is None:
            t = _Transfer(tid, dr_id, cr_id, amount_value, code, user_data, flags_value, pending_id, timeout_value)
        transfers[tid] = t
        if phase:
            dr.debits_pending_fen = dr_pending + amount
            cr.credits_pending_fen = cr_pending + amount
            if timeout_ns:
                expires_at_ns: int = now_ns + timeout_ns
                self._expires_at_ns[tid] = expires_at_ns
                heapq.heappush(self._expiry_heap, (expires_at_ns, tid))
            self._postings.append(
                _Posting(tid, _PENDING_EB, dr_id, cr_id, amount_value, _ZERO_B, code, user_data, _ZERO_B, now_ns))
        else:
            dr.debits_posted_fen = dr_posted + amount
            cr.credits_posted_fen = cr_posted + amount
            self._postings.append(
                _Posting(tid, _POSTED_EB, dr_id, cr_id, amount_value, _ZERO_B, code, user_data, _ZERO_B, now_ns))
            self._final.append(tid)
            self._final_at.append(now_ns)
        return _OK

    def _resolve_pending(
        self, tid: Boxed, req_dr_id: Boxed, req_cr_id: Boxed, amount_value: Boxed, req_code: Boxed,
        req_user_data: Boxed, flags_value: Boxed, pending_id: Boxed, timeout_value: Boxed, now_ns: Boxed,
    ) -> CreateTransferResult:
        """Post or void the pending transfer ``pending_id`` (checks of step 3, then apply), for a request
        given by its fields."""
        flags: int = flags_value
        if not _is_id(pending_id):
            return _R.PENDING_ID_OUT_OF_RANGE
        if _is_same(pending_id, tid):  # both checked ids (ints): compared natively
            return _R.PENDING_ID_MUST_BE_DIFFERENT
        if timeout_value:
            return _R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if not _is_code(req_code, 0):
            return _R.CODE_OUT_OF_RANGE
        if not _is_user_data(req_user_data):
            return _R.USER_DATA_OUT_OF_RANGE
        if not _is_int(amount_value):
            return _R.AMOUNT_MUST_BE_INTEGER
        amount: int = amount_value
        if amount < 0:
            return _R.AMOUNT_MUST_NOT_BE_NEGATIVE
        transfers = self._transfers
        p = transfers.get(pending_id)
        if p is None:
            return _R.PENDING_TRANSFER_NOT_FOUND
        held_fields = _astuple(p)
        held_flags: int = held_fields[6]
        if not held_flags & _PENDING:
            return _R.PENDING_TRANSFER_NOT_PENDING
        dr_id: Boxed = held_fields[1]
        cr_id: Boxed = held_fields[2]
        held_value: Boxed = held_fields[3]
        held: int = held_value
        if req_dr_id and req_dr_id != dr_id:
            return _R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if req_cr_id and req_cr_id != cr_id:
            return _R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        post = flags & _POST
        if post:
            if amount > held:
                return _R.EXCEEDS_PENDING_TRANSFER_AMOUNT
        elif amount and amount != held:
            return _R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        code: Boxed = req_code or held_fields[4]
        user_data: Boxed = req_user_data or held_fields[5]
        posted_value: Boxed = (amount_value or held_value) if post else held_value
        resolved = _Transfer(tid, dr_id, cr_id, posted_value, code, user_data, flags, pending_id, _ZERO_B)
        if _is_forgotten(tid, self._top_id):  # as in _create_transfer
            e = transfers.get(tid)
            if e is not None:
                return _transfer_exists(_astuple(resolved), e)
            forgotten_id = self._forgotten_id
            if forgotten_id and _is_forgotten(tid, forgotten_id):
                return _R.ID_FORGOTTEN
        else:
            self._top_id = tid
        resolved_status = self._resolved.get(pending_id)
        if resolved_status is not None:
            return _RESOLVED_STATUS_RESULT[resolved_status]
        status = _ST_PENDING
        if self._expires_at_ns:  # empty unless some transfer ever had a timeout
            expires_at_ns = self._expires_at_ns.get(pending_id)
            if expires_at_ns is not None and now_ns >= expires_at_ns:
                return _R.PENDING_TRANSFER_EXPIRED
        # After this point the transfer must succeed.
        dr = self._accounts[dr_id]
        cr = self._accounts[cr_id]
        if self._undo is not None:  # a void posts nothing (amount 0)
            self._undo.append((tid, dr, cr, _POST_E if post else _RELEASE_E, posted_value if post else _ZERO_B,
                               held_value, pending_id, status))
        transfers[tid] = resolved
        dr.debits_pending_fen -= held
        cr.credits_pending_fen -= held
        if post:
            posted: int = posted_value
            dr.debits_posted_fen += posted
            cr.credits_posted_fen += posted
            self._resolved[pending_id] = _ST_POSTED_B
            self._postings.append(
                _Posting(tid, _POST_EB, dr_id, cr_id, posted_value, held_value, code, user_data, pending_id, now_ns))
        else:
            self._resolved[pending_id] = _ST_VOIDED_B
            self._postings.append(
                _Posting(tid, _RELEASE_EB, dr_id, cr_id, _ZERO_B, held_value, code, user_data, pending_id, now_ns))
        final, final_at = self._final, self._final_at
        final.append(pending_id)
        final.append(tid)
        final_at.append(now_ns)
        final_at.append(now_ns)
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
            if pid not in self._transfers or pid in self._resolved or self._expires_at_ns.get(pid) != expires_at_ns:
                continue
            p = self._transfers[pid]
            held = p.amount_fen
            self._accounts[p.debit_account_id].debits_pending_fen -= held
            self._accounts[p.credit_account_id].credits_pending_fen -= held
            self._postings.append(Posting(pid, _RELEASE_E, p.debit_account_id, p.credit_account_id, 0, held, p.code,
                                          p.user_data, pid, now_ns))
            self._resolved[pid] = _ST_EXPIRED
            self._final.append(pid)
            self._final_at.append(now_ns)
            expired.append(pid)
        return expired

    def forget(self, before_ns: int) -> int:
        """Drop every transfer that became final before ``before_ns`` (see "Memory" above); returns how
        many. Deterministic: the same calls after the same transfers forget the same ones."""
        if self._unqueued_final:
            self._queue_unqueued_final()
        final, final_at = self._final, self._final_at
        transfers = self._transfers
        forgotten = 0
        forgotten_id = self._forgotten_id
        head = self._final_head
        n = len(final_at)
        while head < n and final_at[head] < before_ns:
            tid: int = final[head]
            head += 1
            t = transfers.pop(tid, None)
            if t is None:
                continue  # defensive: an entry is queued once per transfer held
            if t.flags & _PENDING:
                self._resolved.pop(tid, None)  # (a final pending transfer is resolved or expired: there)
                self._expires_at_ns.pop(tid, None)
            if tid > forgotten_id:
                forgotten_id = tid
            forgotten += 1
        if head > 4096 and 2 * head > n:  # drop the forgotten front now and then (amortised O(1))
            del final[:head]
            del final_at[:head]
            head = 0
        self._final_head = head
        self._forgotten_id = forgotten_id
        return forgotten

    def _queue_unqueued_final(self) -> None:
        """Queue the final transfers a snapshot of an earlier version held (final from now on)."""
        self._unqueued_final = False
        held = set(self._final[self._final_head:])
        resolved = self._resolved
        for tid in sorted(self._transfers):
            if tid in held:
                continue
            t = self._transfers[tid]
            if not t.flags & _PENDING or tid in resolved:
                self._final.append(tid)
                self._final_at.append(self._now_ns)

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

    def close_rows(self) -> None:
        """The rows added so far are finished commands' (the clearing queues them per command by their counts,
        ``posting_count``, and takes them with ``take_rows``): an account among them may be parked, as a drained
        one may."""
        self._closed_accounts = len(self._new_accounts)

    def posting_count(self) -> int:
        """How many postings are held, not yet drained or taken (the clearing's per-command ends)."""
        return len(self._postings)

    def new_account_count(self) -> int:
        """How many new accounts are held, not yet drained or taken."""
        return len(self._new_accounts)

    def take_rows(self, n_postings: int, n_accounts: int) -> tuple[list[Posting], list[Account]]:
        """The oldest ``n_postings`` postings and ``n_accounts`` new accounts (copies, counters as created),
        removed; the rest stay, in order."""
        postings = self._postings[:n_postings]
        del self._postings[:n_postings]
        accounts = [a.record(with_counters=False) for a in self._new_accounts[:n_accounts]]
        del self._new_accounts[:n_accounts]
        self._closed_accounts = max(0, self._closed_accounts - n_accounts)
        return postings, accounts

    def drain_rows(self) -> CommandRows:
        """``(drain_new_accounts(), drain_postings())``, but ``NO_ROWS`` (empty tuples, no allocation)
        when there is nothing (a bare ledger's caller; the clearing queues rows per command by their counts
        instead, ``close_rows``/``take_rows``)."""
        if self._new_accounts:
            return self.drain_new_accounts(), self.drain_postings()
        if not self._postings:
            return _NO_ROWS
        postings = self._postings
        self._postings = []
        return (), postings

    def drain_new_accounts(self) -> list[Account]:
        """Accounts created since the last drain (copies; counters as created: zero)."""
        new = [a.record(with_counters=False) for a in self._new_accounts]
        self._new_accounts = []
        self._closed_accounts = 0
        return new

    def snapshot(self, *, allow_undrained: bool = False) -> bytes:
        """Encode the whole state (msgpack). Drain postings and new accounts first: they are not kept.

        ``allow_undrained=True`` is for a caller that drains them into the same durable batch itself
        (the clearing's snapshot is taken when a batch is sealed, before its postings are written).
        """
        if (self._postings or self._new_accounts) and not allow_undrained:
            raise ValueError("drain postings and new accounts before taking a snapshot")
        return self._encode()

    def _encode(self) -> bytes:
        snap = self._snapshot_struct()
        fields = _astuple(snap)
        # An array-like struct encodes as the tuple of its fields: without anything final held or forgotten
        # the two optional fields are left out, so such a state encodes to the bytes earlier versions wrote
        # (their snapshots restore to their recorded hashes).
        if not snap.parked:
            fields = fields[:-1]
            if not snap.final and not snap.forgotten_id:
                fields = fields[:-2]
        return _SNAPSHOT_ENCODER.encode(fields)

    @classmethod
    def restore(cls, data: bytes) -> Ledger:
        """Rebuild a ledger from ``snapshot()`` bytes."""
        snap = _SNAPSHOT_DECODER.decode(data)
        ledger = cls()
        ledger._now_ns = snap.now_ns
        ledger._accounts = {a.account_id: _Account.of(a) for a in snap.accounts}
        ledger._transfers = {t.transfer_id: t for t in snap.transfers}
        ledger._resolved = {pid: status for pid, status in snap.pending_status.items() if status != _ST_PENDING}
        ledger._expires_at_ns = dict(snap.expires_at_ns)
        ledger._expiry_heap = sorted(
            (at, pid) for pid, at in ledger._expires_at_ns.items()
            if pid not in ledger._resolved
        )
        ledger._forgotten_id = snap.forgotten_id
        ledger._top_id = max(snap.forgotten_id, max(ledger._transfers, default=0))
        ledger._final, ledger._final_at, ledger._final_head = [], [], 0
        for run in snap.final:
            at = run[0]
            for tid in run[1:]:
                ledger._final.append(tid)
                ledger._final_at.append(at)
        ledger._unqueued_final = not snap.final
        for account_id, code, owner_id, ledger_code, flags, user_data, ts_ns, posted in snap.parked:
            a = _Account(account_id, code, owner_id, ledger_code, flags, user_data, ts_ns)
            a.debits_posted_fen = a.credits_posted_fen = posted
            ledger.parked[account_id] = a
        return ledger

    def state_hash(self) -> str:
        """blake2b (hex) of the canonical encoding: everything sorted by id, so equal state, equal hash."""
        return hashlib.blake2b(self._encode(), digest_size=32).hexdigest()

    def _snapshot_struct(self) -> LedgerSnapshot:
        return LedgerSnapshot(
            now_ns=self._now_ns,
            accounts=[self._accounts[k].record() for k in sorted(self._accounts)],
            transfers=[self._transfers[k] for k in sorted(self._transfers)],
            pending_status=self._pending_statuses(),
            expires_at_ns={k: self._expires_at_ns[k] for k in sorted(self._expires_at_ns)},
            forgotten_id=self._forgotten_id,
            final=self._final_runs(),
            parked=[(a.account_id, a.code, a.owner_id, a.ledger, a.flags, a.user_data, a.ts_ns, a.debits_posted_fen)
                    for a in (self.parked[k] for k in sorted(self.parked))],
        )

    def _pending_statuses(self) -> dict[int, int]:
        """Every held pending transfer's status, by id (the snapshot's ``pending_status``)."""
        resolved = self._resolved
        return {k: resolved.get(k, _ST_PENDING) for k in sorted(self._transfers) if self._transfers[k].flags & _PENDING}

    def _open_pending(self) -> list[Transfer]:
        """The held pending transfers still open (neither resolved nor expired: absent from ``_resolved``)."""
        resolved = self._resolved
        return [t for tid, t in self._transfers.items() if t.flags & _PENDING and tid not in resolved]

    def _final_runs(self) -> list[list[int]]:
        """The final queue as runs of one time (a command's transfers share it): [at, id, id, ...]."""
        runs: list[list[int]] = []
        run: list[int] = []
        head = self._final_head
        for at, tid in zip(self._final_at[head:], self._final[head:], strict=True):
            if not run or run[0] != at:
                run = [at]
                runs.append(run)
            run.append(tid)
        return runs

    # ----------------------------------------------------------------------------------------- queries

    @property
    def now_ns(self) -> int:
        return self._now_ns

    def account(self, account_id: int) -> Account | None:
        """A copy of the account, or None."""
        a = self._accounts.get(account_id)
        if a is None:
            a = self.parked.get(account_id)
        return None if a is None else a.record()

    def accounts(self) -> list[Account]:
        """Copies of all accounts (parked ones too), by id."""
        held = self._accounts
        return [(held[k] if k in held else self.parked[k]).record() for k in sorted([*held, *self.parked])]

    def available_fen(self, account_id: Boxed) -> int:
        """credits_posted - debits_posted - debits_pending: what a DEBITS_MUST_NOT_EXCEED_CREDITS account
        can still be debited (pending holds count). 0 for an unknown account (and a parked one: it is empty).
        No copy: for hot paths
        (``account_id`` Boxed: compiled, the lookup uses the caller's object instead of boxing it anew)."""
        a = self._accounts.get(account_id)
        if a is None:
            return 0
        return a.credits_posted_fen - a.debits_posted_fen - a.debits_pending_fen

    def transfer(self, transfer_id: int) -> Transfer | None:
        """The stored transfer (a post or void with its fields resolved), or None (also once forgotten)."""
        return self._transfers.get(transfer_id)

    def held_counts(self) -> tuple[int, int, int]:
        """(transfers held, of which pending and still open, final ones held): what memory holds."""
        return len(self._transfers), len(self._open_pending()), len(self._final) - self._final_head

    def pending_status(self, transfer_id: int) -> PendingStatus | None:
        t = self._transfers.get(transfer_id)
        if t is None or not t.flags & _PENDING:
            return None
        return PendingStatus(self._resolved.get(transfer_id, _ST_PENDING))

    def validate(self) -> None:
        """Check internal invariants; raise AssertionError naming the first one broken."""
        totals = [0, 0, 0, 0]
        for a in [*self._accounts.values(), *self.parked.values()]:
            c = a.counters()
            if min(c) < 0:
                raise AssertionError(f"account {a.account_id} has a negative counter {c}")
            if a.flags & _DR_LIMIT and c[0] + c[1] > c[3]:
                raise AssertionError(f"account {a.account_id} debits exceed credits {c}")
            if a.flags & _CR_LIMIT and c[2] + c[3] > c[1]:
                raise AssertionError(f"account {a.account_id} credits exceed debits {c}")
            totals = [x + y for x, y in zip(totals, c, strict=True)]
        if totals[0] != totals[2] or totals[1] != totals[3]:
            raise AssertionError(f"ledger does not balance: {totals}")
        held = sum(t.amount_fen for t in self._open_pending())
        if held != totals[0]:
            raise AssertionError(f"pending counters {totals[0]} != open pending transfers {held}")


def _account_exists(a: Account, e: _Account) -> CreateAccountResult:
    if (a.flags & ~AccountFlags.LINKED) != e.flags:
        return _A.EXISTS_WITH_DIFFERENT_FLAGS
    if a.code != e.code:
        return _A.EXISTS_WITH_DIFFERENT_CODE
    if a.owner_id != e.owner_id:
        return _A.EXISTS_WITH_DIFFERENT_OWNER_ID
    if a.user_data != e.user_data:
        return _A.EXISTS_WITH_DIFFERENT_USER_DATA
    return _A_EXISTS


def _transfer_exists(t: tuple[Any, ...], e: Transfer) -> CreateTransferResult:
    """Compare a request's fields (for post/void: already resolved against its pending transfer) with
    the record."""
    if (t[6] ^ e.flags) & ~_LINKED:
        return _R.EXISTS_WITH_DIFFERENT_FLAGS
    if t[7] != e.pending_id:
        return _R.EXISTS_WITH_DIFFERENT_PENDING_ID
    if t[1] != e.debit_account_id:
        return _R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if t[2] != e.credit_account_id:
        return _R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    if t[3] != e.amount_fen:
        return _R.EXISTS_WITH_DIFFERENT_AMOUNT
    if t[8] != e.timeout_ns:
        return _R.EXISTS_WITH_DIFFERENT_TIMEOUT
    if t[4] != e.code:
        return _R.EXISTS_WITH_DIFFERENT_CODE
    if t[5] != e.user_data:
        return _R.EXISTS_WITH_DIFFERENT_USER_DATA
    return _EXISTS


def _chains(items: Sequence[Account], linked_flag: int) -> Iterable[Sequence[Account]]:
    """Split a batch into chains: a run of linked items plus the one that closes it, or one item."""
    start = 0
    for k, item in enumerate(items):
        if not item.flags & linked_flag:
            yield items[start:k + 1]
            start = k + 1
    if start < len(items):
        yield items[start:]  # an open chain: its last item is still flagged
