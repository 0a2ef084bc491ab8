"""Deliveries over HTTP (issue 11, items 11-13), against a real server, sequencer and PostgreSQL: the
quarantine certificate of a `cn` instrument at lot registration and at the weigh-in, heads refused and
unfasted pigs at the weigh-in, and a seller's dispute whose resolution raises the amount, with exact
figures, the buyer-private hold, the error codes and the OpenAPI document."""

from __future__ import annotations

import itertools
import time
from typing import Any

from gateway.auth import Role
from gateway.client import Reply
from gateway.testing import BUYER_DEPOSIT_FEN, Exchange, Trader, error_code, ok

CERT = "5001530001"
HOLD_PER_HEAD = 392_000  # ceil(140 kg x 2800 fen/kg)
_symbols = itertools.count(1)
_refs = itertools.count(1)


async def _market(ex: Exchange) -> str:
    symbol = f"T-DLV-{next(_symbols)}"
    view = await ex.list_instrument(symbol, overweight_limit_g=10_000, overweight_discount_fen_per_kg=60,
                                    dispute_window_ms=3_600_000, quarantine_region="cn", shrink_bps=250)
    assert (view["quarantine_region"], view["shrink_bps"]) == ("cn", 250)
    return symbol


async def _lot(farmer: Trader, symbol: str, cert: str = CERT) -> Reply:
    return await farmer.post("/v1/lots", json={"instrument": symbol, "heads": 100, "avg_weight_g": 110_000,
                                               "origin": "荣昌区, 重庆", "quarantine_cert": cert})


async def _trade(ex: Exchange, farmer: Trader, buyer: Trader, symbol: str, heads: int = 10) -> int:
    lot_id = ok(await _lot(farmer, symbol), 201)["lot_id"]
    ok(await farmer.post("/v1/orders", json={"client_order_id": f"s-{next(_refs)}-{time.time_ns()}",
                                              "instrument": symbol, "side": "sell", "price_fen": 2800,
                                              "quantity_heads": heads, "lot_id": lot_id}), 201)
    placed = ok(await buyer.post("/v1/orders", json={"client_order_id": f"b-{next(_refs)}-{time.time_ns()}",
                                                      "instrument": symbol, "side": "buy", "price_fen": 2800,
                                                      "quantity_heads": heads}), 201)
    return int(placed["fills"][0]["trade_id"])


def _weigh(heads: int, grams: int, cert: str = CERT, **more: Any) -> dict[str, Any]:
    return {"heads_delivered": heads, "total_weight_g": grams, "quarantine_cert": cert, "quarantine_checked": True,
            **more}


async def test_certificates_refused_and_counted_heads_and_shrink_over_http(ex: Exchange) -> None:
    symbol = await _market(ex)
    farmer, buyer = await ex.register(Role.FARMER, "李四"), await ex.register(Role.BUYER, "肉联厂")
    assert error_code(await _lot(farmer, symbol, "渝动检 5001530001")) == (422, "invalid_quarantine_cert")
    assert error_code(await _lot(farmer, symbol, "5000000000")) == (422, "invalid_quarantine_cert")
    tid = await _trade(ex, farmer, buyer, symbol)
    url = f"/v1/trades/{tid}/weigh-in"
    assert error_code(await farmer.post(url, json=_weigh(8, 920_017, "CQ-1"))) == (422, "invalid_quarantine_cert")
    other_cert = _weigh(8, 920_017, "5001530002")
    assert error_code(await farmer.post(url, json=other_cert)) == (422, "quarantine_cert_mismatch")
    assert error_code(await farmer.post(url, json=_weigh(9, 920_017, heads_refused=2))) == (422, "invalid_delivery")
    assert error_code(await farmer.post(url, json=_weigh(8, 920_017, heads_refused=-1))) == (422, "invalid")
    # 8 heads unfasted, 2 dead on arrival: shrink floor(920,017 x 2.5 %) = 23,000 g, paid 897,017 g,
    # avg 112,127 g; floor(897,017 x 2800 / 1000) = 2,511,647; the rest of 3,920,000 back to the buyer
    seen = ok(await farmer.post(url, json=_weigh(8, 920_017, heads_refused=2, unfasted=True)))
    assert (seen["heads_delivered"], seen["heads_refused"], seen["total_weight_g"], seen["shrink_g"],
            seen["avg_weight_g"], seen["grade"], seen["amount_fen"], seen["refund_fen"]) == (
        8, 2, 920_017, 23_000, 112_127, "IN_GRADE", 2_511_647, 10 * HOLD_PER_HEAD - 2_511_647)
    cash = ok(await buyer.get("/v1/balances"))["accounts"]
    assert [a["balance_fen"] for a in cash if a["kind"] == "BUYER_CASH"] == [BUYER_DEPOSIT_FEN - 2_511_647]


async def test_sellers_dispute_raises_the_amount_within_the_hold_over_http(ex: Exchange) -> None:
    symbol = await _market(ex)
    farmer, buyer = await ex.register(Role.FARMER, "王五"), await ex.register(Role.BUYER, "买家")
    tid = await _trade(ex, farmer, buyer, symbol)
    ok(await farmer.post(f"/v1/trades/{tid}/weigh-in", json=_weigh(10, 1_100_000, f" {CERT} ")))  # 3,080,000
    seen = ok(await farmer.post(f"/v1/trades/{tid}/dispute", json={"reason": "地磅少称了30公斤"}))
    # the seller may not see what was held (it would tell the buyer's funds); the buyer and operators do
    assert (seen["state"], seen["disputed_by"], seen["raise_held_fen"]) == ("DISPUTED", farmer.participant_id, None)
    assert ok(await buyer.get(f"/v1/trades/{tid}/settlement"))["raise_held_fen"] == 154_000  # 5 % of 3,080,000
    cash = {a["kind"]: a for a in ok(await buyer.get("/v1/balances"))["accounts"]}["BUYER_CASH"]
    assert cash["held_fen"] == 154_000
    op = ex.operator
    url = f"/v1/trades/{tid}/resolution"
    assert error_code(await op.post(url, json={"amount_fen": 3_234_001})) == (422, "invalid_amount")
    seen = ok(await op.post(url, json={"amount_fen": 3_164_000}))  # 30 kg x 2800 = 84,000 more
    assert (seen["state"], seen["amount_fen"], seen["refund_fen"], seen["raised_fen"], seen["raise_held_fen"]) == (
        "SETTLED", 3_164_000, 840_000, 84_000, 154_000)
    assert (seen["fee_fen"], seen["payable_fen"]) == (0, 3_164_000)  # the API's instruments charge no fee
    cash = {a["kind"]: a for a in ok(await buyer.get("/v1/balances"))["accounts"]}["BUYER_CASH"]
    assert (cash["balance_fen"], cash["held_fen"]) == (BUYER_DEPOSIT_FEN - 3_164_000, 0)


async def test_buyers_dispute_still_cannot_raise_over_http(ex: Exchange) -> None:
    symbol = await _market(ex)
    farmer, buyer = await ex.register(Role.FARMER, "赵六"), await ex.register(Role.BUYER, "买家二")
    tid = await _trade(ex, farmer, buyer, symbol, heads=2)
    ok(await farmer.post(f"/v1/trades/{tid}/weigh-in", json=_weigh(2, 220_000)))  # 616,000
    assert ok(await buyer.post(f"/v1/trades/{tid}/dispute", json={"reason": "lame"}))["raise_held_fen"] == 0
    assert error_code(await ex.operator.post(f"/v1/trades/{tid}/resolution", json={"amount_fen": 616_001})) == (
        422, "invalid_amount")


async def test_openapi_shows_the_delivery_fields(ex: Exchange) -> None:
    schemas = (await ex.client().get("/v1/openapi.json")).json()["components"]["schemas"]
    weigh_in = schemas["WeighInRequest"]
    assert {"heads_refused", "unfasted"} <= set(weigh_in["properties"])
    assert set(weigh_in["required"]) == {"heads_delivered", "total_weight_g", "quarantine_cert",
                                         "quarantine_checked"}
    assert "quarantine_cert_mismatch" in weigh_in["description"]
    assert {"quarantine_region", "shrink_bps"} <= set(schemas["InstrumentRequest"]["properties"])
    assert {"heads_refused", "shrink_g", "raise_held_fen", "raised_fen"} <= set(
        schemas["TradeSettlementView"]["properties"])
    assert "raise_held_fen" in schemas["ResolutionRequest"]["description"]
