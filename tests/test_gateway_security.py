"""Gateway security over real sockets, backed by a real sequencer on the test PostgreSQL.

- A revoked API key stops trading over the WebSocket: revoking it here closes its sockets with 4003,
  and a revocation written by another gateway (straight to the database) closes the socket at its first
  message once the key cache entry expired, before that message is handled.
- The replay memory is per key and filled only by requests the rate limiter admitted: one key's flood
  of signed requests gets 429s and never costs another key a request.
"""

from __future__ import annotations

import asyncio
import collections
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
from gateway.ws import CLOSE_AUTH_FAILED, CLOSE_KEY_REVOKED

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


# -- the replay memory is per key and behind the rate limiter -------------------------------------------

async def test_one_keys_flood_gets_429s_and_never_costs_another_key(_test_databases: Any) -> None:
    dsn = await _test_databases.create(migrated=True)
    try:
        # Each key's share: burst 5 + 0.1/s x two 5 s windows = 6 signatures, the least a key within its
        # rate limit needs (and slow enough that no token comes back during the test).
        async with running_exchange(dsn, replay_cache_size=6, rate_limit_per_s=0.1,
                                    rate_limit_burst=5) as small:
            attacker = await small.register(Role.BUYER, deposit_fen=0)
            victim = await small.register(Role.BUYER, deposit_fen=0)
            future_ms = wall_clock_ms() + 4_000  # the longest-lived signatures
            replies = await asyncio.gather(*(attacker.get(f"/v1/orders?limit={1 + i}", ts_ms=future_ms)
                                             for i in range(200)))
            assert collections.Counter(r.status for r in replies) == {200: 5, 429: 195}
            assert {r.json()["code"] for r in replies if r.status == 429} == {"rate_limited"}
            for _ in range(3):
                reply = await victim.get("/v1/orders")
                assert (reply.status, reply.json()) == (200, {"orders": [], "next_cursor": None})
            # The victim can still log in over the WebSocket too.
            ws = await victim.ws_connect()
            await ws.close()
    finally:
        await _test_databases.drop(dsn)


async def test_a_refused_request_takes_no_replay_memory_and_a_replay_no_token(_test_databases: Any) -> None:
    dsn = await _test_databases.create(migrated=True)
    try:
        # 2/s: no token comes back before the sleep below, however slow the machine.
        async with running_exchange(dsn, rate_limit_per_s=2.0, rate_limit_burst=2) as small:
            buyer = await small.register(Role.BUYER, deposit_fen=0)
            ts_ms = wall_clock_ms()
            assert (await buyer.get("/v1/me", ts_ms=ts_ms)).status == 200
            # Replayed copies are refused as replays without spending the key's tokens...
            for _ in range(5):
                reply = await buyer.get("/v1/me", ts_ms=ts_ms)
                assert (reply.status, reply.json()["code"]) == (401, "replayed_request")
            assert (await buyer.get("/v1/me", ts_ms=ts_ms + 1)).status == 200  # the burst's second token
            refused = await buyer.get("/v1/me", ts_ms=ts_ms + 2)
            assert (refused.status, refused.json()["code"]) == (429, "rate_limited")
            # ...and the request refused with 429 was not remembered: once a token is back, it passes.
            await asyncio.sleep(0.6)  # one token after 0.5 s
            assert (await buyer.get("/v1/me", ts_ms=ts_ms + 2)).status == 200
            replay = await buyer.get("/v1/me", ts_ms=ts_ms + 2)
            assert (replay.status, replay.json()["code"]) == (401, "replayed_request")
    finally:
        await _test_databases.drop(dsn)


async def test_a_full_share_refuses_only_its_own_key(_test_databases: Any) -> None:
    """WebSocket logins are not rate limited, so they can fill a key's share: that key alone gets 429."""
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, replay_cache_size=6, rate_limit_per_s=0.1,
                                    rate_limit_burst=5) as small:
            flooder = await small.register(Role.BUYER, deposit_fen=0)
            other = await small.register(Role.BUYER, deposit_fen=0)
            sockets = [await flooder.ws_connect() for _ in range(6)]
            ws = await small.session.ws_connect(small.url + "/v1/ws")
            await ws.send_str(msgspec.json.encode(flooder.ws_auth_message(request_id=1)).decode())
            reply = msgspec.json.decode((await _recv(ws)).data)
            assert (reply["type"], reply["code"]) == ("error", "rate_limited")
            assert (await _recv(ws)).data == CLOSE_AUTH_FAILED
            sockets.append(await other.ws_connect())
            assert (await other.get("/v1/me")).status == 200
            for socket in (*sockets, ws):
                await socket.close()
    finally:
        await _test_databases.drop(dsn)

