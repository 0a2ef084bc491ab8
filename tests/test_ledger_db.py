"""PostgreSQL re-checks the ledger: balanced batches commit, unbalanced rows written behind the core's back
are refused at COMMIT, postings are append-only, and the balances view rebuilds the core's counters."""

from __future__ import annotations

import itertools

import asyncpg
import pytest

from exchange.settlement import (
    ACCOUNT_COLUMNS,
    CHART,
    POSTING_COLUMNS,
    Account,
    AccountCode,
    CreateAccountResult,
    CreateTransferResult,
    Ledger,
    Transfer,
    TransferCode,
    TransferFlags,
    account_records,
    posting_records,
)

# The session database is shared with other tests: use ids and batch numbers far from theirs, and a
# fresh range per test so reruns within a session never collide.
_RANGE = itertools.count(1)


def _base() -> int:
    return 7_000_000_000_000 + next(_RANGE) * 1_000_000


def _ledger_with_activity(base: int) -> Ledger:
    """Deposit, an order hold partly posted, a voided hold and an expired hold: every entry kind."""
    bank, buyer, escrow = base + 1, base + 2, base + 3
    ledger = Ledger()
    accounts = [Account(bank, AccountCode.BANK_SETTLEMENT, flags=CHART[AccountCode.BANK_SETTLEMENT].limit_flags),
                Account(buyer, AccountCode.BUYER_CASH, 77, flags=CHART[AccountCode.BUYER_CASH].limit_flags),
                Account(escrow, AccountCode.ESCROW, flags=CHART[AccountCode.ESCROW].limit_flags)]
    assert ledger.create_accounts(accounts, 10) == [CreateAccountResult.OK] * 3
    pending = TransferFlags.PENDING
    assert ledger.create_transfers([
        Transfer(base + 10, bank, buyer, 500_000, TransferCode.DEPOSIT),
        Transfer(base + 11, buyer, escrow, 200_000, TransferCode.ORDER_HOLD, 1, pending),
        Transfer(base + 12, amount_fen=120_000, flags=TransferFlags.POST_PENDING, pending_id=base + 11,
                 code=TransferCode.TRADE, user_data=2),
        Transfer(base + 13, buyer, escrow, 50_000, TransferCode.ORDER_HOLD, 3, pending),
        Transfer(base + 14, flags=TransferFlags.VOID_PENDING, pending_id=base + 13),
        Transfer(base + 15, buyer, escrow, 30_000, TransferCode.ORDER_HOLD, 4, pending, timeout_ns=5),
        Transfer(base + 16, buyer, escrow, 40_000, TransferCode.ORDER_HOLD, 5, pending),
    ], 20) == [CreateTransferResult.OK] * 7
    assert ledger.expire_pending(25) == [base + 15]
    return ledger


async def _write(conn: asyncpg.Connection, seq: int, ledger: Ledger) -> None:
    await conn.copy_records_to_table("ledger_accounts", records=account_records(ledger.drain_new_accounts()),
                                     columns=ACCOUNT_COLUMNS)
    await conn.copy_records_to_table("ledger_postings", records=posting_records(seq, ledger.drain_postings()),
                                     columns=POSTING_COLUMNS)


async def test_balanced_batch_commits_and_balances_view_matches_the_core(pool: asyncpg.Pool) -> None:
    base = _base()
    ledger = _ledger_with_activity(base)
    async with pool.acquire() as conn:
        async with conn.transaction():
            await _write(conn, base, ledger)
        got = await conn.fetch(
            "SELECT account_id, debits_pending_fen, debits_posted_fen, credits_pending_fen, credits_posted_fen"
            " FROM ledger_balances WHERE account_id BETWEEN $1 AND $2 ORDER BY account_id", base, base + 999)
    expected = [(a.account_id, a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen,
                 a.credits_posted_fen) for a in ledger.accounts()]
    assert [tuple(r) for r in got] == expected
    assert expected[1] == (base + 2, 40_000, 120_000, 0, 500_000)  # the buyer: one hold left open


async def test_unbalanced_batch_behind_the_cores_back_is_refused_at_commit(pool: asyncpg.Pool) -> None:
    base = _base()
    ledger = _ledger_with_activity(base)
    rows = posting_records(base, ledger.drain_postings())
    async with pool.acquire() as conn:
        await conn.copy_records_to_table("ledger_accounts", records=account_records(ledger.drain_new_accounts()),
                                         columns=ACCOUNT_COLUMNS)
        with pytest.raises(asyncpg.CheckViolationError, match=f"ledger batch {base} does not balance"):
            async with conn.transaction():
                # Every row but the last credit: money out of thin air on the debit side.
                await conn.copy_records_to_table("ledger_postings", records=rows[:-1], columns=POSTING_COLUMNS)
        assert await conn.fetchval("SELECT count(*) FROM ledger_postings WHERE seq = $1", base) == 0

        # Balanced in total but moved between entry kinds (a pending credit passed off as posted).
        entry = POSTING_COLUMNS.index("entry")
        pending_debit = next(r for r in rows if r[entry] == 2 and r[POSTING_COLUMNS.index("side")] == 1)
        shifted = [(*r[:entry], 1, *r[entry + 1:]) if r is pending_debit else r for r in rows]
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with conn.transaction():
                await conn.copy_records_to_table("ledger_postings", records=shifted, columns=POSTING_COLUMNS)

        # Split over two statements: refused only if the transaction as a whole does not balance.
        async with conn.transaction():
            await conn.copy_records_to_table("ledger_postings", records=rows[:3], columns=POSTING_COLUMNS)
            await conn.copy_records_to_table("ledger_postings", records=rows[3:], columns=POSTING_COLUMNS)
        assert await conn.fetchval("SELECT count(*) FROM ledger_postings WHERE seq = $1", base) == len(rows)

        # A lone extra row for a batch that committed balanced is refused too.
        extra = (base, base + 99, 1, 1, base + 2, 1, TransferCode.FEE, 0, 0, 30)
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO ledger_postings ({', '.join(POSTING_COLUMNS)})"
                                   " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", *extra)


async def test_postings_are_append_only_and_amounts_positive(pool: asyncpg.Pool) -> None:
    base = _base()
    ledger = _ledger_with_activity(base)
    async with pool.acquire() as conn:
        async with conn.transaction():
            await _write(conn, base, ledger)
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("UPDATE ledger_postings SET amount_fen = amount_fen + 1 WHERE seq = $1", base)
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("DELETE FROM ledger_postings WHERE seq = $1", base)
        zero = [(base + 1, base + 98, 1, 1, base + 2, 0, 1, 0, 0, 30),
                (base + 1, base + 98, 1, -1, base + 1, 0, 1, 0, 0, 30)]
        with pytest.raises(asyncpg.CheckViolationError, match="amount_fen"):
            await conn.copy_records_to_table("ledger_postings", records=zero, columns=POSTING_COLUMNS)
