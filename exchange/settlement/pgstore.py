"""PostgreSQL side of the ledger (asyncpg): writing drained rows in the batch's transaction, and reading
balances and statements back. The only module of ``exchange/settlement`` that does I/O.

``LedgerWriter`` is the sequencer's ``extra_writes(conn, batch)`` hook: inside the transaction that
also COPYs the journal rows it writes the new accounts and postings of exactly the batch's commands,
so money rows and the commands that made them commit together, each posting stamped with the seq of
its command. The database re-checks that every (seq, entry) group balances (migration 0002's deferred
trigger).

Rows are kept per command, not drained per batch: the sequencer applies the next batch's commands
while the previous one commits, so rows drained when ``extra_writes`` runs would include commands that
are not in the batch (and would be lost with it if its commit failed). The clearing queues each
command's rows as it is applied (``Clearing.command_rows``); the writer takes ``len(batch)`` entries,
after dropping entries of commands that recovery replayed (they are durable already).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from exchange.settlement.ledger import Account, Posting

ACCOUNT_COLUMNS = ("account_id", "code", "owner_id", "ledger", "flags", "user_data", "ts_ns")
POSTING_COLUMNS = ("seq", "transfer_id", "entry", "side", "account_id", "amount_fen", "code", "user_data",
                   "pending_id", "ts_ns")


def account_records(accounts: Sequence[Account]) -> list[tuple[int, ...]]:
    return [(a.account_id, a.code, a.owner_id, a.ledger, a.flags, a.user_data, a.ts_ns) for a in accounts]


def posting_records(seq: int, postings: Sequence[Posting]) -> list[tuple[int, ...]]:
    """Rows for ``ledger_postings``, all stamped with the journal ``seq`` of the batch that made them."""
    return [(seq, p.transfer_id, p.entry, p.side, p.account_id, p.amount_fen, p.code, p.user_data, p.pending_id,
             p.ts_ns) for p in postings]


async def write_ledger_rows(
    conn: asyncpg.Connection, seq: int, accounts: Sequence[Account], postings: Sequence[Posting]
) -> None:
    """COPY new accounts and postings; call inside the journal batch's transaction."""
    if accounts:
        await conn.copy_records_to_table("ledger_accounts", records=account_records(accounts),
                                         columns=ACCOUNT_COLUMNS)
    if postings:
        await conn.copy_records_to_table("ledger_postings", records=posting_records(seq, postings),
                                         columns=POSTING_COLUMNS)


def batch_records(
    first_seq: int, per_command: Sequence[tuple[Sequence[Account], Sequence[Posting]]]
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(account rows, posting rows) of a journal batch whose command with seq ``first_seq + i`` made
    ``per_command[i]`` (new accounts, postings): every posting carries the seq of its command."""
    accounts: list[tuple[int, ...]] = []
    postings: list[tuple[int, ...]] = []
    for i, (new_accounts, command_postings) in enumerate(per_command):
        if new_accounts:
            accounts.extend(account_records(new_accounts))
        if command_postings:
            postings.extend(posting_records(first_seq + i, command_postings))
    return accounts, postings


async def copy_rows(conn: asyncpg.Connection, accounts: Sequence[tuple[int, ...]],
                    postings: Sequence[tuple[int, ...]]) -> None:
    """COPY ready-made account and posting rows (``batch_records``)."""
    if accounts:
        await conn.copy_records_to_table("ledger_accounts", records=accounts, columns=ACCOUNT_COLUMNS)
    if postings:
        await conn.copy_records_to_table("ledger_postings", records=postings, columns=POSTING_COLUMNS)


async def write_batch_rows(
    conn: asyncpg.Connection, first_seq: int, per_command: Sequence[tuple[Sequence[Account], Sequence[Posting]]]
) -> None:
    """COPY the ledger rows of a journal batch (see ``batch_records``); call inside its transaction."""
    await copy_rows(conn, *batch_records(first_seq, per_command))


class LedgerWriter:
    """``extra_writes`` for a sequencer whose core has a clearing: ``Sequencer(dsn,
    extra_writes=writer)`` then ``writer.attach(sequencer)`` (the sequencer replaces its core on
    recovery, so the writer looks it up on every batch)."""

    def __init__(self) -> None:
        self._sequencer: object | None = None
        self.rows_written = 0

    def attach(self, sequencer: object) -> None:
        """Any object with ``core.clearing`` and ``applied_seq`` (``exchange.sequencer.Sequencer``)."""
        self._sequencer = sequencer

    async def __call__(self, conn: asyncpg.Connection, batch: object) -> None:
        sequencer = self._sequencer
        if sequencer is None:
            raise RuntimeError("LedgerWriter.attach(sequencer) was not called")
        clearing = sequencer.core.clearing  # type: ignore[attr-defined]
        first_seq, n = batch.first_seq, len(batch)  # type: ignore[attr-defined, arg-type]
        # command_rows holds the rows of seqs applied_seq - len + 1 .. applied_seq (read before any await)
        queued_from = sequencer.applied_seq - len(clearing.command_rows) + 1  # type: ignore[attr-defined]
        if queued_from > first_seq:
            raise RuntimeError(f"ledger rows of seq {first_seq} are gone (queue starts at {queued_from})")
        if queued_from < first_seq:
            clearing.take_command_rows(first_seq - queued_from)  # replayed by recovery: durable already
        accounts, postings = batch_records(first_seq, clearing.take_command_rows(n))
        await copy_rows(conn, accounts, postings)
        self.rows_written += len(postings)


async def balances(conn: asyncpg.Connection) -> dict[int, tuple[int, int, int, int]]:
    """account id -> (debits_pending, debits_posted, credits_pending, credits_posted), from the postings."""
    rows = await conn.fetch(
        "SELECT account_id, debits_pending_fen, debits_posted_fen, credits_pending_fen, credits_posted_fen "
        "FROM ledger_balances"
    )
    return {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}


async def statement(
    conn: asyncpg.Connection, account_id: int, from_ts_ns: int = 0, until_ts_ns: int = 2**63 - 1, limit: int = 1000
) -> list[asyncpg.Record]:
    """An account's posting rows in ``[from_ts_ns, until_ts_ns)``, oldest first (at most ``limit``):
    seq, transfer_id, entry, side, amount_fen, code, user_data, pending_id, ts_ns."""
    return await conn.fetch(
        "SELECT seq, transfer_id, entry, side, amount_fen, code, user_data, pending_id, ts_ns "
        "FROM ledger_postings WHERE account_id = $1 AND ts_ns >= $2 AND ts_ns < $3 "
        "ORDER BY seq, transfer_id, entry LIMIT $4",
        account_id, from_ts_ns, until_ts_ns, limit,
    )  # fmt: skip
