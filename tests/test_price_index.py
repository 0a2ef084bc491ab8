"""The live-hog price index (gateway/index.py) on a hand-computed example, then over HTTP with the
simulated clock: book and auction trades of two days, JSON, CSV and the `index` WebSocket channel."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import msgspec

from exchange.domain import BreedClass, ProductClass
from gateway.auth import Role
from gateway.index import PriceIndex, date_to_day, day_to_date
from gateway.testing import Exchange
from tests.factories import hog_spec
from tests.test_gateway_clock import START_MS, sim  # noqa: F401 - the fixture
from tests.test_gateway_settlement import _farmer, _ok

DAY_NS = 86_400 * 10**9
T0 = 1_767_225_600 * 10**9  # 2026-01-01 08:00 CST
HOG = hog_spec("RC-LH-WSY")
PIGLET = msgspec.structs.replace(hog_spec("RC-PG-WSY", tick_fen=100), product_class=ProductClass.PIGLET)
NSY = msgspec.structs.replace(hog_spec("RC-LH-NSY"), breed_class=BreedClass.NEI_SAN_YUAN)


def test_the_index_on_a_hand_computed_example() -> None:
    index = PriceIndex()
    day1, key = index.add(HOG, T0, 2_800, 10, 110_000)
    index.add(HOG, T0 + 3_600 * 10**9, 2_900, 30, 110_000)
    index.add(PIGLET, T0, 82_100, 5, 20_000)
    index.add(NSY, T0, 2_700, 3, 105_000)
    assert day_to_date(day1) == "2026-01-01" and date_to_day("2026-01-01") == day1
    # day 2: (3,000 x 20 + 2,950 x 20) / 40 = 2,975; index 1000 x 2,975 / 2,875 = 1034.7826... -> 1034.78
    index.add(HOG, T0 + DAY_NS, 3_000, 20, 110_000)
    index.add(HOG, T0 + DAY_NS, 2_950, 20, 120_000)
    first = {(r.product_class, r.breed_class): r for r in index.rows(day1, day1 + 1)}
    hog = first[("finishing_hog", "wai_san_yuan")]
    # day 1: (2,800 x 10 + 2,900 x 30) / 40 = 2,875 fen/kg; value 2,800 x 10 x 110 + 2,900 x 30 x 110
    assert (hog.heads, hog.trades, hog.avg_price_fen, hog.value_fen, hog.index_x100, hog.index) == (
        40, 2, 2_875, 12_650_000, 100_000, "1000.00")
    assert (hog.region, hog.quote_unit, hog.base_date, hog.provisional) == (
        "Rongchang", "fen_per_kg", "2026-01-01", False)
    piglet = first[("piglet", "wai_san_yuan")]
    assert (piglet.avg_price_fen, piglet.value_fen, piglet.quote_unit, piglet.index) == (
        82_100, 410_500, "fen_per_head", "1000.00")
    assert first[("finishing_hog", "nei_san_yuan")].avg_price_fen == 2_700
    second = index.rows(day1 + 1, day1 + 1)
    assert len(second) == 1
    assert (second[0].avg_price_fen, second[0].index_x100, second[0].index, second[0].provisional) == (
        2_975, 103_478, "1034.78", True)
    assert second[0].value_fen == 3_000 * 20 * 110 + 2_950 * 20 * 120
    # averages round half up: (2,800 + 2 x 2,810) / 3 = 2,806.67 -> 2,807
    other = PriceIndex()
    day, key = other.add(HOG, T0, 2_800, 1, 110_000)
    other.add(HOG, T0, 2_810, 2, 110_000)
    assert other.row(day, key, day).avg_price_fen == 2_807
    assert [r.date for r in index.history(day1, day1 + 1, day1 + 1)] == ["2026-01-01"] * 3 + ["2026-01-02"]


async def test_the_index_over_http_json_csv_and_websocket(sim: Exchange) -> None:  # noqa: F811
    op = sim.operator
    symbol = "IDX-LH"
    await sim.list_instrument(symbol, delivery_point="Rongchang-IDX")
    farmer = await _farmer(sim, "孙七", "6217000011116666")
    buyer = await sim.register(Role.BUYER)
    now = _ok(await op.get("/v1/admin/clock"))["now_ms"]
    today = day_to_date(date_to_day("1970-01-01") + (now * 10**6 + 8 * 3_600 * 10**9) // DAY_NS)

    async def trade(price: int, heads: int) -> None:
        lot_id = await sim.register_lot(farmer, symbol, heads=heads, avg_weight_g=110_000)
        _ok(await farmer.post("/v1/orders", json={"client_order_id": f"s{price}{heads}{now}", "instrument": symbol,
                                                  "side": "sell", "price_fen": price, "quantity_heads": heads,
                                                  "lot_id": lot_id}), 201)
        _ok(await buyer.post("/v1/orders", json={"client_order_id": f"b{price}{heads}{now}", "instrument": symbol,
                                                 "side": "buy", "price_fen": price, "quantity_heads": heads}), 201)

    async with sim.session.ws_connect(sim.url + "/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "channels": ["index"]})
        messages = [json.loads((await ws.receive()).data) for _ in range(2)]
        assert any(m.get("type") == "index" for m in messages)
        await trade(2_800, 10)
        await trade(2_900, 30)
        pushed = None
        while pushed is None or not any(r["region"] == "Rongchang-IDX" and r["heads"] == 40
                                        for r in pushed["series"]):
            pushed = json.loads((await ws.receive(timeout=5)).data)
    mine = [r for r in _ok(await buyer.get("/v1/index"))["series"] if r["region"] == "Rongchang-IDX"]
    assert [(r["date"], r["avg_price_fen"], r["index"], r["provisional"]) for r in mine] == [
        (today, 2_875, "1000.00", True)]
    # an auction sale on the next day counts too
    _ok(await op.post("/v1/admin/clock", json={"advance_ms": 86_400_000}))
    lot_id = await sim.register_lot(farmer, symbol, heads=40)
    clock = _ok(await op.get("/v1/admin/clock"))["now_ms"]
    auction = _ok(await farmer.post("/v1/auctions", json={
        "lot_id": lot_id, "start_price_fen": 2_950, "reserve_price_fen": 2_950,
        "increments": [{"from_price_fen": 0, "increment_fen": 10}], "closes_at_ms": clock + 60_000}), 201)
    _ok(await buyer.post(f"/v1/auctions/{auction['auction_id']}/bids", json={"max_price_fen": 2_980}), 201)
    _ok(await op.post("/v1/admin/clock", json={"advance_ms": 60_000}))
    history = _ok(await buyer.get(f"/v1/index/history?from={today}&region=Rongchang-IDX"))
    assert [(r["heads"], r["avg_price_fen"], r["index"], r["provisional"]) for r in history] == [
        (40, 2_875, "1000.00", False), (40, 2_950, "1026.09", True)]  # 1000 x 2,950 / 2,875
    reply = await buyer.get(f"/v1/index/history.csv?from={today}&region=Rongchang-IDX")
    rows = list(csv.DictReader(io.StringIO(reply.body.decode())))
    assert [(r["date"], r["avg_price_fen"], r["index"], r["provisional"]) for r in rows] == [
        (h["date"], str(h["avg_price_fen"]), h["index"], str(h["provisional"]).lower()) for h in history]
    status: Any = (await buyer.get("/v1/index?date=2026-13-01")).status
    assert status == 422
    assert START_MS > 0
