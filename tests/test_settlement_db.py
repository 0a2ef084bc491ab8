"""The ledger in PostgreSQL: the clearing's drained rows rebuild the same balances, and the database
refuses money out of thin air (an unbalanced batch written behind the core's back), non-positive
amounts and edits of posted rows."""

from __future__ import annotations

import asyncpg
import pytest

from exchange.commands import Command, FundsAccount, GrantAdvance, RunPayouts
from exchange.core import Core
from exchange.events import Rejected
from exchange.sequencer import Sequencer
from exchange.settlement import pgstore
from exchange.settlement.clearing import Clearing
from exchange.settlement.ledger import Entry, PostingSide, TransferCode
from tests.conftest import FreshDatabase
from tests.settlement_support import BUYER, FARMER, FINANCIER, HOUR_NS, OPERATOR, Exchange, world

POSTING_INSERT = (
    "INSERT INTO ledger_postings (seq, transfer_id, entry, side, account_id, amount_fen, code, user_data, "
    "pending_id, ts_ns) VALUES ($1, $2, $3, $4, $5, $6, 1, 0, 0, 0)"
)


def busy_world() -> Exchange:
    """Deposits, a hold and a partial fill, an advance, a weigh-in, a settlement, a payout run."""
    x = world()
    x.deposit(BUYER, 10_000_000)
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.consent(FARMER, FINANCIER)
    trade = x.trade(BUYER, FARMER, 2800, 10, limit_fen=2900)
    x.buy(BUYER, 2750, 3)
    x.ok(GrantAdvance(FINANCIER, 0, trade.trade_id, 1_000_000, 600))
    x.weigh_in(trade.trade_id, 9, 1_000_003)
    x.tick(48 * HOUR_NS)
    x.ok(RunPayouts(OPERATOR, 0, "R1"))
    return x


async def test_drained_rows_rebuild_the_ledgers_balances_in_the_database(fresh_database_url: FreshDatabase) -> None:
    x = busy_world()
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        async with conn.transaction():  # as the sequencer's extra_writes: with the batch's journal rows
            await pgstore.write_ledger_rows(conn, 1, x.clearing.drain_new_accounts(), x.clearing.drain_postings())
        stored = await pgstore.balances(conn)
        accounts = x.clearing.ledger.accounts()
        assert stored == {a.account_id: (a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen,
                                         a.credits_posted_fen) for a in accounts}
        assert len(accounts) == 12  # 4 house accounts and 8 of participants
        cash = x.clearing.accounts[(400, BUYER, 0)]
        rows = await pgstore.statement(conn, cash)
        assert [(r["code"], r["entry"]) for r in rows][:2] == [(TransferCode.DEPOSIT, Entry.POSTED),
                                                                 (TransferCode.ORDER_HOLD, Entry.PENDING)]
    finally:
        await conn.close()


async def test_an_unbalanced_batch_written_behind_the_cores_back_is_refused_at_commit(
    fresh_database_url: FreshDatabase,
) -> None:
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="ledger batch 7 does not balance"):
            async with conn.transaction():
                # one credit of 500 fen to account 1000 with no debit: money from nowhere
                await conn.execute(POSTING_INSERT, 7, 1, Entry.POSTED, PostingSide.CREDIT, 1000, 500)
        assert await conn.fetchval("SELECT count(*) FROM ledger_postings") == 0
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with conn.transaction():  # balanced in sum, but not within one entry kind
                await conn.execute(POSTING_INSERT, 8, 2, Entry.POSTED, PostingSide.DEBIT, 100, 500)
                await conn.execute(POSTING_INSERT, 8, 2, Entry.PENDING, PostingSide.CREDIT, 1000, 500)
        assert await conn.fetchval("SELECT count(*) FROM ledger_postings") == 0
    finally:
        await conn.close()


async def test_rows_balanced_across_statements_of_one_transaction_commit(fresh_database_url: FreshDatabase) -> None:
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        async with conn.transaction():
            await conn.execute(POSTING_INSERT, 9, 3, Entry.POSTED, PostingSide.DEBIT, 100, 500)
            await conn.execute(POSTING_INSERT, 9, 3, Entry.POSTED, PostingSide.CREDIT, 1000, 500)
        assert await conn.fetchval("SELECT count(*) FROM ledger_postings") == 2
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("UPDATE ledger_postings SET amount_fen = 1")
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("DELETE FROM ledger_postings")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(POSTING_INSERT, 10, 4, Entry.POSTED, PostingSide.DEBIT, 100, 0)
    finally:
        await conn.close()


class ExchangeCore(Core):
    """The core as the exchange runs it (with its clearing), constructible without arguments."""

    def __init__(self) -> None:
        super().__init__(Clearing())


async def run_through_sequencer(dsn: str, commands: list[Command], *, snapshot: bool) -> Core:
    """Start a sequencer (recovering), submit stamped commands one by one, each at its own time, and
    stop it (with a snapshot or not); return its core."""
    now_ns = [0]
    writer = pgstore.LedgerWriter()
    sequencer = Sequencer(dsn, core_type=ExchangeCore, extra_writes=writer, clock_ns=lambda: now_ns[0],
                          snapshot_every=10**9, freeze_gc=False)
    writer.attach(sequencer)
    await sequencer.start()
    try:
        for command in commands:
            now_ns[0] = max(now_ns[0], command.ts_ns)
            result = await sequencer.submit(command)
            assert not [e for e in result.events if isinstance(e, Rejected)], (command, result.events)
        return sequencer.core
    finally:
        await sequencer.stop(snapshot=snapshot)


async def assert_database_equals(conn: asyncpg.Connection, core: Core) -> None:
    assert core.clearing is not None
    expected = {a.account_id: (a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen,
                               a.credits_posted_fen) for a in core.clearing.ledger.accounts()}
    assert await pgstore.balances(conn) == expected


async def test_sequencer_commits_each_commands_ledger_rows_with_it_and_recovery_writes_none_twice(
    fresh_database_url: FreshDatabase,
) -> None:
    x = busy_world()
    commands = x.commands
    cut = len(commands) * 2 // 3
    dsn = await fresh_database_url()
    conn = await asyncpg.connect(dsn)
    try:
        core = await run_through_sequencer(dsn, commands[:cut], snapshot=False)
        await assert_database_equals(conn, core)
        # restart: recovery replays every command (their rows are durable: none may be written again)
        core = await run_through_sequencer(dsn, commands[cut:-3], snapshot=True)
        await assert_database_equals(conn, core)
        core = await run_through_sequencer(dsn, commands[-3:], snapshot=False)  # from the snapshot
        await assert_database_equals(conn, core)
        assert core.state_hash() == x.core.state_hash()  # the same exchange as applied in memory
        seqs = await conn.fetch("SELECT DISTINCT p.seq, j.seq AS journal_seq FROM ledger_postings p "
                                "LEFT JOIN journal j ON j.seq = p.seq")
        assert seqs and all(r["journal_seq"] is not None for r in seqs)  # every posting names its command
    finally:
        await conn.close()
