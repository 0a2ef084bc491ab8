"""Settlement over HTTP against a real server, a real sequencer and a real PostgreSQL: money from the
buyer's deposit to the farmer's bank, with exact figures, and who may see and do what.

The instrument: finishing hogs at 2800 fen/kg reference (tick 10, band ±4 %), lots averaging
100-120 kg, animals 90-140 kg, so a bid holds ceil(140 kg x price) a head; 10 kg over the band is a
substitute at 60 fen/kg off, further out is out of grade. The operator lists it through the API with
these settlement terms and a dispute window of `WINDOW_S` (the default is 48 h), and the exchange clock
ticks every 50 ms, so a window closes by a real clock tick within the test.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import itertools
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from exchange.settlement import pgstore
from exchange.settlement.bankfiles import read_payout_file
from exchange.settlement.views import REPORT_COLUMNS
from gateway.auth import Role
from gateway.client import Reply, SignedClient
from gateway.exchange_port import EXCHANGE
from gateway.state import POOL
from gateway.testing import BUYER_DEPOSIT_FEN, LOT_CERT, Exchange, Trader, error_code, ok, running_exchange

WINDOW_S = 1.5
HOLD_PER_HEAD_2810 = 393_400  # ceil(140 kg x 2810 fen/kg)
HOLD_PER_HEAD_2800 = 392_000
_symbols = itertools.count(1)
_refs = itertools.count(1)


async def _market(ex: Exchange) -> str:
    """An instrument listed by the operator with settlement terms and a short dispute window."""
    symbol = f"T-SET-{next(_symbols)}"
    view = await ex.list_instrument(symbol, overweight_limit_g=10_000, overweight_discount_fen_per_kg=60,
                                    dispute_window_ms=int(WINDOW_S * 1000))
    assert (view["overweight_limit_g"], view["overweight_discount_fen_per_kg"], view["dispute_window_ms"]) == (
        10_000, 60, WINDOW_S * 1000)
    return symbol


def _ref(prefix: str) -> str:
    return f"{prefix}-{next(_refs)}-{time.time_ns()}"


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll `check` (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s")
        await asyncio.sleep(0.05)


async def _farmer(ex: Exchange, name: str, bank: str, *, poor_no: str = "") -> Trader:
    """A farmer with a verified bank account (and, with `poor_no`, a verified poor household)."""
    profile: dict[str, Any] = {"id_number_masked": "5002**********1234", "bank_account": bank}
    if poor_no:
        profile["poor_registration_no"] = poor_no
    farmer = await ex.register(Role.FARMER, name, **profile)
    ok(await ex.operator.post(f"/v1/admin/participants/{farmer.participant_id}/bank-account/verify",
                               json={"bank_account": bank}))
    if poor_no:
        view = ok(await ex.operator.post(f"/v1/admin/participants/{farmer.participant_id}/poor-household",
                                          json={"registration_no": poor_no}))
        assert (view["poor_household_verified"], view["bank_verified"], view["bank_account"]) == (
            True, True, "****" + bank[-4:])
    return farmer


async def _sell(ex: Exchange, farmer: Trader, symbol: str, heads: int, price_fen: int = 2800) -> int:
    lot_id = await ex.register_lot(farmer, symbol, heads=100)
    ok(await farmer.post("/v1/orders", json={"client_order_id": _ref("s"), "instrument": symbol, "side": "sell",
                                              "price_fen": price_fen, "quantity_heads": heads, "lot_id": lot_id}),
        201)
    return lot_id


async def _buy(buyer: Trader, symbol: str, heads: int, price_fen: int = 2810) -> dict[str, Any]:
    return ok(await buyer.post("/v1/orders", json={"client_order_id": _ref("b"), "instrument": symbol,
                                                    "side": "buy", "price_fen": price_fen, "quantity_heads": heads}),
               201)


async def _balances(client: SignedClient, query: str = "") -> dict[str, dict[str, int]]:
    view = ok(await client.get("/v1/balances" + query))
    return {row["kind"]: row for row in view["accounts"]}


async def _weigh_in(client: SignedClient, trade_id: int, heads: int, grams: int) -> dict[str, Any]:
    return ok(await client.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": heads, "total_weight_g": grams, "quarantine_cert": "渝动检 5001530001",
        "quarantine_checked": True}))


async def _settled(client: SignedClient, trade_id: int) -> Any:
    async def check() -> Any:
        view = ok(await client.get(f"/v1/trades/{trade_id}/settlement"))
        return view if view["state"] == "SETTLED" else None

    return await eventually(check)


def _cst_date(ms: int) -> str:
    return (dt.datetime.fromtimestamp(ms / 1000, dt.UTC) + dt.timedelta(hours=8)).date().isoformat()


def _csv_rows(reply: Reply) -> list[dict[str, str]]:
    assert reply.status in (200, 201), (reply.status, reply.body)
    assert reply.headers["Content-Type"].startswith("text/csv"), reply.headers
    return list(csv.DictReader(io.StringIO(reply.body.decode())))


def _payout_rows(reply: Reply) -> list[dict[str, str]]:
    """The detail records of a payout file (format HOGXPAY1)."""
    assert reply.status in (200, 201), (reply.status, reply.body)
    assert reply.headers["Content-Type"].startswith("text/csv"), reply.headers
    return read_payout_file(reply.body).details


# -- the money flow -------------------------------------------------------------------------------------


async def test_money_flow_from_deposit_to_bank_with_exact_figures(ex: Exchange) -> None:
    symbol = await _market(ex)
    op = ex.operator
    ok(await op.post("/v1/admin/fee-schedule", json={"instrument": symbol, "seller_fee_bps": 50}))
    subsidy_before = (await _balances(op, "?participant_id=0"))["POVERTY_SUBSIDY_FUND"]["balance_fen"]
    await ex.deposit(0, 1_000_000, "poverty_subsidy_fund")
    buyer = await ex.register(Role.BUYER, "重庆肉联厂", deposit_fen=0)
    deposit = ok(await op.post("/v1/deposits", json={"deposit_ref": _ref("bank"), "owner_id": buyer.participant_id,
                                                      "account": "trading_cash", "amount_fen": 50_000_000}), 201)
    assert (deposit["owner_id"], deposit["amount_fen"], deposit["account"]) == (
        buyer.participant_id, 50_000_000, "trading_cash")
    poor = await _farmer(ex, "张三", "6217000011110042", poor_no="500226-2016-0042")
    farmer = await _farmer(ex, "李四", "6217000011112222")

    # The poor farmer offers first, so the buy of 15 fills 5 from the poor farmer, then 10 from the other.
    await _sell(ex, poor, symbol, 5)
    await _sell(ex, farmer, symbol, 10)
    report = await _buy(buyer, symbol, 15)
    assert report["status"] == "FILLED"
    poor_trade, farmer_trade = (f["trade_id"] for f in report["fills"])
    # 15 heads held at 2810 (15 x 393,400), filled at 2800: 15 x 392,000 = 5,880,000 escrowed, 21,000 back.
    cash = (await _balances(buyer))["BUYER_CASH"]
    assert (cash["balance_fen"], cash["held_fen"], cash["available_fen"]) == (44_120_000, 0, 44_120_000)

    # Weigh-ins: 5 heads 560 kg -> 560 x 2800 = 1,568,000; 10 heads 1105 kg -> 3,094,000. The rest of
    # each obligation goes back to the buyer (392,000 and 826,000).
    seen = await _weigh_in(poor, poor_trade, 5, 560_000)
    assert (seen["state"], seen["grade"], seen["amount_fen"], seen["refund_fen"], seen["avg_weight_g"]) == (
        "DELIVERED", "IN_GRADE", 1_568_000, 392_000, 112_000)
    seen = await _weigh_in(op, farmer_trade, 10, 1_105_000)  # an operator may record it too
    assert (seen["amount_fen"], seen["refund_fen"]) == (3_094_000, 826_000)
    assert seen["dispute_until_ms"] - seen["delivered_ms"] == WINDOW_S * 1000
    assert (await _balances(buyer))["BUYER_CASH"]["balance_fen"] == 44_120_000 + 392_000 + 826_000

    # The window closes by a clock tick: the trades settle. The poor farmer's fee (0.5 % of 1,568,000 =
    # 7,840) is paid by the subsidy fund; the other pays floor(3,094,000 x 0.005) = 15,470.
    poor_view = await _settled(poor, poor_trade)
    farmer_view = await _settled(farmer, farmer_trade)
    assert (poor_view["fee_fen"], poor_view["fee_subsidy_fen"], poor_view["payable_fen"]) == (0, 7_840, 1_568_000)
    assert (farmer_view["fee_fen"], farmer_view["fee_subsidy_fen"], farmer_view["payable_fen"]) == (
        15_470, 0, 3_078_530)
    house = await _balances(op, "?participant_id=0")
    assert house["POVERTY_SUBSIDY_FUND"]["balance_fen"] == subsidy_before + 1_000_000 - 7_840
    assert (await _balances(farmer))["FARMER_PAYABLE"]["balance_fen"] == 3_078_530

    # A payout run: the poor household first and same day (other tests' payees, if any, come later).
    run = ok(await op.post("/v1/payout-runs", json={"run_ref": _ref("run")}), 201)
    ours = [p for p in run["payouts"] if p["payee_id"] in (poor.participant_id, farmer.participant_id)]
    assert [(p["payee_id"], p["amount_fen"], p["priority"], p["state"], p["trade_ids"]) for p in ours] == [
        (poor.participant_id, 1_568_000, "SAME_DAY", "PENDING", [poor_trade]),
        (farmer.participant_id, 3_078_530, "NORMAL", "PENDING", [farmer_trade])]
    assert run["payouts"][0] == ours[0] and run["total_fen"] == sum(p["amount_fen"] for p in run["payouts"])
    poor_payout, farmer_payout = (p["payout_id"] for p in ours)
    held = (await _balances(farmer))["FARMER_PAYABLE"]
    assert (held["balance_fen"], held["held_fen"], held["available_fen"]) == (3_078_530, 3_078_530, 0)

    # The bank file (CSV), which marks both payouts sent.
    file_ref = _ref("file")
    rows = _payout_rows(await op.post("/v1/payout-files", json={"file_ref": file_ref}))
    assert rows[0]["payout_id"] == str(poor_payout)  # same-day payouts lead the file
    ours = {str(poor_payout), str(farmer_payout)}
    assert [(r["payout_id"], r["priority"], r["payee_name"], r["payee_account"], r["amount_fen"], r["amount_yuan"],
             r["reference"], r["trade_ids"]) for r in rows if r["payout_id"] in ours] == [
        (str(poor_payout), "SAME_DAY", "张三", "6217000011110042", "1568000", "15680.00",
         f"HOGX-P{poor_payout}-A1", str(poor_trade)),
        (str(farmer_payout), "NORMAL", "李四", "6217000011112222", "3078530", "30785.30",
         f"HOGX-P{farmer_payout}-A1", str(farmer_trade))]
    assert _payout_rows(await op.get(f"/v1/payout-files/{file_ref}")) == rows  # the same file again
    assert ok(await farmer.get(f"/v1/payouts/{farmer_payout}"))["state"] == "SENT"

    # The bank pays the poor farmer and refuses the other; the operator retries, a new file goes out.
    confirmations = (f"payout_id,attempt,status,bank_ref,reason\r\n{poor_payout},1,OK,ICBC-001,\r\n"
                     f"{farmer_payout},1,FAILED,ICBC-002,account frozen\r\n")
    imported = ok(await op.post("/v1/payout-confirmations", json={"file_ref": _ref("conf"), "csv": confirmations}))
    assert (imported["applied"], imported["duplicates"], imported["errors"]) == (2, 0, [])
    failed = ok(await farmer.get(f"/v1/payouts/{farmer_payout}"))
    assert (failed["state"], failed["reason"]) == ("FAILED", "account frozen")
    retried = ok(await op.post(f"/v1/payouts/{farmer_payout}/retry"))
    assert (retried["state"], retried["attempt"], retried["reference"]) == (
        "PENDING", 2, f"HOGX-P{farmer_payout}-A2")
    rows = _payout_rows(await op.post("/v1/payout-files", json={"file_ref": _ref("file")}))
    assert [(r["payout_id"], r["attempt"], r["amount_fen"]) for r in rows] == [(str(farmer_payout), "2", "3078530")]
    imported = ok(await op.post("/v1/payout-confirmations", json={
        "file_ref": _ref("conf"), "csv": f"payout_id,attempt,status,bank_ref,reason\n{farmer_payout},2,OK,ICBC-3,\n"}))
    assert imported["applied"] == 1
    assert ok(await poor.get(f"/v1/payouts/{poor_payout}"))["state"] == "CONFIRMED"
    assert ok(await farmer.get(f"/v1/payouts/{farmer_payout}"))["state"] == "CONFIRMED"
    payable = (await _balances(farmer))["FARMER_PAYABLE"]
    assert (payable["balance_fen"], payable["held_fen"]) == (0, 0)

    # The farmer's statement of its payable, from the committed ledger rows.
    lines = ok(await farmer.get(f"/v1/statements?account_id={payable['account_id']}"))["lines"]
    assert [(ln["entry"], ln["side"], ln["code"], ln["amount_fen"], ln["balance_change_fen"], ln["held_change_fen"])
            for ln in lines] == [
        ("POSTED", "CREDIT", "SETTLEMENT", 3_078_530, 3_078_530, 0),
        ("PENDING", "DEBIT", "PAYOUT", 3_078_530, 0, 3_078_530),
        ("POSTED", "DEBIT", "PAYOUT", 3_078_530, -3_078_530, 0),
        ("RELEASE", "DEBIT", "PAYOUT", 3_078_530, 0, -3_078_530)]
    page = ok(await farmer.get(f"/v1/statements?account_id={payable['account_id']}&limit=3"))
    rest = ok(await farmer.get(f"/v1/statements?account_id={payable['account_id']}&cursor={page['next_cursor']}"))
    assert page["lines"] + rest["lines"] == lines and rest["next_cursor"] is None

    # The daily report, JSON and CSV: the farmer sees its trade, the buyer both, the operator both.
    date = _cst_date(farmer_view["settled_ms"])
    mine = ok(await farmer.get(f"/v1/reports/settlement?date={date}"))
    assert [(r["trade_id"], r["amount_fen"], r["fee_fen"], r["payable_fen"]) for r in mine["rows"]] == [
        (farmer_trade, 3_094_000, 15_470, 3_078_530)]
    both = ok(await buyer.get(f"/v1/reports/settlement?date={date}"))["rows"]
    # the buyer sees neither seller's poverty status, fee or payable (null), only its own side
    assert [(r["trade_id"], r["seller_poor_household"], r["fee_subsidy_fen"], r["payable_fen"],
             r["funded_by_financier_id"]) for r in both] == [
        (poor_trade, None, None, None, 0), (farmer_trade, None, None, None, 0)]
    reply = await buyer.get(f"/v1/reports/settlement.csv?date={date}")
    table = _csv_rows(reply)
    assert tuple(table[0]) == REPORT_COLUMNS
    assert [{k: "" if v is None else str(v) for k, v in r.items()} for r in both] == table
    assert 'filename="settlement-' in reply.headers["Content-Disposition"]
    operator_rows = ok(await op.get(f"/v1/reports/settlement?date={date}"))["rows"]
    assert {poor_trade, farmer_trade} <= {r["trade_id"] for r in operator_rows}

    # The database's ledger (written in each batch's transaction) agrees with the core.
    conn = await asyncpg.connect(ex.app[EXCHANGE].shard.dsn)
    try:
        db = await pgstore.balances(conn)
    finally:
        await conn.close()
    buyer_cash = (await _balances(buyer))["BUYER_CASH"]
    dr_pending, dr_posted, _cr_pending, cr_posted = db[buyer_cash["account_id"]]
    assert (cr_posted - dr_posted, dr_pending) == (buyer_cash["balance_fen"], buyer_cash["held_fen"])


async def test_disputes_rejections_and_withdrawals(ex: Exchange) -> None:
    symbol = await _market(ex)
    op = ex.operator
    buyer = await ex.register(Role.BUYER, "买家", bank_account="6217000099990001")
    ok(await op.post(f"/v1/admin/participants/{buyer.participant_id}/bank-account/verify",
                      json={"bank_account": "6217000099990001"}))
    farmer = await _farmer(ex, "王五", "6217000011113333")
    await _sell(ex, farmer, symbol, 4)
    disputed, rejected = (f["trade_id"] for f in (await _buy(buyer, symbol, 2))["fills"] +
                          (await _buy(buyer, symbol, 2))["fills"])

    # A delivery inside the grade: only a dispute, which an operator resolves to a lower amount.
    seen = await _weigh_in(farmer, disputed, 2, 220_000)  # 220 kg x 28.00 = 616,000
    assert error_code(await buyer.post(f"/v1/trades/{disputed}/rejection")) == (422, "delivery_not_rejectable")
    seen = ok(await buyer.post(f"/v1/trades/{disputed}/dispute", json={"reason": "两头猪有伤"}))
    assert (seen["state"], seen["disputed_by"], seen["dispute_reason"]) == ("DISPUTED", buyer.participant_id,
                                                                            "两头猪有伤")
    assert error_code(await farmer.post(f"/v1/trades/{disputed}/resolution", json={"amount_fen": 1})) == (
        403, "forbidden")
    assert error_code(await op.post(f"/v1/trades/{disputed}/resolution", json={"amount_fen": 616_001})) == (
        422, "invalid_amount")
    seen = ok(await op.post(f"/v1/trades/{disputed}/resolution", json={"amount_fen": 600_000}))
    assert (seen["state"], seen["amount_fen"], seen["refund_fen"]) == (
        "SETTLED", 600_000, 2 * HOLD_PER_HEAD_2800 - 600_000)
    assert error_code(await buyer.post(f"/v1/trades/{disputed}/dispute", json={"reason": "again"})) == (
        409, "invalid_trade_state")

    # 2 heads at 135.5 kg on average: beyond the 10 kg tolerance, so the buyer may reject it: all back.
    seen = await _weigh_in(farmer, rejected, 2, 271_000)
    assert (seen["grade"], seen["discount_fen_per_kg"], seen["amount_fen"]) == ("OUT_OF_GRADE", 60, 271 * 2740)
    seen = ok(await buyer.post(f"/v1/trades/{rejected}/rejection"))
    assert (seen["state"], seen["amount_fen"], seen["refund_fen"]) == ("REJECTED", 0, 2 * HOLD_PER_HEAD_2800)
    cash = (await _balances(buyer))["BUYER_CASH"]["balance_fen"]
    assert cash == BUYER_DEPOSIT_FEN - 600_000

    # Withdrawals: held until the operator confirms the bank paid (or the money comes back).
    ref = _ref("wd")
    body = {"withdrawal_ref": ref, "account": "trading_cash", "amount_fen": 1_000_000}
    seen = ok(await buyer.post("/v1/withdrawals", json=body), 201)
    assert (seen["state"], seen["amount_fen"]) == ("PENDING", 1_000_000)
    assert ok(await buyer.post("/v1/withdrawals", json=body), 201)["state"] == "PENDING"  # a retry
    assert error_code(await buyer.post("/v1/withdrawals", json={**body, "amount_fen": 2})) == (
        409, "duplicate_reference")
    cash = (await _balances(buyer))["BUYER_CASH"]
    assert (cash["held_fen"], cash["available_fen"]) == (1_000_000, cash["balance_fen"] - 1_000_000)
    pending = ok(await op.get("/v1/withdrawals?state=PENDING"))["withdrawals"]
    assert ref in [w["withdrawal_ref"] for w in pending]
    seen = ok(await op.post("/v1/withdrawals/confirmations", json={
        "owner_id": buyer.participant_id, "withdrawal_ref": ref, "ok": True, "bank_ref": "ICBC-W1"}))
    assert (seen["state"], seen["bank_ref"]) == ("PAID", "ICBC-W1")
    cash = (await _balances(buyer))["BUYER_CASH"]
    assert (cash["balance_fen"], cash["held_fen"]) == (BUYER_DEPOSIT_FEN - 1_600_000, 0)
    assert error_code(await farmer.post("/v1/withdrawals", json={**body, "withdrawal_ref": _ref("wd")})) == (
        422, "insufficient_funds")
    unverified = await ex.register(Role.BUYER, "未核实")
    assert error_code(await unverified.post("/v1/withdrawals", json={**body, "withdrawal_ref": _ref("wd")})) == (
        422, "bank_account_not_verified")


async def test_deposit_import_is_idempotent_and_bad_files_are_refused(ex: Exchange) -> None:
    a, b = await ex.register(Role.BUYER, deposit_fen=0), await ex.register(Role.FINANCIER)
    ref_a, ref_b = _ref("imp"), _ref("imp")
    text = (f"deposit_ref,owner_id,account,amount_fen\r\n{ref_a},{a.participant_id},trading_cash,120000\r\n"
            f"{ref_b},{b.participant_id},financier_funds,3000000\r\n"
            f"{_ref('imp')},{b.participant_id},trading_cash,5\r\n")
    for _ in range(2):  # importing the same file twice changes nothing
        seen = ok(await ex.operator.post("/v1/deposit-imports", json={"csv": text}))
        assert (seen["confirmed"], seen["rejected"]) == (2, 1)
        assert [r["code"] for r in seen["rows"]] == ["ok", "ok", "unknown_participant"]  # a financier has no cash
    assert (await _balances(a))["BUYER_CASH"]["balance_fen"] == 120_000
    assert (await _balances(b))["FINANCIER_FUNDS"]["balance_fen"] == 3_000_000
    for bad in ("deposit_ref,owner_id\r\nx,1\r\n", f"deposit_ref,owner_id,account,amount_fen\r\nx,{a.participant_id},"
                f"trading_cash,1.50\r\n", "deposit_ref,owner_id,account,amount_fen\r\n"):
        reply = await ex.operator.post("/v1/deposit-imports", json={"csv": bad})
        assert error_code(reply) == (422, "invalid_bank_file")
    assert error_code(await ex.operator.post("/v1/payout-confirmations", json={
        "file_ref": _ref("c"), "csv": "payout_id,attempt,status,bank_ref,reason\n1,1,MAYBE,x,\n"})) == (
        422, "invalid_bank_file")
    assert error_code(await ex.operator.post("/v1/deposits", json={
        "deposit_ref": ref_a, "owner_id": a.participant_id, "account": "trading_cash", "amount_fen": 120_001})) == (
        409, "duplicate_reference")


# -- financiers -----------------------------------------------------------------------------------------


async def test_a_financier_sees_only_participants_that_consented(ex: Exchange) -> None:
    symbol = await _market(ex)
    fin = await ex.register(Role.FINANCIER, "荣昌农商行")
    await ex.deposit(fin.participant_id, 10_000_000, "financier_funds")
    buyer = await ex.register(Role.BUYER, "借款买家", deposit_fen=0)
    seller = await _farmer(ex, "合作农户", "6217000011114444")
    stranger = await _farmer(ex, "陌生农户", "6217000011115555")
    other_buyer = await ex.register(Role.BUYER)
    for client in (buyer, seller):
        seen = ok(await client.post("/v1/consents", json={"financier_id": fin.participant_id}))
        assert seen["financier_ids"] == [fin.participant_id]
    # Without consent, a participant does not exist for the financier.
    assert error_code(await fin.get(f"/v1/financing/clients/{stranger.participant_id}")) == (404, "unknown_participant")
    assert error_code(await fin.post("/v1/credit-lines", json={
        "buyer_id": other_buyer.participant_id, "amount_fen": 1, "rate_bps": 500})) == (404, "unknown_participant")

    line = ok(await fin.post("/v1/credit-lines", json={"buyer_id": buyer.participant_id, "amount_fen": 1_000_000,
                                                          "rate_bps": 500}))
    assert (line["credit_line_available_fen"], line["credit_line_granted_fen"], line["exposure_fen"]) == (
        1_000_000, 1_000_000, 0)
    # The buyer has no cash: its bid of 2 heads at 2800 holds 784,000 against the line.
    ok(await buyer.post("/v1/orders", json={"client_order_id": _ref("b"), "instrument": symbol, "side": "buy",
                                              "price_fen": 2800, "quantity_heads": 2}), 201)
    view = ok(await fin.get(f"/v1/financing/clients/{buyer.participant_id}"))
    assert (view["credit_line_available_fen"], view["credit_line_held_fen"], view["exposure_fen"]) == (
        216_000, 784_000, 784_000)
    await _sell(ex, seller, symbol, 2)
    await _sell(ex, stranger, symbol, 1, price_fen=2900)
    ok(await other_buyer.post("/v1/orders", json={"client_order_id": _ref("b"), "instrument": symbol,
                                                    "side": "buy", "price_fen": 2900, "quantity_heads": 1}), 201)
    clients = ok(await fin.get("/v1/financing/clients"))
    assert [c["participant_id"] for c in clients["clients"]] == [buyer.participant_id, seller.participant_id]
    [financed] = clients["clients"][0]["trades"]
    assert (financed["side"], financed["state"], financed["obligation_fen"]) == ("buy", "OPEN", 784_000)
    trade_id = financed["trade_id"]
    stranger_trade = ok(await stranger.get("/v1/settlement/trades"))["trades"][0]["trade_id"]

    # An advance to the consenting seller: at most 70 % of 2 x 110 kg x 28.00 = 431,200.
    assert error_code(await fin.post("/v1/advances", json={"trade_id": trade_id, "amount_fen": 431_201,
                                                       "rate_bps": 600})) == (422, "advance_too_large")
    assert error_code(await fin.post("/v1/advances", json={"trade_id": stranger_trade, "amount_fen": 1,
                                                       "rate_bps": 600})) == (404, "unknown_trade")
    seen = ok(await fin.post("/v1/advances", json={"trade_id": trade_id, "amount_fen": 400_000, "rate_bps": 600}),
               201)
    [loan] = seen["loans"]
    assert (loan["kind"], loan["principal_outstanding_fen"], loan["trade_id"]) == ("ADVANCE", 400_000, trade_id)
    assert (await _balances(seller))["FARMER_PAYABLE"]["balance_fen"] == 400_000
    assert [loan["loan_id"] for loan in ok(await seller.get("/v1/loans"))["loans"]] == [seen["loans"][0]["loan_id"]]

    # The trade's settlement state: to the financier for both of its clients; the stranger's is 404.
    assert ok(await fin.get(f"/v1/trades/{trade_id}/settlement"))["funded_by_financier_id"] == fin.participant_id
    assert error_code(await fin.get(f"/v1/trades/{stranger_trade}/settlement")) == (404, "unknown_trade")

    # Settlement repays the advance first: 220 kg x 28.00 = 616,000, no fee; 400,000 back to the financier
    # (the same day: no interest yet), 216,000 to the seller's payable on top of the advance paid out.
    await _weigh_in(seller, trade_id, 2, 220_000)
    settled = await _settled(fin, trade_id)
    assert (settled["principal_repaid_fen"], settled["interest_paid_fen"], settled["payable_fen"]) == (
        400_000, 0, 216_000)
    view = ok(await fin.get(f"/v1/financing/clients/{buyer.participant_id}"))
    [credit] = view["loans"]  # the credit-funded trade drew the line: the buyer owes 616,000
    assert (credit["kind"], credit["principal_outstanding_fen"]) == ("CREDIT_LINE", 616_000)
    date = _cst_date(settled["settled_ms"])
    # the trade, and the repayment of the financier's advance at its settlement
    assert [(r["trade_id"], r["kind"]) for r in ok(await fin.get(f"/v1/reports/settlement?date={date}"))["rows"]
            ] == [(trade_id, "TRADE"), (trade_id, "LOAN_REPAYMENT")]

    # Withdrawn consent: the financier still sees what the buyer owes it, marked as no longer consented.
    ok(await buyer.post("/v1/consents", json={"financier_id": fin.participant_id, "granted": False}))
    view = ok(await fin.get(f"/v1/financing/clients/{buyer.participant_id}"))
    assert (view["consented"], view["loans"][0]["principal_outstanding_fen"]) == (False, 616_000)
    assert [(c["participant_id"], c["consented"]) for c in ok(await fin.get("/v1/financing/clients"))["clients"]] \
        == [(buyer.participant_id, False), (seller.participant_id, True)]
    assert error_code(await fin.get(f"/v1/financing/clients/{other_buyer.participant_id}")) == (
        404, "unknown_participant")

    # The buyer defaults and the financier writes the loan off. Another financier's try is a 404 like a
    # missing loan, the borrower may not, a reason is required, and a second write-off is a 409.
    loan_id = view["loans"][0]["loan_id"]
    other_fin = await ex.register(Role.FINANCIER)
    assert error_code(await other_fin.post(f"/v1/loans/{loan_id}/write-off", json={"reason": "x"})) == (
        404, "unknown_loan")
    assert error_code(await fin.post("/v1/loans/999999/write-off", json={"reason": "x"})) == (404, "unknown_loan")
    assert error_code(await buyer.post(f"/v1/loans/{loan_id}/write-off", json={"reason": "x"})) == (403, "forbidden")
    assert error_code(await fin.post(f"/v1/loans/{loan_id}/write-off", json={"reason": ""}))[0] == 422
    row = ok(await fin.post(f"/v1/loans/{loan_id}/write-off", json={"reason": "买家破产"}))
    assert (row["principal_outstanding_fen"], row["interest_due_fen"], row["principal_written_off_fen"]) == (
        0, 0, 616_000)
    assert row["interest_written_off_fen"] == row["interest_accrued_fen"] - row["interest_paid_fen"]
    assert error_code(await fin.post(f"/v1/loans/{loan_id}/write-off", json={"reason": "x"})) == (409, "loan_closed")
    [mine] = ok(await buyer.get("/v1/loans"))["loans"]
    assert (mine["principal_outstanding_fen"], mine["principal_written_off_fen"]) == (0, 616_000)
    view = ok(await fin.get(f"/v1/financing/clients/{buyer.participant_id}"))
    assert view["loans"][0]["principal_written_off_fen"] == 616_000


# -- roles and other participants' ids ------------------------------------------------------------------


async def test_role_boundaries_and_other_participants_ids_are_404(ex: Exchange) -> None:
    symbol = await _market(ex)
    buyer, other_buyer = await ex.register(Role.BUYER), await ex.register(Role.BUYER)
    farmer = await _farmer(ex, "赵六", "6217000011116666")
    other_farmer = await ex.register(Role.FARMER)
    fin = await ex.register(Role.FINANCIER)
    await _sell(ex, farmer, symbol, 1)
    [fill] = (await _buy(buyer, symbol, 1))["fills"]
    trade_id = fill["trade_id"]
    deposit = {"deposit_ref": _ref("d"), "owner_id": buyer.participant_id, "account": "trading_cash",
               "amount_fen": 1}
    forbidden = [
        (buyer, "POST", "/v1/deposits", deposit), (farmer, "POST", "/v1/payout-runs", {"run_ref": "r"}),
        (fin, "POST", f"/v1/trades/{trade_id}/weigh-in", {"heads_delivered": 1, "total_weight_g": 1,
                                                          "quarantine_cert": LOT_CERT, "quarantine_checked": True}),
        (buyer, "POST", f"/v1/trades/{trade_id}/weigh-in", {"heads_delivered": 1, "total_weight_g": 1,
                                                            "quarantine_cert": LOT_CERT, "quarantine_checked": True}),
        (farmer, "POST", f"/v1/trades/{trade_id}/rejection", None), (buyer, "GET", "/v1/financing/clients", None),
        (fin, "POST", "/v1/consents", {"financier_id": fin.participant_id}),
        (farmer, "POST", "/v1/admin/fee-schedule", {"instrument": symbol, "seller_fee_bps": 1}),
        (buyer, "POST", f"/v1/admin/participants/{buyer.participant_id}/bank-account/verify",
         {"bank_account": "1"}),
    ]
    for client, method, path, body in forbidden:
        assert error_code(await client.request(method, path, json=body)) == (403, "forbidden"), path

    # Someone else's trade, payout, account or balances: as good as missing.
    for client in (other_buyer, other_farmer):
        assert error_code(await client.get(f"/v1/trades/{trade_id}/settlement")) == (404, "unknown_trade")
    assert error_code(await other_farmer.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 1, "total_weight_g": 110_000, "quarantine_cert": LOT_CERT, "quarantine_checked": True})) == (
        404, "unknown_trade")
    assert error_code(await other_buyer.post(f"/v1/trades/{trade_id}/dispute", json={"reason": "x"})) == (
        404, "unknown_trade")
    assert error_code(await buyer.get("/v1/trades/999999999/settlement")) == (404, "unknown_trade")
    cash_account = (await _balances(buyer))["BUYER_CASH"]["account_id"]
    assert error_code(await other_buyer.get(f"/v1/statements?account_id={cash_account}")) == (404, "not_found")
    assert error_code(await other_buyer.get(f"/v1/balances?participant_id={buyer.participant_id}")) == (
        404, "unknown_participant")
    assert ok(await ex.operator.get(f"/v1/balances?participant_id={buyer.participant_id}"))["accounts"]
    assert [t["trade_id"] for t in ok(await other_buyer.get("/v1/settlement/trades"))["trades"]] == []
    assert [t["trade_id"] for t in ok(await buyer.get("/v1/settlement/trades"))["trades"]] == [trade_id]

    # The seller's own mistakes are named.
    assert error_code(await farmer.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 1, "total_weight_g": 110_000, "quarantine_cert": LOT_CERT,
        "quarantine_checked": False})) == (422, "quarantine_not_checked")
    assert error_code(await farmer.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 2, "total_weight_g": 220_000, "quarantine_cert": LOT_CERT, "quarantine_checked": True})) == (
        422, "invalid_delivery")
    await _weigh_in(farmer, trade_id, 1, 110_000)
    assert error_code(await farmer.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 1, "total_weight_g": 110_000, "quarantine_cert": LOT_CERT, "quarantine_checked": True})) == (
        409, "invalid_trade_state")
    await _settled(farmer, trade_id)
    # A payout of another payee is 404; with nothing pending a bank file is a conflict.
    run = ok(await ex.operator.post("/v1/payout-runs", json={"run_ref": _ref("run")}), 201)
    for payout in run["payouts"]:
        if payout["payee_id"] != other_farmer.participant_id:
            reply = await other_farmer.get(f"/v1/payouts/{payout['payout_id']}")
            assert error_code(reply) == (404, "unknown_reference")
    _payout_rows(await ex.operator.post("/v1/payout-files", json={"file_ref": _ref("f")}))
    assert error_code(await ex.operator.post("/v1/payout-files", json={"file_ref": _ref("f")})) == (
        409, "no_pending_payouts")
    assert error_code(await ex.operator.get("/v1/payout-files/nope")) == (404, "unknown_reference")
    assert error_code(await buyer.get("/v1/reports/settlement?date=2024-02-30")) == (422, "invalid")
    empty = _csv_rows(await farmer.get("/v1/reports/settlement.csv?date=2001-01-01"))
    assert empty == []


async def test_registration_profiles_and_the_demo_market(fresh_database_url: Any) -> None:
    dsn = await fresh_database_url()
    async with running_exchange(dsn, demo=True) as ex:
        assert error_code(await ex.operator.post("/v1/admin/participants", json={
            "role": "farmer", "name": "全号码", "id_number_masked": "500226199001011234"})) == (422, "invalid")
        assert error_code(await ex.operator.post("/v1/admin/participants", json={
            "role": "buyer", "name": "x", "poor_registration_no": "1"})) == (422, "invalid_participant")
        coop = await ex.register(Role.COOPERATIVE, "合作社", id_number_masked="91500226****")
        member = await _farmer(ex, "社员", "6217000011117777")
        profile = ok(await ex.operator.post(f"/v1/admin/cooperatives/{coop.participant_id}/members",
                                             json={"members": [{"farmer_id": member.participant_id,
                                                                "share_bps": 6000}]}))
        assert (profile["member_ids"], profile["shares_bps"]) == ([member.participant_id], [6000])
        assert error_code(await ex.operator.post(f"/v1/admin/cooperatives/{coop.participant_id}/members",
                                             json={"members": [{"farmer_id": coop.participant_id,
                                                                "share_bps": 6000}]})) == (422, "invalid_shares")
        assert ok(await member.get("/v1/profile"))["bank_verified"] is True
        same = ok(await member.request("PATCH", "/v1/profile", json={"name": "社员",
                                                                        "bank_account": "6217000011117777"}))
        assert same["bank_verified"] is True  # nothing changed
        renamed = ok(await member.request("PATCH", "/v1/profile", json={"name": "社员乙",
                                                                           "bank_account": "6217000011117777"}))
        assert (renamed["name"], renamed["bank_verified"]) == ("社员乙", False)  # another holder: verify again
        ok(await ex.operator.post(f"/v1/admin/participants/{member.participant_id}/bank-account/verify",
                                   json={"bank_account": "6217000011117777"}))
        mine = ok(await member.request("PATCH", "/v1/profile", json={"name": "社员乙", "bank_account": "62170000"}))
        assert (mine["bank_account"], mine["bank_verified"]) == ("****0000", False)  # a new account: unverified

        # The demo buyer's bids are covered by its demo cash and rest on the book: 20 hogs at 2780 hold
        # 20 x ceil(140 kg x 27.80) = 7,784,000 and 40 piglets at 818.00 hold 3,272,000.
        book = ok(await ex.client().get("/v1/markets/RC-LH-WSY/book"))
        assert book["bids"] == [[2780, 20]]
        buyer_id = await ex.app[POOL].fetchval("SELECT participant_id FROM participants WHERE role = 'buyer'")
        cash = (await _balances(ex.operator, f"?participant_id={buyer_id}"))["BUYER_CASH"]
        assert (cash["balance_fen"], cash["held_fen"]) == (100_000_000, 11_056_000)
    # A restart replays the journal (with the ledger) and registers nobody twice.
    async with running_exchange(dsn, demo=True) as again:
        assert (await _balances(again.operator, f"?participant_id={buyer_id}"))["BUYER_CASH"] == cash
        assert ok(await again.client().get("/v1/markets/RC-LH-WSY/book"))["bids"] == [[2780, 20]]
        assert ok(await again.operator.get(f"/v1/admin/participants/{coop.participant_id}/profile"))[
            "member_ids"] == [member.participant_id]
