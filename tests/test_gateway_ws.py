"""The WebSocket hub over real sockets: login, channels, snapshots, ops, slow consumers, shutdown."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest_asyncio
from aiohttp import WSMsgType, web
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.auth import OPERATORS, Principal, Role
from gateway.client import SignedClient
from gateway.config import GatewayConfig
from gateway.errors import ApiError
from gateway.state import HUB, METRICS
from gateway.testing import serve
from gateway.ws import CLOSE_SLOW_CONSUMER, Hub, WsConnection, WsRequest

QUEUE_SIZE = 16


class Echo(WsRequest, tag="echo", frozen=True):
    text: str


class Fail(WsRequest, tag="fail", frozen=True):
    pass


class Halt(WsRequest, tag="halt", frozen=True):
    pass


async def _echo(conn: WsConnection, msg: Echo) -> dict[str, Any]:
    await asyncio.sleep(0)  # a real op awaits the sequencer
    assert conn.principal is not None
    return {"text": msg.text, "participant_id": conn.principal.participant_id}


async def _fail(conn: WsConnection, msg: Fail) -> None:
    raise ApiError(409, "instrument_halted", "no trading now")


async def _halt(conn: WsConnection, msg: Halt) -> str:
    return "halted"


def _book_snapshot(channel: str, principal: Principal | None) -> bytes | None:
    if channel.endswith(".NOPE"):
        raise ApiError(404, "unknown_instrument", "no instrument NOPE")
    return msgspec.json.encode({"type": "snapshot", "channel": channel, "seq": 7})


@dataclass
class Gateway:
    app: web.Application
    hub: Hub
    url: str
    session: aiohttp.ClientSession
    operator: SignedClient

    async def register(self, role: Role) -> SignedClient:
        reply = await self.operator.post("/v1/admin/participants", json={"role": role, "name": "ws test"})
        issued = reply.json()
        return SignedClient(self.url, issued["api_key"], issued["api_secret"], session=self.session)

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        return await self.session.ws_connect(self.url + "/v1/ws")


@pytest_asyncio.fixture(scope="module")
async def gw(database_url: str) -> AsyncIterator[Gateway]:
    key, secret = f"op_{secrets.token_hex(8)}", secrets.token_hex(16)
    config = GatewayConfig(database_url=database_url, operator_key=key, operator_secret=secret,
                           db_pool_min=1, db_pool_max=4, ws_queue_size=QUEUE_SIZE, ws_max_channels=4)
    app = create_app(config)
    hub = app[HUB]
    hub.register_channel_kind("depth", snapshot=_book_snapshot)
    hub.register_op(Echo, _echo, roles=frozenset(Role))
    hub.register_op(Fail, _fail, roles=None)
    hub.register_op(Halt, _halt, roles=OPERATORS)
    async with serve(app) as url, aiohttp.ClientSession() as session:
        yield Gateway(app, hub, url, session, SignedClient(url, key, secret, session=session))


async def _send(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
    await ws.send_str(msgspec.json.encode(message).decode())


async def _recv(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.TEXT, msg
    return msgspec.json.decode(msg.data)


async def _until_subscribed(hub: Hub, channel: str, count: int) -> None:
    for _ in range(500):
        if hub.subscriber_count(channel) == count:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"{channel} never reached {count} subscribers")


async def test_login_then_private_channel_reaches_only_its_participant(gw: Gateway) -> None:
    alice, bob = await gw.register(Role.BUYER), await gw.register(Role.FARMER)
    ws_a, ws_b = await alice.ws_connect(), await bob.ws_connect()
    try:
        for ws in (ws_a, ws_b):
            await _send(ws, {"op": "subscribe", "id": 1, "channels": ["orders"]})
            assert await _recv(ws) == {"type": "result", "op": "subscribe", "id": 1, "data": {"channels": ["orders"]}}
        alice_id = (await alice.get("/v1/me")).json()["participant_id"]
        assert gw.hub.publish_private("orders", alice_id, b'{"report":1}') == 1
        assert await _recv(ws_a) == {"report": 1}
        await _send(ws_b, {"op": "ping", "id": "p"})
        assert await _recv(ws_b) == {"type": "result", "op": "ping", "id": "p", "data": None}  # nothing before it
    finally:
        await ws_a.close()
        await ws_b.close()


async def test_login_reply_names_the_participant(gw: Gateway) -> None:
    farmer = await gw.register(Role.FARMER)
    ws = await gw.connect()
    await _send(ws, farmer.ws_auth_message(request_id=9))
    reply = await _recv(ws)
    me = (await farmer.get("/v1/me")).json()
    assert reply == {"type": "result", "op": "auth", "id": 9,
                     "data": {"participant_id": me["participant_id"], "role": "farmer"}}
    await ws.close()


async def test_failed_login_is_answered_then_closed_4001(gw: Gateway) -> None:
    forger = SignedClient(gw.url, gw.operator.api_key, secrets.token_hex(16), session=gw.session)
    ws = await gw.connect()
    await _send(ws, forger.ws_auth_message())
    reply = await _recv(ws)
    assert (reply["type"], reply["code"]) == ("error", "bad_signature")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4001, "authentication failed")


async def test_login_signature_window_and_replay(gw: Gateway) -> None:
    stale = gw.operator.ws_auth_message(ts_ms=time.time_ns() // 1_000_000 - 10_000)
    ws = await gw.connect()
    await _send(ws, stale)
    assert (await _recv(ws))["code"] == "timestamp_out_of_window"
    await ws.close()
    login = gw.operator.ws_auth_message()
    first, second = await gw.connect(), await gw.connect()
    await _send(first, login)
    assert (await _recv(first))["type"] == "result"
    await _send(second, login)
    assert (await _recv(second))["code"] == "replayed_request"
    await first.close()
    await second.close()


async def test_auth_only_as_first_message(gw: Gateway) -> None:
    ws = await gw.connect()
    await _send(ws, {"op": "ping"})
    await _recv(ws)
    await _send(ws, gw.operator.ws_auth_message(request_id=2))
    assert await _recv(ws) == {"type": "error", "code": "auth_must_be_first",
                               "message": "auth is accepted only as the first message", "op": "auth", "id": 2}
    await _send(ws, {"op": "subscribe", "channels": ["orders"]})
    assert (await _recv(ws))["code"] == "missing_credentials"  # still anonymous
    await ws.close()


async def test_bad_messages_get_error_replies_and_the_socket_stays_open(gw: Gateway) -> None:
    ws = await gw.connect()
    await ws.send_str("{not json")
    assert (await _recv(ws))["code"] == "bad_json"
    await _send(ws, {"op": "subscribe", "channels": ["book.A"], "extra": 1})
    assert (await _recv(ws))["code"] == "invalid"
    await _send(ws, {"op": "teleport"})
    assert (await _recv(ws))["code"] == "invalid"
    for channel in ("nope.X", "book", "book.", "orders.5", "book." + "x" * 41):
        await _send(ws, {"op": "subscribe", "channels": [channel]})
        assert (await _recv(ws))["code"] == "unknown_channel", channel
    await _send(ws, {"op": "subscribe", "channels": ["book.A", "book.B", "book.C", "book.D", "book.E"]})
    assert (await _recv(ws))["code"] == "invalid"  # more than ws_max_channels
    assert gw.hub.subscriber_count("book.A") == 0  # all or nothing
    await _send(ws, {"op": "ping", "id": 3})
    assert (await _recv(ws))["id"] == 3
    await ws.close()


async def test_public_channel_subscribe_publish_unsubscribe(gw: Gateway) -> None:
    ws = await gw.connect()
    await _send(ws, {"op": "subscribe", "channels": ["trades.RC-FH", "book.RC-FH"]})
    await _recv(ws)
    assert gw.hub.publish("trades.RC-FH", b'{"t":1}') == 1
    assert gw.hub.publish("book.RC-FH", b'{"b":1}') == 1
    assert gw.hub.publish("trades.OTHER", b'{"t":2}') == 0
    assert [await _recv(ws), await _recv(ws)] == [{"t": 1}, {"b": 1}]
    await _send(ws, {"op": "unsubscribe", "id": 4, "channels": ["trades.RC-FH"]})
    assert (await _recv(ws))["op"] == "unsubscribe"
    assert gw.hub.publish("trades.RC-FH", b'{"t":3}') == 0
    await ws.close()
    await _until_subscribed(gw.hub, "book.RC-FH", 0)


async def test_snapshot_comes_before_any_delta_and_can_refuse(gw: Gateway) -> None:
    ws = await gw.connect()
    await _send(ws, {"op": "subscribe", "channels": ["depth.RC-FH"]})
    assert (await _recv(ws))["type"] == "result"
    assert await _recv(ws) == {"type": "snapshot", "channel": "depth.RC-FH", "seq": 7}
    gw.hub.publish("depth.RC-FH", b'{"type":"delta","first":8,"last":8}')
    assert (await _recv(ws))["first"] == 8
    await _send(ws, {"op": "subscribe", "channels": ["depth.NOPE"]})
    reply = await _recv(ws)
    assert reply.get("code") == "unknown_instrument", reply
    await ws.close()


async def test_registered_ops_reply_with_their_request_id(gw: Gateway) -> None:
    buyer = await gw.register(Role.BUYER)
    ws = await buyer.ws_connect()
    for i in range(5):  # pipelined: sent before any reply is read
        await _send(ws, {"op": "echo", "id": i, "text": f"hi {i}"})
    replies = sorted([await _recv(ws) for _ in range(5)], key=lambda r: r["id"])
    participant_id = (await buyer.get("/v1/me")).json()["participant_id"]
    assert replies == [{"type": "result", "op": "echo", "id": i,
                        "data": {"text": f"hi {i}", "participant_id": participant_id}} for i in range(5)]
    await _send(ws, {"op": "halt", "id": 6})
    assert (await _recv(ws))["code"] == "forbidden"
    await _send(ws, {"op": "fail", "id": 7})
    assert await _recv(ws) == {"type": "error", "code": "instrument_halted", "message": "no trading now",
                               "op": "fail", "id": 7}
    await ws.close()
    anonymous = await gw.connect()
    await _send(anonymous, {"op": "echo", "text": "x"})
    assert (await _recv(anonymous))["code"] == "missing_credentials"
    await anonymous.close()


async def test_slow_consumer_is_dropped_while_a_fast_one_gets_everything(gw: Gateway) -> None:
    channel = "trades.SLOW"
    drops_before = gw.app[METRICS].ws_slow_consumer_drops._value.get()
    # The slow client never reads: its receive buffer fills, then the server's socket buffer, then its
    # queue. Small receive buffers make that happen after a few hundred kilobytes.
    slow_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=_small_buffer_socket))
    slow = await slow_session.ws_connect(gw.url + "/v1/ws")
    fast = await gw.connect()
    for ws in (slow, fast):
        await _send(ws, {"op": "subscribe", "channels": [channel]})
        await _recv(ws)
    received: list[int] = []
    caught_up = asyncio.Event()
    target = [0]

    async def read_fast() -> None:
        while True:
            msg = await fast.receive()
            if msg.type is not WSMsgType.TEXT:
                return
            received.append(msgspec.json.decode(msg.data)["n"])
            if len(received) >= target[0]:
                caught_up.set()

    reader = asyncio.create_task(read_fast())
    sent = 0

    async def publish_batch(padding: str) -> None:
        # At most half a queue at a time, then wait for the fast reader: it never falls a queue behind.
        nonlocal sent
        for _ in range(QUEUE_SIZE // 2):
            gw.hub.publish(channel, msgspec.json.encode({"n": sent, "pad": padding}))
            sent += 1
        target[0] = sent
        caught_up.clear()
        if len(received) < sent:
            await asyncio.wait_for(caught_up.wait(), 5)

    try:
        while gw.hub.subscriber_count(channel) == 2 and sent < 20_000:
            await publish_batch("x" * 16_000)
        assert gw.hub.subscriber_count(channel) == 1, "the slow consumer was never dropped"
        dropped_after = sent
        for _ in range(3):  # the fast one keeps receiving after the drop
            await publish_batch("")
        assert received == list(range(sent))
        # The slow client, once it reads, finds the close frame with the slow-consumer code.
        while (msg := await slow.receive(timeout=5)).type is WSMsgType.TEXT:
            pass
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, CLOSE_SLOW_CONSUMER, "slow consumer")
        assert dropped_after > QUEUE_SIZE  # it was dropped for falling behind, not at once
        assert gw.app[METRICS].ws_slow_consumer_drops._value.get() == drops_before + 1
    finally:
        reader.cancel()
        await fast.close()
        await slow.close()
        await slow_session.close()


def _small_buffer_socket(addr_info: Any) -> Any:
    import socket

    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_connections_gauge_and_shutdown_closes_with_going_away(database_url: str) -> None:
    config = GatewayConfig(database_url=database_url, db_pool_min=1, db_pool_max=2)
    app = create_app(config)
    async with aiohttp.ClientSession() as session:
        async with serve(app) as url:
            sockets = [await session.ws_connect(url + "/v1/ws") for _ in range(3)]
            await _send(sockets[0], {"op": "ping"})
            await _recv(sockets[0])
            text = (await (await session.get(url + "/metrics")).read()).decode()
            gauge = next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                         if s.name == "hogx_ws_connections")
            assert gauge == 3
        for ws in sockets:  # the server stopped: every socket got 1001 GOING_AWAY
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, aiohttp.WSCloseCode.GOING_AWAY,
                                                       "server shutdown")
            await ws.close()
    assert app[METRICS].ws_connections._value.get() == 0
