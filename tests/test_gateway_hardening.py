"""The gateway under hostile or unlucky input, over real sockets against a real sequencer (issue 11,
items 14-23).

- Free text refuses control and bidi formatting characters everywhere (422 `control_characters`).
- Path and query integers are ASCII digits: `1.0` and `1e3` are 422, never taken as integers.
- A JSON object naming a key twice is 422 `duplicate_key`, over HTTP and the WebSocket.
- Nesting too deep for the decoder is a 400 `bad_json` (HTTP) or an error reply (WebSocket), never a 500.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import pytest_asyncio
from aiohttp import WSMsgType
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import PUBLIC, Role
from gateway.inputs import has_duplicate_keys, has_duplicate_keys_of, reencodes_no_longer
from gateway.orders import AmendOrderMessage, CancelOrderMessage, PlaceOrderMessage
from gateway.routes import Call, RouteTable
from gateway.schemas import LotPath
from gateway.state import HUB
from gateway.testing import Exchange, running_exchange
from gateway.ws import AuthMessage, MessageDecoder, PingMessage, SubscribeMessage, UnsubscribeMessage

from .conftest import FreshDatabase

REPO_ROOT = Path(__file__).resolve().parent.parent

_symbols = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    async with _test_databases.fresh() as dsn, running_exchange(dsn) as exchange:
        yield exchange


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


# Valid JSON values of every field of a place_order message, defaults, colons in strings and escapes among them.
_PLACE_VALUES: dict[str, list[str]] = {
    "op": ['"place_order"'],
    "id": ["1", "7", '"a:b"', "null"],
    "client_order_id": ['"c1"', '"c:2"', '"c\\u003a3"', '"x::y"'],
    "instrument": ['"RC-LH-WSY"', '"A"'],
    "side": ['"buy"', '"sell"'],
    "quantity_heads": ["1", "5"],
    "type": ['"limit"', '"market"'],
    "price_fen": ["2800", "2810", "null"],
    "time_in_force": ['"GTC"', '"IOC"', "null"],
    "post_only": ["false", "true"],
    "min_quantity_heads": ["0", "2"],
    "all_or_none": ["false", "true"],
    "stp": ['"expire_taker"', '"expire_maker"'],
    "lot_id": ["3", "null"],
}
_PLACE_KEYS = sorted(_PLACE_VALUES)
_place_decoder = msgspec.json.Decoder(PlaceOrderMessage)
HUB_OPS = (PlaceOrderMessage, AmendOrderMessage, CancelOrderMessage, AuthMessage, SubscribeMessage,
           UnsubscribeMessage, PingMessage)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PLACE_KEYS), st.integers(0, 3), st.sampled_from([":", " : ", ":  "])),
                min_size=1, max_size=18))
def test_the_fast_duplicate_check_of_a_decoded_message_agrees_with_the_exact_one(
    pairs: list[tuple[str, int, str]],
) -> None:
    """Whatever keys a place_order message names, once or more, with defaults, colons or escapes in its
    strings: re-encoding the decoded struct (`has_duplicate_keys_of`) finds a key named twice exactly
    when the generic check does."""
    items = [f'"{key}"{sep}{_PLACE_VALUES[key][i % len(_PLACE_VALUES[key])]}' for key, i, sep in pairs]
    raw = ("{" + ",".join(['"op":"place_order"', *items]) + "}").encode()
    try:
        decoded = _place_decoder.decode(raw)
    except msgspec.ValidationError:
        return  # refused before any duplicate check
    assert has_duplicate_keys_of(raw, decoded) == has_duplicate_keys(raw)


def test_the_fast_duplicate_check_catches_a_repeated_side() -> None:
    sell_then_buy = b'{"op":"place_order","client_order_id":"c","instrument":"A","side":"sell","side":"buy",' \
                    b'"quantity_heads":1,"price_fen":2800}'
    assert has_duplicate_keys_of(sell_then_buy, _place_decoder.decode(sell_then_buy))
    # an escaped colon becomes a real one when re-encoded: it must not hide the key named twice
    escaped = b'{"op":"place_order","client_order_id":"c\\u003a1","instrument":"A","side":"buy","side":"buy",' \
              b'"quantity_heads":1}'
    assert has_duplicate_keys_of(escaped, _place_decoder.decode(escaped))
    spaced = b'{"op": "place_order", "client_order_id": "c", "instrument": "A", "side": "buy", "side": "buy",' \
             b' "quantity_heads": 1}'
    assert has_duplicate_keys_of(spaced, _place_decoder.decode(spaced))
    plain = b'{"op":"place_order","id":1,"client_order_id":"c:1","instrument":"A","side":"buy","quantity_heads":1}'
    assert not has_duplicate_keys_of(plain, _place_decoder.decode(plain))


def test_only_types_that_reencode_no_longer_take_the_fast_duplicate_check() -> None:
    for op in HUB_OPS:
        assert reencodes_no_longer(msgspec.inspect.type_info(op)), op
    for other in (float, datetime.datetime, list[float], int | float):
        assert not reencodes_no_longer(msgspec.inspect.type_info(other)), other


_TEXTS = st.one_of(st.text(max_size=40), st.text(alphabet="RC-LH_WSY09 !~:\"\\\t\u00e9\u200f", max_size=40),
                   st.sampled_from(["RC-LH-WSY", "c-1", "", " ", "a b", "x\n", "-", "_", "~!", "\u00e9"]))


_VALID_PLACE: dict[str, Any] = {"client_order_id": "c1", "instrument": "RC-LH-WSY", "side": "buy", "quantity_heads": 1,
                                "price_fen": 2800}


_QUICK = MessageDecoder(HUB_OPS)


def _outcome(decode: Any, raw: bytes) -> tuple[str, Any]:
    try:
        msg = decode(raw)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return msg.__struct_config__.tag, msgspec.structs.asdict(msg)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.sampled_from(["client_order_id", "instrument", "side", "quantity_heads", "price_fen",
                                        "lot_id", "order_id", "channels", "colour"]),
                       st.one_of(_TEXTS, _TEXTS, st.integers(-2, 3), st.none(), st.lists(_TEXTS, max_size=2)),
                       max_size=3),
       st.sampled_from(["place_order", "amend_order", "cancel_order", "subscribe", "ping", "auth", "nope"]),
       st.sampled_from(["", "}", ",", ',"id":1']))
def test_the_quick_message_decoder_answers_as_the_exact_one(fields: dict[str, Any], op: str, tail: str) -> None:
    """`MessageDecoder` (class patterns checked without a regex) gives every message the exact decoder's
    answer: the same op and fields, or the same error, whatever the strings hold (spaces, escapes, control
    and non-ASCII characters, nothing) and whether or not the JSON is whole."""
    decoder = _QUICK  # one for all examples: the values it learnt to match are checked again
    whole = {"place_order": _VALID_PLACE, "amend_order": {"order_id": 1}, "cancel_order": {"order_id": 1},
             "subscribe": {"channels": []}}.get(op, {})
    raw = msgspec.json.encode({"op": op, **whole, **fields})
    for text in (raw, raw[:-1] + tail.encode()):
        assert _outcome(decoder.decode, text) == _outcome(decoder.exact.decode, text)


def test_the_quick_message_decoder_checks_the_patterns() -> None:
    decoder = MessageDecoder(HUB_OPS)
    place = {"op": "place_order", **_VALID_PLACE}
    assert decoder.decode(msgspec.json.encode(place)).client_order_id == "c1"
    for field, bad in (("client_order_id", "c 1"), ("client_order_id", "c\u00e91"), ("instrument", "RC.LH"),
                       ("instrument", "RC\u0660")):
        raw = msgspec.json.encode(place).replace(f'"{place[field]}"'.encode(), f'"{bad}"'.encode())
        with pytest.raises(msgspec.ValidationError, match=f"regex .* at `\\$.{field}`"):
            decoder.decode(raw)


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


# -- database failures are 503, naming the route's reference ------------------------------------------

class _ThingBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    thing_ref: str


_failures = RouteTable()
_RAISED: dict[str, BaseException] = {}


@_failures.post("/v1/test/things", roles=PUBLIC, body=_ThingBody)
async def _make_thing(call: Call, body: _ThingBody) -> None:
    raise _RAISED[body.thing_ref]


@_failures.get("/v1/test/things/{lot_id}", roles=PUBLIC, params=LotPath)
async def _get_thing(call: Call, params: LotPath) -> None:
    raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")


_CONNECTION_FAILURES: list[BaseException] = [
    asyncpg.exceptions.InternalClientError("the backend went away"),
    asyncpg.exceptions.InterfaceError("cannot call Connection.fetch(): connection has been released"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.ConnectionFailureError("connection failure"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.TooManyConnectionsError("too many clients"),
    ConnectionResetError("reset by peer"),
    OSError("network unreachable"),
]


@pytest_asyncio.fixture(scope="module")
async def failing(_test_databases: Any) -> AsyncIterator[Exchange]:
    async with _test_databases.fresh() as dsn, running_exchange(dsn, extra_routes=[_failures]) as exchange:
        yield exchange


@pytest.mark.parametrize("exc", _CONNECTION_FAILURES, ids=lambda e: type(e).__name__)
async def test_connection_failures_are_503_naming_the_routes_reference(failing: Exchange,
                                                                        exc: BaseException) -> None:
    ref = f"ref-{type(exc).__name__}"
    _RAISED[ref] = exc
    reply = await failing.client().post("/v1/test/things", json={"thing_ref": ref}, signed=False)
    assert reply.status == 503, reply.body
    assert reply.headers["Retry-After"] == "1"
    error = reply.json()
    assert error["code"] == "unavailable"
    assert "reconcile by thing_ref" in error["message"]
    assert "client_order_id" not in error["message"]


async def test_a_read_that_lost_its_connection_is_503_safe_to_retry(failing: Exchange) -> None:
    reply = await failing.client().get("/v1/test/things/7", signed=False)
    assert reply.status == 503 and reply.headers["Retry-After"] == "1"
    assert reply.json()["message"] == "storage unavailable: nothing was changed, retry"


def test_every_route_names_the_reference_it_has() -> None:
    from gateway.app import ROUTE_TABLES

    by_route = {(r.method, r.path): r.reconcile_by for table in ROUTE_TABLES for r in table}
    assert by_route[("POST", "/v1/orders")].startswith("client_order_id")
    assert by_route[("POST", "/v1/lots")].startswith("client_lot_ref")
    assert by_route[("POST", "/v1/deposits")].startswith("deposit_ref")
    assert by_route[("DELETE", "/v1/orders/{order_id}")].startswith("order_id")
    assert by_route[("PATCH", "/v1/orders/{order_id}")].startswith("order_id")
    registration = by_route[("POST", "/v1/admin/participants")]
    assert registration.startswith(("registration_ref", "the participant registration")), registration
    assert by_route[("GET", "/v1/orders")] == ""
    for (method, path), text in by_route.items():
        if method != "GET":
            assert (text and "client_order_id" not in text) or path == "/v1/orders", (method, path, text)


async def test_terminated_backends_answer_503_or_success_never_500(fresh_database_url: FreshDatabase) -> None:
    """pg_terminate_backend on the exchange's database while registrations and orders run."""
    dsn = await fresh_database_url()
    async with running_exchange(dsn) as ex:
        await ex.list_instrument("T-KILL")
        buyer = await ex.register(Role.BUYER)
        statuses: collections.Counter[int] = collections.Counter()
        unknown: list[dict[str, Any]] = []
        done = asyncio.Event()

        def tally(reply: Any) -> None:
            statuses[reply.status] += 1
            if reply.status == 503:
                assert reply.headers.get("Retry-After"), reply.headers
                assert reply.json()["code"] in ("unavailable", "busy", "not_ready"), reply.body

        async def register() -> None:
            for i in itertools.count():
                if done.is_set():
                    return
                tally(await ex.operator.post("/v1/admin/participants",
                                             json={"role": "farmer", "name": f"farmer {i}"}))

        async def place() -> None:
            for i in itertools.count():
                if done.is_set():
                    return
                body = {"client_order_id": f"kill-{i}", "instrument": "T-KILL", "side": "buy",
                        "price_fen": 2700, "quantity_heads": 1}
                reply = await buyer.post("/v1/orders", json=body)
                tally(reply)
                if reply.status == 503:
                    unknown.append(body)

        async def terminate() -> None:
            admin = await asyncpg.connect(dsn)
            try:
                for _ in range(8):
                    await asyncio.sleep(0.15)
                    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            finally:
                await admin.close()
                await asyncio.sleep(0.2)
                done.set()

        await asyncio.gather(register(), register(), place(), place(), terminate())
        assert statuses[500] == 0, statuses
        # 429: the two order loops may outrun the buyer's token bucket (nothing placed, safe to retry)
        assert set(statuses) <= {200, 201, 429, 503}, statuses
        # Safe to retry: once the exchange is back, every order whose outcome was unknown is
        # answered by its client_order_id (its original answer, or placed now).
        for _ in range(200):
            if (await ex.client().get("/readyz", signed=False)).status == 200:
                break
            await asyncio.sleep(0.05)
        # A client told 429 waits and retries, as the Retry-After header says; the orders placed
        # under load may have used up the buyer's burst.
        for body in unknown:
            reply = await buyer.post("/v1/orders", json=body)
            for _ in range(50):
                if reply.status != 429:
                    break
                await asyncio.sleep(0.05)
                reply = await buyer.post("/v1/orders", json=body)
            assert reply.status == 201, reply.body


# -- draining after SIGTERM -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sigterm_answers_503_not_ready_until_the_listener_closes(fresh_database_url: FreshDatabase) -> None:
    dsn = await fresh_database_url()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port), "--log-level", "WARNING",
        cwd=REPO_ROOT, env={**os.environ, "DATABASE_URL": dsn, "HOGX_DRAIN_S": "1.5"})
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/readyz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the server did not become ready")
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)  # the signal is handled
            answers: list[tuple[int, str | None, str]] = []
            refused = False
            for _ in range(100):
                try:
                    async with session.get(f"{url}/v1/instruments") as response:
                        body = msgspec.json.decode(await response.read())
                        answers.append((response.status, response.headers.get("Retry-After"), body["code"]))
                except aiohttp.ClientConnectionError:
                    refused = True  # the listener closed: draining is over
                    break
                await asyncio.sleep(0.05)
            assert answers, "no request was answered after SIGTERM: the listener closed at once"
            assert set(answers) == {(503, "1", "not_ready")}, answers
            assert refused
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- aiohttp's own protocol errors ------------------------------------------------------------------------

async def _raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(300)) + b"\r\n",
     431, "headers_too_large"),
    (b"get /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"FROB@ /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
], ids=["long-url", "long-header", "300-headers", "lower-case-method", "bad-method", "star-target", "bad-version"])
async def test_protocol_errors_answer_json_and_log_no_traceback(
        ex: Exchange, caplog: pytest.LogCaptureFixture, request_bytes: bytes, status: int, code: str) -> None:
    caplog.set_level(logging.DEBUG)
    got, headers, body = await _raw(ex.url, request_bytes)
    assert (got, headers["content-type"].split(";")[0]) == (status, "application/json"), body
    assert msgspec.json.decode(body)["code"] == code
    ours = [r for r in caplog.records if r.name.startswith(("aiohttp", "gateway"))]
    assert all(r.levelno <= logging.INFO and r.exc_info is None for r in ours), \
        [(r.name, r.levelname, r.getMessage()) for r in ours]
    assert len([r for r in ours if r.levelno == logging.INFO]) <= 1


# -- WebSocket limits -------------------------------------------------------------------------------------

async def _metric(ex: Exchange, name: str) -> float:
    text = (await ex.client().get("/metrics", signed=False)).body.decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name} ")]
    return values[0] if values else 0.0


async def test_websocket_order_entry_takes_from_the_keys_http_bucket(fresh_database_url: FreshDatabase) -> None:
    dsn = await fresh_database_url()
    async with running_exchange(dsn, rate_limit_per_s=0.01, rate_limit_burst=4) as ex:
        await ex.list_instrument("T-RATE")
        buyer = await ex.register(Role.BUYER)
        statuses = [(await buyer.get("/v1/me")).status for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
        ws = await buyer.ws_connect()  # logging in is not an order: not charged
        try:
            for request_id in range(3):
                reply = await _ws_reply(ws, msgspec.json.encode({
                    "op": "cancel_order", "id": request_id, "order_id": 1}).decode())
                assert (reply["type"], reply["code"], reply["id"]) == ("error", "rate_limited", request_id)
        finally:
            await ws.close()


async def test_websockets_are_capped_per_key_and_per_address(fresh_database_url: FreshDatabase) -> None:
    dsn = await fresh_database_url()
    async with running_exchange(dsn, ws_max_per_key=2, ws_max_per_address=4) as ex:
        buyer = await ex.register(Role.BUYER)
        first, second = await buyer.ws_connect(), await buyer.ws_connect()
        third = await buyer.ws_connect(login=False)
        reply = await _ws_reply(third, msgspec.json.encode(buyer.ws_auth_message(request_id=3)).decode())
        assert (reply["type"], reply["code"]) == ("error", "too_many_sockets")
        closing = await third.receive(timeout=5)
        assert closing.type is WSMsgType.CLOSE and closing.data == 1008
        await third.close()
        hub = ex.app[HUB]
        await _until(lambda: hub.connection_count == 2)  # the server forgot the refused socket
        anonymous = [await ex.client().ws_connect(login=False) for _ in range(2)]  # 4 open: the cap
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await ex.client().ws_connect(login=False)
        assert refused.value.status == 429
        await first.close()
        await _until(lambda: hub.connection_count == 3)
        again = await buyer.ws_connect()  # a place for one more, and the key is below its cap
        for ws in (second, again, *anonymous):
            await ws.close()


async def _until(done: Any, timeout_s: float = 5.0) -> None:
    """Poll instead of sleeping a guessed time: a loaded machine may take longer."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.01)


# -- failed authentications -------------------------------------------------------------------------------

async def test_failed_authentications_are_limited_per_address(fresh_database_url: FreshDatabase) -> None:
    dsn = await fresh_database_url()
    async with running_exchange(dsn, auth_failure_burst=3, auth_failures_per_s=0.01) as ex:
        buyer = await ex.register(Role.BUYER)
        lookups = await _metric(ex, "hogx_auth_key_lookups_total")
        made_up = [ex.client(f"made_up_key_{i}", "s" * 32) for i in range(3)]
        for client in made_up:
            reply = await client.get("/v1/me")
            assert (reply.status, reply.json()["code"]) == (401, "unknown_key")
        assert await _metric(ex, "hogx_auth_key_lookups_total") == lookups + 3
        for client in (ex.client("made_up_key_9", "s" * 32), buyer):  # the address, whatever the key
            reply = await client.get("/v1/me")
            assert (reply.status, reply.json()["code"]) == (429, "too_many_auth_failures"), reply.body
            assert int(reply.headers["Retry-After"]) >= 1
        ws = await buyer.ws_connect(login=False)
        try:
            reply = await _ws_reply(ws, msgspec.json.encode(buyer.ws_auth_message()).decode())
            assert reply["code"] == "too_many_auth_failures"
        finally:
            await ws.close()
        assert await _metric(ex, "hogx_auth_key_lookups_total") == lookups + 3  # refused before a read


async def test_an_unknown_key_is_remembered_not_read_again(ex: Exchange) -> None:
    lookups = await _metric(ex, "hogx_auth_key_lookups_total")
    stranger = ex.client("made_up_key_once", "s" * 32)
    for _ in range(5):
        reply = await stranger.get("/v1/me")
        assert (reply.status, reply.json()["code"]) == (401, "unknown_key")
    assert await _metric(ex, "hogx_auth_key_lookups_total") == lookups + 1


async def test_a_trailing_newline_passes_no_pattern(ex: Exchange, market: str) -> None:
    """Python's `$` also matches before a final newline: every pattern is anchored with \\A...\\Z."""
    buyer, farmer = await ex.register(Role.BUYER), await ex.register(Role.FARMER)
    order = {"client_order_id": "nl-1", "instrument": market, "side": "buy", "price_fen": 2800,
             "quantity_heads": 1}
    for field, value in (("client_order_id", "nl-1\n"), ("instrument", f"{market}\n")):
        reply = await buyer.post("/v1/orders", json={**order, field: value})
        assert reply.status == 422, (field, reply.body)
    reply = await farmer.post("/v1/lots", json=_lot(market, client_lot_ref="lot-1\n"))
    assert reply.status == 422, reply.body
    reply = await ex.operator.post("/v1/deposits", json={"deposit_ref": "dep-1\n", "owner_id": buyer.participant_id,
                                                         "account": "trading_cash", "amount_fen": 100})
    assert reply.status == 422, reply.body
    reply = await ex.operator.post("/v1/admin/participants", json={"role": "farmer", "name": "Li",
                                                                   "bank_account": "6222 0001\n"})
    assert reply.status == 422, reply.body
    reply = await ex.client().get(f"/v1/markets/{market}%0A/book", signed=False)
    assert reply.status == 422, reply.body
    assert (await buyer.get("/v1/orders")).json()["orders"] == []
    document = (await ex.client().get("/v1/openapi.json", signed=False)).json()
    patterns = _patterns(document)
    assert patterns and not [p for p in patterns if "\\A" in p or "\\Z" in p]  # ECMA-262 in the document


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []
