"""Gateway security over real sockets, backed by a real sequencer on the test PostgreSQL.

- A revoked API key stops trading over the WebSocket: revoking it here closes its sockets with 4003,
  and a revocation written by another gateway (straight to the database) closes the socket at its first
  message once the key cache entry expired, before that message is handled.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from aiohttp import WSMsgType

from gateway import store
from gateway.auth import Authenticator, KeyRecord, Role, wall_clock_ms
from gateway.errors import ApiError
from gateway.metrics import Metrics
from gateway.signing import sign
from gateway.state import POOL
from gateway.testing import Exchange, Trader, running_exchange
from gateway.ws import CLOSE_KEY_REVOKED

KEY_TTL_S = 0.3  # short, so a revocation by "another gateway" is seen quickly
_symbols = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, key_cache_ttl_s=KEY_TTL_S) as exchange:
            yield exchange
    finally:
        await _test_databases.drop(dsn)


@pytest_asyncio.fixture
async def market(ex: Exchange) -> str:
    symbol = f"T-SEC-{next(_symbols)}"
    await ex.list_instrument(symbol)
    return symbol


def _place(symbol: str, client_order_id: str, request_id: int) -> str:
    return msgspec.json.encode({"op": "place_order", "id": request_id, "client_order_id": client_order_id,
                                "instrument": symbol, "side": "buy", "price_fen": 2800,
                                "quantity_heads": 1}).decode()


async def _recv(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await ws.receive(timeout=5)


async def _second_key(ex: Exchange, trader: Trader) -> Trader:
    """Another key of the same participant, to look at its orders after the first key is revoked."""
    reply = await ex.operator.post(f"/v1/admin/participants/{trader.participant_id}/keys")
    assert reply.status == 201, reply.body
    issued = reply.json()
    other = Trader(ex.url, issued["api_key"], issued["api_secret"], session=ex.session)
    other.participant_id, other.role = trader.participant_id, trader.role
    return other


async def _client_order_ids(trader: Trader) -> list[str]:
    reply = await trader.get("/v1/orders")
    assert reply.status == 200, reply.body
    return [order["client_order_id"] for order in reply.json()["orders"]]


# -- a revoked key's WebSocket -------------------------------------------------------------------------

async def test_revoking_a_key_closes_its_websockets_with_4003(ex: Exchange, market: str) -> None:
    buyer = await ex.register(Role.BUYER)
    ws, ws2 = await buyer.ws_connect(), await buyer.ws_connect()
    bystander = await (await ex.register(Role.BUYER)).ws_connect()
    try:
        await ws.send_str(_place(market, "before", 1))
        reply = msgspec.json.decode((await _recv(ws)).data)
        assert (reply["type"], reply["data"]["status"]) == ("result", "NEW")

        revoked = await ex.operator.post(f"/v1/admin/keys/{buyer.api_key}/revoke")
        assert (revoked.status, revoked.json()) == (200, {"api_key": buyer.api_key, "revoked": True})
        for socket in (ws, ws2):
            msg = await _recv(socket)
            assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, CLOSE_KEY_REVOKED, "key revoked")

        # The bystander's socket (another key) is untouched.
        await bystander.send_str(msgspec.json.encode({"op": "ping", "id": "p"}).decode())
        assert msgspec.json.decode((await _recv(bystander)).data) == {
            "type": "result", "op": "ping", "id": "p", "data": None}
        # A new login with the revoked key is refused; so is an order over HTTP.
        with pytest.raises(PermissionError, match="revoked_key"):
            await buyer.ws_connect()
        order = await buyer.post("/v1/orders", json={"client_order_id": "http", "instrument": market,
                                                     "side": "buy", "price_fen": 2800, "quantity_heads": 1})
        assert (order.status, order.json()["code"]) == (401, "revoked_key")
        assert await _client_order_ids(await _second_key(ex, buyer)) == ["before"]
    finally:
        for socket in (ws, ws2, bystander):
            await socket.close()


async def test_revocation_by_another_gateway_refuses_the_next_ws_order(ex: Exchange, market: str) -> None:
    buyer, keeper = await ex.register(Role.BUYER), await ex.register(Role.BUYER)
    ws, kept = await buyer.ws_connect(), await keeper.ws_connect()
    try:
        # Another gateway revokes: the database changes, this gateway's cache and hub know nothing.
        assert await store.revoke_key(ex.app[POOL], buyer.api_key)
        await asyncio.sleep(KEY_TTL_S * 1.5)  # the cached key entry is stale now
        await ws.send_str(_place(market, "after-revoke", 1))
        msg = await _recv(ws)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, CLOSE_KEY_REVOKED, "key revoked")
        assert await _client_order_ids(await _second_key(ex, buyer)) == []

        # A key that is still good passes the same re-check and trades.
        await kept.send_str(_place(market, "kept", 2))
        reply = msgspec.json.decode((await _recv(kept)).data)
        assert (reply["type"], reply["id"], reply["data"]["client_order_id"]) == ("result", 2, "kept")
    finally:
        await ws.close()
        await kept.close()


async def test_a_key_revoked_while_its_load_is_in_flight_stays_revoked() -> None:
    """A key-cache load that read the row before this gateway revoked the key must not revive it."""
    secret = secrets.token_hex(16)
    record = KeyRecord("hk_race", 7, Role.BUYER, secret, revoked=False)  # the row as read before the UPDATE
    release = asyncio.Event()

    async def slow_load(api_key: str) -> KeyRecord | None:
        await release.wait()
        return record

    auth = Authenticator(slow_load, Metrics(), window_ms=5_000, replay_capacity=100, key_ttl_s=10.0)
    ts_ms = wall_clock_ms()
    verifying = asyncio.ensure_future(auth.verify("hk_race", str(ts_ms), sign(secret, ts_ms, "GET", "/v1/me"),
                                                  "GET", "/v1/me"))
    await asyncio.sleep(0)  # the load is in flight
    auth.revoke("hk_race")
    release.set()
    with pytest.raises(ApiError) as refused:
        await verifying
    assert (refused.value.status, refused.value.code) == (401, "revoked_key")
