"""PostgreSQL re-checks the ledger: every row of ledger_transfers is one whole transfer (both accounts,
one amount), so a batch cannot be unbalanced; rows of the wrong shape written behind the core's back
are refused, rows are append-only and unique, the balances view rebuilds the core's counters and the
statement view shows one line per account side. Migration 0006 converts 0002's rows exactly."""

from __future__ import annotations

import itertools
import struct

import asyncpg
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange import store
from exchange.settlement import (
    ACCOUNT_COLUMNS,
    CHART,
    POSTING_COLUMNS,
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
    account_records,
    pgstore,
    posting_records,
)
from tests.conftest import FreshDatabase

# The session database is shared with other tests: use ids and batch numbers far from theirs, and a
# fresh range per test so reruns within a session never collide.
_RANGE = itertools.count(1)

INSERT = (f"INSERT INTO ledger_transfers ({', '.join(POSTING_COLUMNS)})"
          " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")


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
    await pgstore.write_ledger_rows(conn, seq, ledger.drain_new_accounts(), ledger.drain_postings())


async def test_balanced_batch_commits_and_the_views_match_the_core(pool: asyncpg.Pool) -> None:
    base = _base()
    ledger = _ledger_with_activity(base)
    buyer = base + 2
    async with pool.acquire() as conn:
        async with conn.transaction():
            await _write(conn, base, ledger)
        got = await conn.fetch(
            "SELECT account_id, debits_pending_fen, debits_posted_fen, credits_pending_fen, credits_posted_fen"
            " FROM ledger_balances WHERE account_id BETWEEN $1 AND $2 ORDER BY account_id", base, base + 999)
        assert await conn.fetchval("SELECT count(*) FROM ledger_transfers WHERE seq = $1", base) == 8
        lines = await pgstore.statement(conn, buyer)
    expected = [(a.account_id, a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen,
                 a.credits_posted_fen) for a in ledger.accounts()]
    assert [tuple(r) for r in got] == expected
    assert expected[1] == (buyer, 40_000, 120_000, 0, 500_000)  # the buyer: one hold left open
    # One line per account side as 0002 stored them: the post is a POSTED and a RELEASE line.
    assert [(r["transfer_id"] - base, Entry(r["entry"]).name, r["side"], r["amount_fen"]) for r in lines] == [
        (10, "POSTED", -1, 500_000), (11, "PENDING", 1, 200_000), (12, "POSTED", 1, 120_000),
        (12, "RELEASE", 1, 200_000), (13, "PENDING", 1, 50_000), (14, "RELEASE", 1, 50_000),
        (15, "PENDING", 1, 30_000), (15, "RELEASE", 1, 30_000), (16, "PENDING", 1, 40_000),
    ]


def _row(base: int, **changes: int | None) -> tuple[int | None, ...]:
    """A valid single-phase row of 500 fen from account base+2 to base+1, with ``changes`` applied
    (account ids in ``changes`` are offsets from ``base``)."""
    row: dict[str, int | None] = dict(
        seq=base, transfer_id=base + 99, entry=Entry.POSTED, debit_account_id=2, credit_account_id=1, amount_fen=500,
        released_fen=0, code=TransferCode.FEE, user_data=0, pending_id=0, ts_ns=30)
    row.update(changes)
    for side in ("debit_account_id", "credit_account_id"):
        if row[side] is not None:
            row[side] = base + row[side]  # type: ignore[operator]
    return tuple(row[c] for c in POSTING_COLUMNS)


@pytest.mark.parametrize(("changes", "constraint"), [
    (dict(credit_account_id=None), "null value in column \"credit_account_id\""),  # half a transfer
    (dict(debit_account_id=None), "null value in column \"debit_account_id\""),
    (dict(credit_account_id=2), "ledger_transfers_two_accounts"),  # both sides on one account
    (dict(amount_fen=0), "ledger_transfers_entry_shape"),
    (dict(amount_fen=-500), "ledger_transfers_entry_shape"),
    (dict(released_fen=500), "ledger_transfers_entry_shape"),  # posted and released at once
    (dict(entry=Entry.PENDING, pending_id=7), "ledger_transfers_entry_shape"),
    (dict(entry=Entry.RELEASE, released_fen=500, pending_id=7), "ledger_transfers_entry_shape"),  # posts too
    (dict(entry=Entry.RELEASE, amount_fen=0, released_fen=0, pending_id=7), "ledger_transfers_entry_shape"),
    (dict(entry=Entry.RELEASE, amount_fen=0, released_fen=500), "ledger_transfers_entry_shape"),  # of nothing
    # a post that posts more than its pending transfer held: money out of thin air
    (dict(entry=Entry.POST_PENDING, released_fen=499, pending_id=7), "ledger_transfers_entry_shape"),
    (dict(entry=5), "ledger_transfers_entry_shape"),
])
async def test_a_row_that_is_not_one_whole_transfer_is_refused(
    pool: asyncpg.Pool, changes: dict[str, int | None], constraint: str
) -> None:
    base = _base()
    row = _row(base, **changes)
    error = asyncpg.NotNullViolationError if None in changes.values() else asyncpg.CheckViolationError
    async with pool.acquire() as conn:
        with pytest.raises(error, match=constraint):
            await conn.execute(INSERT, *row)
        with pytest.raises(error, match=constraint):  # the writer's path: COPY
            await conn.copy_records_to_table("ledger_transfers", records=[row], columns=POSTING_COLUMNS)
        assert await conn.fetchval("SELECT count(*) FROM ledger_transfers WHERE seq = $1", base) == 0


async def test_rows_are_append_only_unique_and_lines_cannot_be_written_alone(pool: asyncpg.Pool) -> None:
    base = _base()
    ledger = _ledger_with_activity(base)
    rows = posting_records(base, ledger.drain_postings())
    async with pool.acquire() as conn:
        await conn.copy_records_to_table("ledger_accounts", records=account_records(ledger.drain_new_accounts()),
                                         columns=ACCOUNT_COLUMNS)
        await conn.copy_records_to_table("ledger_transfers", records=rows, columns=POSTING_COLUMNS)
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("UPDATE ledger_transfers SET amount_fen = amount_fen + 1 WHERE seq = $1", base)
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute("DELETE FROM ledger_transfers WHERE seq = $1", base)
        # the same batch written again (a replayed command's rows): refused as a whole
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.copy_records_to_table("ledger_transfers", records=rows[-1:], columns=POSTING_COLUMNS)
        # one side of a transfer alone, in 0002's row shape: the statement view takes no rows
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="not automatically updatable"):
            await conn.execute("INSERT INTO ledger_postings (seq, transfer_id, entry, side, account_id, amount_fen,"
                               " code, user_data, pending_id, ts_ns) VALUES ($1, $2, 1, -1, $3, 500, 22, 0, 0, 30)",
                               base, base + 98, base + 1)
        assert await conn.fetchval("SELECT count(*) FROM ledger_transfers WHERE seq = $1", base) == len(rows)


async def test_the_binary_copy_of_the_writer_stores_exactly_the_drained_rows(pool: asyncpg.Pool) -> None:
    base = _base()
    ledger = _ledger_with_activity(base)
    accounts, postings = ledger.drain_new_accounts(), ledger.drain_postings()
    # two commands: seq base gets the first three rows, seq base + 1 the rest
    per_command = [(accounts, postings[:3]), ((), postings[3:])]
    async with pool.acquire() as conn:
        async with conn.transaction():
            await pgstore.write_batch_rows(conn, base, per_command)
        stored = await conn.fetch(f"SELECT {', '.join(POSTING_COLUMNS)} FROM ledger_transfers"
                                  " WHERE seq BETWEEN $1 AND $1 + 1 ORDER BY transfer_id, entry", base)
    expected = posting_records(base, postings[:3]) + posting_records(base + 1, postings[3:])
    assert [tuple(r) for r in stored] == sorted(expected, key=lambda r: (r[1], r[2]))
    assert pgstore.encode_postings(base, [((), ()), ((), ())]) == b""


def _reference_row(seq: int, p: Posting) -> bytes:
    """One binary COPY row of ledger_transfers spelt out field by field: count, then (length, value)."""
    values = (seq, *msgspec.structs.astuple(p))
    sizes = (8, 8, 2, 8, 8, 8, 8, 4, 8, 8, 8)  # POSTING_COLUMNS: smallint entry, integer code, bigint else
    fields = (struct.pack(">i", size) + value.to_bytes(size, "big", signed=True)
              for size, value in zip(sizes, values, strict=True))
    return struct.pack(">h", 11) + b"".join(fields)


def test_the_posting_encoding_is_the_binary_copy_row_of_every_field_at_its_limits() -> None:
    top, bottom = 2**63 - 1, -(2**63)
    postings = [Posting(top, 2**15 - 1, top, top, top, top, 2**31 - 1, top, top, top),
                Posting(bottom, -(2**15), bottom, bottom, bottom, bottom, -(2**31), bottom, bottom, bottom),
                Posting(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)]
    per_command = [((), postings[:2]), ((), ()), ((), postings[2:])]
    body, rows = pgstore.encode_postings_body(top - 2, per_command)
    assert rows == 3
    assert body == _reference_row(top - 2, postings[0]) + _reference_row(top - 2, postings[1]) + _reference_row(
        top, postings[2])
    assert pgstore.encode_postings_body(5, [((), ()), ((), ())]) == (b"", 0)
    for bad in (Posting(2**63, 1, 1, 1, 1, 0, 1, 0, 0, 1), Posting(1, 2**15, 1, 1, 1, 0, 1, 0, 0, 1),
                Posting(1, 1, 1, 1, 1, 0, 2**31, 0, 0, 1)):
        with pytest.raises(struct.error):
            pgstore.encode_postings_body(1, [((), [bad])])


_INT64 = st.integers(-(2**63), 2**63 - 1)
_POSTINGS = st.builds(Posting, _INT64, st.integers(-(2**15), 2**15 - 1), _INT64, _INT64, _INT64, _INT64,
                      st.integers(-(2**31), 2**31 - 1), _INT64, _INT64, _INT64)


@given(st.integers(1, 2**62), st.lists(st.lists(_POSTINGS, max_size=4), max_size=12))
def test_the_posting_encoding_is_the_binary_copy_row_of_every_posting_in_order(
    first_seq: int, per_command_postings: list[list[Posting]]
) -> None:
    """encode_postings_body packs a run mirrored and reverses it (little-endian is struct's fast path):
    the rows still come out in order, each the field-by-field row of its posting and command's seq."""
    per_command = [((), postings) for postings in per_command_postings]
    expected = b"".join(_reference_row(first_seq + i, p) for i, postings in enumerate(per_command_postings)
                        for p in postings)  # fmt: skip
    assert pgstore.encode_postings_body(first_seq, per_command) == (expected, sum(map(len, per_command_postings)))


async def test_migration_0006_converts_the_rows_of_0002_exactly(fresh_database_url: FreshDatabase) -> None:
    """Rows written in 0002's shape (two per effect) become one row per transfer with the same balances
    and statement lines; an old row without its other half stops the migration."""
    upto_0005 = [m for m in store.load_migrations() if m.version <= 5]
    ledger = _ledger_with_activity(10_000)
    accounts, postings = ledger.drain_new_accounts(), ledger.drain_postings()
    old_rows = _rows_of_0002(10_000, postings)
    for broken in (False, True):
        conn = await asyncpg.connect(await fresh_database_url(migrated=False))
        try:
            await store.migrate(conn, migrations=upto_0005)
            await conn.copy_records_to_table("ledger_accounts", records=account_records(accounts),
                                             columns=ACCOUNT_COLUMNS)
            await conn.copy_records_to_table("ledger_postings", records=old_rows, columns=_COLUMNS_0002)
            before = await pgstore.balances(conn)
            lines_before = await conn.fetch(f"SELECT {', '.join(_COLUMNS_0002)} FROM ledger_postings"
                                            " ORDER BY transfer_id, entry, side")
            if broken:  # one debit line without its credit, balanced in the batch by another lone credit
                async with conn.transaction():
                    await conn.execute("INSERT INTO ledger_postings VALUES (10000, 1, 1, 1, 10001, 7, 1, 0, 0, 30),"
                                       " (10000, 2, 1, -1, 10002, 7, 1, 0, 0, 30)")
                with pytest.raises(asyncpg.RaiseError, match="not converted"):
                    await store.migrate(conn)
                assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 5
                continue
            assert await store.migrate(conn) == [m.version for m in store.load_migrations() if m.version > 5]
            assert await pgstore.balances(conn) == before == {
                a.account_id: (a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen,
                               a.credits_posted_fen) for a in ledger.accounts()}
            lines_after = await conn.fetch(f"SELECT {', '.join(_COLUMNS_0002)} FROM ledger_postings"
                                           " ORDER BY transfer_id, entry, side")
            assert [tuple(r) for r in lines_after] == [tuple(r) for r in lines_before]
            stored = await conn.fetch(f"SELECT {', '.join(POSTING_COLUMNS)} FROM ledger_transfers"
                                      " ORDER BY transfer_id, entry")
            assert [tuple(r) for r in stored] == sorted(posting_records(10_000, postings), key=lambda r: r[1:3])
        finally:
            await conn.close()


_COLUMNS_0002 = ("seq", "transfer_id", "entry", "side", "account_id", "amount_fen", "code", "user_data",
                 "pending_id", "ts_ns")


def _rows_of_0002(seq: int, postings: list) -> list[tuple[int, ...]]:
    """The rows 0002's ``ledger_postings`` held for these postings: a debit and a credit line per
    counter pair changed (a post: its RELEASE pair, then its POSTED pair)."""
    rows: list[tuple[int, ...]] = []
    for p in postings:
        parts = []
        if p.entry in (Entry.RELEASE, Entry.POST_PENDING):
            parts.append((Entry.RELEASE, p.released_fen))
        if p.entry != Entry.RELEASE:
            parts.append((Entry.PENDING if p.entry == Entry.PENDING else Entry.POSTED, p.amount_fen))
        for entry, amount in parts:
            for side, account_id in ((1, p.debit_account_id), (-1, p.credit_account_id)):
                rows.append((seq, p.transfer_id, entry, side, account_id, amount, p.code, p.user_data, p.pending_id,
                             p.ts_ns))
    return rows
