"""Public market data over real HTTP: instruments, the book by depth, trades by cursor, candles, and the
OpenAPI document that describes them; no credentials needed."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from gateway.auth import Role
from gateway.client import SignedClient
from gateway.testing import Exchange, running_exchange

_symbols = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn) as exchange:
            yield exchange
    finally:
        await _test_databases.drop(dsn)


async def _traded_market(ex: Exchange, trades: list[tuple[int, int]]) -> str:
    """A market where a buyer took the farmer's asks at the given (price_fen, heads), in order."""
    symbol = f"T-MKT-{next(_symbols)}"
    await ex.list_instrument(symbol)
    farmer, buyer = await ex.register(Role.FARMER), await ex.register(Role.BUYER)
    lot_id = await ex.register_lot(farmer, symbol, heads=1000)
    for i, (price, heads) in enumerate(trades):
        sell = {"client_order_id": f"s{i}", "instrument": symbol, "side": "sell", "price_fen": price,
                "quantity_heads": heads, "lot_id": lot_id}
        buy = {"client_order_id": f"b{i}", "instrument": symbol, "side": "buy", "price_fen": price,
               "quantity_heads": heads}
        assert (await farmer.post("/v1/orders", json=sell)).status == 201
        assert (await buyer.post("/v1/orders", json=buy)).json()["status"] == "FILLED"
    return symbol


async def test_instruments_are_public_and_say_how_they_are_quoted(ex: Exchange) -> None:
    public = ex.client()
    await ex.list_instrument("T-PIGLET", product_class="piglet", lot_avg_min_g=15_000, lot_avg_max_g=30_000,
                             animal_min_g=10_000, animal_max_g=35_000, tick_fen=100, reference_price_fen=82_100)
    view = (await public.get("/v1/instruments/T-PIGLET")).json()
    assert view == {
        "symbol": "T-PIGLET", "product_class": "piglet", "quote_unit": "fen_per_head", "breed_class": "wai_san_yuan",
        "delivery_point": "Rongchang, Chongqing", "lot_avg_min_g": 15_000, "lot_avg_max_g": 30_000,
        "animal_min_g": 10_000, "animal_max_g": 35_000, "tick_fen": 100, "min_order_heads": 1,
        "max_order_heads": 500, "price_band_bps": 400, "reference_price_fen": 82_100,
        "band_low_fen": 78_900, "band_high_fen": 85_300, "state": "continuous", "seq": 1}
    listed = (await public.get("/v1/instruments")).json()
    assert view in listed
    missing = await public.get("/v1/instruments/NOPE")
    assert (missing.status, missing.json()["code"]) == (404, "unknown_instrument")


async def test_book_by_depth(ex: Exchange) -> None:
    symbol = f"T-MKT-{next(_symbols)}"
    await ex.list_instrument(symbol)
    buyer = await ex.register(Role.BUYER)
    for i, (price, heads) in enumerate(((2800, 5), (2790, 3), (2800, 2), (2700, 1))):
        body = {"client_order_id": f"d{i}", "instrument": symbol, "side": "buy", "price_fen": price,
                "quantity_heads": heads}
        assert (await buyer.post("/v1/orders", json=body)).status == 201
    public = ex.client()
    assert (await public.get(f"/v1/markets/{symbol}/book")).json() == {
        "instrument": symbol, "seq": 9, "bids": [[2800, 7], [2790, 3], [2700, 1]], "asks": []}
    assert (await public.get(f"/v1/markets/{symbol}/book?depth=1")).json()["bids"] == [[2800, 7]]
    for bad in ("depth=0", "depth=1001", "depth=x", "levels=3"):
        reply = await public.get(f"/v1/markets/{symbol}/book?{bad}")
        assert (reply.status, reply.json()["code"]) == (422, "invalid"), bad
    reply = await public.get("/v1/markets/NOPE/book")
    assert (reply.status, reply.json()["code"]) == (404, "unknown_instrument")


async def test_trades_newest_first_by_cursor(ex: Exchange) -> None:
    symbol = await _traded_market(ex, [(2800, 1), (2810, 2), (2820, 3), (2830, 4), (2840, 5)])
    public = ex.client()
    first = (await public.get(f"/v1/markets/{symbol}/trades?limit=2")).json()
    assert [(t["price_fen"], t["quantity_heads"], t["taker_side"]) for t in first["trades"]] == [
        (2840, 5, "buy"), (2830, 4, "buy")]
    second = (await public.get(f"/v1/markets/{symbol}/trades?limit=2&cursor={first['next_cursor']}")).json()
    third = (await public.get(f"/v1/markets/{symbol}/trades?limit=2&cursor={second['next_cursor']}")).json()
    assert [t["price_fen"] for t in second["trades"] + third["trades"]] == [2820, 2810, 2800]
    assert third["next_cursor"] is None
    ids = [t["trade_id"] for t in first["trades"] + second["trades"] + third["trades"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5


async def test_candles(ex: Exchange) -> None:
    symbol = await _traded_market(ex, [(2800, 1), (2850, 2), (2790, 3), (2820, 4)])
    public = ex.client()
    for interval in ("1m", "1d"):
        page = (await public.get(f"/v1/markets/{symbol}/candles?interval={interval}")).json()
        assert page["interval"] == interval
        candles = page["candles"]
        # All four trades fall in one day; they may straddle a minute boundary.
        assert sum(c["volume_heads"] for c in candles) == 10 and sum(c["trades"] for c in candles) == 4
        assert (candles[0]["open_fen"], candles[-1]["close_fen"]) == (2800, 2820)
        assert max(c["high_fen"] for c in candles) == 2850 and min(c["low_fen"] for c in candles) == 2790
    [day] = (await public.get(f"/v1/markets/{symbol}/candles?interval=1d")).json()["candles"]
    assert day["start_ms"] % 86_400_000 == 0
    reply = await public.get(f"/v1/markets/{symbol}/candles?interval=2m")
    assert (reply.status, reply.json()["code"]) == (422, "invalid")


async def test_openapi_documents_every_exchange_route_with_its_roles(ex: Exchange) -> None:
    doc = (await SignedClient(ex.url, session=ex.session).get("/v1/openapi.json")).json()
    paths = doc["paths"]
    expected = {
        ("/v1/orders", "post"): ["buyer", "cooperative", "farmer"],
        ("/v1/orders", "get"): ["buyer", "cooperative", "farmer"],
        ("/v1/orders/{order_id}", "delete"): ["buyer", "cooperative", "farmer"],
        ("/v1/orders/{order_id}", "patch"): ["buyer", "cooperative", "farmer"],
        ("/v1/fills", "get"): ["buyer", "cooperative", "farmer"],
        ("/v1/lots", "post"): ["cooperative", "farmer"],
        ("/v1/lots/{lot_id}", "get"): ["cooperative", "farmer"],
        ("/v1/instruments", "post"): ["operator"],
        ("/v1/instruments/{instrument}/halt", "post"): ["operator"],
        ("/v1/instruments/{instrument}/reference-price", "post"): ["operator"],
    }
    for (path, method), roles in expected.items():
        assert paths[path][method]["x-hogx-roles"] == roles, (path, method)
    for path in ("/v1/instruments", "/v1/markets/{instrument}/book", "/v1/markets/{instrument}/trades",
                 "/v1/markets/{instrument}/candles"):
        assert "security" not in paths[path]["get"]
    place = doc["components"]["schemas"]["PlaceOrderRequest"]
    assert place["additionalProperties"] is False
    assert set(place["required"]) == {"client_order_id", "instrument", "side", "quantity_heads"}
    assert place["properties"]["client_order_id"]["maxLength"] == 36
