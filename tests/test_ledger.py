"""Example tests of the double-entry ledger: exact figures for every transfer kind, every result code."""

from __future__ import annotations

import msgspec
import pytest

from exchange.settlement import (
    CHART,
    MAX_INT64,
    NO_ROWS,
    Account,
    AccountCode,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    Entry,
    Ledger,
    PendingStatus,
    Posting,
    Transfer,
    TransferCode,
    TransferFlags,
)

A = CreateAccountResult
R = CreateTransferResult
DR_LIMIT = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
CR_LIMIT = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
PENDING = TransferFlags.PENDING
POST = TransferFlags.POST_PENDING
VOID = TransferFlags.VOID_PENDING
LINKED = TransferFlags.LINKED

BANK, BUYER_A, BUYER_B, ESCROW, INTEREST, LOANS = 1, 10, 11, 20, 40, 41
T0_NS = 1_000_000_000  # when the fixture's accounts and deposit were made
NOW_NS = 2_000_000_000  # when the tests' transfers run
HOUR_NS = 3_600 * 10**9


def account(account_id: int, code: AccountCode, owner_id: int = 0, **kw: int) -> Account:
    """An account with the limit flag the chart prescribes for its code."""
    return Account(account_id, code, owner_id, flags=kw.pop("flags", CHART[code].limit_flags), **kw)


def fresh_ledger() -> Ledger:
    """Bank, two buyers, escrow, a financier's interest income and a loan account; buyer A has 10,000.00."""
    ledger = Ledger()
    results = ledger.create_accounts([
        account(BANK, AccountCode.BANK_SETTLEMENT),
        account(BUYER_A, AccountCode.BUYER_CASH, owner_id=501),
        account(BUYER_B, AccountCode.BUYER_CASH, owner_id=502),
        account(ESCROW, AccountCode.ESCROW),
        account(INTEREST, AccountCode.INTEREST_INCOME, owner_id=900),
        account(LOANS, AccountCode.LOANS_RECEIVABLE, owner_id=900, user_data=601),
    ], T0_NS)
    assert results == [A.OK] * 6
    assert ledger.create_transfers([Transfer(1, BANK, BUYER_A, 1_000_000, TransferCode.DEPOSIT)], T0_NS) == [R.OK]
    ledger.drain_postings()
    ledger.drain_new_accounts()
    return ledger


def counters(ledger: Ledger, account_id: int) -> tuple[int, int, int, int]:
    """(debits_pending, debits_posted, credits_pending, credits_posted) in fen."""
    a = ledger.account(account_id)
    assert a is not None
    return (a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen, a.credits_posted_fen)


def rows(postings: list[Posting]) -> list[tuple[int, str, int, int, int, int]]:
    """Postings as (transfer_id, entry, debit account, credit account, amount_fen, released_fen) for
    compact exact assertions."""
    return [(p.transfer_id, Entry(p.entry).name, p.debit_account_id, p.credit_account_id, p.amount_fen,
             p.released_fen) for p in postings]


def hold(transfer_id: int, amount_fen: int, timeout_ns: int = 0, debit: int = BUYER_A) -> Transfer:
    return Transfer(transfer_id, debit, ESCROW, amount_fen, TransferCode.ORDER_HOLD, 7001, PENDING,
                    timeout_ns=timeout_ns)


# ------------------------------------------------------------------------------------- transfer kinds


def test_single_phase_transfer_moves_posted_counters_and_writes_one_row() -> None:
    ledger = fresh_ledger()
    assert ledger.create_transfers([Transfer(2, BUYER_A, BANK, 250_000, TransferCode.WITHDRAWAL, 42)],
                                   NOW_NS) == [R.OK]
    assert counters(ledger, BUYER_A) == (0, 250_000, 0, 1_000_000)
    assert counters(ledger, BANK) == (0, 1_000_000, 0, 250_000)
    assert ledger.drain_postings() == [
        Posting(2, Entry.POSTED, BUYER_A, BANK, 250_000, 0, TransferCode.WITHDRAWAL, 42, 0, NOW_NS),
    ]
    assert ledger.drain_postings() == []
    ledger.validate()


def test_pending_hold_counts_against_the_limit() -> None:
    ledger = fresh_ledger()
    assert ledger.create_transfers([hold(2, 600_000)], NOW_NS) == [R.OK]
    assert counters(ledger, BUYER_A) == (600_000, 0, 0, 1_000_000)
    assert counters(ledger, ESCROW) == (0, 0, 600_000, 0)
    assert ledger.pending_status(2) is PendingStatus.PENDING
    assert rows(ledger.drain_postings()) == [(2, "PENDING", BUYER_A, ESCROW, 600_000, 0)]
    # 400,000 is left: a second hold of 400,001 would spend held money twice.
    assert ledger.create_transfers([hold(3, 400_001), hold(4, 400_000)], NOW_NS) == [R.EXCEEDS_CREDITS, R.OK]
    assert counters(ledger, BUYER_A) == (1_000_000, 0, 0, 1_000_000)
    ledger.validate()


def test_post_of_the_full_pending_amount() -> None:
    ledger = fresh_ledger()
    ledger.create_transfers([hold(2, 600_000)], NOW_NS)
    ledger.drain_postings()
    post = Transfer(3, flags=POST, pending_id=2, code=TransferCode.TRADE, user_data=8001)
    assert ledger.create_transfers([post], NOW_NS) == [R.OK]
    assert counters(ledger, BUYER_A) == (0, 600_000, 0, 1_000_000)
    assert counters(ledger, ESCROW) == (0, 0, 0, 600_000)
    assert ledger.pending_status(2) is PendingStatus.POSTED
    # The stored record has the pending transfer's accounts and amount filled in.
    assert ledger.transfer(3) == Transfer(3, BUYER_A, ESCROW, 600_000, TransferCode.TRADE, 8001, POST, 2)
    # One row: 600,000 off both pending counters, 600,000 onto both posted counters.
    assert ledger.drain_postings() == [
        Posting(3, Entry.POST_PENDING, BUYER_A, ESCROW, 600_000, 600_000, TransferCode.TRADE, 8001, 2, NOW_NS),
    ]
    ledger.validate()


def test_partial_post_releases_the_rest() -> None:
    ledger = fresh_ledger()
    ledger.create_transfers([hold(2, 600_000)], NOW_NS)
    ledger.drain_postings()
    assert ledger.create_transfers([Transfer(3, amount_fen=450_000, flags=POST, pending_id=2)], NOW_NS) == [R.OK]
    assert counters(ledger, BUYER_A) == (0, 450_000, 0, 1_000_000)
    assert counters(ledger, ESCROW) == (0, 0, 0, 450_000)
    assert rows(ledger.drain_postings()) == [(3, "POST_PENDING", BUYER_A, ESCROW, 450_000, 600_000)]
    # Code and user data 0 on the post mean "as the pending transfer".
    assert ledger.transfer(3) == Transfer(3, BUYER_A, ESCROW, 450_000, TransferCode.ORDER_HOLD, 7001, POST, 2)
    ledger.validate()


def test_void_releases_the_whole_hold() -> None:
    ledger = fresh_ledger()
    ledger.create_transfers([hold(2, 600_000)], NOW_NS)
    ledger.drain_postings()
    void = Transfer(3, flags=VOID, pending_id=2, code=TransferCode.ORDER_RELEASE)
    assert ledger.create_transfers([void], NOW_NS) == [R.OK]
    assert counters(ledger, BUYER_A) == (0, 0, 0, 1_000_000)
    assert counters(ledger, ESCROW) == (0, 0, 0, 0)
    assert ledger.pending_status(2) is PendingStatus.VOIDED
    assert rows(ledger.drain_postings()) == [(3, "RELEASE", BUYER_A, ESCROW, 0, 600_000)]
    assert ledger.create_transfers([Transfer(4, flags=POST, pending_id=2)], NOW_NS) == [
        R.PENDING_TRANSFER_ALREADY_VOIDED]
    ledger.validate()


def test_fill_then_rehold_the_rest_in_one_linked_chain() -> None:
    """An order fills in parts: post the filled part and hold the rest again, atomically."""
    ledger = fresh_ledger()
    ledger.create_transfers([hold(2, 1_000_000)], NOW_NS)
    chain = [Transfer(3, amount_fen=300_000, flags=POST | LINKED, pending_id=2, code=TransferCode.TRADE),
             hold(4, 700_000)]
    assert ledger.create_transfers(chain, NOW_NS) == [R.OK, R.OK]
    assert counters(ledger, BUYER_A) == (700_000, 300_000, 0, 1_000_000)
    assert counters(ledger, ESCROW) == (0, 0, 700_000, 300_000)
    ledger.validate()


def test_expiry_releases_in_deadline_then_id_order_exactly_at_the_deadline() -> None:
    ledger = fresh_ledger()
    ledger.create_transfers([hold(5, 100_000, timeout_ns=2 * HOUR_NS), hold(3, 200_000, timeout_ns=HOUR_NS),
                             hold(4, 300_000, timeout_ns=HOUR_NS), hold(6, 50_000)], NOW_NS)
    ledger.drain_postings()
    assert ledger.expire_pending(NOW_NS + HOUR_NS - 1) == []
    assert ledger.expire_pending(NOW_NS + HOUR_NS) == [3, 4]
    assert counters(ledger, BUYER_A) == (150_000, 0, 0, 1_000_000)
    expired = ledger.drain_postings()
    assert rows(expired) == [(3, "RELEASE", BUYER_A, ESCROW, 0, 200_000), (4, "RELEASE", BUYER_A, ESCROW, 0, 300_000)]
    assert [p.pending_id for p in expired] == [3, 4]  # an expiry row names its pending transfer twice
    assert ledger.pending_status(3) is PendingStatus.EXPIRED
    assert ledger.create_transfers([Transfer(7, flags=POST, pending_id=3)], NOW_NS + HOUR_NS) == [
        R.PENDING_TRANSFER_EXPIRED]
    assert ledger.expire_pending(NOW_NS + 10 * HOUR_NS) == [5]  # 6 has no timeout
    ledger.validate()


def test_a_timed_out_hold_cannot_be_posted_even_before_expire_pending_runs() -> None:
    ledger = fresh_ledger()
    ledger.create_transfers([hold(2, 100_000, timeout_ns=HOUR_NS)], NOW_NS)
    before = ledger.state_hash()
    assert ledger.create_transfers([Transfer(3, flags=POST, pending_id=2)], NOW_NS + HOUR_NS) == [
        R.PENDING_TRANSFER_EXPIRED]
    assert ledger.pending_status(2) is PendingStatus.PENDING  # still held until expire_pending
    assert counters(ledger, BUYER_A) == (100_000, 0, 0, 1_000_000)
    assert ledger.transfer(3) is None
    assert ledger.state_hash() != before  # only the clock moved
    assert ledger.expire_pending(NOW_NS + HOUR_NS) == [2]
    assert counters(ledger, BUYER_A) == (0, 0, 0, 1_000_000)


def test_time_must_not_go_backwards() -> None:
    ledger = fresh_ledger()
    with pytest.raises(ValueError, match="backwards"):
        ledger.create_transfers([], T0_NS - 1)
    with pytest.raises(ValueError, match="backwards"):
        ledger.create_transfer(Transfer(2, BUYER_A, BUYER_B, 1, TransferCode.TRADE), T0_NS - 1)
    assert ledger.transfer(2) is None


def test_one_transfer_entry_point_answers_as_a_batch_of_one() -> None:
    ledger = fresh_ledger()
    assert ledger.create_transfer(hold(2, 600_000), NOW_NS) is R.OK
    assert ledger.create_transfer(hold(2, 600_000), NOW_NS) is R.EXISTS
    assert ledger.create_transfer(hold(3, 400_001), NOW_NS) is R.EXCEEDS_CREDITS
    linked = Transfer(4, BUYER_A, BUYER_B, 1, TransferCode.TRADE, flags=LINKED)
    assert ledger.create_transfer(linked, NOW_NS) is R.LINKED_EVENT_CHAIN_OPEN  # a chain never closed
    assert ledger.create_transfers([linked], NOW_NS) == [R.LINKED_EVENT_CHAIN_OPEN]
    assert ledger.transfer(4) is None
    assert counters(ledger, BUYER_A) == (600_000, 0, 0, 1_000_000)


def test_drain_rows_allocates_nothing_when_nothing_happened() -> None:
    ledger = fresh_ledger()
    assert ledger.drain_rows() is NO_ROWS == ((), ())
    assert ledger.create_accounts([account(50, AccountCode.BUYER_CASH, owner_id=503)], NOW_NS) == [A.OK]
    ledger.create_transfer(hold(2, 1_000), NOW_NS)
    accounts, postings = ledger.drain_rows()
    assert [a.account_id for a in accounts] == [50] and rows(list(postings)) == [(2, "PENDING", BUYER_A, ESCROW,
                                                                                   1_000, 0)]
    ledger.create_transfer(Transfer(3, flags=VOID, pending_id=2), NOW_NS)
    assert ledger.drain_rows() == ((), [Posting(3, Entry.RELEASE, BUYER_A, ESCROW, 0, 1_000, TransferCode.ORDER_HOLD,
                                                7001, 2, NOW_NS)])
    assert ledger.drain_rows() is NO_ROWS


# ---------------------------------------------------------------------------------------- idempotency


def test_identical_retry_answers_exists_and_changes_nothing() -> None:
    ledger = fresh_ledger()
    t = Transfer(2, BUYER_A, BUYER_B, 1_000_000, TransferCode.DEPOSIT, 5)
    assert ledger.create_transfers([t], NOW_NS) == [R.OK]
    ledger.drain_postings()
    state = ledger.state_hash()
    # The retry would now exceed buyer A's credits, yet it answers EXISTS: exists is checked first.
    assert ledger.create_transfers([t], NOW_NS) == [R.EXISTS]
    assert ledger.create_transfers([msgspec.structs.replace(t, flags=LINKED)], NOW_NS) == [
        R.LINKED_EVENT_CHAIN_OPEN]
    assert ledger.state_hash() == state
    assert ledger.drain_postings() == []


def test_retry_of_a_post_with_amount_zero_or_the_resolved_amount_is_exists() -> None:
    ledger = fresh_ledger()
    ledger.create_transfers([hold(2, 600_000), Transfer(3, flags=POST, pending_id=2)], NOW_NS)
    assert ledger.create_transfers([Transfer(3, flags=POST, pending_id=2),
                                    Transfer(3, amount_fen=600_000, flags=POST, pending_id=2)], NOW_NS) == [
        R.EXISTS, R.EXISTS]
    assert ledger.create_transfers([Transfer(3, amount_fen=500_000, flags=POST, pending_id=2)], NOW_NS) == [
        R.EXISTS_WITH_DIFFERENT_AMOUNT]


# ------------------------------------------------------------------------------------- linked chains


def test_failed_chain_rolls_back_every_earlier_member() -> None:
    ledger = fresh_ledger()
    ledger.create_transfers([hold(2, 100_000)], NOW_NS)
    ledger.drain_postings()
    state = ledger.state_hash()
    chain = [
        Transfer(3, BUYER_A, BUYER_B, 500_000, TransferCode.DEPOSIT, flags=LINKED),
        Transfer(4, flags=POST | LINKED, pending_id=2),
        Transfer(5, BUYER_B, ESCROW, 150_000, TransferCode.ORDER_HOLD, flags=PENDING | LINKED, timeout_ns=HOUR_NS),
        Transfer(6, BUYER_A, ESCROW, 400_001, TransferCode.TRADE),  # 1 fen more than is left
    ]
    assert ledger.create_transfers(chain, NOW_NS) == [
        R.LINKED_EVENT_FAILED, R.LINKED_EVENT_FAILED, R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS]
    assert ledger.state_hash() == state
    assert ledger.drain_postings() == []
    assert ledger.transfer(3) is None and ledger.transfer(5) is None
    assert ledger.pending_status(2) is PendingStatus.PENDING
    assert ledger.expire_pending(NOW_NS + HOUR_NS) == []  # the rolled-back hold left no deadline
    # The same ids can be used again, and the chain without its bad member goes through.
    retry = [*chain[:2], msgspec.structs.replace(chain[2], flags=PENDING)]
    assert ledger.create_transfers(retry, NOW_NS + HOUR_NS) == [R.OK, R.OK, R.OK]
    ledger.validate()


def pair_of(ledger: Ledger, first: Transfer, second: Transfer, now_ns: int) -> list[CreateTransferResult]:
    """``create_pair_of`` given the two transfers' fields (timeouts are not among them: 0)."""
    assert first.timeout_ns == second.timeout_ns == 0
    fields = msgspec.structs.astuple(first)[:8] + msgspec.structs.astuple(second)[:8]
    return list(ledger.create_pair_of(*fields, now_ns))


@pytest.mark.parametrize("second", [
    hold(4, 700_000),  # the clearing's partial fill: post, then hold the rest again
    hold(4, 700_001),  # 1 fen more than the post leaves: the post is rolled back
    Transfer(4, BUYER_A, BUYER_B, 1, TransferCode.TRADE, flags=LINKED),  # not a closed pair: the batch's answer
])  # fmt: skip
@pytest.mark.parametrize("post_flags", [POST | LINKED, POST])
def test_a_pair_by_fields_answers_and_changes_as_a_batch_of_the_two(second: Transfer, post_flags: int) -> None:
    by_batch, by_fields = fresh_ledger(), fresh_ledger()
    for ledger in (by_batch, by_fields):
        assert ledger.create_transfers([hold(2, 1_000_000)], NOW_NS) == [R.OK]
    post = Transfer(3, amount_fen=300_000, flags=post_flags, pending_id=2, code=TransferCode.TRADE, user_data=9)
    expected = by_batch.create_transfers([post, second], NOW_NS)
    assert pair_of(by_fields, post, second, NOW_NS) == expected
    assert by_fields.state_hash() == by_batch.state_hash()
    assert by_fields.drain_postings() == by_batch.drain_postings()
    assert pair_of(by_fields, post, second, NOW_NS) == by_batch.create_transfers([post, second], NOW_NS)  # retried
    assert by_fields.state_hash() == by_batch.state_hash()
    by_fields.validate()


def test_chain_members_after_the_failure_are_not_evaluated() -> None:
    ledger = fresh_ledger()
    chain = [Transfer(2, BUYER_A, BUYER_A, 1, TransferCode.TRADE, flags=LINKED),
             Transfer(3, BUYER_A, BUYER_B, 1, TransferCode.TRADE, flags=LINKED),
             Transfer(4, BUYER_A, BUYER_B, 1, TransferCode.TRADE)]
    solo = Transfer(5, BUYER_A, BUYER_B, 1, TransferCode.TRADE)
    assert ledger.create_transfers([*chain, solo], NOW_NS) == [
        R.ACCOUNTS_MUST_BE_DIFFERENT, R.LINKED_EVENT_FAILED, R.LINKED_EVENT_FAILED, R.OK]


def test_retry_of_an_applied_chain_answers_exists_for_every_member() -> None:
    ledger = fresh_ledger()
    chain = [Transfer(2, BUYER_A, BUYER_B, 10, TransferCode.TRADE, flags=LINKED),
             Transfer(3, BUYER_B, ESCROW, 10, TransferCode.TRADE)]
    assert ledger.create_transfers(chain, NOW_NS) == [R.OK, R.OK]
    assert ledger.create_transfers(chain, NOW_NS) == [R.EXISTS, R.EXISTS]


def test_open_chain_at_the_end_of_the_batch_fails_whole() -> None:
    ledger = fresh_ledger()
    batch = [Transfer(2, BUYER_A, BUYER_B, 10, TransferCode.TRADE),
             Transfer(3, BUYER_A, BUYER_B, 10, TransferCode.TRADE, flags=LINKED),
             Transfer(4, BUYER_A, BUYER_B, 10, TransferCode.TRADE, flags=LINKED)]
    assert ledger.create_transfers(batch, NOW_NS) == [R.OK, R.LINKED_EVENT_FAILED, R.LINKED_EVENT_CHAIN_OPEN]
    assert ledger.transfer(3) is None


# ------------------------------------------------------------------------------ every transfer code

def _setup_pendings(ledger: Ledger) -> None:
    """100: open hold (1 h timeout); 101 posted; 102 voided; 103 expired; 104 single-phase; 105 open."""
    results = ledger.create_transfers([
        hold(100, 10_000, timeout_ns=HOUR_NS), hold(101, 10_000), hold(102, 10_000),
        hold(103, 10_000, timeout_ns=1), hold(105, 10_000),
        Transfer(104, BUYER_A, BUYER_B, 10_000, TransferCode.TRADE, 9),
        Transfer(110, amount_fen=4_000, flags=POST, pending_id=101, code=TransferCode.TRADE),
        Transfer(111, flags=VOID, pending_id=102),
    ], NOW_NS)
    assert all(r == R.OK for r in results), results
    assert ledger.expire_pending(NOW_NS + 1) == [103]


TRADE = TransferCode.TRADE
TRANSFER_CASES: list[tuple[str, list[Transfer], list[CreateTransferResult]]] = [
    ("ok", [Transfer(200, BUYER_A, BUYER_B, 1, TRADE)], [R.OK]),
    ("linked_event_failed+chain_open", [Transfer(200, BUYER_A, BUYER_B, 1, TRADE, flags=LINKED)] * 2,
     [R.LINKED_EVENT_FAILED, R.LINKED_EVENT_CHAIN_OPEN]),
    ("reserved_flag", [Transfer(200, BUYER_A, BUYER_B, 1, TRADE, flags=16)], [R.RESERVED_FLAG]),
    ("id_zero", [Transfer(0, BUYER_A, BUYER_B, 1, TRADE)], [R.ID_OUT_OF_RANGE]),
    ("id_too_big", [Transfer(MAX_INT64 + 1, BUYER_A, BUYER_B, 1, TRADE)], [R.ID_OUT_OF_RANGE]),
    ("post_and_void", [Transfer(200, flags=POST | VOID, pending_id=100)], [R.FLAGS_ARE_MUTUALLY_EXCLUSIVE]),
    ("pending_and_post", [Transfer(200, flags=PENDING | POST, pending_id=100)],
     [R.FLAGS_ARE_MUTUALLY_EXCLUSIVE]),
    ("pending_id_on_single", [Transfer(200, BUYER_A, BUYER_B, 1, TRADE, pending_id=100)],
     [R.PENDING_ID_MUST_BE_ZERO]),
    ("pending_id_zero", [Transfer(200, flags=POST)], [R.PENDING_ID_OUT_OF_RANGE]),
    ("pending_id_same", [Transfer(200, flags=VOID, pending_id=200)], [R.PENDING_ID_MUST_BE_DIFFERENT]),
    ("timeout_on_single", [Transfer(200, BUYER_A, BUYER_B, 1, TRADE, timeout_ns=5)],
     [R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER]),
    ("timeout_on_post", [Transfer(200, flags=POST, pending_id=100, timeout_ns=5)],
     [R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER]),
    ("timeout_negative", [Transfer(200, BUYER_A, BUYER_B, 1, TRADE, flags=PENDING, timeout_ns=-1)],
     [R.TIMEOUT_OUT_OF_RANGE]),
    ("same_accounts", [Transfer(200, BUYER_A, BUYER_A, 1, TRADE)], [R.ACCOUNTS_MUST_BE_DIFFERENT]),
    ("code_zero", [Transfer(200, BUYER_A, BUYER_B, 1, 0)], [R.CODE_OUT_OF_RANGE]),
    ("code_negative_on_post", [Transfer(200, flags=POST, pending_id=100, code=-1)], [R.CODE_OUT_OF_RANGE]),
    ("user_data_negative", [Transfer(200, BUYER_A, BUYER_B, 1, TRADE, -1)], [R.USER_DATA_OUT_OF_RANGE]),
    ("user_data_too_big_on_void", [Transfer(200, flags=VOID, pending_id=100, user_data=MAX_INT64 + 1)],
     [R.USER_DATA_OUT_OF_RANGE]),
    ("amount_float", [Transfer(200, BUYER_A, BUYER_B, 1.0, TRADE)], [R.AMOUNT_MUST_BE_INTEGER]),  # type: ignore[arg-type]
    ("amount_bool", [Transfer(200, BUYER_A, BUYER_B, True, TRADE)], [R.AMOUNT_MUST_BE_INTEGER]),
    ("amount_float_on_post", [Transfer(200, amount_fen=0.5, flags=POST, pending_id=100)],  # type: ignore[arg-type]
     [R.AMOUNT_MUST_BE_INTEGER]),
    ("amount_zero", [Transfer(200, BUYER_A, BUYER_B, 0, TRADE)], [R.AMOUNT_MUST_BE_POSITIVE]),
    ("amount_negative", [Transfer(200, BUYER_A, BUYER_B, -5, TRADE)], [R.AMOUNT_MUST_BE_POSITIVE]),
    ("amount_negative_on_post", [Transfer(200, amount_fen=-5, flags=POST, pending_id=100)],
     [R.AMOUNT_MUST_NOT_BE_NEGATIVE]),
    ("debit_missing", [Transfer(200, 999, BUYER_B, 1, TRADE)], [R.DEBIT_ACCOUNT_NOT_FOUND]),
    ("credit_missing", [Transfer(200, BUYER_A, 999, 1, TRADE)], [R.CREDIT_ACCOUNT_NOT_FOUND]),
    ("pending_missing", [Transfer(200, flags=POST, pending_id=999)], [R.PENDING_TRANSFER_NOT_FOUND]),
    ("pending_is_single", [Transfer(200, flags=VOID, pending_id=104)], [R.PENDING_TRANSFER_NOT_PENDING]),
    ("pending_other_debit", [Transfer(200, BUYER_B, flags=POST, pending_id=100)],
     [R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID]),
    ("pending_other_credit", [Transfer(200, BUYER_A, BUYER_B, flags=POST, pending_id=100)],
     [R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID]),
    ("post_too_much", [Transfer(200, amount_fen=10_001, flags=POST, pending_id=100)],
     [R.EXCEEDS_PENDING_TRANSFER_AMOUNT]),
    ("void_partial", [Transfer(200, amount_fen=9_999, flags=VOID, pending_id=100)],
     [R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT]),
    ("exists_other_flags", [Transfer(104, BUYER_A, BUYER_B, 10_000, TRADE, 9, PENDING)],
     [R.EXISTS_WITH_DIFFERENT_FLAGS]),
    ("exists_other_pending_id", [Transfer(110, amount_fen=4_000, flags=POST, pending_id=105, code=TRADE)],
     [R.EXISTS_WITH_DIFFERENT_PENDING_ID]),
    ("exists_other_debit", [Transfer(104, BUYER_B, BUYER_A, 10_000, TRADE, 9)],
     [R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID]),
    ("exists_other_credit", [Transfer(104, BUYER_A, ESCROW, 10_000, TRADE, 9)],
     [R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID]),
    ("exists_other_amount", [Transfer(104, BUYER_A, BUYER_B, 10_001, TRADE, 9)],
     [R.EXISTS_WITH_DIFFERENT_AMOUNT]),
    ("exists_other_timeout", [hold(100, 10_000, timeout_ns=HOUR_NS + 1)], [R.EXISTS_WITH_DIFFERENT_TIMEOUT]),
    ("exists_other_code", [Transfer(104, BUYER_A, BUYER_B, 10_000, TransferCode.FEE, 9)],
     [R.EXISTS_WITH_DIFFERENT_CODE]),
    ("exists_other_user_data", [Transfer(104, BUYER_A, BUYER_B, 10_000, TRADE, 10)],
     [R.EXISTS_WITH_DIFFERENT_USER_DATA]),
    ("exists", [Transfer(104, BUYER_A, BUYER_B, 10_000, TRADE, 9)], [R.EXISTS]),
    ("exists_void", [Transfer(111, flags=VOID, pending_id=102)], [R.EXISTS]),
    ("already_posted", [Transfer(200, flags=VOID, pending_id=101)], [R.PENDING_TRANSFER_ALREADY_POSTED]),
    ("already_voided", [Transfer(200, flags=POST, pending_id=102)], [R.PENDING_TRANSFER_ALREADY_VOIDED]),
    ("expired", [Transfer(200, flags=POST, pending_id=103)], [R.PENDING_TRANSFER_EXPIRED]),
    ("overflows_timeout", [hold(200, 1, timeout_ns=MAX_INT64)], [R.OVERFLOWS_TIMEOUT]),
    # Buyer A after _setup_pendings: 20,000 held (100, 105) + 14,000 spent (104, 110) of 1,000,000.
    ("exceeds_credits", [Transfer(200, BUYER_A, BUYER_B, 966_001, TRADE)], [R.EXCEEDS_CREDITS]),
    ("exceeds_credits_exactly_fits", [Transfer(200, BUYER_A, BUYER_B, 966_000, TRADE)], [R.OK]),
    ("exceeds_debits", [Transfer(200, BANK, LOANS, 1, TransferCode.REPAYMENT)], [R.EXCEEDS_DEBITS]),
    ("interest_income_has_no_limit", [Transfer(200, INTEREST, BUYER_B, 1, TRADE)], [R.OK]),
]


@pytest.mark.parametrize(("batch", "expected"), [c[1:] for c in TRANSFER_CASES], ids=[c[0] for c in TRANSFER_CASES])
def test_transfer_result_code(batch: list[Transfer], expected: list[CreateTransferResult]) -> None:
    ledger = fresh_ledger()
    _setup_pendings(ledger)
    ledger.drain_postings()
    state = ledger.state_hash()
    assert ledger.create_transfers(batch, NOW_NS + 1) == expected
    if all(r != R.OK for r in expected):
        assert ledger.state_hash() == state, "a refused transfer must not change state"
        assert ledger.drain_postings() == []
    ledger.validate()


def test_overflow_codes() -> None:
    ledger = fresh_ledger()
    near_max = MAX_INT64 - 1_000_000 - 10  # the bank already has 1,000,000 of debits
    assert ledger.create_transfers([Transfer(2, BANK, BUYER_B, near_max, TransferCode.DEPOSIT)], NOW_NS) == [R.OK]
    assert ledger.create_transfers([Transfer(3, BANK, BUYER_A, 11, TransferCode.DEPOSIT)], NOW_NS) == [
        R.OVERFLOWS_DEBITS]
    assert ledger.create_transfers([Transfer(4, INTEREST, BUYER_B, 1_000_011, TRADE)], NOW_NS) == [
        R.OVERFLOWS_CREDITS]
    assert ledger.create_transfers([Transfer(5, INTEREST, BUYER_B, 1_000_010, TRADE)], NOW_NS) == [R.OK]
    assert ledger.account(BUYER_B).credits_posted_fen == MAX_INT64  # type: ignore[union-attr]


def test_every_transfer_result_code_is_exercised() -> None:
    seen = {r for _, _, expected in TRANSFER_CASES for r in expected}
    seen |= {R.OVERFLOWS_DEBITS, R.OVERFLOWS_CREDITS}  # test_overflow_codes
    seen |= {R.ID_FORGOTTEN}  # test_bounded_state.py::test_ledger_forgets_final_transfers_and_refuses_their_ids
    assert set(R) - seen == set()


# ------------------------------------------------------------------------------- every account code

ACCOUNT_CASES: list[tuple[str, list[Account], list[CreateAccountResult]]] = [
    ("ok", [account(300, AccountCode.FARMER_PAYABLE, 601)], [A.OK]),
    ("linked_ok", [account(300, AccountCode.FARMER_PAYABLE, 601, flags=DR_LIMIT | AccountFlags.LINKED),
                   account(301, AccountCode.FARMER_PAYABLE, 602)], [A.OK, A.OK]),
    ("linked_failed", [account(300, AccountCode.FARMER_PAYABLE, 601, flags=DR_LIMIT | AccountFlags.LINKED),
                       account(301, AccountCode.FARMER_PAYABLE, 0)],
     [A.LINKED_EVENT_FAILED, A.OWNER_ID_MUST_NOT_BE_ZERO]),
    ("chain_open", [account(300, AccountCode.FARMER_PAYABLE, 601, flags=DR_LIMIT | AccountFlags.LINKED)],
     [A.LINKED_EVENT_CHAIN_OPEN]),
    ("reserved_flag", [account(300, AccountCode.FARMER_PAYABLE, 601, flags=DR_LIMIT | 8)], [A.RESERVED_FLAG]),
    ("id_zero", [account(0, AccountCode.FARMER_PAYABLE, 601)], [A.ID_OUT_OF_RANGE]),
    ("both_limits", [account(300, AccountCode.FARMER_PAYABLE, 601, flags=DR_LIMIT | CR_LIMIT)],
     [A.FLAGS_ARE_MUTUALLY_EXCLUSIVE]),
    ("debits_pending", [account(300, AccountCode.FARMER_PAYABLE, 601, debits_pending_fen=1)],
     [A.DEBITS_PENDING_MUST_BE_ZERO]),
    ("debits_posted", [account(300, AccountCode.FARMER_PAYABLE, 601, debits_posted_fen=1)],
     [A.DEBITS_POSTED_MUST_BE_ZERO]),
    ("credits_pending", [account(300, AccountCode.FARMER_PAYABLE, 601, credits_pending_fen=1)],
     [A.CREDITS_PENDING_MUST_BE_ZERO]),
    ("credits_posted", [account(300, AccountCode.FARMER_PAYABLE, 601, credits_posted_fen=1)],
     [A.CREDITS_POSTED_MUST_BE_ZERO]),
    ("timestamp", [account(300, AccountCode.FARMER_PAYABLE, 601, ts_ns=1)], [A.TIMESTAMP_MUST_BE_ZERO]),
    ("ledger", [account(300, AccountCode.FARMER_PAYABLE, 601, ledger=2)], [A.LEDGER_UNKNOWN]),
    ("code", [Account(300, 999, 601)], [A.CODE_NOT_IN_CHART]),
    ("cash_without_limit", [account(300, AccountCode.BUYER_CASH, 601, flags=0)], [A.FLAGS_MUST_MATCH_CHART]),
    ("owner_negative", [account(300, AccountCode.FARMER_PAYABLE, -1)], [A.OWNER_ID_OUT_OF_RANGE]),
    ("house_with_owner", [account(300, AccountCode.FEE_INCOME, 601)], [A.OWNER_ID_MUST_BE_ZERO]),
    ("participant_without_owner", [account(300, AccountCode.FARMER_PAYABLE)], [A.OWNER_ID_MUST_NOT_BE_ZERO]),
    ("user_data", [account(300, AccountCode.FARMER_PAYABLE, 601, user_data=-1)], [A.USER_DATA_OUT_OF_RANGE]),
    ("exists_flags", [account(BUYER_A, AccountCode.INTEREST_INCOME, 501)], [A.EXISTS_WITH_DIFFERENT_FLAGS]),
    ("exists_code", [Account(BUYER_A, AccountCode.FARMER_PAYABLE, 501, flags=DR_LIMIT)],
     [A.EXISTS_WITH_DIFFERENT_CODE]),
    ("exists_owner", [account(BUYER_A, AccountCode.BUYER_CASH, 502)], [A.EXISTS_WITH_DIFFERENT_OWNER_ID]),
    ("exists_user_data", [account(BUYER_A, AccountCode.BUYER_CASH, 501, user_data=3)],
     [A.EXISTS_WITH_DIFFERENT_USER_DATA]),
    ("exists", [account(BUYER_A, AccountCode.BUYER_CASH, 501)], [A.EXISTS]),
]


@pytest.mark.parametrize(("batch", "expected"), [c[1:] for c in ACCOUNT_CASES], ids=[c[0] for c in ACCOUNT_CASES])
def test_account_result_code(batch: list[Account], expected: list[CreateAccountResult]) -> None:
    ledger = fresh_ledger()
    state = ledger.state_hash()
    assert ledger.create_accounts(batch, NOW_NS) == expected
    created = [a.account_id for a, r in zip(batch, expected, strict=True) if r == A.OK]
    assert [a.account_id for a in ledger.drain_new_accounts()] == created
    if not created:
        assert ledger.account(300) is None and ledger.account(301) is None
        assert ledger.state_hash() != state  # only the clock moved
        assert ledger.accounts() == fresh_ledger().accounts()


def test_every_account_result_code_is_exercised() -> None:
    seen = {r for _, _, expected in ACCOUNT_CASES for r in expected}
    assert set(A) - seen == set()


def test_new_account_is_stored_without_the_linked_flag_and_with_its_creation_time() -> None:
    ledger = Ledger()
    ledger.create_accounts([account(7, AccountCode.FEE_INCOME, flags=DR_LIMIT | AccountFlags.LINKED),
                            account(8, AccountCode.ESCROW)], 123)
    assert ledger.account(7) == Account(7, AccountCode.FEE_INCOME, 0, 1, DR_LIMIT, 0, 0, 0, 0, 0, 123)


# ----------------------------------------------------------------------------------------- persistence


def test_snapshot_restore_gives_the_same_state_hash_and_behaviour() -> None:
    ledger = fresh_ledger()
    _setup_pendings(ledger)
    ledger.drain_postings()
    assert ledger.create_transfers([hold(300, 5)], NOW_NS + 2) == [R.OK]
    with pytest.raises(ValueError, match="drain"):
        ledger.snapshot()  # undrained postings would be lost
    ledger.drain_postings()
    restored = Ledger.restore(ledger.snapshot())
    assert restored.state_hash() == ledger.state_hash()
    # The restored ledger still knows the open hold's deadline and the resolved pendings.
    for lg in (ledger, restored):
        assert lg.create_transfers([Transfer(201, flags=POST, pending_id=101)], NOW_NS + 3) == [
            R.PENDING_TRANSFER_ALREADY_POSTED]
        assert lg.expire_pending(NOW_NS + HOUR_NS) == [100]
    assert restored.drain_postings() == ledger.drain_postings()
    assert restored.state_hash() == ledger.state_hash()


def test_state_hash_is_independent_of_insertion_order() -> None:
    a, b = Ledger(), Ledger()
    accounts = [account(1, AccountCode.BANK_SETTLEMENT), account(2, AccountCode.INTEREST_INCOME, 5)]
    a.create_accounts(accounts, 1)
    b.create_accounts(accounts[::-1], 1)
    assert a.state_hash() == b.state_hash()
    a.create_transfers([Transfer(1, 1, 2, 5, TRADE)], 2)
    assert a.state_hash() != b.state_hash()
