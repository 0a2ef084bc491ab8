"""Issue 11, items 3-5: bank confirmation files are taken whole or refused whole (every bad line listed,
the reference left unused); payout files are stored as sent (bytes and SHA-256) and have a stable format.
Real PostgreSQL, the real server over sockets."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from exchange.commands import (
    BankConfirmation,
    ImportBankConfirmations,
    MarkPayoutsSent,
    ParticipantRole,
    RunPayouts,
    UpdateParticipant,
    VerifyBankAccount,
)
from exchange.domain import RejectReason
from exchange.events import BankImportApplied, PayoutRunCreated
from exchange.settlement.bankfiles import (
    Payer,
    bank_file_csv,
    payouts_to_send,
    read_confirmations,
    read_payout_file,
    value_date,
)
from exchange.settlement.rules import cst_day
from gateway.auth import Role
from gateway.client import Reply
from gateway.state import POOL
from gateway.testing import LOT_CERT, Exchange, Trader, ok, running_exchange
from tests.settlement_support import BUYER, FARMER, HOUR_NS, OPERATOR, POOR_FARMER, world

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


def _bad_lines(reply: Reply) -> list[tuple[int, str]]:
    """(line, code) of every bad line a refused bank file's 422 lists (the body is `{code, message}`)."""
    body = reply.json()
    assert (reply.status, set(body), body["code"]) == (422, {"code", "message"}, "invalid_bank_file"), body
    assert "nothing was applied" in body["message"]
    return [(int(n), code) for n, code in re.findall(r"line (\d+) ([a-z_]+):", body["message"])]


async def _pending_payout(ex: Exchange, name: str = "李四", bank: str = "6217000011112222",
                          **codes: str) -> tuple[Trader, int]:
    """A new farmer with a verified account, a settled trade of it and a payout run: (the farmer, the
    PENDING payout's id)."""
    op = ex.operator
    buyer = await ex.register(Role.BUYER)
    farmer = await ex.register(Role.FARMER, name, id_number_masked="5002**********1234", bank_account=bank, **codes)
    ok(await op.post(f"/v1/admin/participants/{farmer.participant_id}/bank-account/verify",
                      json={"bank_account": bank}))
    lot = await ex.register_lot(farmer, "RC-BF", heads=10)
    order_body = {"instrument": "RC-BF", "price_fen": 2800, "quantity_heads": 10}
    ok(await farmer.post("/v1/orders", json={"client_order_id": _ref("s"), "side": "sell", "lot_id": lot,
                                              **order_body}), 201)
    trade_id = ok(await buyer.post("/v1/orders", json={"client_order_id": _ref("b"), "side": "buy", **order_body}),
                   201)["fills"][0]["trade_id"]
    ok(await farmer.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 10, "total_weight_g": 1_100_000, "quarantine_cert": LOT_CERT, "quarantine_checked": True}))
    for _ in range(200):
        if ok(await farmer.get(f"/v1/trades/{trade_id}/settlement"))["state"] == "SETTLED":
            break
        await asyncio.sleep(0.05)
    payouts = ok(await op.post("/v1/payout-runs", json={"run_ref": _ref("run")}), 201)["payouts"]
    [payout] = [p for p in payouts if p["payee_id"] == farmer.participant_id]
    return farmer, int(payout["payout_id"])


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
    assert _bad_lines(reply) == [(3, "unknown_payout"), (4, "not_current_attempt"), (5, "repeated_payout")]
    assert ok(await op.get(f"/v1/payouts/{payout_id}"))["state"] == "SENT"  # nothing applied
    unreadable = await op.post("/v1/payout-confirmations", json={
        "file_ref": file_ref, "csv": f"{_CONFIRMATIONS}{payout_id},1,MAYBE,B,\nx,1,OK,B,\n"})
    assert _bad_lines(unreadable) == [(2, "invalid_status"), (3, "invalid_payout_id")]
    # The corrected file under the same reference is taken, and again is the same answer.
    good = f"{_CONFIRMATIONS}{payout_id},1,OK,ICBC-1,\n"
    for _ in range(2):
        done = ok(await op.post("/v1/payout-confirmations", json={"file_ref": file_ref, "csv": good}))
        assert (done["applied"], done["duplicates"], done["errors"]) == (1, 0, [])
    assert ok(await op.get(f"/v1/payouts/{payout_id}"))["state"] == "CONFIRMED"
    stale = await op.post("/v1/payout-confirmations", json={
        "file_ref": _ref("conf"), "csv": f"{_CONFIRMATIONS}{payout_id},1,FAILED,ICBC-9,late\n"})
    assert _bad_lines(stale) == [(2, "invalid_payout_state")]


# -- 4. a payout file is the bytes that were sent; 5. its format -------------------------------------------


def test_the_payout_file_format_is_stable_to_the_byte() -> None:
    """HOGXPAY1 (README, "The bank payout file"): any change here is a new format, not an edit of this one."""
    x = world()
    x.register(77, ParticipantRole.FARMER, 'Wang, "Jr"')
    for payee, bank, branch in ((POOR_FARMER, "102", "102653000123"), (77, "403", "403653000001")):
        account = x.clearing.participants[payee].bank_account
        name = x.clearing.participants[payee].name
        x.ok(UpdateParticipant(payee, 0, payee, name, account, bank, branch))
        assert not x.clearing.participants[payee].bank_verified  # new codes: a new account to the bank
        x.ok(VerifyBankAccount(OPERATOR, 0, payee, account))
    x.deposit(BUYER, 20_000_000)
    t_poor = x.trade(BUYER, POOR_FARMER, 2800, 1).trade_id
    x.weigh_in(t_poor, 1, 100_001)  # 280,002.8 -> 280,002 fen, the fee waived
    t_77 = x.trade(BUYER, 77, 2800, 1).trade_id
    x.weigh_in(t_77, 1, 100_001)  # 280,002 less the fee of 1,400
    x.tick(WINDOW_NS)
    p_poor, p_77 = x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "R1")))[0].payout_ids
    payer = Payer(name="重庆荣昌生猪交易市场", account="3100000000000000001", bank_code="102",
                  branch_code="102653000019")
    content = bank_file_csv(x.clearing, payouts_to_send(x.clearing), file_ref="PF-2026-001", value_day=20_458,
                            payer=payer)
    assert content == (
        "H,HOGXPAY1,PF-2026-001,20260105,CNY,重庆荣昌生猪交易市场,3100000000000000001,102,102653000019\r\n"
        f"D,1,{p_poor},1,SAME_DAY,{POOR_FARMER},张三,6217{POOR_FARMER:012d},102,102653000123,280002,2800.02,"
        f"HOGX-P{p_poor}-A1,{t_poor}\r\n"
        f'D,2,{p_77},1,NORMAL,77,"Wang, ""Jr""",6217000000000077,403,403653000001,278602,2786.02,'
        f"HOGX-P{p_77}-A1,{t_77}\r\n"
        "T,2,558604,5586.04\r\n"
    ).encode()
    read = read_payout_file(content)
    assert (read.header["value_date"], read.details[1]["payee_name"], read.trailer["total_fen"]) == (
        "20260105", 'Wang, "Jr"', "558604")


def test_bank_and_branch_codes_are_checked_in_the_core() -> None:
    x = world()
    account = x.clearing.participants[FARMER].bank_account
    for bank, branch in (("12", ""), ("1021", ""), ("102", "10265300012"), ("102", "403653000001"),
                         ("", "102653000123"), ("１０２", "")):
        x.reject(UpdateParticipant(FARMER, 0, FARMER, "李四", account, bank, branch), R.INVALID_PARTICIPANT)
    assert x.clearing.bank_codes.get(FARMER) is None and x.clearing.participants[FARMER].bank_verified
    x.ok(UpdateParticipant(FARMER, 0, FARMER, "李四", account, "102", ""))  # the bank alone may be given
    assert x.clearing.bank_codes[FARMER] == ("102", "")


async def test_a_sent_payout_file_is_stored_and_served_as_sent_after_the_profile_changed(ex: Exchange) -> None:
    op = ex.operator
    farmer, payout_id = await _pending_payout(ex, "赵七", "6217000011113333", bank_code="102",
                                              branch_code="102653000777")
    file_ref = _ref("file")
    sent = await op.post("/v1/payout-files", json={"file_ref": file_ref})
    assert sent.status == 201
    digest = hashlib.sha256(sent.body).hexdigest()
    assert sent.headers["X-Hogx-SHA256"] == digest
    read = read_payout_file(sent.body)
    today = value_date(cst_day(time.time_ns()))
    assert (read.header["file_ref"], read.header["value_date"], read.header["payer_account"]) == (
        file_ref, today, "3100000000000000001") or read.header["value_date"] > today  # (midnight passed)
    [mine] = [d for d in read.details if d["payout_id"] == str(payout_id)]
    assert (mine["payee_name"], mine["payee_account"], mine["payee_bank_code"], mine["payee_branch_code"]) == (
        "赵七", "6217000011113333", "102", "102653000777")
    assert (read.trailer["record_count"], read.trailer["total_fen"]) == (
        str(len(read.details)), str(sum(int(d["amount_fen"]) for d in read.details)))

    # The payee renames itself and moves to another bank: the file that went out stays what it was.
    profile = ok(await farmer.request("PATCH", "/v1/profile", json={
        "name": "赵七七", "bank_account": "6228480000000001", "bank_code": "103", "branch_code": "103653000001"}))
    assert (profile["bank_code"], profile["branch_code"], profile["bank_verified"]) == ("103", "103653000001", False)
    for again in (await op.get(f"/v1/payout-files/{file_ref}"), await op.post("/v1/payout-files",
                                                                              json={"file_ref": file_ref})):
        assert (again.body, again.headers["X-Hogx-SHA256"]) == (sent.body, digest)
    stored = await ex.app[POOL].fetch("SELECT sha256, content FROM payout_files WHERE file_ref = $1", file_ref)
    assert [(r["sha256"], bytes(r["content"])) for r in stored] == [(digest, sent.body)]


async def test_bank_codes_are_validated_at_registration_and_on_the_profile(ex: Exchange) -> None:
    for codes in ({"bank_code": "10"}, {"branch_code": "1026530001"}, {"branch_code": "102653000123"},
                  {"bank_code": "102", "branch_code": "403653000001"}):
        reply = await ex.operator.post("/v1/admin/participants", json={"role": "farmer", "name": "x", **codes})
        assert (reply.status, reply.json()["code"]) in ((422, "invalid"), (422, "invalid_participant")), codes
    farmer = await ex.register(Role.FARMER, "钱八", bank_account="6217000011114444", bank_code="102")
    view = ok(await farmer.get("/v1/profile"))
    assert (view["bank_code"], view["branch_code"]) == ("102", "")
    reply = await farmer.request("PATCH", "/v1/profile", json={"name": "钱八", "bank_account": "6217000011114444",
                                                               "bank_code": "103", "branch_code": "102653000123"})
    assert (reply.status, reply.json()["code"]) == (422, "invalid_participant")
