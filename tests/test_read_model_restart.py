"""The gateway's read model across restarts (gateway/readmodel_snapshots.py, gateway.exchange_port.Shard).

A market run over simulated days through the gateway: every read route answers the same after a restart
from the read model's snapshot, after a restart that folds a journal tail after an older snapshot, and
after the old journal days were archived (a start that folded the journal from seq 1 could not: the rows
are gone). After a restart the model holds the open orders and only the closed ones inside the retention
window.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exchange import store
from gateway import exchange_port
from gateway.auth import Role
from gateway.readmodel import OPEN_STATUSES, ReadModel
from gateway.testing import Exchange, Trader, ok, running_exchange
from tests.conftest import FreshDatabase
from tests.test_gateway_settlement import _farmer
from tests.test_journal_partitions import _project_everything

START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z: days in the past, so the wall clock's are not archived
DAY_MS = 86_400_000
SYMBOL = "LH-RESTART"


@contextlib.asynccontextmanager
async def _gateway(dsn: str) -> AsyncIterator[Exchange]:
    async with running_exchange(dsn, clock="simulated", clock_start_ms=START_MS, clock_tick_s=0,
                                snapshot_every=7) as exchange:
        yield exchange


def _again(exchange: Exchange, traders: list[Trader]) -> list[Trader]:
    """The same participants as clients of a restarted gateway."""
    out = []
    for old in traders:
        trader = Trader(exchange.url, old.api_key, old.api_secret, session=exchange.session)
        trader.participant_id, trader.role = old.participant_id, old.role
        out.append(trader)
    return out


def _shard(exchange: Exchange) -> exchange_port.Shard:
    return exchange.app[exchange_port.EXCHANGE].shard


async def _trade_a_day(exchange: Exchange, farmer: Trader, buyer: Trader, lot_id: int, day: int) -> None:
    """A fill, a partly filled resting sell, a cancelled buy and a resting buy: open and closed orders."""
    price = 2_800 + 10 * day
    ok(await farmer.post("/v1/orders", json={"client_order_id": f"s{day}", "instrument": SYMBOL, "side": "sell",
                                             "quantity_heads": 3, "price_fen": price, "lot_id": lot_id}), 201)
    ok(await buyer.post("/v1/orders", json={"client_order_id": f"b{day}", "instrument": SYMBOL, "side": "buy",
                                            "quantity_heads": 2, "price_fen": price}), 201)
    cancel = ok(await buyer.post("/v1/orders", json={"client_order_id": f"c{day}", "instrument": SYMBOL,
                                                     "side": "buy", "quantity_heads": 1, "price_fen": 2_690}), 201)
    ok(await buyer.request("DELETE", f"/v1/orders/{cancel['order_id']}"))
    ok(await buyer.post("/v1/orders", json={"client_order_id": f"r{day}", "instrument": SYMBOL, "side": "buy",
                                            "quantity_heads": 1, "price_fen": 2_700 + 10 * day}), 201)


async def _auction(exchange: Exchange, farmer: Trader, buyer: Trader, day: int) -> None:
    """A lot auction each day: closing in a minute on even days, in a day on odd ones (only day 3's is still open)."""
    lot_id = await exchange.register_lot(farmer, SYMBOL, heads=5)
    now = ok(await exchange.operator.get("/v1/admin/clock"))["now_ms"]
    offered = ok(await farmer.post("/v1/auctions", json={
        "lot_id": lot_id, "start_price_fen": 2_600, "reserve_price_fen": 2_700,
        "increments": [{"from_price_fen": 0, "increment_fen": 10}], "closes_at_ms": now + (60_000 if day % 2 == 0
                                                                                           else DAY_MS + 60_000)}),
        201)
    ok(await buyer.post(f"/v1/auctions/{offered['auction_id']}/bids", json={"max_price_fen": 2_750 + 10 * day}), 201)
    if day % 2 == 0:
        ok(await exchange.operator.post("/v1/admin/clock", json={"advance_ms": 60_000}))


async def _answers(exchange: Exchange, traders: list[Trader]) -> dict[str, Any]:
    """What every read route answers (the clock's own route aside)."""
    routes = ["/v1/instruments", f"/v1/instruments/{SYMBOL}", f"/v1/markets/{SYMBOL}/book",
              f"/v1/markets/{SYMBOL}/trades", "/v1/auctions", "/v1/auctions?status=sold", "/v1/index?date=2026-01-02",
              "/v1/index/history?from=2026-01-01&to=2026-01-05"]
    routes += [f"/v1/markets/{SYMBOL}/candles?interval={i}" for i in ("1m", "1h", "1d")]
    out: dict[str, Any] = {}
    for route in routes:
        out[route] = ok(await exchange.operator.get(route))
    for trader in traders:
        mine = ["/v1/orders", "/v1/orders?status=CANCELED", "/v1/orders?limit=2", "/v1/fills", "/v1/fills?limit=1"]
        for route in mine + (["/v1/lots"] if trader.role == Role.FARMER else []):
            out[f"{trader.participant_id} {route}"] = ok(await trader.get(route))
        for order in out[f"{trader.participant_id} /v1/orders"]["orders"]:
            route = f"/v1/orders/{order['order_id']}"
            out[f"{trader.participant_id} {route}"] = ok(await trader.get(route))
        for auction in out["/v1/auctions"]:  # a participant's view shows their own bids
            route = f"/v1/auctions/{auction['auction_id']}"
            out[f"{trader.participant_id} {route}"] = ok(await trader.get(route))
        for lot in out.get(f"{trader.participant_id} /v1/lots", []):
            route = f"/v1/lots/{lot['lot_id']}"
            out[f"{trader.participant_id} {route}"] = ok(await trader.get(route))
    return out


def _held_beyond_open(model: ReadModel, retention_ms: int, now_ms: int) -> list[int]:
    """Closed orders the model holds that closed before the retention window."""
    return [r.order_id for r in model.orders.values()
            if r.status not in OPEN_STATUSES and r.updated_ns // 1_000_000 < now_ms - retention_ms]


async def test_every_read_route_answers_the_same_after_restarts_and_after_archival(
    fresh_database_url: FreshDatabase, tmp_path: Path
) -> None:
    dsn = await fresh_database_url()
    async with _gateway(dsn) as exchange:
        await exchange.list_instrument(SYMBOL)
        farmer = await _farmer(exchange, "钱七", "6217000011117777")
        buyer = await exchange.register(Role.BUYER, "重庆肉联")
        lot_id = await exchange.register_lot(farmer, SYMBOL, heads=40)
        for day in range(4):  # each day its own journal partition
            ok(await exchange.operator.post("/v1/admin/clock", json={"to_ms": START_MS + day * DAY_MS + 3_600_000}))
            await _trade_a_day(exchange, farmer, buyer, lot_id, day)
            await _auction(exchange, farmer, buyer, day)
        # Closed orders leave memory at a clock tick once the projection holds them (the projector may
        # rest between rounds): the last tick comes after it caught up, so what it forgets is certain.
        projector = _shard(exchange).projector
        assert projector is not None
        await projector.wait_for(_shard(exchange).sequencer.committed_seq)
        ok(await exchange.operator.post("/v1/admin/clock", json={"advance_ms": 60_000}))
        traders = [farmer, buyer]
        before = await _answers(exchange, traders)
        shard = _shard(exchange)
        last_seq = shard.read_model.applied_seq
        open_ids = {r.order_id for r in shard.read_model.orders.values() if r.status in OPEN_STATUSES}
    assert before[f"{buyer.participant_id} /v1/fills"]["fills"]  # something to compare
    assert len(before[f"{farmer.participant_id} /v1/orders"]["orders"]) == 4
    assert len(before[f"{farmer.participant_id} /v1/lots"]) == 5
    assert [a["state"] for a in before["/v1/auctions"]] == ["open", "sold", "sold", "sold"]

    # 1. a crash after an older snapshot: the start folds the journal tail after it, to the same answers
    conn = await asyncpg.connect(dsn)
    try:
        newest = await conn.fetchval("SELECT max(seq) FROM read_model_snapshots")
        assert newest == last_seq  # the clean stop's
        await conn.execute("DELETE FROM read_model_snapshots WHERE seq = $1", newest)
        older = await conn.fetchval("SELECT max(seq) FROM read_model_snapshots")
        assert 0 < older < last_seq
    finally:
        await conn.close()
    async with _gateway(dsn) as exchange:
        shard = _shard(exchange)
        assert shard.rebuilt_from_seq == older
        assert await _answers(exchange, _again(exchange, traders)) == before
        last_seq = shard.read_model.applied_seq  # its stop saves a snapshot at this seq

    # 2. a restart from the snapshot of the clean stop: nothing to fold, the same answers
    async with _gateway(dsn) as exchange:
        shard = _shard(exchange)
        assert shard.rebuilt_from_seq == last_seq  # (a start commits the operator's registration after it)
        assert await _answers(exchange, _again(exchange, traders)) == before
        model = shard.read_model
        # memory holds what is open, plus closed orders inside the retention window (24 h)
        assert {r.order_id for r in model.orders.values() if r.status in OPEN_STATUSES} == open_ids
        now_ms = ok(await exchange.operator.get("/v1/admin/clock"))["now_ms"]
        assert _held_beyond_open(model, DAY_MS, now_ms) == []
        assert len(model.orders) < len(open_ids) + 4 * 2  # days 0..2's closed orders are forgotten
        # lots and auctions: day 0's auction ended and its lot sold out more than 24 h ago, so they are
        # in PostgreSQL only; the others are held (day 1's auction ended 24 h ago to the minute)
        assert sorted(model.auctions) == [a["auction_id"] for a in before["/v1/auctions"]][::-1][1:]
        assert (model.retired_auctions, model.retired_lots) == ({}, {})
        day0_auction = before["/v1/auctions"][-1]
        assert day0_auction["lot_id"] not in model.lots
        assert model.lots.keys() == {lot["lot_id"] for lot in before[f"{farmer.participant_id} /v1/lots"]} - {
            day0_auction["lot_id"]}
        last_seq = model.applied_seq

    # 3. days 0..2 archived (the core's snapshot and the read model's are on day 3): the start works
    await _project_everything(dsn, last_seq)
    conn = await asyncpg.connect(dsn)
    try:
        # a read model snapshot behind the days to archive holds them back: the start would need them
        saved = await conn.fetchval("SELECT seq FROM projections WHERE name = 'gateway_read_model'")
        assert saved == last_seq == await conn.fetchval("SELECT max(seq) FROM journal")
        await conn.execute("UPDATE projections SET seq = 5 WHERE name = 'gateway_read_model'")
        with pytest.raises(store.ArchiveRefused, match="gateway_read_model at seq 5"):
            await store.archive_journal(conn, START_MS * 1_000_000 + 3 * store.DAY_NS, tmp_path)
        await conn.execute("UPDATE projections SET seq = $1 WHERE name = 'gateway_read_model'", saved)
        archived = await store.archive_journal(conn, START_MS * 1_000_000 + 3 * store.DAY_NS, tmp_path)
        assert [a.name for a in archived] == ["journal_20260101", "journal_20260102", "journal_20260103"]
        assert await conn.fetchval("SELECT min(seq) FROM journal") > 1
    finally:
        await conn.close()
    async with _gateway(dsn) as exchange:
        assert await _answers(exchange, _again(exchange, traders)) == before
