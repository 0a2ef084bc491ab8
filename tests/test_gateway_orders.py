"""Orders, lots and operator routes over real HTTP, against a real sequencer on a real PostgreSQL.

Each test lists its own instrument, so the tests of this module share one exchange without seeing
each other's books. Figures are exact: a finishing-hog instrument with reference 2800 fen/kg, tick
10 fen, band ±4 % (2690..2910), order sizes 1..500 heads.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from exchange import readmodel
from gateway.auth import Role
from gateway.exchange_port import EXCHANGE
from gateway.state import POOL
from gateway.testing import Exchange, Trader, error_code, running_exchange

_symbols = itertools.count(1)
_cids = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    try:
        # with the opt-in PostgreSQL projector, so the tests also hold its tables to the gateway's answers
        async with running_exchange(dsn, project_read_models=True) as exchange:
            yield exchange
    finally:
        await _test_databases.drop(dsn)


@pytest_asyncio.fixture
async def market(ex: Exchange) -> str:
    symbol = f"T-ORD-{next(_symbols)}"
    await ex.list_instrument(symbol)
    return symbol


def _order(instrument: str, side: str, price_fen: int | None, heads: int, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"client_order_id": f"c-{next(_cids)}", "instrument": instrument, "side": side,
                            "quantity_heads": heads, **extra}
    if price_fen is not None:
        body["price_fen"] = price_fen
    return body


async def _place(trader: Trader, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    reply = await trader.post("/v1/orders", json=body)
    assert reply.status == status, reply.body
    return reply.json()


async def _seller(ex: Exchange, market: str, heads: int = 100, role: Role = Role.FARMER) -> tuple[Trader, int]:
    seller = await ex.register(role)
    return seller, await ex.register_lot(seller, market, heads)


# -- the life cycle -----------------------------------------------------------------------------------

async def test_order_life_cycle(ex: Exchange, market: str) -> None:
    farmer, lot_id = await _seller(ex, market, heads=100)
    buyer = await ex.register(Role.BUYER)

    sell = await _place(farmer, _order(market, "sell", 2810, 30, lot_id=lot_id))
    assert {k: sell[k] for k in ("status", "price_fen", "quantity_heads", "filled_heads", "remaining_heads",
                                 "fills", "lot_id", "side", "type", "time_in_force")} == {
        "status": "NEW", "price_fen": 2810, "quantity_heads": 30, "filled_heads": 0, "remaining_heads": 30,
        "fills": [], "lot_id": lot_id, "side": "sell", "type": "limit", "time_in_force": "GTC"}
    sell_id = sell["order_id"]

    buy = await _place(buyer, _order(market, "buy", 2850, 10))
    assert (buy["status"], buy["filled_heads"], buy["remaining_heads"]) == ("FILLED", 10, 0)
    [fill] = buy["fills"]
    assert {k: fill[k] for k in ("order_id", "price_fen", "quantity_heads", "liquidity", "side", "lot_id")} == {
        "order_id": buy["order_id"], "price_fen": 2810, "quantity_heads": 10, "liquidity": "taker",
        "side": "buy", "lot_id": lot_id}  # at the maker's price

    seen = (await farmer.get(f"/v1/orders/{sell_id}")).json()
    assert (seen["status"], seen["filled_heads"], seen["remaining_heads"]) == ("PARTIALLY_FILLED", 10, 20)
    assert [(f["trade_id"], f["liquidity"]) for f in seen["fills"]] == [(fill["trade_id"], "maker")]

    # Reduce the total from 30 to 25 at the same price: 10 filled, 15 left, priority kept.
    amended = (await farmer.request("PATCH", f"/v1/orders/{sell_id}", json={"quantity_heads": 25})).json()
    assert (amended["status"], amended["quantity_heads"], amended["filled_heads"], amended["remaining_heads"],
            amended["fills"]) == ("PARTIALLY_FILLED", 25, 10, 15, [])
    repriced = (await farmer.request("PATCH", f"/v1/orders/{sell_id}", json={"price_fen": 2820})).json()
    assert (repriced["price_fen"], repriced["remaining_heads"]) == (2820, 15)
    book = (await ex.client().get(f"/v1/markets/{market}/book")).json()
    assert (book["bids"], book["asks"]) == ([], [[2820, 15]])

    lot = (await farmer.get(f"/v1/lots/{lot_id}")).json()
    assert (lot["heads"], lot["reserved_heads"], lot["sold_heads"], lot["available_heads"]) == (100, 15, 10, 75)

    cancelled = (await farmer.request("DELETE", f"/v1/orders/{sell_id}")).json()
    assert (cancelled["status"], cancelled["filled_heads"], cancelled["remaining_heads"]) == ("CANCELED", 10, 0)
    assert error_code(await farmer.request("DELETE", f"/v1/orders/{sell_id}")) == (409, "order_not_open")
    lot = (await farmer.get(f"/v1/lots/{lot_id}")).json()
    assert (lot["reserved_heads"], lot["sold_heads"], lot["available_heads"]) == (0, 10, 90)

    fills = (await buyer.get("/v1/fills")).json()
    assert [f["trade_id"] for f in fills["fills"]] == [fill["trade_id"]] and fills["next_cursor"] is None
    listed = (await farmer.get(f"/v1/orders?status=CANCELED&instrument={market}")).json()
    assert [o["order_id"] for o in listed["orders"]] == [sell_id]


async def test_market_order_sweeps_then_expires_the_rest(ex: Exchange, market: str) -> None:
    farmer, lot_id = await _seller(ex, market)
    buyer = await ex.register(Role.BUYER)
    for price, heads in ((2810, 5), (2820, 7)):
        await _place(farmer, _order(market, "sell", price, heads, lot_id=lot_id))
    report = await _place(buyer, _order(market, "buy", None, 20, type="market"))
    assert (report["status"], report["time_in_force"], report["filled_heads"], report["remaining_heads"]) == (
        "EXPIRED", "IOC", 12, 0)
    assert [(f["price_fen"], f["quantity_heads"]) for f in report["fills"]] == [(2810, 5), (2820, 7)]
    assert report["price_fen"] == 2910  # a market buy may trade up to the band's top


async def test_gtd_order_expires_at_the_first_command_after_its_time(ex: Exchange, market: str) -> None:
    buyer = await ex.register(Role.BUYER)
    expire_at_ms = time.time_ns() // 1_000_000 + 150
    gtd = await _place(buyer, _order(market, "buy", 2800, 5, time_in_force="GTD", expire_at_ms=expire_at_ms))
    assert (gtd["status"], gtd["expire_at_ms"]) == ("NEW", expire_at_ms)
    await asyncio.sleep(0.3)
    await _place(buyer, _order(market, "buy", 2790, 1))  # any command moves exchange time
    seen = (await buyer.get(f"/v1/orders/{gtd['order_id']}")).json()
    assert (seen["status"], seen["remaining_heads"]) == ("EXPIRED", 0)


# -- rejections -----------------------------------------------------------------------------------------

REJECTIONS = [
    ({"price_fen": 2815}, 422, "price_off_tick"),
    ({"price_fen": 2920}, 422, "price_outside_band"),
    ({"quantity_heads": 501}, 422, "quantity_out_of_range"),
    ({"instrument": "NO-SUCH"}, 422, "unknown_instrument"),
    ({"time_in_force": "GTD", "expire_at_ms": 1_000}, 422, "invalid_expiry"),
    ({"time_in_force": "GTD"}, 422, "invalid_expiry"),
    ({"type": "market"}, 422, "invalid_order"),  # a price on a market order
    ({"price_fen": None}, 422, "invalid_order"),  # a limit without a price
    ({"post_only": True, "time_in_force": "IOC"}, 422, "invalid_order"),
    ({"min_quantity_heads": 11}, 422, "invalid_order"),
    ({"time_in_force": "FOK"}, 422, "fok_not_fillable"),
    ({"min_quantity_heads": 5, "time_in_force": "IOC"}, 422, "min_quantity_not_met"),
    ({"price_fen": 0}, 422, "invalid"),  # out of the schema's range: caught before the core
    ({"surprise": 1}, 422, "invalid"),
    ({"side": "short"}, 422, "invalid"),
]


@pytest.mark.parametrize(("change", "status", "code"), REJECTIONS)
async def test_rejections_have_stable_codes(ex: Exchange, market: str, change: dict[str, Any], status: int,
                                            code: str) -> None:
    buyer = await ex.register(Role.BUYER)
    body = _order(market, "buy", 2800, 10)
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    reply = await buyer.post("/v1/orders", json=body)
    assert error_code(reply) == (status, code)
    assert (await buyer.get(f"/v1/orders?instrument={market}")).json()["orders"] == []


async def test_seller_rejections(ex: Exchange, market: str) -> None:
    farmer, lot_id = await _seller(ex, market, heads=20)
    other, other_lot = await _seller(ex, market, heads=20, role=Role.COOPERATIVE)
    buyer = await ex.register(Role.BUYER)
    await _place(buyer, _order(market, "buy", 2800, 5))
    assert error_code(await farmer.post("/v1/orders", json=_order(market, "sell", 2810, 21, lot_id=lot_id))) == (
        422, "lot_exhausted")
    assert error_code(await farmer.post("/v1/orders", json=_order(market, "sell", 2800, 5, lot_id=lot_id,
                                                              post_only=True))) == (422, "post_only_would_take")
    assert error_code(await farmer.post("/v1/orders", json=_order(market, "sell", 2810, 5))) == (422, "invalid_order")
    # Another seller's lot is as good as missing.
    assert error_code(await farmer.post("/v1/orders", json=_order(market, "sell", 2810, 5, lot_id=other_lot))) == (
        404, "lot_not_found")
    other_market = f"T-ORD-{next(_symbols)}"
    await ex.list_instrument(other_market)
    assert error_code(await farmer.post("/v1/orders", json=_order(other_market, "sell", 2810, 5, lot_id=lot_id))) == (
        422, "lot_wrong_instrument")
    bad_lot = {"instrument": market, "heads": 10, "avg_weight_g": 130_000, "origin": "x", "quarantine_cert": "y"}
    assert error_code(await farmer.post("/v1/lots", json=bad_lot)) == (422, "lot_out_of_grade")
    assert error_code(await other.get(f"/v1/lots/{lot_id}")) == (404, "lot_not_found")


async def test_retry_gets_the_original_answer_and_a_conflict_is_409(ex: Exchange, market: str) -> None:
    buyer = await ex.register(Role.BUYER)
    body = _order(market, "buy", 2800, 10)
    first = await buyer.post("/v1/orders", json=body)
    again = await buyer.post("/v1/orders", json=body)
    assert (first.status, again.status, again.body) == (201, 201, first.body)
    assert error_code(await buyer.post("/v1/orders", json={**body, "price_fen": 2790})) == (
        409, "duplicate_client_order_id")
    rejected = {**_order(market, "buy", 2805, 10)}
    assert error_code(await buyer.post("/v1/orders", json=rejected)) == (422, "price_off_tick")
    assert error_code(await buyer.post("/v1/orders", json=rejected)) == (422, "price_off_tick")  # same answer again
    orders = (await buyer.get(f"/v1/orders?instrument={market}")).json()["orders"]
    assert [o["order_id"] for o in orders] == [first.json()["order_id"]]


# -- roles ----------------------------------------------------------------------------------------------

async def test_every_role_boundary(ex: Exchange, market: str) -> None:
    farmer, lot_id = await _seller(ex, market)
    coop, coop_lot = await _seller(ex, market, role=Role.COOPERATIVE)
    buyer, other_buyer = await ex.register(Role.BUYER), await ex.register(Role.BUYER)
    financier = await ex.register(Role.FINANCIER)
    buy = _order(market, "buy", 2800, 5)
    sell = _order(market, "sell", 2810, 5, lot_id=lot_id)
    assert error_code(await buyer.post("/v1/orders", json=sell)) == (403, "forbidden")
    assert error_code(await farmer.post("/v1/orders", json=buy)) == (403, "forbidden")
    assert error_code(await coop.post("/v1/orders", json=buy)) == (403, "forbidden")
    for outsider in (financier, ex.operator):
        assert error_code(await outsider.post("/v1/orders", json=buy)) == (403, "forbidden")
        assert error_code(await outsider.get("/v1/orders")) == (403, "forbidden")
        assert error_code(await outsider.get("/v1/fills")) == (403, "forbidden")
    lot_body = {"instrument": market, "heads": 5, "avg_weight_g": 110_000, "origin": "x", "quarantine_cert": "y"}
    assert error_code(await buyer.post("/v1/lots", json=lot_body)) == (403, "forbidden")
    assert error_code(await financier.post("/v1/lots", json=lot_body)) == (403, "forbidden")
    for path in ("/v1/instruments", f"/v1/instruments/{market}/halt"):
        assert error_code(await farmer.post(path, json={})) == (403, "forbidden")
        assert error_code(await buyer.post(path, json={})) == (403, "forbidden")
    assert error_code(await buyer.post("/v1/admin/participants", json={"role": "buyer", "name": "x"})) == (
        403, "forbidden")

    own = await _place(buyer, buy)
    own_sell = await _place(coop, _order(market, "sell", 2900, 5, lot_id=coop_lot))
    for stranger, order in ((other_buyer, own), (farmer, own), (farmer, own_sell), (buyer, own_sell)):
        path = f"/v1/orders/{order['order_id']}"
        assert error_code(await stranger.get(path)) == (404, "unknown_order")
        assert error_code(await stranger.request("DELETE", path)) == (404, "unknown_order")
        assert error_code(await stranger.request("PATCH", path, json={"quantity_heads": 1})) == (404, "unknown_order")
    assert (await other_buyer.get("/v1/orders")).json() == {"orders": [], "next_cursor": None}
    assert error_code(await coop.get(f"/v1/lots/{lot_id}")) == (404, "lot_not_found")
    assert error_code(await farmer.get("/v1/lots/999999")) == (404, "lot_not_found")
    assert [lot["lot_id"] for lot in (await coop.get("/v1/lots")).json()] == [coop_lot]
    assert (await buyer.get(f"/v1/orders/{own['order_id']}")).json()["status"] == "NEW"  # still there


# -- listing --------------------------------------------------------------------------------------------

async def test_orders_pages_newest_first_with_a_cursor(ex: Exchange, market: str) -> None:
    buyer = await ex.register(Role.BUYER)
    placed = [(await _place(buyer, _order(market, "buy", 2700 + 10 * (i % 5), 1)))["order_id"] for i in range(23)]
    await buyer.request("DELETE", f"/v1/orders/{placed[3]}")
    seen: list[int] = []
    cursor = None
    while True:
        path = "/v1/orders?limit=10" + (f"&cursor={cursor}" if cursor else "")
        page = (await buyer.get(path)).json()
        seen += [o["order_id"] for o in page["orders"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == placed[::-1]
    open_ids = [o["order_id"] for o in (await buyer.get("/v1/orders?status=NEW&limit=1000")).json()["orders"]]
    assert open_ids == [i for i in placed[::-1] if i != placed[3]]
    assert error_code(await buyer.get("/v1/orders?limit=1001")) == (422, "invalid")
    assert error_code(await buyer.get("/v1/orders?status=OPEN")) == (422, "invalid")
    assert error_code(await buyer.get("/v1/orders?cursor=abc")) == (422, "invalid")


# -- operator -------------------------------------------------------------------------------------------

async def test_operator_halts_runs_an_auction_and_moves_the_band(ex: Exchange, market: str) -> None:
    op = ex.operator
    farmer, lot_id = await _seller(ex, market)
    buyer = await ex.register(Role.BUYER)
    resting = await _place(buyer, _order(market, "buy", 2800, 5))

    assert (await op.post(f"/v1/instruments/{market}/halt")).json()["state"] == "halted"
    assert error_code(await buyer.post("/v1/orders", json=_order(market, "buy", 2800, 5))) == (422, "market_halted")
    assert error_code(await op.post(f"/v1/instruments/{market}/halt")) == (409, "invalid_state_transition")
    assert (await buyer.request("DELETE", f"/v1/orders/{resting['order_id']}")).json()["status"] == "CANCELED"
    assert (await op.post(f"/v1/instruments/{market}/resume")).json()["state"] == "continuous"

    assert (await op.post(f"/v1/instruments/{market}/auction")).json()["state"] == "auction"
    buy = await _place(buyer, _order(market, "buy", 2850, 10))
    sell = await _place(farmer, _order(market, "sell", 2800, 6, lot_id=lot_id))
    assert (buy["status"], sell["status"]) == ("NEW", "NEW")  # nothing matches during the call
    assert error_code(await buyer.post("/v1/orders", json=_order(market, "buy", None, 1, type="market"))) == (
        422, "not_allowed_in_auction")
    assert (await op.post(f"/v1/instruments/{market}/uncross")).json()["state"] == "continuous"
    seen_buy = (await buyer.get(f"/v1/orders/{buy['order_id']}")).json()
    assert (seen_buy["status"], seen_buy["filled_heads"], seen_buy["fills"][0]["liquidity"]) == (
        "PARTIALLY_FILLED", 6, "auction")

    view = (await op.post(f"/v1/instruments/{market}/reference-price", json={"price_fen": 3000})).json()
    assert (view["reference_price_fen"], view["band_low_fen"], view["band_high_fen"]) == (3000, 2880, 3120)
    assert error_code(await op.post(f"/v1/instruments/{market}/reference-price", json={"price_fen": 3005})) == (
        422, "price_off_tick")
    assert error_code(await op.post("/v1/instruments/NOPE/halt")) == (404, "unknown_instrument")
    assert error_code(await op.post("/v1/instruments", json=_instrument(market))) == (409, "instrument_exists")
    assert error_code(await op.post("/v1/instruments", json=_instrument("T-BAD", reference_price_fen=2805))) == (
        422, "invalid_instrument")


def _instrument(symbol: str, **overrides: Any) -> dict[str, Any]:
    from gateway.testing import hog_instrument

    return hog_instrument(symbol, **overrides)


# -- metrics --------------------------------------------------------------------------------------------

def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_parse_and_move_when_orders_flow(ex: Exchange, market: str) -> None:
    anonymous = ex.client()
    before = _samples((await anonymous.get("/metrics")).body.decode())
    farmer, lot_id = await _seller(ex, market)
    buyer = await ex.register(Role.BUYER)
    await _place(farmer, _order(market, "sell", 2810, 4, lot_id=lot_id))
    await _place(buyer, _order(market, "buy", 2810, 3))
    await buyer.post("/v1/orders", json=_order(market, "buy", 2815, 3))
    for i in range(32):  # the core's match latency is sampled, one command in 16
        await _place(buyer, _order(market, "buy", 2700 + 10 * (i % 8), 1))
    after = _samples((await anonymous.get("/metrics")).body.decode())

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("hogx_orders_received_total", instrument=market) == 3 + 32
    assert moved("hogx_orders_rejected_total", reason="price_off_tick") == 1
    assert moved("hogx_trades_total", instrument=market) == 1
    assert moved("hogx_traded_heads_total", instrument=market) == 3
    assert moved("hogx_ack_latency_seconds_count", transport="http") == 2 + 32
    assert moved("hogx_match_latency_seconds_count") >= 2  # at least 36 commands, one in 16 timed
    assert moved("hogx_journal_batch_size_commands_count") >= 1
    assert after[("hogx_book_depth_heads", (("instrument", market), ("side", "sell")))] == 1
    assert moved("hogx_http_requests_total", method="POST", route="/v1/orders", status="201") == 2 + 32


# -- durability -----------------------------------------------------------------------------------------

async def test_restart_recovers_orders_books_and_lots(_test_databases: Any) -> None:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn) as first:
            await first.list_instrument("T-RESTART")
            farmer, lot_id = await _seller(first, "T-RESTART")
            buyer = await first.register(Role.BUYER)
            await _place(farmer, _order("T-RESTART", "sell", 2810, 8, lot_id=lot_id))
            bought = await _place(buyer, _order("T-RESTART", "buy", 2820, 3))
            book = (await first.client().get("/v1/markets/T-RESTART/book")).json()
            keys = [(t.api_key, t.api_secret) for t in (farmer, buyer)]
        async with running_exchange(dsn) as second:
            assert (await second.client().get("/readyz")).json() == {"status": "ready"}
            assert (await second.client().get("/v1/markets/T-RESTART/book")).json() == book
            buyer2 = second.client(*keys[1])
            assert (await buyer2.get(f"/v1/orders/{bought['order_id']}")).json() == {**bought}
            lot = (await second.client(*keys[0]).get(f"/v1/lots/{lot_id}")).json()
            assert (lot["sold_heads"], lot["reserved_heads"]) == (3, 5)
    finally:
        await _test_databases.drop(dsn)


async def test_shutdown_drains_every_acknowledged_order(_test_databases: Any) -> None:
    """Stop the server while orders are in flight: every 201 is durable, nothing answers 5xx but 503."""
    dsn = await _test_databases.create(migrated=True)
    try:
        acked: dict[str, dict[str, Any]] = {}
        statuses: list[int] = []
        async with running_exchange(dsn) as first:
            await first.list_instrument("T-DRAIN")
            buyers = [await first.register(Role.BUYER) for _ in range(4)]
            keys = {b.participant_id: (b.api_key, b.api_secret) for b in buyers}

            async def flood(buyer: Trader) -> None:
                for i in range(400):
                    body = _order("T-DRAIN", "buy", 2700 + 10 * (i % 20), 1)
                    try:
                        reply = await buyer.post("/v1/orders", json=body)
                    except Exception:
                        return  # the server went away
                    statuses.append(reply.status)
                    if reply.status == 201:
                        acked[body["client_order_id"]] = reply.json() | {"participant": buyer.participant_id}

            tasks = [asyncio.create_task(flood(b)) for b in buyers]
            while len(acked) < 100:
                await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        assert set(statuses) <= {201, 503}, set(statuses)
        async with running_exchange(dsn) as second:
            for report in acked.values():
                client = second.client(*keys[report["participant"]])
                seen = (await client.get(f"/v1/orders/{report['order_id']}")).json()
                assert (seen["client_order_id"], seen["status"]) == (report["client_order_id"], "NEW")
    finally:
        await _test_databases.drop(dsn)


async def test_postgres_read_models_agree_with_the_gateway(ex: Exchange, market: str) -> None:
    """The projector keeps exchange.readmodel's tables; they must say what the gateway says."""
    farmer, lot_id = await _seller(ex, market)
    buyer = await ex.register(Role.BUYER)
    reports = [await _place(farmer, _order(market, "sell", 2810 + 10 * i, 4, lot_id=lot_id)) for i in range(3)]
    for price, heads in ((2830, 6), (2700, 2)):
        reports.append(await _place(buyer, _order(market, "buy", price, heads)))
    await buyer.request("DELETE", f"/v1/orders/{reports[-1]['order_id']}")
    port = ex.app[EXCHANGE]
    assert port.shard.projector is not None
    await port.shard.projector.wait_for(port.sequencer.committed_seq)
    pool = ex.app[POOL]
    for report in reports:
        owner = buyer if report["side"] == "buy" else farmer
        ours = (await owner.get(f"/v1/orders/{report['order_id']}")).json()
        theirs = await readmodel.get_order(pool, report["order_id"])
        assert theirs is not None
        fields = ("status", "filled_heads", "remaining_heads", "price_fen", "quantity_heads")
        assert tuple(getattr(theirs, f) for f in fields) == tuple(ours[f] for f in fields)
    fills = (await buyer.get(f"/v1/fills?instrument={market}")).json()["fills"]
    page = await readmodel.list_fills(pool, buyer.participant_id, instrument=market)
    assert [(f.trade_id, f.price_fen, f.quantity_heads) for f in page.items] == [
        (f["trade_id"], f["price_fen"], f["quantity_heads"]) for f in fills]
