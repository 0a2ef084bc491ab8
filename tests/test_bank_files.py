"""Issue 11, items 3-5: bank confirmation files are taken whole or refused whole (every bad line listed,
the reference left unused); payout files are stored as sent (bytes and SHA-256) and have a stable format.
Real PostgreSQL, the real server over sockets."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from exchange.commands import BankConfirmation, ImportBankConfirmations, MarkPayoutsSent, RunPayouts
from exchange.domain import RejectReason
from exchange.events import BankImportApplied, PayoutRunCreated
from exchange.settlement.bankfiles import read_confirmations
from gateway.auth import Role
from gateway.client import Reply
from gateway.testing import Exchange, running_exchange
from tests.settlement_support import BUYER, FARMER, HOUR_NS, OPERATOR, world

R = RejectReason
_CONFIRMATIONS = "payout_id,attempt,status,bank_ref,reason\n"
_refs = itertools.count(1)
WINDOW_NS = 48 * HOUR_NS  # the dispute window of settlement_support's instruments


def _settled_payout_sent() -> tuple[Any, int]:
    """The core alone: a settled trade of FARMER, its payout run and the file that sent it."""
    x = world()
    x.deposit(BUYER, 10_000_000)
    trade = x.trade(BUYER, FARMER, 2800, 10)
    x.weigh_in(trade.trade_id, 10, 1_150_000)
    x.tick(WINDOW_NS)
    (payout_id,) = x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "R1")))[0].payout_ids
    x.ok(MarkPayoutsSent(OPERATOR, 0, "F1", ((payout_id, 1),)))
    return x, payout_id


def _ref(prefix: str) -> str:
    return f"{prefix}-{next(_refs)}"


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.05) as exchange:
            await exchange.list_instrument("RC-BF", dispute_window_ms=0)
            yield exchange
    finally:
        await _test_databases.drop(dsn)


def _ok(reply: Reply, status: int = 200) -> Any:
    assert reply.status == status, (reply.status, reply.body)
    return reply.json()


async def _pending_payout(ex: Exchange, name: str = "李四", bank: str = "6217000011112222") -> tuple[int, int]:
    """A new farmer with a verified account, a settled trade of it and a payout run: (farmer id, the
    PENDING payout's id)."""
    op = ex.operator
    buyer = await ex.register(Role.BUYER)
    farmer = await ex.register(Role.FARMER, name, id_number_masked="5002**********1234", bank_account=bank)
    _ok(await op.post(f"/v1/admin/participants/{farmer.participant_id}/bank-account/verify",
                      json={"bank_account": bank}))
    lot = await ex.register_lot(farmer, "RC-BF", heads=10)
    order_body = {"instrument": "RC-BF", "price_fen": 2800, "quantity_heads": 10}
    _ok(await farmer.post("/v1/orders", json={"client_order_id": _ref("s"), "side": "sell", "lot_id": lot,
                                              **order_body}), 201)
    trade_id = _ok(await buyer.post("/v1/orders", json={"client_order_id": _ref("b"), "side": "buy", **order_body}),
                   201)["fills"][0]["trade_id"]
    _ok(await farmer.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 10, "total_weight_g": 1_100_000, "quarantine_cert": "Q1", "quarantine_checked": True}))
    for _ in range(200):
        if _ok(await farmer.get(f"/v1/trades/{trade_id}/settlement"))["state"] == "SETTLED":
            break
        await asyncio.sleep(0.05)
    payouts = _ok(await op.post("/v1/payout-runs", json={"run_ref": _ref("run")}), 201)["payouts"]
    [payout] = [p for p in payouts if p["payee_id"] == farmer.participant_id]
    return farmer.participant_id, int(payout["payout_id"])


# -- 3. a confirmation file is taken whole or refused whole --------------------------------------------------


def test_the_core_refuses_a_whole_file_with_any_bad_row_and_keeps_its_reference_free() -> None:
    x, payout_id = _settled_payout_sent()
    good = BankConfirmation(payout_id, 1, True, "B-1")
    for bad, problem in ((BankConfirmation(payout_id + 99, 1, True, "B-2"), "unknown_payout"),
                         (BankConfirmation(payout_id, 2, True, "B-2"), "not_current_attempt"),
                         (good, "repeated_payout")):
        rows = (good, bad)
        assert x.clearing.confirmation_problems(rows) == [(1, problem)]
        reason = R.UNKNOWN_REFERENCE if problem == "unknown_payout" else R.INVALID_PAYOUT_STATE
        x.reject(ImportBankConfirmations(OPERATOR, 0, "C1", rows, whole_file=True), reason)
        assert "C1" not in x.clearing.bank_imports and x.clearing.payouts[payout_id].bank_ref == ""
    applied = x.of(BankImportApplied, x.ok(ImportBankConfirmations(OPERATOR, 0, "C1", (good,), whole_file=True)))
    assert [(a.applied, a.duplicates, a.errors) for a in applied] == [(1, 0, ())]
    # The bank's answer again, in another file, is a duplicate, not a problem; the old attempt's is.
    assert x.clearing.confirmation_problems((good,)) == []
    assert x.clearing.confirmation_problems((BankConfirmation(payout_id, 1, False, "B-9"),)) == [
        (0, "invalid_payout_state")]
    # Without whole_file (journals written before it existed) a bad row is listed and the rest applied.
    old = ImportBankConfirmations(OPERATOR, 0, "C2", (good, BankConfirmation(payout_id + 99, 1, True, "B")))
    assert x.of(BankImportApplied, x.ok(old))[0].errors == ((payout_id + 99, "unknown payout"),)


def test_reading_a_confirmation_file_lists_every_bad_line() -> None:
    text = (f"{_CONFIRMATIONS}1,1,OK,B1,\n\n2,x,OK,B2,\n3,1,MAYBE,B3,\n4,1,OK\n{'9' * 25},1,FAILED,B5,closed\n"
            "6,1,FAILED,B6,closed\n")
    read = read_confirmations(text.encode())
    assert [(p.line, p.code) for p in read.problems] == [
        (4, "invalid_attempt"), (5, "invalid_status"), (6, "wrong_field_count"), (7, "invalid_payout_id")]
    assert (read.lines, [r.payout_id for r in read.rows]) == ((2, 8), [1, 6])
    assert [(p.line, p.code) for p in read_confirmations(b"payout_id,attempt\n1,1\n").problems] == [
        (1, "bad_header"), (2, "wrong_field_count")]
    assert [p.code for p in read_confirmations(b"\xff\xfe").problems] == ["not_utf8"]


async def test_a_confirmation_file_naming_an_unknown_payout_is_422_and_its_reference_stays_free(
        ex: Exchange) -> None:
    op = ex.operator
    _, payout_id = await _pending_payout(ex)
    assert (await op.post("/v1/payout-files", json={"file_ref": _ref("file")})).status == 201
    file_ref = _ref("conf")
    bad = (f"{_CONFIRMATIONS}{payout_id},1,OK,ICBC-1,\n999999,1,OK,ICBC-2,\n{payout_id},7,FAILED,ICBC-3,x\n"
           f"{payout_id},1,OK,ICBC-1,\n")
    reply = await op.post("/v1/payout-confirmations", json={"file_ref": file_ref, "csv": bad})
    body = reply.json()
    assert (reply.status, body["code"]) == (422, "invalid_bank_file")
    assert [(line["line"], line["code"]) for line in body["lines"]] == [
        (3, "unknown_payout"), (4, "not_current_attempt"), (5, "repeated_payout")]
    assert _ok(await op.get(f"/v1/payouts/{payout_id}"))["state"] == "SENT"  # nothing applied
    unreadable = await op.post("/v1/payout-confirmations", json={
        "file_ref": file_ref, "csv": f"{_CONFIRMATIONS}{payout_id},1,MAYBE,B,\nx,1,OK,B,\n"})
    assert [(line["line"], line["code"]) for line in unreadable.json()["lines"]] == [
        (2, "invalid_status"), (3, "invalid_payout_id")]
    # The corrected file under the same reference is taken, and again is the same answer.
    good = f"{_CONFIRMATIONS}{payout_id},1,OK,ICBC-1,\n"
    for _ in range(2):
        done = _ok(await op.post("/v1/payout-confirmations", json={"file_ref": file_ref, "csv": good}))
        assert (done["applied"], done["duplicates"], done["errors"]) == (1, 0, [])
    assert _ok(await op.get(f"/v1/payouts/{payout_id}"))["state"] == "CONFIRMED"
    stale = await op.post("/v1/payout-confirmations", json={
        "file_ref": _ref("conf"), "csv": f"{_CONFIRMATIONS}{payout_id},1,FAILED,ICBC-9,late\n"})
    assert [(line["line"], line["code"]) for line in stale.json()["lines"]] == [(2, "invalid_payout_state")]
