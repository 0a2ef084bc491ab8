"""The gateway under hostile or unlucky input, over real sockets against a real sequencer (issue 11,
items 14-23).

- Free text refuses control and bidi formatting characters everywhere (422 `control_characters`).
- Path and query integers are ASCII digits: `1.0` and `1e3` are 422, never taken as integers.
- A JSON object naming a key twice is 422 `duplicate_key`, over HTTP and the WebSocket.
- Nesting too deep for the decoder is a 400 `bad_json` (HTTP) or an error reply (WebSocket), never a 500.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from aiohttp import WSMsgType

from gateway.auth import Role
from gateway.inputs import has_duplicate_keys
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


@pytest_asyncio.fixture
async def market(ex: Exchange) -> str:
    symbol = f"T-HARD-{next(_symbols)}"
    await ex.list_instrument(symbol)
    return symbol


def _lot(symbol: str, **fields: Any) -> dict[str, Any]:
    body = {"instrument": symbol, "heads": 10, "avg_weight_g": 110_000, "origin": "荣昌区, 重庆",
            "quarantine_cert": "渝动检 5001539999"}
    body.update(fields)
    return body


async def _ws_reply(ws: aiohttp.ClientWebSocketResponse, text: str) -> dict[str, Any]:
    await ws.send_str(text)
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.TEXT, msg
    return msgspec.json.decode(msg.data)  # type: ignore[no-any-return]


# -- free text ---------------------------------------------------------------------------------------

_REFUSED = ["\x00", "\n", "\r", "\t", "\x1b[31m", "\x7f", "\x85", "\u202e", "\u2066", "\u2069", "\u200e",
            "\u200f", "\u2028", "\ufeff"]


@pytest.mark.parametrize("field", ["origin", "quarantine_cert", "ear_tags"])
@pytest.mark.parametrize("bad", _REFUSED, ids=[f"U+{ord(c[0]):04X}" for c in _REFUSED])
async def test_lot_text_refuses_control_characters(ex: Exchange, market: str, field: str, bad: str) -> None:
    farmer = await ex.register(Role.FARMER)
    reply = await farmer.post("/v1/lots", json=_lot(market, **{field: f"ok{bad}text"}))
    assert reply.status == 422, reply.body
    error = reply.json()
    assert error["code"] == "control_characters"
    assert f"$.{field}" in error["message"]
    lots = await farmer.get("/v1/lots")
    assert lots.json() == []  # nothing registered
    # A trailing newline too (a `$` anchor would let it through).
    trailing = await farmer.post("/v1/lots", json=_lot(market, **{field: "text\n"}))
    assert trailing.status == 422 and trailing.json()["code"] == "control_characters"


async def test_plain_unicode_text_is_kept(ex: Exchange, market: str) -> None:
    farmer = await ex.register(Role.FARMER)
    reply = await farmer.post("/v1/lots", json=_lot(market, origin="荣昌区 · Chongqing «east»",
                                                    ear_tags="CN-500153-0001 … 0010"))
    assert reply.status == 201, reply.body
    assert reply.json()["origin"] == "荣昌区 · Chongqing «east»"


async def test_other_text_fields_refuse_control_characters(ex: Exchange) -> None:
    reply = await ex.operator.post("/v1/admin/participants", json={"role": "farmer", "name": "Wang\u202eEvil"})
    assert reply.status == 422 and reply.json()["code"] == "control_characters", reply.body
    listing = await ex.operator.post("/v1/instruments", json={
        "symbol": "T-HARD-TXT", "product_class": "finishing_hog", "breed_class": "wai_san_yuan",
        "delivery_point": "Rongchang\x00", "lot_avg_min_g": 100_000, "lot_avg_max_g": 120_000,
        "animal_min_g": 90_000, "animal_max_g": 140_000, "tick_fen": 10, "min_order_heads": 1,
        "max_order_heads": 500, "price_band_bps": 400, "reference_price_fen": 2800})
    assert listing.status == 422 and listing.json()["code"] == "control_characters", listing.body


async def test_bank_confirmation_text_refuses_control_characters(ex: Exchange) -> None:
    for bank_ref, reason in (("B-1\x00", ""), ("B-1", "closed\u202e")):
        csv = f"payout_id,attempt,status,bank_ref,reason\n1,1,FAILED,{bank_ref},{reason}\n"
        reply = await ex.operator.post("/v1/payout-confirmations", json={"file_ref": f"conf-{len(reason)}",
                                                                        "csv": csv})
        assert reply.status == 422, reply.body
        assert reply.json()["code"] == "control_characters"


async def test_websocket_text_refuses_control_characters(ex: Exchange, market: str) -> None:
    buyer = await ex.register(Role.BUYER)
    ws = await buyer.ws_connect()
    try:
        reply = await _ws_reply(ws, msgspec.json.encode({
            "op": "place_order", "id": 1, "client_order_id": "ok", "instrument": market, "side": "buy",
            "price_fen": 2800, "quantity_heads": 1}).decode())
        assert reply["type"] == "result"
        # client_order_id is printable ASCII by its own pattern; a channel name is matched exactly.
        reply = await _ws_reply(ws, '{"op":"subscribe","id":2,"channels":["book.A\\u202eB"]}')
        assert reply["code"] == "unknown_channel"
    finally:
        await ws.close()


# -- strict integers in paths and queries ---------------------------------------------------------------

async def test_path_and_query_integers_are_strict(ex: Exchange, market: str) -> None:
    farmer = await ex.register(Role.FARMER)
    lot_id = await ex.register_lot(farmer, market)
    assert (await farmer.get(f"/v1/lots/{lot_id}")).status == 200
    for path in (f"/v1/lots/{lot_id}.0", f"/v1/lots/{lot_id}e0", "/v1/lots/1e0"):
        reply = await farmer.get(path)
        assert reply.status == 422, (path, reply.body)
        assert reply.json()["code"] == "invalid"
    buyer = await ex.register(Role.BUYER)
    assert (await buyer.get("/v1/orders?limit=10")).status == 200
    for query in ("limit=1e3", "limit=10.0", "limit=1e1"):
        reply = await buyer.get(f"/v1/orders?{query}")
        assert reply.status == 422, (query, reply.body)
        assert "whole number" in reply.json()["message"]
    public = ex.client()
    assert (await public.get(f"/v1/markets/{market}/book?depth=5", signed=False)).status == 200
    reply = await public.get(f"/v1/markets/{market}/book?depth=5.0", signed=False)
    assert reply.status == 422, reply.body


# -- duplicate keys -------------------------------------------------------------------------------------

def test_duplicate_key_scanner() -> None:
    assert not has_duplicate_keys(b'{"a":1,"b":"x:y","c":[1,2]}')
    assert has_duplicate_keys(b'{"a":1,"a":2}')
    assert has_duplicate_keys(b'{"a":"x:y","b":1,"a":2}')  # a colon in a string sends it the exact way
    assert has_duplicate_keys(b'{"a":{"b":1,"b":2}}')  # nested objects too
    assert not has_duplicate_keys(b'{"a":{"a":1},"b":{"a":2}}')  # the same key in different objects
    assert not has_duplicate_keys(b'[{"a":1},{"a":2}]')
    assert has_duplicate_keys(b'{"a" : 1 , "a" : 2}')
    assert has_duplicate_keys(b'{"\\u0061":1,"a":2}')  # the same key, escaped


async def test_duplicate_keys_are_refused_over_http(ex: Exchange, market: str) -> None:
    buyer = await ex.register(Role.BUYER)
    body = (f'{{"client_order_id":"dup-1","instrument":"{market}","side":"sell","side":"buy",'
            f'"price_fen":2800,"quantity_heads":1}}').encode()
    reply = await buyer.post("/v1/orders", body=body, headers={"Content-Type": "application/json"})
    assert reply.status == 422, reply.body
    assert reply.json()["code"] == "duplicate_key"
    orders = await buyer.get("/v1/orders")
    assert orders.json()["orders"] == []  # nothing placed


async def test_duplicate_keys_are_refused_over_websocket(ex: Exchange, market: str) -> None:
    buyer = await ex.register(Role.BUYER)
    ws = await buyer.ws_connect()
    try:
        reply = await _ws_reply(ws, f'{{"op":"place_order","id":7,"client_order_id":"dup-ws","instrument":'
                                    f'"{market}","side":"buy","price_fen":2800,"price_fen":2810,'
                                    f'"quantity_heads":1}}')
        assert reply == {"type": "error", "code": "duplicate_key", "op": "place_order", "id": 7,
                         "message": "invalid message: an object names the same key twice"}
        reply = await _ws_reply(ws, '{"op":"ping","id":1,"id":2}')
        assert reply["code"] == "duplicate_key"
    finally:
        await ws.close()
    assert (await buyer.get("/v1/orders")).json()["orders"] == []


# -- deep nesting ---------------------------------------------------------------------------------------

_DEEP = "[" * 30_000 + "]" * 30_000


async def test_deeply_nested_websocket_message_gets_an_error_reply(ex: Exchange) -> None:
    buyer = await ex.register(Role.BUYER)
    for login in (False, True):
        ws = await buyer.ws_connect(login=login, max_msg_size=0)
        try:
            for _ in range(3):  # the socket stays usable
                reply = await _ws_reply(ws, f'{{"x":{_DEEP},"op":"ping"}}')
                assert reply["type"] == "error" and reply["code"] == "bad_json", reply
            assert (await _ws_reply(ws, '{"op":"ping","id":9}')) == {"type": "result", "op": "ping", "id": 9,
                                                                     "data": None}
        finally:
            await ws.close()


async def test_deeply_nested_http_body_is_a_400(ex: Exchange, market: str) -> None:
    buyer = await ex.register(Role.BUYER)
    for body in (f'{{"x":{_DEEP}}}', _DEEP, f'{{"client_order_id":{_DEEP}}}'):
        reply = await buyer.post("/v1/orders", body=body.encode(), headers={"Content-Type": "application/json"})
        assert reply.status in (400, 422), reply.body
        assert reply.json()["code"] in ("bad_json", "invalid")
