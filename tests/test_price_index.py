"""The live-hog price index (gateway/index.py) on a hand-computed example, then over HTTP with the
simulated clock: book and auction trades of two days, JSON, CSV and the `index` WebSocket channel."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import msgspec

from exchange.calendar import day_start_ns
from exchange.domain import BreedClass, ProductClass, TradingSession
from gateway.auth import Role
from gateway.index import Finality, PriceIndex, date_to_day, day_to_date
from gateway.testing import Exchange, ok
from tests.factories import hog_spec
from tests.test_gateway_clock import START_MS, sim  # noqa: F401 - the fixture
from tests.test_gateway_settlement import _farmer

DAY_NS = 86_400 * 10**9
T0 = 1_767_225_600 * 10**9  # 2026-01-01 08:00 CST
HOG = hog_spec("RC-LH-WSY")
PIGLET = msgspec.structs.replace(hog_spec("RC-PG-WSY", tick_fen=100), product_class=ProductClass.PIGLET)
NSY = msgspec.structs.replace(hog_spec("RC-LH-NSY"), breed_class=BreedClass.NEI_SAN_YUAN)


def _on(day: int) -> Finality:
    """Finality on ``day`` for series with no instrument listed with a session: rows final at midnight."""
    return Finality((), (), day_start_ns(day))


def test_the_index_on_a_hand_computed_example() -> None:
    index = PriceIndex()
    day1, key = index.add(HOG, T0, 2_800, 10, 110_000)
    index.add(HOG, T0 + 3_600 * 10**9, 2_900, 30, 110_000)
    index.add(PIGLET, T0, 82_100, 5, 20_000)
    index.add(NSY, T0, 2_700, 3, 105_000)
    assert day_to_date(day1) == "2026-01-01" and date_to_day("2026-01-01") == day1
    # day 2: (3,000 x 20 + 2,950 x 20) / 40 = 2,975; index 1000 x 2,975 / 2,875 = 1034.7826... -> 1034.78
    index.add(HOG, T0 + DAY_NS, 3_000, 20, 110_000)
    index.add(HOG, T0 + DAY_NS, 2_950, 20, 120_000)
    first = {(r.product_class, r.breed_class): r for r in index.rows(day1, _on(day1 + 1))}
    hog = first[("finishing_hog", "wai_san_yuan")]
    # day 1: (2,800 x 10 + 2,900 x 30) / 40 = 2,875 fen/kg; value 2,800 x 10 x 110 + 2,900 x 30 x 110
    assert (hog.heads, hog.trades, hog.avg_price_fen, hog.value_fen, hog.index_x100, hog.index) == (
        40, 2, 2_875, 12_650_000, 100_000, "1000.00")
    assert (hog.region, hog.quote_unit, hog.base_date, hog.provisional) == (
        "Rongchang", "fen_per_kg", "2026-01-01", False)
    piglet = first[("piglet", "wai_san_yuan")]
    assert (piglet.avg_price_fen, piglet.value_fen, piglet.quote_unit, piglet.index) == (
        82_100, 410_500, "fen_per_head", "1000.00")
    assert first[("finishing_hog", "nei_san_yuan")].avg_price_fen == 2_700
    second = index.rows(day1 + 1, _on(day1 + 1))
    assert len(second) == 1
    assert (second[0].avg_price_fen, second[0].index_x100, second[0].index, second[0].provisional) == (
        2_975, 103_478, "1034.78", True)
    assert second[0].value_fen == 3_000 * 20 * 110 + 2_950 * 20 * 120
    # averages round half up: (2,800 + 2 x 2,810) / 3 = 2,806.67 -> 2,807
    other = PriceIndex()
    day, key = other.add(HOG, T0, 2_800, 1, 110_000)
    other.add(HOG, T0, 2_810, 2, 110_000)
    assert other.row(day, key, _on(day)).avg_price_fen == 2_807
    assert [r.date for r in index.history(day1, day1 + 1, _on(day1 + 1))] == ["2026-01-01"] * 3 + ["2026-01-02"]


async def test_the_index_over_http_json_csv_and_websocket(sim: Exchange) -> None:  # noqa: F811
    op = sim.operator
    symbol = "IDX-LH"
    await sim.list_instrument(symbol, delivery_point="Rongchang-IDX")
    farmer = await _farmer(sim, "孙七", "6217000011116666")
    buyer = await sim.register(Role.BUYER)
    now = ok(await op.get("/v1/admin/clock"))["now_ms"]
    today = day_to_date(date_to_day("1970-01-01") + (now * 10**6 + 8 * 3_600 * 10**9) // DAY_NS)

    async def trade(price: int, heads: int) -> None:
        lot_id = await sim.register_lot(farmer, symbol, heads=heads, avg_weight_g=110_000)
        ok(await farmer.post("/v1/orders", json={"client_order_id": f"s{price}{heads}{now}", "instrument": symbol,
                                                  "side": "sell", "price_fen": price, "quantity_heads": heads,
                                                  "lot_id": lot_id}), 201)
        ok(await buyer.post("/v1/orders", json={"client_order_id": f"b{price}{heads}{now}", "instrument": symbol,
                                                 "side": "buy", "price_fen": price, "quantity_heads": heads}), 201)

    async with sim.session.ws_connect(sim.url + "/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "channels": ["index"]})
        messages = [json.loads((await ws.receive()).data) for _ in range(2)]
        assert any(m.get("type") == "index" for m in messages)
        await trade(2_800, 10)
        await trade(2_900, 30)
        pushed = None
        while pushed is None or not any(r["region"] == "Rongchang-IDX" and r["heads"] == 40
                                        for r in pushed["series"]):
            pushed = json.loads((await ws.receive(timeout=5)).data)
    mine = [r for r in ok(await buyer.get("/v1/index"))["series"] if r["region"] == "Rongchang-IDX"]
    assert [(r["date"], r["avg_price_fen"], r["index"], r["provisional"]) for r in mine] == [
        (today, 2_875, "1000.00", True)]
    # an auction sale on the next day counts too
    ok(await op.post("/v1/admin/clock", json={"advance_ms": 86_400_000}))
    lot_id = await sim.register_lot(farmer, symbol, heads=40)
    clock = ok(await op.get("/v1/admin/clock"))["now_ms"]
    auction = ok(await farmer.post("/v1/auctions", json={
        "lot_id": lot_id, "start_price_fen": 2_950, "reserve_price_fen": 2_950,
        "increments": [{"from_price_fen": 0, "increment_fen": 10}], "closes_at_ms": clock + 60_000}), 201)
    ok(await buyer.post(f"/v1/auctions/{auction['auction_id']}/bids", json={"max_price_fen": 2_980}), 201)
    ok(await op.post("/v1/admin/clock", json={"advance_ms": 60_000}))
    history = ok(await buyer.get(f"/v1/index/history?from={today}&region=Rongchang-IDX"))
    assert [(r["heads"], r["avg_price_fen"], r["index"], r["provisional"]) for r in history] == [
        (40, 2_875, "1000.00", False), (40, 2_950, "1026.09", True)]  # 1000 x 2,950 / 2,875
    reply = await buyer.get(f"/v1/index/history.csv?from={today}&region=Rongchang-IDX")
    rows = list(csv.DictReader(io.StringIO(reply.body.decode())))
    assert [(r["date"], r["avg_price_fen"], r["index"], r["provisional"]) for r in rows] == [
        (h["date"], str(h["avg_price_fen"]), h["index"], str(h["provisional"]).lower()) for h in history]
    status: Any = (await buyer.get("/v1/index?date=2026-13-01")).status
    assert status == 422
    assert START_MS > 0


def test_a_row_turns_final_at_the_close_of_every_instrument_of_its_series() -> None:
    session = TradingSession(530, 540, 900, 0, 0, 0b1111111)  # 08:50, 09:00, 15:00, every day
    early = msgspec.structs.replace(HOG, symbol="RC-LH-AM", session=TradingSession(530, 540, 690, 0, 0, 0b1111111))
    late = msgspec.structs.replace(HOG, session=session)
    day = T0 // DAY_NS + 1  # 2026-01-02 (CST), a Friday
    key = (int(HOG.product_class), int(HOG.breed_class), HOG.delivery_point)
    close, noon = day_start_ns(day) + 900 * 60 * 10**9, day_start_ns(day) + 690 * 60 * 10**9
    trade = day_start_ns(day) + 600 * 60 * 10**9  # 10:00
    both = Finality([early, late], [], close - 1)
    assert both.final_ns(day, key, trade) == close and both.provisional(day, key, trade)
    assert not Finality([early, late], [], close).provisional(day, key, trade)
    assert Finality([early], [], noon).final_ns(day, key, trade) == noon  # one instrument: its own close
    # a lot auction sale after the close moves the row again: final only at midnight
    assert both.final_ns(day, key, close) == day_start_ns(day + 1)
    # an instrument without a session, or a non-trading day, leaves midnight the end
    assert Finality([late, HOG], [], close).final_ns(day, key, trade) == day_start_ns(day + 1)
    assert Finality([late], [20260102], close).final_ns(day, key, trade) == day_start_ns(day + 1)
    assert Finality([late], [20260105], close).final_ns(day, key, trade) == close


def test_the_base_day_named_at_listing_and_the_value_rounded_half_up_per_trade() -> None:
    named = msgspec.structs.replace(HOG, index_base_day=20260102)  # the series' first listing names a day
    later = msgspec.structs.replace(HOG, symbol="RC-LH-WSY-2", index_base_day=20260105)
    index = PriceIndex()
    day1, key = index.add(HOG, T0, 2_800, 4, 105_555)  # 2,800 x 4 x 105.555 kg = 1,182,216 exactly
    index.add(HOG, T0, 2_830, 4, 105_555)  # 2,830 x 4 x 105.555 = 1,194,882.6 -> 1,194,883 (half up)
    index.add(HOG, T0 + 2 * DAY_NS, 2_900, 2, 110_000)  # no trades on the named day: the next day with trades
    index.add(HOG, T0 + 3 * DAY_NS, 2_950, 2, 110_000)
    at = Finality([named, later], [], T0 + 4 * DAY_NS)
    rows = index.history(day1, day1 + 3, at)
    assert [(r.date, r.value_fen, r.avg_price_fen, r.index_x100, r.index, r.base_date) for r in rows] == [
        ("2026-01-01", 1_182_216 + 1_194_883, 2_815, None, None, "2026-01-03"),  # before the base day
        ("2026-01-03", 638_000, 2_900, 100_000, "1000.00", "2026-01-03"),
        ("2026-01-04", 649_000, 2_950, 101_724, "1017.24", "2026-01-03"),  # 100,000 x 2,950 / 2,900 = 101,724.1
    ]
    assert index.row(day1, key, _on(day1 + 4)).base_date == "2026-01-01"  # nothing named: the first day


async def _until(ws: Any, region: str, match: Any) -> dict[str, Any]:
    """The first `index` row of ``region`` pushed that ``match`` accepts (others are skipped)."""
    while True:
        message = json.loads((await ws.receive(timeout=5)).data)
        for row in message.get("series", []) if message.get("type") == "index" else []:
            if row["region"] == region and match(row):
                return dict(row)


async def test_the_close_publishes_the_final_index_over_the_websocket(sim: Exchange) -> None:  # noqa: F811
    """Trades give provisional values; the simulated clock passing 15:00 CST closes the session and the
    `index` channel publishes the day's final value, which GET /v1/index then shows final too."""
    op = sim.operator
    region, symbol = "Rongchang-CLOSE", "IDX-CLOSE"
    now = ok(await op.get("/v1/admin/clock"))["now_ms"]
    day = (now * 10**6 + 8 * 3_600 * 10**9) // DAY_NS + 1  # tomorrow (CST): its 08:00 is ahead of the clock

    def at(d: int, hhmm: str) -> int:
        return (day_start_ns(d) + (int(hhmm[:2]) * 60 + int(hhmm[3:])) * 60 * 10**9) // 10**6

    ok(await op.post("/v1/admin/clock", json={"to_ms": at(day, "08:00")}))
    await sim.list_instrument(symbol, delivery_point=region, session={
        "pre_open": "08:50", "open": "09:00", "close": "15:00", "weekdays": [1, 2, 3, 4, 5, 6, 7]})
    farmer = await _farmer(sim, "周八", "6217000011117777")
    buyer = await sim.register(Role.BUYER)
    refs = iter(range(1_000))

    async def trade(price: int, heads: int) -> None:
        lot_id = await sim.register_lot(farmer, symbol, heads=heads, avg_weight_g=110_000)
        n = next(refs)
        ok(await farmer.post("/v1/orders", json={"client_order_id": f"cs{n}", "instrument": symbol, "side": "sell",
                                                  "price_fen": price, "quantity_heads": heads, "lot_id": lot_id}), 201)
        ok(await buyer.post("/v1/orders", json={"client_order_id": f"cb{n}", "instrument": symbol, "side": "buy",
                                                 "price_fen": price, "quantity_heads": heads}), 201)

    async def today() -> list[tuple[int, int, str, bool]]:
        reply = ok(await buyer.get("/v1/index"))
        return [(r["heads"], r["avg_price_fen"], r["index"], r["provisional"]) for r in reply["series"]
                if r["region"] == region]

    async with sim.session.ws_connect(sim.url + "/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "channels": ["index"]})
        # day 1: (2,800 x 10 + 2,900 x 30) / 40 = 2,875 fen/kg, the base day: 1000.00
        ok(await op.post("/v1/admin/clock", json={"to_ms": at(day, "09:00")}))
        await trade(2_800, 10)
        first = await _until(ws, region, lambda r: r["heads"] == 10)
        assert (first["avg_price_fen"], first["provisional"]) == (2_800, True)
        await trade(2_900, 30)
        moved = await _until(ws, region, lambda r: r["heads"] == 40)
        assert (moved["avg_price_fen"], moved["index"], moved["provisional"]) == (2_875, "1000.00", True)
        ok(await op.post("/v1/admin/clock", json={"to_ms": at(day, "15:00") - 1}))
        assert await today() == [(40, 2_875, "1000.00", True)]  # a millisecond before the close
        ok(await op.post("/v1/admin/clock", json={"to_ms": at(day, "15:00")}))
        closed = await _until(ws, region, lambda r: not r["provisional"])
        assert (closed["date"], closed["heads"], closed["trades"], closed["avg_price_fen"], closed["index_x100"],
                closed["value_fen"]) == (day_to_date(day), 40, 2, 2_875, 100_000, (28_000 + 87_000) * 110)
        assert await today() == [(40, 2_875, "1000.00", False)]
        # the close set the next band reference: 2,875 half up to the 10 fen tick
        assert ok(await buyer.get(f"/v1/instruments/{symbol}"))["reference_price_fen"] == 2_880

        # day 2: (2,950 x 7 + 2,930 x 13 + 2,980 x 5) / 25 = 73,640 / 25 = 2,945.6 -> 2,946;
        # index 100,000 x (73,640 / 25) / (115,000 / 40) = 102,455.65 -> 102,456 = "1024.56"
        ok(await op.post("/v1/admin/clock", json={"to_ms": at(day + 1, "09:00")}))
        for price, heads in ((2_950, 7), (2_930, 13), (2_980, 5)):
            await trade(price, heads)
        moved = await _until(ws, region, lambda r: r["heads"] == 25)
        assert (moved["date"], moved["avg_price_fen"], moved["index"], moved["provisional"]) == (
            day_to_date(day + 1), 2_946, "1024.56", True)
        ok(await op.post("/v1/admin/clock", json={"to_ms": at(day + 1, "16:00")}))  # past the close
        closed = await _until(ws, region, lambda r: not r["provisional"])
        assert (closed["date"], closed["heads"], closed["avg_price_fen"], closed["index_x100"], closed["index"],
                closed["base_date"]) == (day_to_date(day + 1), 25, 2_946, 102_456, "1024.56", day_to_date(day))
    assert await today() == [(25, 2_946, "1024.56", False)]
    dated = ok(await buyer.get(f"/v1/index?date={day_to_date(day + 1)}"))
    assert dated["provisional"] is False
    assert [(r["avg_price_fen"], r["provisional"]) for r in dated["series"] if r["region"] == region] == [
        (2_946, False)]


async def test_a_row_moved_while_nobody_listened_is_published_final_at_the_close(sim: Exchange) -> None:  # noqa: F811
    """With no subscriber the channel builds no rows, yet still knows when each turns final: a socket
    subscribing after the day's trades gets the final row at the close."""
    op = sim.operator
    region, symbol = "Rongchang-QUIET", "IDX-QUIET"
    now = ok(await op.get("/v1/admin/clock"))["now_ms"]
    day = (now * 10**6 + 8 * 3_600 * 10**9) // DAY_NS + 1

    def at(hhmm: str) -> int:
        return (day_start_ns(day) + (int(hhmm[:2]) * 60 + int(hhmm[3:])) * 60 * 10**9) // 10**6

    ok(await op.post("/v1/admin/clock", json={"to_ms": at("08:00")}))
    await sim.list_instrument(symbol, delivery_point=region, session={
        "pre_open": "08:50", "open": "09:00", "close": "15:00", "weekdays": [1, 2, 3, 4, 5, 6, 7]})
    farmer = await _farmer(sim, "周九", "6217000011119999")
    buyer = await sim.register(Role.BUYER)
    ok(await op.post("/v1/admin/clock", json={"to_ms": at("09:00")}))
    lot_id = await sim.register_lot(farmer, symbol, heads=20, avg_weight_g=110_000)
    ok(await farmer.post("/v1/orders", json={"client_order_id": "qs", "instrument": symbol, "side": "sell",
                                              "price_fen": 2_800, "quantity_heads": 20, "lot_id": lot_id}), 201)
    ok(await buyer.post("/v1/orders", json={"client_order_id": "qb", "instrument": symbol, "side": "buy",
                                             "price_fen": 2_800, "quantity_heads": 20}), 201)
    async with sim.session.ws_connect(sim.url + "/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "channels": ["index"]})
        ok(await op.post("/v1/admin/clock", json={"to_ms": at("15:00")}))
        closed = await _until(ws, region, lambda r: not r["provisional"])
    assert (closed["date"], closed["heads"], closed["trades"], closed["avg_price_fen"]) == (
        day_to_date(day), 20, 1, 2_800)
