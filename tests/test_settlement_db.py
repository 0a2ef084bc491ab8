"""The ledger in PostgreSQL: the clearing's drained rows rebuild the same balances, and the database
refuses money out of thin air (an unbalanced batch written behind the core's back: half a transfer, a
post of more than was held), non-positive amounts and edits of posted rows."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable

import asyncpg
import pytest

from exchange.commands import Command, FundsAccount, GrantAdvance, RunPayouts
from exchange.core import Core
from exchange.events import Rejected
from exchange.sequencer import Sequencer
from exchange.settlement import pgstore
from exchange.settlement.clearing import Clearing
from exchange.settlement.ledger import (
    CHART,
    Account,
    AccountCode,
    CreateAccountResult,
    CreateTransferResult,
    Entry,
    Ledger,
    Posting,
    Transfer,
    TransferCode,
    TransferFlags,
)
from tests.conftest import FreshDatabase
from tests.settlement_support import BUYER, FARMER, FINANCIER, HOUR_NS, OPERATOR, Exchange, world

TRANSFER_INSERT = (
    "INSERT INTO ledger_transfers (seq, transfer_id, entry, debit_account_id, credit_account_id, amount_fen, "
    "released_fen, pending_id, code, user_data, ts_ns) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, 0, 0)"
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
        # 4 house accounts and 9 of participants (the financier's interest collected among them)
        assert len(accounts) == 13
        cash = x.clearing.accounts[(400, BUYER, 0)]
        rows = await pgstore.statement(conn, cash)
        assert [(r["code"], r["entry"]) for r in rows][:2] == [(TransferCode.DEPOSIT, Entry.POSTED),
                                                                 (TransferCode.ORDER_HOLD, Entry.PENDING)]
    finally:
        await conn.close()


def _lines_of(postings: list[Posting], account_id: int) -> list[tuple[int, int, int, int]]:
    """(transfer_id, entry, side, amount) of an account from the core's postings, as the statement view
    shows them: a post of a pending transfer is a RELEASE line and a POSTED line."""
    lines = []
    for p in postings:
        for side, account in ((1, p.debit_account_id), (-1, p.credit_account_id)):
            if account != account_id:
                continue
            if p.entry != Entry.RELEASE:
                lines.append((p.transfer_id, Entry.PENDING if p.entry == Entry.PENDING else Entry.POSTED, side,
                              p.amount_fen))
            if p.entry >= Entry.RELEASE:
                lines.append((p.transfer_id, Entry.RELEASE, side, p.released_fen))
    return sorted(lines)


async def test_statements_page_house_and_participant_accounts_exactly(fresh_database_url: FreshDatabase) -> None:
    """Migration 0007 leaves the house accounts out of the statement indexes; their statements walk the
    primary key. Both kinds page to exactly the lines of the core's postings."""
    x = busy_world()
    new_accounts, postings = x.clearing.drain_new_accounts(), x.clearing.drain_postings()
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        async with conn.transaction():
            await pgstore.write_ledger_rows(conn, 1, new_accounts, postings)
        cash = x.clearing.accounts[(AccountCode.BUYER_CASH, BUYER, 0)]
        for account_id in (AccountCode.ESCROW, AccountCode.BANK_SETTLEMENT, cash):
            expected = _lines_of(postings, account_id)
            assert len(expected) >= 3
            got: list[tuple[int, int, int, int]] = []
            after = (0, 0)
            while page := await pgstore.statement(conn, account_id, after=after, limit=2):
                got += [(r["transfer_id"], r["entry"], r["side"], r["amount_fen"]) for r in page]
                after = (page[-1]["transfer_id"], page[-1]["entry"])
            assert got == expected, account_id
    finally:
        await conn.close()


def _ledger_over_time() -> tuple[Ledger, int]:
    """A house account's busy life at growing times: deposits, holds into escrow posted, voided or timed
    out (an expiry keeps its pending transfer's older id), several per time. Returns the ledger and the
    last time."""
    bank, escrow, cash = AccountCode.BANK_SETTLEMENT, AccountCode.ESCROW, 1000
    ledger = Ledger()
    accounts = [Account(bank, bank, flags=CHART[bank].limit_flags),
                Account(escrow, escrow, flags=CHART[escrow].limit_flags),
                Account(cash, AccountCode.BUYER_CASH, 77, flags=CHART[AccountCode.BUYER_CASH].limit_flags)]
    assert ledger.create_accounts(accounts, 10) == [CreateAccountResult.OK] * 3
    ids = itertools.count(1)
    assert ledger.create_transfers([Transfer(next(ids), bank, cash, 10**9, TransferCode.DEPOSIT)], 10) == [
        CreateTransferResult.OK]
    now = 10
    for step in range(40):
        now += 10
        hold = next(ids)
        batch = [Transfer(hold, cash, escrow, 1000 + step, TransferCode.ORDER_HOLD, step, TransferFlags.PENDING,
                          timeout_ns=(35 + 10 * (step % 4)) if step % 3 == 0 else 0)]
        if step % 3 == 1:  # posted at once in part, the rest released
            batch.append(Transfer(next(ids), amount_fen=500, pending_id=hold, flags=TransferFlags.POST_PENDING,
                                  code=TransferCode.TRADE))
        elif step % 3 == 2:
            batch.append(Transfer(next(ids), pending_id=hold, flags=TransferFlags.VOID_PENDING,
                                  code=TransferCode.ORDER_RELEASE))
        if step % 5 == 0:
            batch.append(Transfer(next(ids), bank, cash, 7, TransferCode.DEPOSIT))
        assert set(ledger.create_transfers(batch, now)) == {CreateTransferResult.OK}
        ledger.expire_pending(now)
    return ledger, now


async def test_a_statement_over_any_window_and_page_size_is_the_views(
    fresh_database_url: FreshDatabase, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
) -> None:
    """A statement page reads the window's range of transfer ids (binary search over time, migration
    0009) and adds expiries of older pending transfers: a house account's walks the primary key, a
    participant's its account indexes over a span of it that grows until the page is full. For every
    window (more with --soak), page size, first span and account (two house accounts, a buyer's cash)
    it pages to exactly the lines of the ledger_postings view, in its order."""
    ledger, last_ns = _ledger_over_time()
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        async with conn.transaction():
            await pgstore.write_ledger_rows(conn, 1, ledger.drain_new_accounts(), ledger.drain_postings())
        expiries = await conn.fetchval(
            "SELECT count(*) FROM ledger_transfers WHERE entry = 3 AND transfer_id = pending_id")
        assert expiries >= 10
        bounds = [0, 25, 75, 205, last_ns, last_ns + 1, 2**63 - 1]
        if request.config.getoption("--soak"):
            bounds += [1, 60, 150, 300]
        windows = [(a, b) for a in bounds for b in bounds if a < b]
        cases = [*itertools.product((100, 200), windows, (1, 3, 1000), (pgstore._FIRST_SPAN,)),
                 *itertools.product((1000,), windows, (1, 3, 1000), (pgstore._FIRST_SPAN, 1, 5))]
        for account_id, (from_ns, until_ns), limit, first_span in cases:
            monkeypatch.setattr(pgstore, "_FIRST_SPAN", first_span)  # the ledger has a few hundred ids
            expected = [tuple(r) for r in await conn.fetch(
                "SELECT seq, transfer_id, entry, side, amount_fen, code, user_data, pending_id, ts_ns"
                " FROM ledger_postings WHERE account_id = $1 AND ts_ns >= $2 AND ts_ns < $3"
                " ORDER BY transfer_id, entry", account_id, from_ns, until_ns)]
            got: list[tuple[int, ...]] = []
            after = (0, 0)
            while page := await pgstore.statement(conn, account_id, from_ns, until_ns, after, limit):
                assert len(page) <= limit
                got += [tuple(r) for r in page]
                after = (page[-1]["transfer_id"], page[-1]["entry"])
            assert got == expected, (account_id, from_ns, until_ns, limit, first_span)
        alone = [tuple(r) for r in await pgstore.statement(conn, 200, 60, 205, (0, 0), 1000)]
        assert len(alone) >= 10
        async with conn.transaction():  # inside a caller's (read committed) transaction: the same lines
            assert [tuple(r) for r in await pgstore.statement(conn, 200, 60, 205, (0, 0), 1000)] == alone
    finally:
        await conn.close()


async def test_a_participants_statement_can_use_the_partial_indexes(fresh_database_url: FreshDatabase) -> None:
    """The participant query names the indexes' condition, so even its generic plan may use them (a query
    without it could only scan the whole table)."""
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        await conn.execute("SET enable_seqscan = off")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE statement_page AS {pgstore._PARTICIPANT_STATEMENT_SQL}")
        plan = await conn.fetchval("EXPLAIN (FORMAT JSON) EXECUTE statement_page(1000, 0, 1, 0, 0, 10, 0, 5, 0)")
        assert "ledger_transfers_by_debit" in str(plan) and "ledger_transfers_by_credit" in str(plan)
    finally:
        await conn.close()


async def test_an_unbalanced_batch_written_behind_the_cores_back_is_refused(
    fresh_database_url: FreshDatabase,
) -> None:
    """A row of ledger_transfers is a whole transfer: money cannot appear on one side only."""
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        with pytest.raises(asyncpg.NotNullViolationError, match="credit_account_id"):
            async with conn.transaction():
                # one debit of 500 fen from account 100 with nothing credited: money into nowhere
                await conn.execute(TRANSFER_INSERT, 7, 1, Entry.POSTED, 100, None, 500, 0, 0)
        with pytest.raises(asyncpg.CheckViolationError, match="ledger_transfers_entry_shape"):
            async with conn.transaction():  # released from pending 400 but posted 500: 100 from nowhere
                await conn.execute(TRANSFER_INSERT, 8, 2, Entry.POST_PENDING, 100, 1000, 500, 400, 1)
        with pytest.raises(asyncpg.CheckViolationError, match="ledger_transfers_entry_shape"):
            async with conn.transaction():  # a release that also posts
                await conn.execute(TRANSFER_INSERT, 8, 2, Entry.RELEASE, 100, 1000, 500, 500, 1)
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
            async with conn.transaction():  # one side alone through the statement view
                await conn.execute("INSERT INTO ledger_postings (seq, transfer_id, entry, side, account_id, amount_fen,"
                                   " code, user_data, pending_id, ts_ns) VALUES (9, 3, 1, -1, 1000, 500, 1, 0, 0, 0)")
        assert await conn.fetchval("SELECT count(*) FROM ledger_transfers") == 0
    finally:
        await conn.close()


async def test_written_rows_are_append_only_and_balance_by_construction(fresh_database_url: FreshDatabase) -> None:
    conn = await asyncpg.connect(await fresh_database_url())
    try:
        async with conn.transaction():
            await conn.execute(TRANSFER_INSERT, 9, 3, Entry.POSTED, 100, 1000, 500, 0, 0)
            await conn.execute(TRANSFER_INSERT, 9, 4, Entry.PENDING, 1000, 200, 300, 0, 0)
            await conn.execute(TRANSFER_INSERT, 10, 5, Entry.POST_PENDING, 1000, 200, 100, 300, 4)
        lines = await conn.fetch("SELECT entry, side, sum(amount_fen) FROM ledger_postings GROUP BY entry, side")
        by_line = {(r[0], r[1]): r[2] for r in lines}
        assert by_line == {(1, 1): 600, (1, -1): 600, (2, 1): 300, (2, -1): 300, (3, 1): 300, (3, -1): 300}
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("UPDATE ledger_transfers SET amount_fen = 1")
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("DELETE FROM ledger_transfers")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(TRANSFER_INSERT, 10, 6, Entry.POSTED, 100, 1000, 0, 0, 0)
    finally:
        await conn.close()


class ExchangeCore(Core):
    """The core as the exchange runs it (with its clearing), constructible without arguments."""

    def __init__(self, clearing: Clearing | None = None) -> None:
        super().__init__(Clearing() if clearing is None else clearing)


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
        seqs = await conn.fetch("SELECT DISTINCT p.seq, j.seq AS journal_seq FROM ledger_transfers p "
                                "LEFT JOIN journal j ON j.seq = p.seq")
        assert seqs and all(r["journal_seq"] is not None for r in seqs)  # every posting names its command
    finally:
        await conn.close()


class _WriterThatWritesMore(pgstore.LedgerWriter):
    """A ledger writer with rows of its own after the ledger's (as gateway.store.RegistrationWriter)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_transaction: list[bool] = []

    def __call__(self, conn: asyncpg.Connection, batch: object) -> Awaitable[None]:
        return self._more(conn, super().__call__(conn, batch), batch.first_seq, len(batch))  # type: ignore[attr-defined, arg-type]

    async def _more(self, conn: asyncpg.Connection, ledger: Awaitable[None], first_seq: int, n: int) -> None:
        await ledger
        self.in_transaction.append(conn.is_in_transaction())
        await conn.execute("INSERT INTO extra_rows SELECT generate_series($1::bigint, $2::bigint)",
                           first_seq, first_seq + n - 1)


async def test_a_ledger_writer_that_writes_more_writes_it_in_the_batch_transaction(
    fresh_database_url: FreshDatabase,
) -> None:
    """The sequencer begins the transaction with the journal's COPY and a plain LedgerWriter commits it
    with its last COPY; a subclass's own rows after the ledger's must still be inside it, committed."""
    x = busy_world()
    dsn = await fresh_database_url()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE extra_rows (seq bigint PRIMARY KEY)")
        now_ns = [0]
        writer = _WriterThatWritesMore()
        sequencer = Sequencer(dsn, core_type=ExchangeCore, extra_writes=writer, clock_ns=lambda: now_ns[0],
                              snapshot_every=10**9, freeze_gc=False)
        writer.attach(sequencer)
        await sequencer.start()
        try:
            for command in x.commands:
                now_ns[0] = max(now_ns[0], command.ts_ns)
                await sequencer.submit(command)
            core = sequencer.core
        finally:
            await sequencer.stop(snapshot=False)
        assert writer.in_transaction and all(writer.in_transaction)
        assert await conn.fetchval("SELECT array_agg(seq ORDER BY seq) FROM extra_rows") == await conn.fetchval(
            "SELECT array_agg(seq ORDER BY seq) FROM journal")
        await assert_database_equals(conn, core)
    finally:
        await conn.close()
