"""The live-hog price index over real HTTP and WebSocket (gateway/priceindex.py): today's trades of two
series, as JSON and CSV, the history with its filters, the `index` channel, and the error codes. The
exchange runs on the wall clock, so the trades are today's (CST) and today is the base day of both
series (no base named at listing): both indexes are 1000.00. Figures by hand in the comments."""

from __future__ import annotations

import csv
import datetime
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from aiohttp import WSMsgType

from exchange.calendar import CST_OFFSET_NS
from gateway.auth import Role
from gateway.testing import Exchange, Trader, running_exchange


def _cst_today() -> str:
    return datetime.datetime.fromtimestamp((time.time_ns() + CST_OFFSET_NS) / 1e9, datetime.UTC).date().isoformat()


@pytest.fixture(autouse=True)
def _not_at_cst_midnight() -> None:
    minute = (time.time_ns() + CST_OFFSET_NS) // 60_000_000_000 % 1_440
    if minute >= 1_435:
        pytest.skip("the trades must all fall on one CST day")


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn) as exchange:
            yield exchange
    finally:
        await _test_databases.drop(dsn)


async def _trade(farmer: Trader, buyer: Trader, symbol: str, lot_id: int, price_fen: int, heads: int) -> None:
    sell = {"client_order_id": f"s-{symbol}-{price_fen}-{heads}", "instrument": symbol, "side": "sell",
            "price_fen": price_fen, "quantity_heads": heads, "lot_id": lot_id}
    buy = {**sell, "client_order_id": f"b-{symbol}-{price_fen}-{heads}", "side": "buy"}
    del buy["lot_id"]
    assert (await farmer.post("/v1/orders", json=sell)).status == 201
    assert (await buyer.post("/v1/orders", json=buy)).json()["status"] == "FILLED"


async def _recv(ws: Any) -> Any:
    msg = await ws.receive(timeout=10)
    assert msg.type is WSMsgType.TEXT, msg
    return msgspec.json.decode(msg.data)


async def test_the_index_of_today_over_http_and_the_index_channel(ex: Exchange) -> None:
    await ex.list_instrument("T-IDX-HOG")
    await ex.list_instrument("T-IDX-PIG", product_class="piglet", breed_class="tu_za", delivery_point="Neijiang",
                             lot_avg_min_g=15_000, lot_avg_max_g=30_000, animal_min_g=10_000, animal_max_g=35_000,
                             tick_fen=100, reference_price_fen=82_100)
    farmer, buyer = await ex.register(Role.FARMER), await ex.register(Role.BUYER)
    hogs = await ex.register_lot(farmer, "T-IDX-HOG", heads=100, avg_weight_g=110_000)
    piglets = await ex.register_lot(farmer, "T-IDX-PIG", heads=100, avg_weight_g=20_000)

    public = ex.client()
    ws = await public.ws_connect()
    try:
        await ws.send_str(msgspec.json.encode({"op": "subscribe", "id": 1, "channels": ["index"]}).decode())
        assert await _recv(ws) == {"type": "result", "op": "subscribe", "id": 1, "data": {"channels": ["index"]}}
        await _trade(farmer, buyer, "T-IDX-HOG", hogs, 2800, 10)
        message = await _recv(ws)
        assert (message["type"], message["channel"], message["provisional"]) == ("index", "index", True)
        assert [(s["region"], s["heads"], s["average_price_fen"], s["index"]) for s in message["series"]] \
            == [("Rongchang, Chongqing", 10, 2800, "1000.00")]
    finally:
        await ws.close()
    await _trade(farmer, buyer, "T-IDX-HOG", hogs, 2830, 4)
    await _trade(farmer, buyer, "T-IDX-PIG", piglets, 82_100, 3)
    await _trade(farmer, buyer, "T-IDX-PIG", piglets, 82_400, 2)

    today = _cst_today()
    page = (await public.get("/v1/index")).json()
    assert (page["date"], page["provisional"]) == (today, True)
    assert page["series"] == [
        # 10 @ 2800 + 4 @ 2830 = 39,320 over 14 heads = 2808.57 -> 2809 fen/kg (half up); value 14 heads x
        # 110 kg: 10 x 2800 x 110 + 4 x 2830 x 110 = 4,325,200 fen. Today is the base day: 1000.00.
        {"date": today, "product_class": "finishing_hog", "breed_class": "wai_san_yuan",
         "region": "Rongchang, Chongqing", "quote_unit": "fen_per_kg", "trades": 2, "heads": 14,
         "value_fen": 4_325_200, "average_price_fen": 2809, "index_x100": 100_000, "index": "1000.00",
         "base_date": today, "provisional": True},
        # 3 @ 82,100 + 2 @ 82,400 = 411,100 fen over 5 heads = 82,220 fen a head
        {"date": today, "product_class": "piglet", "breed_class": "tu_za", "region": "Neijiang",
         "quote_unit": "fen_per_head", "trades": 2, "heads": 5, "value_fen": 411_100, "average_price_fen": 82_220,
         "index_x100": 100_000, "index": "1000.00", "base_date": today, "provisional": True},
    ]
    assert (await public.get(f"/v1/index?date={today}")).json() == page

    reply = await public.get("/v1/index.csv")
    assert (reply.status, reply.headers["Content-Type"].split(";")[0]) == (200, "text/csv")
    rows = list(csv.DictReader(io.StringIO(reply.body.decode())))
    assert [(r["region"], r["average_price_fen"], r["index_x100"], r["index"], r["provisional"]) for r in rows] \
        == [("Rongchang, Chongqing", "2809", "100000", "1000.00", "true"), ("Neijiang", "82220", "100000", "1000.00",
                                                                            "true")]

    history = (await public.get(f"/v1/index/history?from=2026-01-01&to={today}&product_class=piglet")).json()
    assert (history["from"], history["to"]) == ("2026-01-01", today)
    assert [(s["date"], s["region"], s["heads"]) for s in history["series"]] == [(today, "Neijiang", 5)]
    by_region = (await public.get(f"/v1/index/history?from={today}&to={today}&region=Neijiang")).json()["series"]
    assert [s["product_class"] for s in by_region] == ["piglet"]
    assert (await public.get(f"/v1/index/history?from={today}&to={today}&breed_class=nei_san_yuan")).json()[
        "series"] == []
    history_csv = await public.get(f"/v1/index/history.csv?from={today}&to={today}&region=Neijiang")
    assert [r["value_fen"] for r in csv.DictReader(io.StringIO(history_csv.body.decode()))] == ["411100"]

    assert (await public.get("/v1/index?date=2026-01-01")).json() == {
        "date": "2026-01-01", "provisional": False, "series": []}


async def test_index_errors_are_stable_codes(ex: Exchange) -> None:
    public = ex.client()
    cases = {
        "/v1/index?date=2026-02-30": (422, "invalid_date"),
        "/v1/index?date=yesterday": (422, "invalid_date"),
        "/v1/index/history?from=2026-03-01&to=2026-02-01": (422, "invalid_date_range"),
        "/v1/index/history?from=2024-01-01&to=2026-01-01": (422, "invalid_date_range"),
        "/v1/index/history?from=2026-01-01&to=2026-01-02&product_class=cattle": (422, "invalid"),
        "/v1/index/history?to=2026-01-02": (422, "invalid"),
        "/v1/index/history.csv?from=2026-01-01&to=2026-13-01": (422, "invalid_date"),
        "/v1/index?when=today": (422, "invalid"),
    }
    for path, expected in cases.items():
        reply = await public.get(path)
        assert (reply.status, reply.json()["code"]) == expected, path


async def test_the_openapi_document_describes_the_index_and_calendar_routes(ex: Exchange) -> None:
    paths = (await ex.client().get("/v1/openapi.json")).json()["paths"]
    for path in ("/v1/index", "/v1/index.csv", "/v1/index/history", "/v1/index/history.csv", "/v1/admin/calendar",
                 "/v1/admin/calendar/{date}"):
        assert path in paths, path
    history = paths["/v1/index/history"]["get"]
    assert {p["name"] for p in history["parameters"]} == {"from", "to", "product_class", "breed_class", "region"}
    assert "422" in history["responses"]
    assert "invalid_date_range" in history["description"]  # the error codes, from the handler's docstring
    assert "invalid_calendar_day" in paths["/v1/admin/calendar"]["post"]["description"]
