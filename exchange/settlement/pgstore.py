"""PostgreSQL side of the ledger (asyncpg): writing drained rows in the batch's transaction, and reading
balances and statements back. The only module of ``exchange/settlement`` that does I/O.

``LedgerWriter`` is the sequencer's ``extra_writes(conn, batch)`` hook: inside the transaction that
also COPYs the journal rows it writes the new accounts and postings of exactly the batch's commands,
so money rows and the commands that made them commit together, each posting stamped with the seq of
its command. Postings go to ``ledger_transfers`` (migration 0006), one row per transfer naming both
accounts, so every batch balances by construction; the table's CHECK constraints verify each row.

Rows are kept per command, not drained per batch: the sequencer applies the next batch's commands
while the previous one commits, so rows drained when ``extra_writes`` runs would include commands that
are not in the batch (and would be lost with it if its commit failed). The clearing queues each
command's rows as it is applied (``Clearing.command_rows``); the writer takes the batch's entries
(slice by slice as the sequencer applies them, see ``LedgerWriter.prepare``), after dropping entries of
commands that recovery replayed (they are durable already).

References that must never take effect twice (a deposit's bank reference, a withdrawal, repayment or
client lot reference: ``reference_row``) go to ``settlement_refs`` (migration 0014) in the same
transaction, once, when the command that used them took effect; the core forgets them after its
retention window, and ``used_reference`` finds them there for ever.

Postings are sent as one binary ``COPY`` per batch, encoded here with one ``struct`` call per row
(``encode_postings``): about a third of the Python time of ``copy_records_to_table``, which converts
every value through a codec.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Final

import asyncpg
import msgspec

from exchange.commands import ClockTick, Command, ConfirmDeposit, RegisterLot, RepayLoan, RequestWithdrawal
from exchange.events import Event, LotRegistered
from exchange.settlement.ledger import ACCOUNT_COLUMNS, POSTING_COLUMNS, Account, Posting, account_records
from exchange.settlement.model import FIRST_PARTICIPANT_ACCOUNT_ID, FinalKind
from exchange.store import copy_binary_data, copy_binary_statement

__all__ = [
    "ACCOUNT_COLUMNS",
    "POSTING_COLUMNS",
    "LedgerWriter",
    "balances",
    "copy_rows",
    "encode_postings",
    "encode_postings_body",
    "reference_row",
    "statement",
    "used_reference",
    "write_batch_rows",
    "write_ledger_rows",
]

# PostgreSQL binary COPY: a header, then per row a field count and (byte length, big-endian value)
# per field, then a trailer. The row layout follows POSTING_COLUMNS: seq, transfer_id (bigint),
# entry (smallint), debit_account_id, credit_account_id, amount_fen, released_fen (bigint), code
# (integer), user_data, pending_id, ts_ns (bigint).
_POSTING_ROW: Final = struct.Struct(">h" + "iq" * 2 + "ih" + "iq" * 4 + "ii" + "iq" * 3)
assert len(POSTING_COLUMNS) == 11
# The same row with pad bytes where the constants go (field count, field lengths): a row is packed from
# its 11 values alone, and the constants are written into all rows of a run at once, one strided slice
# assignment per non-zero constant byte (``_POSTING_CONSTANTS``: offset in the row, byte). Half the
# codes per row: packing a constant costs about as much as packing a value (callgrind: a quarter
# fewer instructions per posting than packing the full row).
# And backwards: struct packs a big-endian 64-bit value by the generic int-to-bytes conversion (a third
# of a row's cost), a little-endian one as the machine's own integer. So the run is packed reversed,
# last row first, each row's values last first, little-endian (``_POSTING_VALUES_REVERSED``, the mirror
# image of ``_POSTING_VALUES``), and the whole run's bytes are reversed once (bytearray.reverse): every
# value comes out big-endian and every row in its place (callgrind: 4.1k -> 3.7k instructions a row).
_POSTING_VALUES: Final = struct.Struct(">2x" + "4xq" * 2 + "4xh" + "4xq" * 4 + "4xi" + "4xq" * 3)
_POSTING_VALUES_REVERSED: Final = struct.Struct("<" + "q4x" * 3 + "i4x" + "q4x" * 4 + "h4x" + "q4x" * 2 + "2x")
_POSTING_ROW_SIZE: Final = _POSTING_ROW.size
assert _POSTING_VALUES.size == _POSTING_VALUES_REVERSED.size == _POSTING_ROW_SIZE
_ROW_OF_ZEROS: Final = _POSTING_ROW.pack(11, 8, 0, 8, 0, 2, 0, 8, 0, 8, 0, 8, 0, 8, 0, 4, 0, 8, 0, 8, 0, 8, 0)
_POSTING_CONSTANTS: Final = tuple((offset, bytes((byte,))) for offset, byte in enumerate(_ROW_OF_ZEROS) if byte)


def encode_postings(first_seq: int, per_command: Iterable[tuple[Sequence[Account], Sequence[Posting]]]) -> bytes:
    """Binary COPY data for ``ledger_transfers`` (columns ``POSTING_COLUMNS``): the postings of a journal
    batch whose command with seq ``first_seq + i`` made ``per_command[i]``; b"" when there are none.

    A value out of range for its column (the ledger never produces one) raises ``struct.error``."""
    body, rows = encode_postings_body(first_seq, per_command)
    return copy_binary_data([body]) if rows else b""


def encode_postings_body(
    first_seq: int, per_command: Iterable[tuple[Sequence[Account], Sequence[Posting]]]
) -> tuple[bytes, int]:
    """(the rows of ``encode_postings`` without COPY header and trailer, how many): a batch's postings
    can be encoded in parts as its commands are applied, and joined by ``store.copy_binary_data``."""
    pack = _POSTING_VALUES_REVERSED.pack  # each row mirrored: see _POSTING_VALUES_REVERSED
    parts: list[bytes] = []
    append = parts.append
    seq = first_seq
    for _, postings in per_command:
        for p in postings:
            append(pack(
                p.ts_ns, p.pending_id, p.user_data, p.code, p.released_fen, p.amount_fen, p.credit_account_id,
                p.debit_account_id, p.entry, p.transfer_id, seq,
            ))  # fmt: skip
        seq += 1
    rows = len(parts)
    if not rows:
        return b"", 0
    parts.reverse()
    body = bytearray().join(parts)
    body.reverse()  # the mirror image of the run mirrored: the rows in order, each value big-endian
    for offset, byte in _POSTING_CONSTANTS:
        body[offset::_POSTING_ROW_SIZE] = byte * rows
    return bytes(body), rows


REFERENCE_COLUMNS: Final = ("kind", "owner_id", "ref", "seq", "ts_ns")
REF_DEPOSIT: Final = 1
REF_WITHDRAWAL: Final = 2
REF_REPAYMENT: Final = 3
REF_LOT: Final = 4
# the commands that may use a reference (`reference_row`): others (orders, most of all) are not looked at
_REFERENCE_COMMANDS: Final = frozenset({RegisterLot, ConfirmDeposit, RequestWithdrawal, RepayLoan})
# the commands LedgerWriter.prepare looks at one by one (references, and the records a tick forgot)
_LOOKED_AT: Final = _REFERENCE_COMMANDS | {ClockTick}
_new_accounts: Final = operator.itemgetter(0)  # of a command's (new accounts, postings)


def reference_row(
    seq: int, command: Command, events: Sequence[Event], moved_money: bool
) -> tuple[int, int, str, int, int] | None:
    """The ``settlement_refs`` row of a command that used a reference for the first time, else None (a
    retry answered with the original moves no money and registers no lot anew; a rejection neither)."""
    kind = command.__class__
    if kind is RegisterLot:
        ref = command.client_lot_ref  # type: ignore[attr-defined]
        if ref and events and events[0].__class__ is LotRegistered and events[0].seq:
            return (REF_LOT, command.participant_id, ref, seq, command.ts_ns)
        return None
    if not moved_money:
        return None
    if kind is ConfirmDeposit:
        return (REF_DEPOSIT, 0, command.deposit_ref, seq, command.ts_ns)  # type: ignore[attr-defined]
    if kind is RequestWithdrawal:
        return (REF_WITHDRAWAL, command.participant_id, command.withdrawal_ref, seq,  # type: ignore[attr-defined]
                command.ts_ns)
    if kind is RepayLoan and command.repayment_ref:  # type: ignore[attr-defined]
        return (REF_REPAYMENT, command.participant_id, command.repayment_ref, seq,  # type: ignore[attr-defined]
                command.ts_ns)
    return None


# settlement_history (migration 0014): the clearing's final records once it forgot them. kind is
# model.FinalKind; (id, ref) the record's key (a trade or payout id, a withdrawal or file reference).
HISTORY_COLUMNS: Final = ("kind", "id", "ref", "party_a", "party_b", "state", "final_at_ns", "seq", "record")
HISTORY_TRADE: Final = 1
HISTORY_PAYOUT: Final = 2
HISTORY_SENT_FILE: Final = 7
HISTORY_FILE_DIGEST: Final = 10  # a sent file's SHA-256 (hex), ref the file's: the stored bytes' key
HISTORY_LOAN: Final = 11  # a closed advance (model.Loan): id the loan's, party_a its financier, party_b its borrower


async def archived_loans(
    conn: asyncpg.Connection | asyncpg.Pool, financier_id: int | None, borrower_id: int | None
) -> list[bytes]:
    """The msgpack of every closed loan the clearing forgot, of this financier and/or borrower (None: any),
    by loan id (a loan is forgotten once; a copy written twice by a replayed tick is read once)."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (id) record FROM settlement_history WHERE kind = $1"
        " AND ($2::bigint IS NULL OR party_a = $2) AND ($3::bigint IS NULL OR party_b = $3)"
        " ORDER BY id, seq DESC",
        HISTORY_LOAN, financier_id, borrower_id)
    return [bytes(row["record"]) for row in rows]


async def archived_record(
    conn: asyncpg.Connection | asyncpg.Pool, kind: int, item_id: int, ref: str = ""
) -> bytes | None:
    """The msgpack of the record last forgotten under this key, or None."""
    data = await conn.fetchval(
        "SELECT record FROM settlement_history WHERE kind = $1 AND id = $2 AND ref = $3 ORDER BY seq DESC LIMIT 1",
        kind, item_id, ref)
    return None if data is None else bytes(data)


async def archived_page(
    conn: asyncpg.Connection | asyncpg.Pool, kind: int, before_id: int | None, party: int | None, state: int | None,
    limit: int,
) -> list[bytes]:
    """Forgotten records of a kind with an id below ``before_id``, of ``party`` (as either party; None: all),
    in ``state`` (None: any), newest (highest id) first."""
    rows = await conn.fetch(
        "SELECT record FROM settlement_history WHERE kind = $1 AND id < $2"
        " AND ($3::bigint IS NULL OR party_a = $3 OR party_b = $3) AND ($4::smallint IS NULL OR state = $4)"
        " ORDER BY id DESC LIMIT $5",
        kind, MAX_ID if before_id is None else before_id, party, state, limit)
    return [bytes(row["record"]) for row in rows]


MAX_ID: Final = 2**63 - 1


HistoryRow = tuple[int, int, str, int, int, int, int, int, bytes]


def history_rows(seq: int, forgotten: list[tuple[int, Any]]) -> list[HistoryRow]:
    """``settlement_history`` rows of the records the clock tick with this seq forgot (Clearing.take_archived)."""
    rows = []
    for kind, r in forgotten:
        if kind == FinalKind.TRADE:
            key: tuple[int, str, int, int, int, int] = (
                r.trade_id, "", r.buyer_id, r.seller_id, r.state, r.settled_at_ns)
        elif kind == FinalKind.PAYOUT:
            key = (r.payout_id, "", r.payee_id, 0, r.state, r.updated_at_ns)
        elif kind == FinalKind.WITHDRAWAL:
            key = (0, r.withdrawal_ref, r.owner_id, 0, r.state, r.ts_ns)
        elif kind == FinalKind.DEPOSIT:
            key = (0, r.deposit_ref, r.owner_id, 0, 0, r.ts_ns)
        elif kind == FinalKind.LOAN:
            key = (r.loan_id, "", r.financier_id, r.borrower_id, int(r.kind), 0)
        elif kind == FinalKind.FILE_DIGEST:
            key = (0, r[0], 0, 0, 0, 0)
            r = r[1]
        else:  # a bank file sent
            key = (0, r.file_ref, 0, 0, 0, 0)
        rows.append((kind, key[0], key[1], key[2], key[3], int(key[4]), key[5], seq, _HISTORY_ENCODER.encode(r)))
    return rows


_HISTORY_ENCODER: Final = msgspec.msgpack.Encoder()


async def used_reference(conn: asyncpg.Connection | asyncpg.Pool, kind: int, owner_id: int, ref: str) -> int | None:
    """The journal seq of the command that used this reference, or None if it never took effect."""
    seq = await conn.fetchval("SELECT seq FROM settlement_refs WHERE kind = $1 AND owner_id = $2 AND ref = $3",
                              kind, owner_id, ref)
    return None if seq is None else int(seq)


async def copy_rows(conn: asyncpg.Connection, accounts: Sequence[tuple[int, ...]], postings: bytes) -> None:
    """COPY ready-made account rows (``account_records``) and encoded postings (``encode_postings``)."""
    if accounts:
        await conn.copy_records_to_table("ledger_accounts", records=accounts, columns=ACCOUNT_COLUMNS)
    if postings:
        # a memoryview, not bytes: asyncpg takes bytes for a file name
        await conn.copy_to_table("ledger_transfers", source=memoryview(postings), columns=POSTING_COLUMNS,
                                 format="binary")


async def write_batch_rows(
    conn: asyncpg.Connection, first_seq: int, per_command: Sequence[tuple[Sequence[Account], Sequence[Posting]]]
) -> None:
    """COPY the ledger rows of a journal batch (see ``encode_postings``); call inside its transaction."""
    accounts = [row for new_accounts, _ in per_command for row in account_records(new_accounts)]
    await copy_rows(conn, accounts, encode_postings(first_seq, per_command))


async def write_ledger_rows(
    conn: asyncpg.Connection, seq: int, accounts: Sequence[Account], postings: Sequence[Posting]
) -> None:
    """COPY new accounts and postings, all stamped with ``seq``; call inside the journal batch's transaction."""
    await write_batch_rows(conn, seq, [(accounts, postings)])


class LedgerWriter:
    """``extra_writes`` for a sequencer whose core has a clearing: ``Sequencer(dsn,
    extra_writes=writer)`` then ``writer.attach(sequencer)`` (the sequencer replaces its core on
    recovery, so the writer looks it up on every batch).

    Calling it (``writer(conn, batch)``) takes and encodes the batch's rows at once and returns the
    awaitable that COPYs them; the sequencer calls it when it seals the batch, before the transaction
    begins, so no encoding happens while PostgreSQL waits inside the transaction. ``prepare(batch)``,
    which the sequencer calls after each slice of commands it applies to the open batch, takes and
    encodes the rows of the commands applied since: most of the work is done while the previous batch
    commits, off the commit's path. Rows taken early are kept for the batch (its first seq, on the
    same clearing object: a recovery's new core starts afresh) and sent only with it. The sequencer
    uses ``commit(conn, batch)`` instead when the hook has one: the same writes, the last of them
    ending the transaction (see ``Sequencer._commit``).
    """

    def __init__(self) -> None:
        self._sequencer: object | None = None
        self.rows_written = 0
        # rows of the open batch taken so far: its clearing and first seq, commands taken, encoded parts
        self._clearing: object | None = None
        self._first_seq = 0
        self._taken = 0
        self._parts: list[bytes] = []
        self._rows = 0
        self._accounts: list[tuple[int, ...]] = []
        self._refs: list[tuple[int, int, str, int, int]] = []
        self._history: list[HistoryRow] = []

    def attach(self, sequencer: object) -> None:
        """Any object with ``core.clearing`` and ``applied_seq`` (``exchange.sequencer.Sequencer``)."""
        self._sequencer = sequencer

    def prepare(self, batch: object) -> None:
        """Take and encode the rows of ``batch``'s commands not taken yet (all applied by now)."""
        sequencer = self._sequencer
        if sequencer is None:
            raise RuntimeError("LedgerWriter.attach(sequencer) was not called")
        clearing = sequencer.core.clearing  # type: ignore[attr-defined]
        first_seq, n = batch.first_seq, len(batch)  # type: ignore[attr-defined, arg-type]
        if clearing is not self._clearing or first_seq != self._first_seq:
            # another batch (or a rebuilt core): what an abandoned batch had taken goes with it
            self._clearing, self._first_seq, self._taken = clearing, first_seq, 0
            self._parts, self._rows, self._accounts, self._refs, self._history = [], 0, [], [], []
        from_seq = first_seq + self._taken
        if n == self._taken:
            return
        # command_rows holds the rows of seqs applied_seq - len + 1 .. applied_seq (read before any await)
        queued_from = sequencer.applied_seq - len(clearing.command_rows) + 1  # type: ignore[attr-defined]
        if queued_from > from_seq:
            raise RuntimeError(f"ledger rows of seq {from_seq} are gone (queue starts at {queued_from})")
        if queued_from < from_seq:
            clearing.take_command_rows(from_seq - queued_from)  # replayed by recovery: durable already
        per_command = clearing.take_command_rows(n - self._taken)
        index = self._taken
        self._taken = n
        body, rows = encode_postings_body(from_seq, per_command)
        if rows:
            self._parts.append(body)
            self._rows += rows
        commands, events = batch.commands, batch.events  # type: ignore[attr-defined]
        # Orders and cancels, nearly every command, open no account, use no reference and are no clock tick:
        # a slice of only such commands has nothing more to take (two scans in C instead of the loop's
        # bytecode per command).
        if _LOOKED_AT.isdisjoint(map(type, commands[index:n])) and not any(map(_new_accounts, per_command)):
            return
        for new_accounts, postings in per_command:
            if new_accounts:
                self._accounts.extend(account_records(new_accounts))
            command = commands[index]
            if command.__class__ is ClockTick:
                self._history.extend(history_rows(first_seq + index, clearing.take_archived(command.ts_ns)))
            if command.__class__ in _REFERENCE_COMMANDS:
                ref = reference_row(first_seq + index, command, events[index], bool(postings))
                if ref is not None:
                    self._refs.append(ref)
            index += 1

    def __call__(self, conn: asyncpg.Connection, batch: object) -> Awaitable[None]:
        return self._take(conn, batch, commit=False)

    def commit(self, conn: asyncpg.Connection, batch: object) -> Awaitable[None]:
        """As calling it, and the awaitable also COMMITs the transaction the caller opened (the sequencer's
        ``store.begin_copy_journal_binary``): with the postings' COPY, in its round trip. A subclass that
        writes more (it overrides ``__call__`` or ``_write``, as gateway.store.RegistrationWriter does)
        gets its writes as when called, the COMMIT left to the caller (the sequencer then sends one when
        the transaction is still open): its rows come after these and must be in the transaction too."""
        cls = type(self)
        if cls.__call__ is not LedgerWriter.__call__ or cls._write is not LedgerWriter._write:
            return self(conn, batch)
        return self._take(conn, batch, commit=True)

    def _take(self, conn: asyncpg.Connection, batch: object, commit: bool) -> Awaitable[None]:
        self.prepare(batch)
        postings = copy_binary_data(self._parts) if self._rows else b""
        accounts, rows, refs, history = self._accounts, self._rows, self._refs, self._history
        self._clearing, self._first_seq, self._taken = None, 0, 0
        self._parts, self._rows, self._accounts, self._refs, self._history = [], 0, [], [], []
        return self._write(conn, accounts, postings, rows, refs, history, commit)

    async def _write(self, conn: asyncpg.Connection, accounts: list[tuple[int, ...]], postings: bytes,
                     rows: int, refs: list[tuple[int, int, str, int, int]],
                     history: list[HistoryRow], commit: bool = False) -> None:
        if accounts:  # before the postings that name them
            await conn.copy_records_to_table("ledger_accounts", records=accounts, columns=ACCOUNT_COLUMNS)
        if refs:
            await conn.copy_records_to_table("settlement_refs", records=refs, columns=REFERENCE_COLUMNS)
        if history:
            await conn.copy_records_to_table("settlement_history", records=history, columns=HISTORY_COLUMNS)
        if postings:
            await copy_binary_statement(conn, _POSTINGS_COPY_COMMIT if commit else _POSTINGS_COPY, postings)
        elif commit:
            await conn.execute("COMMIT")
        self.rows_written += rows


_POSTINGS_COPY: Final = f"COPY ledger_transfers ({', '.join(POSTING_COLUMNS)}) FROM STDIN (FORMAT binary)"
_POSTINGS_COPY_COMMIT: Final = _POSTINGS_COPY + "; COMMIT"  # see store.copy_binary_statement


async def balances(conn: asyncpg.Connection) -> dict[int, tuple[int, int, int, int]]:
    """account id -> (debits_pending, debits_posted, credits_pending, credits_posted), from the postings."""
    rows = await conn.fetch(
        "SELECT account_id, debits_pending_fen, debits_posted_fen, credits_pending_fen, credits_posted_fen "
        "FROM ledger_balances"
    )
    return {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}


# -- statements ---------------------------------------------------------------------------------------
#
# A statement page reads only its window's range of transfer ids: time only grows with transfer ids (ids
# are taken in journal order, whose times never go back), except an expiry, which keeps its pending
# transfer's older id. ``window_transfer_ids`` (ledger_first_transfer_at, migration 0009) gives the range;
# the page is that range's lines after the cursor, plus expiries of pending transfers older than the
# range (a partial index that holds only them). Each part is planned apart (its own ORDER BY and LIMIT)
# with the range as values: a plan that cannot see the range reads the whole window or ledger.
#
# The lines of a ledger_transfers row (as the ledger_postings view shows them): a post of a pending
# transfer is a POSTED (1) and a RELEASE (3) line. An account is on one side of a transfer, so
# (transfer_id, line entry) orders an account's lines; within a transfer id, rows in entry order give
# their lines in line-entry order.
_LINES: Final = """
SELECT t.seq, t.transfer_id, l.entry, (CASE WHEN t.debit_account_id = $1 THEN 1 ELSE -1 END)::smallint AS side,
       l.amount_fen, t.code, t.user_data, t.pending_id, t.ts_ns
FROM ledger_transfers t
CROSS JOIN LATERAL (
    SELECT (CASE t.entry WHEN 2 THEN 2 ELSE 1 END)::smallint AS entry, t.amount_fen WHERE t.entry <> 3
    UNION ALL
    SELECT 3::smallint, t.released_fen WHERE t.entry >= 3
) l
WHERE {transfers} AND (t.debit_account_id = $1 OR t.credit_account_id = $1) AND t.ts_ns >= $2 AND t.ts_ns < $3
  AND (t.transfer_id, l.entry) > ($4, $5::smallint)
ORDER BY t.transfer_id, t.entry, l.entry
LIMIT $6
"""
# $7: the range's first transfer id, $8: its end, $9: where the page starts in it (the cursor or $7)
_OLDER_EXPIRIES: Final = _LINES.format(
    transfers="t.entry = 3 AND t.transfer_id = t.pending_id AND t.transfer_id >= $4 AND t.transfer_id < $7::bigint")
# A house account has no account index (0007: escrow and fee income are on most rows, and a walk reads the
# bank's or the subsidy fund's sparse lines no slower than their own index would, measured at one row in a
# thousand): the page walks the primary key.
_HOUSE_WALK: Final = _LINES.format(transfers="t.transfer_id >= $9::bigint AND t.transfer_id < $8::bigint")
# A participant's account indexes, ANDed with a span of the range's part of the primary key; the query
# names the partial indexes' condition (0007) so that even a generic plan may use them.
_PARTICIPANT_WALK: Final = (
    "SELECT seq, transfer_id, entry, side, amount_fen, code, user_data, pending_id, ts_ns FROM ledger_postings "
    f"WHERE account_id = $1 AND account_id >= {FIRST_PARTICIPANT_ACCOUNT_ID} AND ts_ns >= $2 AND ts_ns < $3 "
    "AND transfer_id >= $9::bigint AND transfer_id < $8::bigint AND (transfer_id, entry) > ($4, $5::smallint) "
    "ORDER BY transfer_id, entry LIMIT $6"
)


def _page_sql(walk: str) -> str:
    return (f"SELECT * FROM (({_OLDER_EXPIRIES}) UNION ALL ({walk})) page "
            "ORDER BY transfer_id, entry LIMIT $6")


_HOUSE_STATEMENT_SQL: Final = _page_sql(_HOUSE_WALK)
_PARTICIPANT_STATEMENT_SQL: Final = _page_sql(_PARTICIPANT_WALK)
# The end of the window is the last transfer when the window ends after the newest row (also the
# gateway's default): no binary search for it.
_WINDOW_SQL: Final = """
SELECT ledger_first_transfer_at($1),
       CASE WHEN $2::bigint > coalesce((SELECT max(ts_ns) FROM ledger_transfers
                                        WHERE transfer_id = (SELECT max(transfer_id) FROM ledger_transfers)), -1)
            THEN (SELECT coalesce(max(transfer_id), 0) + 1 FROM ledger_transfers)
            ELSE ledger_first_transfer_at($2) END
"""
# A participant's page first reads this many transfer ids after its start, then a span grown by what the
# last one held (enough for the page twice over at its density: at least twice, at most 16 times as
# long), until the page is full or the window ends: the first try fills the page of a busy account, a
# quiet one's takes a few tries, each cheap (its account index is small); reading the whole window at
# once would sort all the account's rows in it for every page. Growing by density matters to an account
# that is busy but not busy enough for the first span: by 16 its second try read a whole month of the
# long-run benchmark's ledger (benchmarks.longrun: a buyer's page went from 60 ms to a few ms).
_FIRST_SPAN: Final = 8192
_SPAN_GROWTH: Final = 16


async def window_transfer_ids(conn: asyncpg.Connection, from_ts_ns: int, until_ts_ns: int) -> tuple[int, int]:
    """The range of transfer ids ``[start, end)`` that holds every row in ``[from_ts_ns, until_ts_ns)``
    except expiries of pending transfers older than ``start``."""
    start, end = await conn.fetchrow(_WINDOW_SQL, from_ts_ns, until_ts_ns)
    return start, end


async def statement(
    conn: asyncpg.Connection | asyncpg.Pool, account_id: int, from_ts_ns: int = 0, until_ts_ns: int = 2**63 - 1,
    after: tuple[int, int] = (0, 0), limit: int = 1000,
) -> list[asyncpg.Record]:
    """An account's statement lines in ``[from_ts_ns, until_ts_ns)`` after ``after`` (a line's
    ``(transfer_id, entry)``, the paging cursor), oldest first, at most ``limit``: seq, transfer_id,
    entry, side, amount_fen, code, user_data, pending_id, ts_ns (the ``ledger_postings`` view: one line
    per account side, a post of a pending transfer as a RELEASE and a POSTED line). An account is on one
    side of a transfer, and transfer ids grow with the journal, so this is the order the money moved in."""
    args = (account_id, from_ts_ns, until_ts_ns, after[0], after[1], limit)
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as one:
            return await _statement_page(one, args)
    return await _statement_page(conn, args)


async def _statement_page(conn: asyncpg.Connection, args: tuple[int, ...]) -> list[asyncpg.Record]:
    """The window and the page in one read-only repeatable-read transaction (one snapshot), or in the
    caller's transaction if it is in one (which then keeps custom plans to its end; under read committed
    each of the page's queries sees the rows committed before it)."""
    if conn.is_in_transaction():
        return await _page(conn, args)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _page(conn, args)


async def _page(conn: asyncpg.Connection, args: tuple[int, ...]) -> list[asyncpg.Record]:
    # Custom plans only: a generic plan cannot see how narrow the range is (measured on a house account:
    # 0.8 s instead of 1 ms a page at 2M rows).
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    start, end = await window_transfer_ids(conn, args[1], args[2])
    first = max(start, args[3])
    if args[0] < FIRST_PARTICIPANT_ACCOUNT_ID:  # a house walk stops at the page's end by itself
        return await conn.fetch(_HOUSE_STATEMENT_SQL, *args, start, end, first)
    span = _FIRST_SPAN
    while True:  # lines past a full page's range come after all of its lines, so the page is exact
        stop = min(end, first + span)
        rows = await conn.fetch(_PARTICIPANT_STATEMENT_SQL, *args, start, stop, first)
        if len(rows) >= args[5] or stop >= end:
            return rows
        span *= min(_SPAN_GROWTH, max(2, -(-2 * args[5] // max(1, len(rows)))))
