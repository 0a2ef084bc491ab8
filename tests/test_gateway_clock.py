"""The simulated exchange clock (gateway/clock.py) over HTTP: an auction closes, a dispute window ends and
the farmer is paid, all by moving the clock through the API; without `HOGX_CLOCK=simulated` the route
does not exist."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from gateway.auth import Role
from gateway.testing import LOT_CERT, Exchange, error_code, ok, running_exchange
from tests.test_gateway_settlement import _farmer

START_MS = 1_767_225_600_000  # 2026-01-01 08:00 in Chongqing
HOUR_MS = 3_600_000
_symbols = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def sim(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock="simulated", clock_start_ms=START_MS, clock_tick_s=0) as exchange:
            yield exchange
    finally:
        await _test_databases.drop(dsn)


async def test_an_auction_day_run_by_the_simulated_clock(sim: Exchange) -> None:
    op = sim.operator
    now = ok(await op.get("/v1/admin/clock"))["now_ms"]
    assert now >= START_MS
    symbol = f"T-SIM-{next(_symbols)}"
    await sim.list_instrument(symbol)  # the default 48 h dispute window
    farmer = await _farmer(sim, "赵六", "6217000011115555")
    buyer = await sim.register(Role.BUYER, "重庆肉联")
    lot_id = await sim.register_lot(farmer, symbol, heads=20)
    offered = ok(await farmer.post("/v1/auctions", json={
        "lot_id": lot_id, "start_price_fen": 2_600, "reserve_price_fen": 2_700,
        "increments": [{"from_price_fen": 0, "increment_fen": 10}], "closes_at_ms": now + 2 * HOUR_MS}), 201)
    assert (offered["opens_at_ms"], offered["time_left_ms"]) == (now, 2 * HOUR_MS)  # the clock stands still
    auction_id = offered["auction_id"]
    ok(await buyer.post(f"/v1/auctions/{auction_id}/bids", json={"max_price_fen": 2_750}), 201)

    moved = ok(await op.post("/v1/admin/clock", json={"advance_ms": HOUR_MS}))
    assert moved == {"now_ms": now + HOUR_MS, "simulated": True}
    assert ok(await buyer.get(f"/v1/auctions/{auction_id}"))["time_left_ms"] == HOUR_MS
    ok(await op.post("/v1/admin/clock", json={"to_ms": now + 2 * HOUR_MS}))
    sold = ok(await buyer.get(f"/v1/auctions/{auction_id}"))
    assert (sold["state"], sold["price_fen"], sold["time_left_ms"]) == ("sold", 2_700, 0)
    trade_id = sold["trade_id"]

    weighed = ok(await farmer.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 20, "total_weight_g": 2_200_000, "quarantine_cert": LOT_CERT,
        "quarantine_checked": True}))
    assert weighed["dispute_until_ms"] == now + 2 * HOUR_MS + 48 * HOUR_MS
    ok(await op.post("/v1/admin/clock", json={"advance_ms": 48 * HOUR_MS - 1}))
    assert ok(await farmer.get(f"/v1/trades/{trade_id}/settlement"))["state"] == "DELIVERED"
    ok(await op.post("/v1/admin/clock", json={"advance_ms": 1}))
    settled = ok(await farmer.get(f"/v1/trades/{trade_id}/settlement"))
    assert (settled["state"], settled["amount_fen"]) == ("SETTLED", 2_200 * 2_700)
    run = ok(await op.post("/v1/payout-runs", json={"run_ref": f"sim-run-{time.time_ns()}"}), 201)
    assert [p["amount_fen"] for p in run["payouts"] if p["payee_id"] == farmer.participant_id] == [
        settled["payable_fen"]]

    assert error_code(await op.post("/v1/admin/clock", json={"to_ms": now})) == (409, "clock_backwards")
    assert error_code(await op.post("/v1/admin/clock", json={})) == (422, "invalid")
    assert error_code(await op.post("/v1/admin/clock", json={"advance_ms": 1, "to_ms": now})) == (422, "invalid")
    assert error_code(await buyer.post("/v1/admin/clock", json={"advance_ms": 1})) == (403, "forbidden")


async def test_without_the_setting_the_clock_route_does_not_exist(_test_databases: Any) -> None:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn) as ex:
            assert error_code(await ex.operator.post("/v1/admin/clock", json={"advance_ms": 1})) == (404, "not_found")
            assert error_code(await ex.operator.get("/v1/admin/clock")) == (404, "not_found")
    finally:
        await _test_databases.drop(dsn)
