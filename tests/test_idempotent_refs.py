"""Client-chosen references on lot registrations and loan repayments: a retry after a 503 ("status
unknown") gets the original answer and changes nothing; the same reference with other content is
DUPLICATE_REFERENCE; both survive a snapshot and restore."""

from __future__ import annotations

import msgspec

from exchange.commands import FundsAccount, GrantAdvance, RegisterLot, RepayLoan
from exchange.core import Core
from exchange.domain import RejectReason as R
from exchange.events import LoanRepaid, LotRegistered
from exchange.settlement.ledger import AccountCode as AC
from tests.factories import register_lot
from tests.settlement_support import BUYER, DAY_NS, FARMER, FINANCIER, Exchange, world


def _lot(seller: int, ref: str, heads: int = 100) -> RegisterLot:
    return msgspec.structs.replace(register_lot(seller, heads), client_lot_ref=ref)


def test_a_retried_lot_registration_returns_the_same_lot_and_changes_nothing() -> None:
    x = world()
    [first] = x.of(LotRegistered, x.ok(_lot(FARMER, "lot-A")))
    before = x.core.state_hash()
    x.advance(5_000)
    events = x.ok(_lot(FARMER, "lot-A"))
    assert events == [LotRegistered(0, x.ts_ns, first.lot)]  # seq 0: no book sequence used
    assert x.core.state_hash() == before
    assert list(x.core.lots) == [first.lot.lot_id]
    # the reference is the seller's own: another seller's same ref is a new lot
    [other] = x.of(LotRegistered, x.ok(_lot(FARMER + 1, "lot-A")))
    assert other.lot.lot_id == first.lot.lot_id + 1 and other.seq == first.seq + 1


def test_the_same_lot_ref_with_other_content_is_rejected_and_changes_nothing() -> None:
    x = world()
    x.ok(_lot(FARMER, "lot-A", heads=100))
    before = x.core.state_hash()
    x.reject(_lot(FARMER, "lot-A", heads=101), R.DUPLICATE_REFERENCE)
    x.reject(_lot(FARMER, "x" * 37), R.INVALID_LOT)
    assert x.core.state_hash() == before


def test_lot_refs_survive_snapshot_and_restore() -> None:
    x = world()
    [first] = x.of(LotRegistered, x.ok(_lot(FARMER, "lot-A")))
    before = x.core.state_hash()
    x.restore_from_snapshot()
    assert x.core.state_hash() == before and x.core.lot_refs == {(FARMER, "lot-A"): first.lot.lot_id}
    assert x.of(LotRegistered, x.ok(_lot(FARMER, "lot-A"))) == [LotRegistered(0, x.ts_ns, first.lot)]
    x.reject(_lot(FARMER, "lot-A", heads=7), R.DUPLICATE_REFERENCE)
    assert x.core.state_hash() == before


def test_a_core_without_refs_encodes_as_before() -> None:
    # The trailing lot refs and the forgetting queues (and the clearing's repayments and final records)
    # are left out when empty, so snapshots written before they existed restore to their recorded state
    # hashes: the state they hold encodes to the very same bytes.
    x = world()
    x.ok(register_lot(FARMER))
    record = msgspec.msgpack.decode(x.core.snapshot())
    # lot refs, auctions, order ids' times (all empty), the lot's time
    assert len(record) == 10 and record[6:9] == [[], b"", []] and len(record[9]) == 1
    written_before = msgspec.msgpack.encode(record[:6])
    assert Core.from_snapshot(written_before).snapshot() == written_before
    clearing = x.core.clearing
    assert clearing is not None and len(msgspec.msgpack.decode(clearing.snapshot())) == 19
    assert len(msgspec.msgpack.decode(Core().snapshot())) == 6


def _advanced_farmer() -> Exchange:
    """FARMER holds an interest-free advance of 2,000,000 fen on its payable, owed to FINANCIER."""
    x = world()
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.deposit(BUYER, 10_000_000)
    trade = x.trade(BUYER, FARMER, 2800, 10)
    x.consent(FARMER, FINANCIER)
    x.ok(GrantAdvance(FINANCIER, 0, trade.trade_id, 2_000_000, 0))
    return x


def test_a_retried_repayment_moves_money_once() -> None:
    x = _advanced_farmer()
    [repaid] = x.of(LoanRepaid, x.ok(RepayLoan(FARMER, 0, FINANCIER, 500_000, "repay-1")))
    assert (repaid.principal_fen, repaid.interest_fen) == (500_000, 0)
    assert x.balance(AC.FARMER_PAYABLE, FARMER) == 1_500_000
    before = x.core.state_hash()
    x.advance(DAY_NS)  # even a day later: no accrual, nothing moves
    assert x.ok(RepayLoan(FARMER, 0, FINANCIER, 500_000, "repay-1")) == [repaid]
    assert x.core.state_hash() == before
    assert x.balance(AC.FARMER_PAYABLE, FARMER) == 1_500_000
    assert x.balance(AC.LOANS_RECEIVABLE, FINANCIER, FARMER) == 1_500_000
    x.reject(RepayLoan(FARMER, 0, FINANCIER, 400_000, "repay-1"), R.DUPLICATE_REFERENCE)
    x.reject(RepayLoan(FARMER, 0, FINANCIER, 400_000, "r" * 65), R.INVALID_AMOUNT)
    assert x.core.state_hash() == before
    # a repayment without a reference is not deduplicated: each one repays
    x.ok(RepayLoan(FARMER, 0, FINANCIER, 100_000))
    x.ok(RepayLoan(FARMER, 0, FINANCIER, 100_000))
    assert x.balance(AC.FARMER_PAYABLE, FARMER) == 1_300_000


def test_repayment_refs_survive_snapshot_and_restore() -> None:
    x = _advanced_farmer()
    [repaid] = x.of(LoanRepaid, x.ok(RepayLoan(FARMER, 0, FINANCIER, 500_000, "repay-1")))
    before = x.core.state_hash()
    x.restore_from_snapshot()
    assert x.core.state_hash() == before
    assert x.ok(RepayLoan(FARMER, 0, FINANCIER, 500_000, "repay-1")) == [repaid]
    assert x.balance(AC.FARMER_PAYABLE, FARMER) == 1_500_000
    assert x.core.state_hash() == before
