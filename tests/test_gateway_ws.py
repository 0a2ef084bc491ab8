"""The WebSocket API over real sockets, backed by a real sequencer on the test PostgreSQL.

The hub itself (login, channels, snapshots, ops, slow consumers, shutdown), then the exchange on it:
order entry with request ids, private execution reports, public trades, and the book channel, whose
snapshot plus chained deltas must rebuild exactly the server's book through a random order flow sent
over HTTP and the socket at once.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.auth import OPERATORS, Principal, Role
from gateway.client import SignedClient
from gateway.config import GatewayConfig
from gateway.errors import ApiError
from gateway.exchange_port import EXCHANGE
from gateway.state import HUB, METRICS
from gateway.testing import BUYER_DEPOSIT_FEN, hog_instrument, serve
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
        if role == Role.BUYER:  # settlement: a bid must be covered by cash
            await self.operator.post("/v1/deposits", json={
                "deposit_ref": f"ws-{issued['participant_id']}", "owner_id": issued["participant_id"],
                "account": "trading_cash", "amount_fen": BUYER_DEPOSIT_FEN})
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
        operator = SignedClient(url, key, secret, session=session)
        for symbol in ("RC-FH", "SLOW"):  # channels exist for listed instruments only
            reply = await operator.post("/v1/instruments", json=hog_instrument(symbol))
            assert reply.status in (201, 409), reply.body  # 409: listed by an earlier run of this module
        yield Gateway(app, hub, url, session, operator)


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
    assert (await _recv(ws))["type"] == "book_snapshot"
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


async def test_messages_queued_together_arrive_as_exact_frames_in_order(gw: Gateway) -> None:
    """The writer sends what was queued at once in one write: every frame-length encoding (7-bit,
    16-bit, 64-bit) at its edges must come out byte for byte, in order."""
    channel = "trades.RC-FH"
    ws = await gw.connect()
    await _send(ws, {"op": "subscribe", "channels": [channel]})
    await _recv(ws)
    lengths = [2, 125, 126, 127, 65_535, 65_536, 200_000]
    payloads = [b'"' + bytes([ord("a") + i]) * (n - 2) + b'"' for i, n in enumerate(lengths)]
    for payload in payloads:  # no await in between: one batch for the writer
        assert gw.hub.publish(channel, payload) == 1
    for payload in payloads:
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data.encode()) == (WSMsgType.TEXT, payload)
    await ws.close()


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


# -- the exchange over the socket: order entry, execution reports, book snapshot + deltas ---------------

class Socket:
    """A logged-in socket that matches replies to request ids and keeps everything else in `inbox`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inbox: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        await _send(self.ws, {"op": op, "id": request_id, **fields})
        while True:
            msg = await _recv(self.ws)
            if msg.get("type") in ("result", "error") and msg.get("id") == request_id:
                return msg
            self.inbox.append(msg)

    async def reports(self, count: int) -> list[dict[str, Any]]:
        """The next `count` execution reports of the private `orders` channel (the inbox first)."""
        found = [m for m in self.inbox if m.get("type") == "execution_report"]
        self.inbox = [m for m in self.inbox if m.get("type") != "execution_report"]
        while len(found) < count:
            msg = await _recv(self.ws)
            if msg.get("type") == "execution_report":
                found.append(msg)
        return [m["report"] for m in found]


async def _socket(client: SignedClient) -> Socket:
    return Socket(await client.ws_connect())


async def _market(gw: Gateway) -> str:
    symbol = f"WS-{next(_ws_symbols)}"
    reply = await gw.operator.post("/v1/instruments", json=hog_instrument(symbol))
    assert reply.status == 201, reply.body
    return symbol


_ws_symbols = itertools.count(1)


async def _lot(gw: Gateway, seller: SignedClient, symbol: str, heads: int) -> int:
    reply = await seller.post("/v1/lots", json={"instrument": symbol, "heads": heads, "avg_weight_g": 110_000,
                                                "origin": "荣昌", "quarantine_cert": "渝动检 1"})
    assert reply.status == 201, reply.body
    return int(reply.json()["lot_id"])


async def test_ws_order_entry_and_private_execution_reports(gw: Gateway) -> None:
    symbol = await _market(gw)
    farmer_client, buyer_client = await gw.register(Role.FARMER), await gw.register(Role.BUYER)
    lot_id = await _lot(gw, farmer_client, symbol, 50)
    farmer, buyer = await _socket(farmer_client), await _socket(buyer_client)
    for sock in (farmer, buyer):
        assert (await sock.request("subscribe", channels=["orders"]))["type"] == "result"

    sell = await farmer.request("place_order", client_order_id="ws-s1", instrument=symbol, side="sell",
                                price_fen=2810, quantity_heads=30, lot_id=lot_id)
    assert (sell["type"], sell["op"], sell["data"]["status"], sell["data"]["remaining_heads"]) == (
        "result", "place_order", "NEW", 30)
    buy = await buyer.request("place_order", client_order_id="ws-b1", instrument=symbol, side="buy",
                              price_fen=2820, quantity_heads=12)
    assert (buy["data"]["status"], buy["data"]["filled_heads"], buy["data"]["fills"][0]["price_fen"]) == (
        "FILLED", 12, 2810)
    # The maker hears of its fill on the private channel, and each side only of its own orders.
    farmer_reports = await farmer.reports(2)
    assert [(r["client_order_id"], r["status"], r["filled_heads"]) for r in farmer_reports] == [
        ("ws-s1", "NEW", 0), ("ws-s1", "PARTIALLY_FILLED", 12)]
    assert farmer_reports[1]["fills"][0]["liquidity"] == "maker"
    assert [(r["client_order_id"], r["status"]) for r in await buyer.reports(1)] == [("ws-b1", "FILLED")]

    order_id = sell["data"]["order_id"]
    amended = await farmer.request("amend_order", order_id=order_id, quantity_heads=20)
    assert (amended["data"]["quantity_heads"], amended["data"]["remaining_heads"]) == (20, 8)
    stolen = await buyer.request("cancel_order", order_id=order_id)
    assert (stolen["type"], stolen["code"]) == ("error", "unknown_order")
    cancelled = await farmer.request("cancel_order", order_id=order_id)
    assert (cancelled["data"]["status"], cancelled["data"]["filled_heads"]) == ("CANCELED", 12)

    off_tick = await buyer.request("place_order", client_order_id="ws-b2", instrument=symbol, side="buy",
                                   price_fen=2815, quantity_heads=1)
    assert (off_tick["type"], off_tick["op"], off_tick["code"]) == ("error", "place_order", "price_off_tick")
    [rejected] = await buyer.reports(1)
    assert (rejected["status"], rejected["reject_code"], rejected["order_id"]) == ("REJECTED", "price_off_tick", 0)
    wrong_side = await buyer.request("place_order", client_order_id="ws-b3", instrument=symbol, side="sell",
                                     price_fen=2810, quantity_heads=1, lot_id=lot_id)
    assert wrong_side["code"] == "forbidden"
    await _send(buyer.ws, {"op": "place_order", "id": 99, "client_order_id": "ws-b4", "instrument": symbol,
                           "side": "buy", "price_fen": 2810, "quantity_heads": 1, "colour": "pink"})
    unknown_field = await _recv(buyer.ws)  # refused while decoding, so before its id is known
    assert (unknown_field["type"], unknown_field["code"], unknown_field["id"]) == ("error", "invalid", None)
    anonymous = Socket(await gw.connect())
    refused = await anonymous.request("place_order", client_order_id="x", instrument=symbol, side="buy",
                                      price_fen=2810, quantity_heads=1)
    assert refused["code"] == "missing_credentials"
    for sock in (farmer, buyer, anonymous):
        await sock.ws.close()


class BookFollower:
    """Rebuilds an L2 book from `book.{instrument}` messages, checking that the deltas chain."""

    def __init__(self) -> None:
        self.seq = -1
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.deltas = 0

    def on(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "book_snapshot":
            self.seq = msg["seq"]
            self.bids, self.asks = dict(map(tuple, msg["bids"])), dict(map(tuple, msg["asks"]))
        elif msg["type"] == "book_delta":
            assert msg["first_seq"] == self.seq + 1, (msg["first_seq"], self.seq)
            assert msg["last_seq"] >= msg["first_seq"]
            for side, levels in ((self.bids, msg["bids"]), (self.asks, msg["asks"])):
                for price, heads in levels:
                    if heads:
                        side[price] = heads
                    else:
                        side.pop(price, None)
            self.seq = msg["last_seq"]
            self.deltas += 1

    def book(self) -> tuple[int, list[list[int]], list[list[int]]]:
        bids = sorted(([p, h] for p, h in self.bids.items()), reverse=True)
        asks = sorted([p, h] for p, h in self.asks.items())
        return self.seq, bids, asks


async def _follow(ws: aiohttp.ClientWebSocketResponse, follower: BookFollower) -> None:
    while True:
        msg = await ws.receive()
        if msg.type is not WSMsgType.TEXT:
            return
        body = msgspec.json.decode(msg.data)
        if body.get("type") in ("book_snapshot", "book_delta"):
            follower.on(body)


async def _subscribe_book(gw: Gateway, symbol: str) -> tuple[aiohttp.ClientWebSocketResponse, BookFollower,
                                                             asyncio.Task[None]]:
    ws = await gw.connect()
    await _send(ws, {"op": "subscribe", "id": 1, "channels": [f"book.{symbol}"]})
    assert (await _recv(ws))["type"] == "result"
    follower = BookFollower()
    follower.on(await _recv(ws))
    return ws, follower, asyncio.create_task(_follow(ws, follower))


async def _random_flow(gw: Gateway, symbol: str, rng: random.Random, operations: int) -> None:
    """Buyers and sellers place, amend and cancel at random, half over HTTP, half over the socket."""
    sellers = [await gw.register(Role.FARMER), await gw.register(Role.COOPERATIVE)]
    lots = {id(s): await _lot(gw, s, symbol, 100_000) for s in sellers}
    traders = [*sellers, *[await gw.register(Role.BUYER) for _ in range(3)]]
    sockets = {id(t): await _socket(t) for t in traders}
    open_orders: dict[int, list[int]] = {id(t): [] for t in traders}

    async def act(trader: SignedClient, seed: int) -> None:
        local = random.Random(seed)
        is_seller = trader in sellers
        for i in range(operations):
            kind = local.random()
            mine = open_orders[id(trader)]
            if kind < 0.2 and mine:
                order_id = local.choice(mine)
                op, body = "cancel_order", {"order_id": order_id}
            elif kind < 0.3 and mine:
                order_id = local.choice(mine)
                op, body = "amend_order", {"order_id": order_id, "price_fen": local.randrange(2700, 2910, 10)}
            else:
                op = "place_order"
                body = {"client_order_id": f"r{seed}-{i}", "instrument": symbol,
                        "side": "sell" if is_seller else "buy", "quantity_heads": local.randint(1, 20),
                        "price_fen": local.randrange(2770, 2910, 10) if is_seller else local.randrange(2690, 2830, 10)}
                if is_seller:
                    body["lot_id"] = lots[id(trader)]
                if local.random() < 0.1:
                    body.pop("price_fen")
                    body["type"] = "market"
            report = await _send_op(trader, sockets[id(trader)], op, body, over_ws=local.random() < 0.5)
            if report is not None:
                if report["status"] in ("NEW", "PARTIALLY_FILLED"):
                    if report["order_id"] not in mine:
                        mine.append(report["order_id"])
                elif report["order_id"] in mine:
                    mine.remove(report["order_id"])

    await asyncio.gather(*(act(t, rng.randrange(10**9)) for t in traders))
    for sock in sockets.values():
        await sock.ws.close()


async def _send_op(trader: SignedClient, sock: Socket, op: str, body: dict[str, Any],
                   *, over_ws: bool) -> dict[str, Any] | None:
    if over_ws:
        reply = await sock.request(op, **body)
        return reply["data"] if reply["type"] == "result" else None
    if op == "place_order":
        http = await trader.post("/v1/orders", json=body)
    elif op == "cancel_order":
        http = await trader.request("DELETE", f"/v1/orders/{body['order_id']}")
    else:
        http = await trader.request("PATCH", f"/v1/orders/{body['order_id']}", json={"price_fen": body["price_fen"]})
    assert http.status < 500, http.body
    return http.json() if http.status in (200, 201) else None


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_book_snapshot_plus_deltas_reproduce_the_server_book(gw: Gateway, seed: int) -> None:
    symbol = await _market(gw)
    rng = random.Random(seed)
    early_ws, early, early_task = await _subscribe_book(gw, symbol)
    await _random_flow(gw, symbol, rng, operations=25)
    late_ws, late, late_task = await _subscribe_book(gw, symbol)  # joins a book that has history
    await _random_flow(gw, symbol, rng, operations=25)
    client = SignedClient(gw.url, session=gw.session)
    for _ in range(500):  # a clock tick may be in flight (a busy machine makes that likely): wait for its commit
        server = (await client.get(f"/v1/markets/{symbol}/book?depth=1000")).json()
        settled = gw.app[EXCHANGE].sequencer.settled_depth(symbol, 1000)
        if settled is not None:
            break
        await asyncio.sleep(0.01)
    assert settled is not None  # nothing in flight: the core holds committed state only
    seq, core_bids, core_asks = settled
    assert seq == server["seq"] and [list(x) for x in core_bids] == server["bids"] and [
        list(x) for x in core_asks] == server["asks"]
    for _ in range(500):
        if early.seq == late.seq == server["seq"]:
            break
        await asyncio.sleep(0.01)
    expected = (server["seq"], server["bids"], server["asks"])
    assert early.book() == expected
    assert late.book() == expected
    assert early.deltas > 10 and server["bids"] and server["asks"]
    for ws, task in ((early_ws, early_task), (late_ws, late_task)):
        await ws.close()
        await task


async def test_trades_channel_carries_public_trades(gw: Gateway) -> None:
    symbol = await _market(gw)
    farmer, buyer = await gw.register(Role.FARMER), await gw.register(Role.BUYER)
    lot_id = await _lot(gw, farmer, symbol, 10)
    watcher = Socket(await gw.connect())
    assert (await watcher.request("subscribe", channels=[f"trades.{symbol}"]))["type"] == "result"
    await farmer.post("/v1/orders", json={"client_order_id": "t1", "instrument": symbol, "side": "sell",
                                          "price_fen": 2800, "quantity_heads": 4, "lot_id": lot_id})
    await buyer.post("/v1/orders", json={"client_order_id": "t2", "instrument": symbol, "side": "buy",
                                         "price_fen": 2800, "quantity_heads": 3})
    msg = await _recv(watcher.ws)
    assert (msg["type"], msg["channel"]) == ("trades", f"trades.{symbol}")
    [trade] = msg["trades"]
    assert {k: trade[k] for k in ("price_fen", "quantity_heads", "taker_side")} == {
        "price_fen": 2800, "quantity_heads": 3, "taker_side": "buy"}
    assert set(trade) == {"trade_id", "instrument", "price_fen", "quantity_heads", "taker_side", "time_ms", "seq"}
    nope = await watcher.request("subscribe", channels=["trades.NOPE", "book.NOPE"])
    assert nope["code"] == "unknown_instrument"
    await watcher.ws.close()


async def test_slow_book_consumer_is_dropped_while_a_follower_keeps_the_exact_book(gw: Gateway) -> None:
    """The slow client asks for snapshot after snapshot of a deep book and never reads: dropped with
    4008, while a follower of the same channel keeps a chained, exact book through the order flow."""
    symbol = await _market(gw)
    buyer = await gw.register(Role.BUYER)
    for i in range(22):  # 22 bid levels: a snapshot of a few hundred bytes
        await buyer.post("/v1/orders", json={"client_order_id": f"deep-{i}", "instrument": symbol, "side": "buy",
                                             "price_fen": 2700 + 10 * i, "quantity_heads": 1 + i})
    drops_before = gw.app[METRICS].ws_slow_consumer_drops._value.get()
    follower_ws, follower, follower_task = await _subscribe_book(gw, symbol)
    slow_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=_small_buffer_socket))
    slow = await slow_session.ws_connect(gw.url + "/v1/ws")
    channel = f"book.{symbol}"
    try:
        flow = asyncio.create_task(_random_flow(gw, symbol, random.Random(7), operations=15))
        for _ in range(20_000):
            if gw.app[METRICS].ws_slow_consumer_drops._value.get() > drops_before:
                break
            await _send(slow, {"op": "unsubscribe", "channels": [channel]})
            await _send(slow, {"op": "subscribe", "channels": [channel]})
            await asyncio.sleep(0)
        assert gw.app[METRICS].ws_slow_consumer_drops._value.get() == drops_before + 1
        await flow
        server = (await SignedClient(gw.url, session=gw.session).get(f"/v1/markets/{symbol}/book?depth=1000")).json()
        for _ in range(500):
            if follower.seq == server["seq"]:
                break
            await asyncio.sleep(0.01)
        assert follower.book() == (server["seq"], server["bids"], server["asks"])
        while (msg := await slow.receive(timeout=5)).type is WSMsgType.TEXT:
            pass
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, CLOSE_SLOW_CONSUMER)
    finally:
        await slow.close()
        await slow_session.close()
        await follower_ws.close()
        await follower_task
