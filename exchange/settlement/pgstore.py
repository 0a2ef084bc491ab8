"""PostgreSQL side of the ledger (asyncpg): writing drained rows in the batch's transaction, and reading
balances and statements back. The only module of ``exchange/settlement`` that does I/O.

The sequencer's ``extra_writes(conn, batch)`` hook calls ``write_ledger_rows`` with what the core's
clearing drained for the batch (``drain_new_accounts``, ``drain_postings``) inside the transaction that
also COPYs the journal rows, so money rows and the commands that made them commit together. The
database re-checks that every (seq, entry) group balances (migration 0002's deferred trigger).
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
