"""Reports and financing views over HTTP (issue 11, items 6 to 10), against a real server, sequencer
and PostgreSQL: the financing policy is readable, a lender keeps sight of what it financed, collected
interest is the financier's income, and past settlement reports never change."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from exchange import history
from gateway.auth import Role
from gateway.state import POOL
from gateway.testing import Exchange, Trader, error_code, ok, running_exchange


async def test_the_financing_policy_can_be_read_by_participants_and_set_by_operators(ex: Exchange) -> None:
    financier = await ex.register(Role.FINANCIER, "荣昌农商行")
    farmer = await ex.register(Role.FARMER, "李四")
    assert ok(await financier.get("/v1/admin/financing-policy")) == {"advance_max_bps": 7000}  # the default
    ok(await ex.operator.post("/v1/admin/financing-policy", json={"advance_max_bps": 6500}))
    for reader in (ex.operator, financier, farmer):
        assert ok(await reader.get("/v1/admin/financing-policy")) == {"advance_max_bps": 6500}
    refused = await financier.post("/v1/admin/financing-policy", json={"advance_max_bps": 9000})
    assert (refused.status, refused.json()["code"]) == (403, "forbidden")
    assert ok(await farmer.get("/v1/admin/financing-policy")) == {"advance_max_bps": 6500}
    paths = ok(await ex.client().get("/v1/openapi.json"))["paths"]
    assert set(paths["/v1/admin/financing-policy"]) == {"get", "post"}


# -- helpers for trades over HTTP -----------------------------------------------------------------------

_refs = itertools.count(1)
WINDOW_S = 1.0


def _ref(prefix: str) -> str:
    return f"{prefix}-{next(_refs)}-{time.time_ns()}"


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s")
        await asyncio.sleep(0.05)


async def _market(ex: Exchange) -> str:
    symbol = f"T-REP-{next(_refs)}"
    await ex.list_instrument(symbol, overweight_limit_g=10_000, overweight_discount_fen_per_kg=60,
                             dispute_window_ms=int(WINDOW_S * 1000))
    return symbol


async def _farmer(ex: Exchange, name: str, *, poor_no: str = "") -> Trader:
    bank = f"6217{next(_refs):012d}"
    profile: dict[str, Any] = {"id_number_masked": "5002**********1234", "bank_account": bank}
    if poor_no:
        profile["poor_registration_no"] = poor_no
    farmer = await ex.register(Role.FARMER, name, **profile)
    ok(await ex.operator.post(f"/v1/admin/participants/{farmer.participant_id}/bank-account/verify",
                               json={"bank_account": bank}))
    if poor_no:
        ok(await ex.operator.post(f"/v1/admin/participants/{farmer.participant_id}/poor-household",
                                   json={"registration_no": poor_no}))
    return farmer


async def _trade(ex: Exchange, seller: Trader, buyer: Trader, symbol: str, heads: int) -> int:
    """A sell of `heads` at 2800 taken by a buy at 2800: the trade's id."""
    lot_id = await ex.register_lot(seller, symbol, heads=100)
    ok(await seller.post("/v1/orders", json={"client_order_id": _ref("s"), "instrument": symbol, "side": "sell",
                                              "price_fen": 2800, "quantity_heads": heads, "lot_id": lot_id}), 201)
    report = ok(await buyer.post("/v1/orders", json={"client_order_id": _ref("b"), "instrument": symbol,
                                                      "side": "buy", "price_fen": 2800, "quantity_heads": heads}), 201)
    [fill] = report["fills"]
    return int(fill["trade_id"])


async def _weigh_in(seller: Trader, trade_id: int, heads: int, grams: int) -> None:
    ok(await seller.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": heads, "total_weight_g": grams, "quarantine_cert": "渝动检 5001530001",
        "quarantine_checked": True}))


async def _settled(client: Trader, trade_id: int) -> Any:
    async def check() -> Any:
        view = ok(await client.get(f"/v1/trades/{trade_id}/settlement"))
        return view if view["state"] == "SETTLED" else None

    return await eventually(check)


def _cst_date(ms: int) -> str:
    return (dt.datetime.fromtimestamp(ms / 1000, dt.UTC) + dt.timedelta(hours=8)).date().isoformat()


# -- item 8: a lender keeps sight of what it financed ---------------------------------------------------


async def test_a_lender_sees_the_trades_it_financed_after_the_client_withdraws_consent(ex: Exchange) -> None:
    symbol = await _market(ex)
    fin = await ex.register(Role.FINANCIER, "荣昌农商行")
    await ex.deposit(fin.participant_id, 10_000_000, "financier_funds")
    buyer = await ex.register(Role.BUYER, "借款买家", deposit_fen=0)
    seller = await _farmer(ex, "李四")
    for client in (buyer, seller):
        ok(await client.post("/v1/consents", json={"financier_id": fin.participant_id}))
    ok(await fin.post("/v1/credit-lines", json={"buyer_id": buyer.participant_id, "amount_fen": 1_000_000,
                                                 "rate_bps": 500}))
    trade_id = await _trade(ex, seller, buyer, symbol, 2)  # 2 heads held 784,000 against the line
    advance = ok(await fin.post("/v1/advances", json={"trade_id": trade_id, "amount_fen": 400_000,
                                                       "rate_bps": 600}), 201)
    loan_id = advance["loans"][0]["loan_id"]
    for client in (buyer, seller):
        ok(await client.post("/v1/consents", json={"financier_id": fin.participant_id, "granted": False}))

    # Consent withdrawn: the lender still sees the trade its line paid for and its advance stands on,
    # with its own loans on it, and nothing else of either side.
    view = ok(await fin.get(f"/v1/trades/{trade_id}/settlement"))
    assert (view["state"], view["obligation_fen"], view["funded_by_financier_id"], view["advance_loan_id"]) == (
        "OPEN", 784_000, fin.participant_id, loan_id)
    assert (view["fee_fen"], view["payable_fen"], view["principal_repaid_fen"]) == (None, None, None)
    assert [t["trade_id"] for t in ok(await fin.get("/v1/settlement/trades"))["trades"]] == [trade_id]
    other_fin = await ex.register(Role.FINANCIER)
    assert error_code(await other_fin.get(f"/v1/trades/{trade_id}/settlement")) == (404, "unknown_trade")

    # 220 kg x 28.00 = 616,000 (no fee set): the advance is repaid first, the same day without interest.
    await _weigh_in(seller, trade_id, 2, 220_000)
    settled = await _settled(fin, trade_id)
    assert (settled["amount_fen"], settled["funded_by_financier_id"], settled["interest_paid_fen"]) == (
        616_000, fin.participant_id, None)
    date = _cst_date(settled["settled_ms"])
    row, repaid = ok(await fin.get(f"/v1/reports/settlement?date={date}"))["rows"]
    assert (row["kind"], row["trade_id"], row["amount_fen"], row["funded_by_financier_id"], row["advance_loan_id"]) == (
        "TRADE", trade_id, 616_000, fin.participant_id, loan_id)
    assert (row["seller_poor_household"], row["payable_fen"], row["principal_repaid_fen"]) == (None, None, None)
    assert (repaid["kind"], repaid["trade_id"], repaid["loan_id"], repaid["participant_id"],
            repaid["principal_repaid_fen"], repaid["interest_paid_fen"], repaid["paid_by"]) == (
        "LOAN_REPAYMENT", trade_id, loan_id, seller.participant_id, 400_000, 0, "BORROWER")
    assert ok(await other_fin.get(f"/v1/reports/settlement?date={date}"))["rows"] == []


# -- items 6 and 7: report rows state the facts as of settlement, for everyone they concern ----------------


async def _fee_market(ex: Exchange) -> str:
    symbol = await _market(ex)
    ok(await ex.operator.post("/v1/admin/fee-schedule", json={"instrument": symbol, "seller_fee_bps": 50}))
    await ex.deposit(0, 100_000, "poverty_subsidy_fund")
    return symbol


async def test_a_past_report_keeps_the_facts_of_its_settlement(ex: Exchange) -> None:
    symbol = await _fee_market(ex)
    buyer = await ex.register(Role.BUYER, "重庆肉联")
    poor = await _farmer(ex, "张三", poor_no="500226000777")
    trade_id = await _trade(ex, poor, buyer, symbol, 2)
    await _weigh_in(poor, trade_id, 2, 220_000)  # 220 kg x 28.00 = 616,000; fee 0.5 % = 3,080, waived
    date = _cst_date((await _settled(poor, trade_id))["settled_ms"])

    async def reports() -> tuple[Any, ...]:
        path = f"/v1/reports/settlement?date={date}"
        operator_rows = [r for r in ok(await ex.operator.get(path))["rows"] if r["trade_id"] == trade_id]
        csv_reply = await poor.get(f"/v1/reports/settlement.csv?date={date}")
        assert csv_reply.status == 200
        return operator_rows, ok(await poor.get(path))["rows"], csv_reply.body

    before = await reports()
    [row] = before[0]
    assert (row["kind"], row["seller_poor_household"], row["amount_fen"], row["fee_fen"], row["fee_subsidy_fen"],
            row["payable_fen"]) == ("TRADE", True, 616_000, 0, 3_080, 616_000)
    assert before[1] == [{**row, "funded_by_financier_id": None}]  # the seller: not how the buyer paid
    # The household leaves the register: its profile changes, the report of that day does not.
    profile = ok(await ex.operator.post(f"/v1/admin/participants/{poor.participant_id}/poor-household",
                                         json={"verified": False}))
    assert profile["poor_household_verified"] is False
    assert await reports() == before


async def test_cooperative_members_see_their_shares_in_the_report(ex: Exchange) -> None:
    symbol = await _fee_market(ex)
    buyer = await ex.register(Role.BUYER, "重庆肉联")
    coop = await ex.register(Role.COOPERATIVE, "荣昌生猪合作社", id_number_masked="5002**********0001",
                             bank_account="6217000099990001")
    member_a = await _farmer(ex, "王五", poor_no="500226000888")
    member_b = await _farmer(ex, "赵六")
    ok(await ex.operator.post(f"/v1/admin/cooperatives/{coop.participant_id}/members", json={"members": [
        {"farmer_id": member_a.participant_id, "share_bps": 6000},
        {"farmer_id": member_b.participant_id, "share_bps": 3000}]}))
    trade_id = await _trade(ex, coop, buyer, symbol, 2)
    ok(await ex.operator.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 2, "total_weight_g": 220_000, "quarantine_cert": "渝动检 5001530001",
        "quarantine_checked": True}))
    date = _cst_date((await _settled(coop, trade_id))["settled_ms"])
    path = f"/v1/reports/settlement?date={date}"
    # 616,000; fee 3,080, of which the poor member's 60 % (1,848) is waived and paid by the subsidy fund;
    # 612,920 after the whole fee is split 60 % / 30 %: 367,752 (+ 1,848) and 183,876; the cooperative
    # keeps 614,768 - 369,600 - 183,876 = 61,292.
    rows = [r for r in ok(await coop.get(path))["rows"] if r["trade_id"] == trade_id]
    assert [(r["kind"], r["participant_id"], r["share_fen"], r["member_poor_household"], r["payable_fen"],
             r["fee_fen"], r["fee_subsidy_fen"]) for r in rows] == [
        ("TRADE", 0, None, None, 614_768, 1_232, 1_848),
        ("MEMBER_SHARE", member_a.participant_id, 369_600, True, 614_768, 1_232, 1_848),
        ("MEMBER_SHARE", member_b.participant_id, 183_876, False, 614_768, 1_232, 1_848)]
    # Each member sees its own share of the trade, not the other's nor the cooperative's books.
    for member, share, poor in ((member_a, 369_600, True), (member_b, 183_876, False)):
        [mine] = ok(await member.get(path))["rows"]
        assert (mine["kind"], mine["trade_id"], mine["participant_id"], mine["share_fen"],
                mine["member_poor_household"], mine["amount_fen"]) == (
            "MEMBER_SHARE", trade_id, member.participant_id, share, poor, 616_000)
        assert (mine["payable_fen"], mine["fee_fen"], mine["seller_poor_household"]) == (None, None, None)
    # The buyer sees the trade, without the cooperative's side and without the members' rows.
    [seen] = ok(await buyer.get(path))["rows"]
    assert (seen["kind"], seen["payable_fen"], seen["share_fen"]) == ("TRADE", None, None)


async def test_the_settlement_history_is_rebuilt_from_the_journal(_test_databases: Any) -> None:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.05) as first:
            symbol = await _fee_market(first)
            buyer = await first.register(Role.BUYER)
            farmer = await _farmer(first, "李四")
            trade_id = await _trade(first, farmer, buyer, symbol, 2)
            await _weigh_in(farmer, trade_id, 2, 220_000)
            date = _cst_date((await _settled(farmer, trade_id))["settled_ms"])
            report = ok(await first.operator.get(f"/v1/reports/settlement?date={date}"))
            assert [(r["trade_id"], r["amount_fen"], r["fee_fen"]) for r in report["rows"]] == [
                (trade_id, 616_000, 3_080)]
        conn = await asyncpg.connect(dsn)
        try:
            seq = await conn.fetchval("SELECT max(seq) FROM journal")
            assert await history.projected_seq(conn) == seq  # stopping wrote the watermark up to the end
            await conn.execute("DELETE FROM settlement_report_rows")
            await conn.execute("UPDATE projections SET seq = 0 WHERE name = $1", history.PROJECTION)
        finally:
            await conn.close()
        async with running_exchange(dsn, clock_tick_s=0.05) as second:
            assert ok(await second.operator.get(f"/v1/reports/settlement?date={date}")) == report
            conn = await asyncpg.connect(dsn)
            try:
                with pytest.raises(asyncpg.RestrictViolationError, match="never change"):
                    await conn.execute("UPDATE settlement_report_rows SET amount_fen = 0")
            finally:
                await conn.close()
    finally:
        await _test_databases.drop(dsn)


async def test_a_restart_after_a_lost_write_or_a_lost_watermark_neither_loses_nor_repeats_rows(
    _test_databases: Any,
) -> None:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.05) as first:
            symbol = await _fee_market(first)
            buyer = await first.register(Role.BUYER)
            farmer = await _farmer(first, "李四")
            trade_ids = [await _trade(first, farmer, buyer, symbol, heads) for heads in (1, 2)]
            for trade_id, heads in zip(trade_ids, (1, 2), strict=True):
                await _weigh_in(farmer, trade_id, heads, heads * 110_000)
                date = _cst_date((await _settled(farmer, trade_id))["settled_ms"])
            path = f"/v1/reports/settlement?date={date}"
            report = ok(await first.operator.get(path))
            # 110 kg x 28.00 = 308,000 (fee 1,540) and 616,000 (fee 3,080)
            assert [(r["trade_id"], r["amount_fen"], r["fee_fen"]) for r in report["rows"]] == [
                (trade_ids[0], 308_000, 1_540), (trade_ids[1], 616_000, 3_080)]
        conn = await asyncpg.connect(dsn)
        try:
            # As after a crash between the journal's commit and the history's write: the last row is
            # missing and the watermark is before it.
            last_seq = await conn.fetchval("SELECT max(seq) FROM settlement_report_rows")
            await conn.execute("DELETE FROM settlement_report_rows WHERE seq = $1", last_seq)
            await conn.execute("UPDATE projections SET seq = $2 WHERE name = $1", history.PROJECTION, last_seq - 1)
        finally:
            await conn.close()
        async with running_exchange(dsn, clock_tick_s=0.05) as second:
            assert ok(await second.operator.get(path)) == report
        conn = await asyncpg.connect(dsn)
        try:
            # As after a crash between a write and its watermark: every row is there, the watermark is at 0.
            await conn.execute("UPDATE projections SET seq = 0 WHERE name = $1", history.PROJECTION)
        finally:
            await conn.close()
        async with running_exchange(dsn, clock_tick_s=0.05) as third:
            assert ok(await third.operator.get(path)) == report
            count = await third.app[POOL].fetchval("SELECT count(*) FROM settlement_report_rows WHERE kind = 'TRADE'")
            assert count == 2
    finally:
        await _test_databases.drop(dsn)


# -- items 12 and 13 in the report: heads refused, the unfasted shrink, a seller's raise ---------------------

CN_CERT = "5001530001"


async def _cn_trade(ex: Exchange, seller: Trader, buyer: Trader, symbol: str) -> int:
    """A `cn` instrument's lot (its certificate in the Chinese shape) and a trade of 10 heads at 2800."""
    lot = ok(await seller.post("/v1/lots", json={"instrument": symbol, "heads": 100, "avg_weight_g": 110_000,
                                                  "origin": "荣昌区, 重庆", "quarantine_cert": CN_CERT}), 201)
    ok(await seller.post("/v1/orders", json={"client_order_id": _ref("s"), "instrument": symbol, "side": "sell",
                                              "price_fen": 2800, "quantity_heads": 10, "lot_id": lot["lot_id"]}), 201)
    placed = ok(await buyer.post("/v1/orders", json={"client_order_id": _ref("b"), "instrument": symbol,
                                                      "side": "buy", "price_fen": 2800, "quantity_heads": 10}), 201)
    return int(placed["fills"][0]["trade_id"])


def _csv_rows(body: bytes) -> list[dict[str, str]]:
    header, *lines = [line.split(",") for line in body.decode().split("\r\n") if line]
    return [dict(zip(header, line, strict=True)) for line in lines]


async def _reports(ex: Exchange, viewers: list[Trader], dates: set[str]) -> list[tuple[Any, bytes]]:
    """Each day's report as JSON and CSV, for the operator and then each of `viewers` (on `ex`'s server)."""
    clients = [ex.operator, *(ex.client(v.api_key, v.api_secret) for v in viewers)]
    seen = []
    for date in sorted(dates):
        for client in clients:
            as_json = ok(await client.get(f"/v1/reports/settlement?date={date}"))
            as_csv = await client.get(f"/v1/reports/settlement.csv?date={date}")
            assert as_csv.status == 200
            seen.append((as_json, as_csv.body))
    return seen


_FACTS = ("heads_delivered", "heads_refused", "total_weight_g", "shrink_g", "obligation_fen", "amount_fen",
          "refund_fen", "raised_fen")


async def test_delivery_facts_are_in_the_report_and_survive_a_rebuild(_test_databases: Any) -> None:
    dsn = await _test_databases.create(migrated=True)
    obligation = 10 * 392_000  # 10 heads held at 140 kg x 28.00
    try:
        async with running_exchange(dsn, clock_tick_s=0.05) as first:
            quick, slow = f"T-REP-CN-{next(_refs)}", f"T-REP-CN-{next(_refs)}"
            for symbol, window_ms in ((quick, int(WINDOW_S * 1000)), (slow, 3_600_000)):
                await first.list_instrument(symbol, overweight_limit_g=10_000, overweight_discount_fen_per_kg=60,
                                            dispute_window_ms=window_ms, quarantine_region="cn", shrink_bps=250)
            buyer = await first.register(Role.BUYER, "重庆肉联")
            farmer = await _farmer(first, "李四")
            refused = await _cn_trade(first, farmer, buyer, quick)
            raised = await _cn_trade(first, farmer, buyer, slow)
            # 8 heads unfasted, 2 dead on arrival: shrink floor(920,017 x 2.5 %) = 23,000 g, paid 897,017 g
            # (avg 112,127): floor(897,017 x 2800 / 1000) = 2,511,647; 1,408,353 back to the buyer
            ok(await farmer.post(f"/v1/trades/{refused}/weigh-in", json={
                "heads_delivered": 8, "heads_refused": 2, "unfasted": True, "total_weight_g": 920_017,
                "quarantine_cert": CN_CERT, "quarantine_checked": True}))
            # 1100 kg x 28.00 = 3,080,000 (840,000 back); the seller disputes, the operator raises it by
            # 30 kg x 28.00 = 84,000 (within the 5 % held, 154,000): it settles at once
            ok(await farmer.post(f"/v1/trades/{raised}/weigh-in", json={
                "heads_delivered": 10, "total_weight_g": 1_100_000, "quarantine_cert": CN_CERT,
                "quarantine_checked": True}))
            ok(await farmer.post(f"/v1/trades/{raised}/dispute", json={"reason": "地磅少称了30公斤"}))
            ok(await first.operator.post(f"/v1/trades/{raised}/resolution", json={"amount_fen": 3_164_000}))
            dates = {_cst_date((await _settled(farmer, tid))["settled_ms"]) for tid in (refused, raised)}
            before = await _reports(first, [buyer, farmer], dates)

        expected = {refused: (8, 2, 920_017, 23_000, obligation, 2_511_647, 1_408_353, 0),
                    raised: (10, 0, 1_100_000, 0, obligation, 3_164_000, 840_000, 84_000)}
        for as_json, as_csv in before:  # the operator, the buyer and the seller see the same facts
            rows, cells = as_json["rows"], _csv_rows(as_csv)
            assert [r["trade_id"] for r in rows] == [int(c["trade_id"]) for c in cells]
            for row, line in zip(rows, cells, strict=True):
                assert tuple(row[k] for k in _FACTS) == tuple(int(line[k]) for k in _FACTS) == expected[
                    row["trade_id"]]
                assert row["amount_fen"] + row["refund_fen"] == row["obligation_fen"] + row["raised_fen"]
                assert "raise_held_fen" not in row and "raise_held_fen" not in line
        assert {r["trade_id"] for as_json, _ in before for r in as_json["rows"]} == {refused, raised}
        assert len(before) == 3 * len(dates) and all(as_json["rows"] for as_json, _ in before[:3])

        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT sum(raised_fen) FROM settlement_report_rows") == 84_000
            await conn.execute("DELETE FROM settlement_report_rows")
            await conn.execute("UPDATE projections SET seq = 0 WHERE name = $1", history.PROJECTION)
        finally:
            await conn.close()
        async with running_exchange(dsn, clock_tick_s=0.05) as second:
            assert await _reports(second, [buyer, farmer], dates) == before  # the same facts, from the journal
    finally:
        await _test_databases.drop(dsn)
