"""The price index holds in memory only what is not final (gateway/index.py, issue 12): the rows held stay
bounded over many days, a final row the projection lags behind stays held until it has passed it, and
every index route answers the same once the rows have left memory for `price_index_daily`."""

from __future__ import annotations

from typing import Any

import msgspec

from exchange.calendar import day_label, day_start_ns
from exchange.domain import BreedClass, ProductClass
from exchange.priceindex import DaySums
from gateway.auth import Role
from gateway.exchange_port import EXCHANGE
from gateway.index import Finality, PriceIndex, date_to_day, day_to_date, series_of
from gateway.priceindex import PROJECTOR
from gateway.testing import Exchange, ok
from tests.factories import hog_spec
from tests.test_gateway_clock import sim  # noqa: F401 - the fixture
from tests.test_gateway_settlement import _farmer

DAY0 = date_to_day("2026-01-05")
HOG = hog_spec("MEM-LH")
NAMED = msgspec.structs.replace(hog_spec("MEM-NSY", tick_fen=10), breed_class=BreedClass.NEI_SAN_YUAN,
                                index_base_day=day_label(DAY0 + 10))
PIGLET = msgspec.structs.replace(hog_spec("MEM-PG", tick_fen=100), product_class=ProductClass.PIGLET)
LATER = msgspec.structs.replace(HOG, symbol="MEM-LH-2", index_base_day=day_label(DAY0 + 100))  # names a past day
DAYS = 400


def _stored(index: PriceIndex, day: int, key: Any) -> DaySums:
    """What the projection holds of a row (the never-sealed index holds every row: it is the oracle)."""
    cell = index.days[day][key]
    return DaySums(day_label(day), key, cell.trades, cell.heads, cell.price_heads, cell.value_fen)


def test_the_rows_held_stay_bounded_and_equal_the_unbounded_index_over_400_days() -> None:
    """Two indexes fold the same trades: `live` is sealed at each day's first tick with the projection one
    day behind, `oracle` never lets a row go (the behaviour before issue 12). `live` holds at most two
    days of rows, keeps a final row the projection has not reached, and its rows (held, or read back as
    the projection stores them) equal the oracle's, the base named after the fact included."""
    live, oracle = PriceIndex(), PriceIndex()
    specs = [HOG, NAMED, PIGLET]
    for index in (live, oracle):
        index.name(series_of(NAMED), DAY0 + 10)
    seq, projected, held = 0, 0, []
    for n in range(DAYS):
        day = DAY0 + n
        if n == 200:  # a listing names a base day long gone from memory: looked up in PostgreSQL
            specs.append(LATER)
            for index in (live, oracle):
                index.name(series_of(LATER), DAY0 + 100)
            key = series_of(HOG)
            assert live.unresolved == {key: DAY0 + 100} and not oracle.unresolved
            live.resolved(key, DAY0 + 100, _stored(oracle, DAY0 + 100, key))
        live.projected_seq = projected
        dropped = live.seal(day)
        assert all(d < day for d, _ in dropped)
        if n >= 2:  # yesterday's rows wait for the projection; the day before's left
            assert {d for d in live.days} == {day - 1}
        projected = seq  # the projection reaches the end of yesterday during today
        for hour, (price, heads) in enumerate(((2_800 + n % 50 * 10, 10 + n % 7), (2_900, 5))):
            ts = day_start_ns(day) + (9 + hour) * 3_600 * 10**9
            for spec in (HOG, NAMED, PIGLET):
                seq += 1
                for index in (live, oracle):
                    index.add(spec, ts, price if spec is not PIGLET else price * 30, heads, 110_000, seq)
        at = Finality(specs, (), day_start_ns(day) + 16 * 3_600 * 10**9)
        assert live.rows(day, at) == oracle.rows(day, at)
        held.append(live.held_rows())
        for past in (day - 1, day - 2, DAY0 + 100, DAY0 + 9, DAY0 + 10, DAY0):
            if not DAY0 <= past <= day:
                continue
            for key in sorted(oracle.days[past]):
                expected = oracle.row(past, key, at)
                if past in live.days and key in live.days[past]:
                    assert live.row(past, key, at) == expected
                else:
                    assert live.stored_row(_stored(oracle, past, key), at) == expected
    assert max(held) == 6 and oracle.held_rows() == 3 * DAYS  # two days of three series, against 1,200
    index_of = {r.breed_class: r for r in live.rows(DAY0 + DAYS - 1, at)}
    assert index_of["nei_san_yuan"].base_date == day_to_date(DAY0 + 10)
    assert live.stored_row(_stored(oracle, DAY0 + 5, series_of(NAMED)), at).index is None  # before its base
    assert {(r.product_class, r.base_date) for r in live.rows(DAY0 + DAYS - 1, at) if r.breed_class == "wai_san_yuan"
            } == {("finishing_hog", day_to_date(DAY0 + 100)), ("piglet", day_to_date(DAY0))}


def test_a_final_row_stays_held_until_the_projection_has_passed_its_latest_trade() -> None:
    index = PriceIndex()
    day, key = index.add(HOG, day_start_ns(DAY0) + 10 * 3_600 * 10**9, 2_800, 10, 110_000, 7)
    index.add(HOG, day_start_ns(DAY0) + 11 * 3_600 * 10**9, 2_820, 10, 110_000, 9)
    index.projected_seq = 8  # the row's first trade is projected, not its last
    assert index.seal(day + 1) == {} and index.held_rows() == 1
    index.projected_seq = 9
    assert list(index.seal(day + 1)) == [(day, key)] and index.held_rows() == 0
    assert index.first[key].heads == 20  # the series' first day (its base) is kept


def _at(day: int, hhmm: str) -> int:
    return (day_start_ns(day) + (int(hhmm[:2]) * 60 + int(hhmm[3:])) * 60 * 10**9) // 10**6


async def test_every_index_route_answers_the_same_once_the_rows_left_memory(sim: Exchange) -> None:  # noqa: F811
    """The index projector is stopped over four trading days: their rows, final, stay held (the
    projection lags: memory keeps them and answers). Every route's answers are taken; the projector
    resumes and passes them, the next ticks let the rows go, and the same routes give the same JSON and
    CSV from `price_index_daily`."""
    op = sim.operator
    projector = sim.app[PROJECTOR]
    read_model = sim.app[EXCHANGE].read_model
    index = read_model.index
    now = ok(await op.get("/v1/admin/clock"))["now_ms"]
    first = (now * 10**6 + 8 * 3_600 * 10**9) // (86_400 * 10**9) + 1
    ok(await op.post("/v1/admin/clock", json={"to_ms": _at(first, "08:00")}))
    session = {"pre_open": "08:50", "open": "09:00", "close": "15:00", "weekdays": [1, 2, 3, 4, 5, 6, 7]}
    symbols = {"MEMR-A": "Rongchang-MEM", "MEMR-B": "Neijiang-MEM"}
    for symbol, region in symbols.items():
        named = {"index_base_date": day_to_date(first + 1)} if symbol == "MEMR-B" else {}
        await sim.list_instrument(symbol, delivery_point=region, session=session, **named)
    farmer = await _farmer(sim, "吴十", "6217000011118888")
    buyer = await sim.register(Role.BUYER)
    refs = iter(range(10_000))
    days = 4
    last = first + days - 1

    async def answers() -> dict[str, Any]:
        got: dict[str, Any] = {}
        for day in range(first - 1, last + 2):
            got[f"index {day}"] = ok(await buyer.get(f"/v1/index?date={day_to_date(day)}"))
        for span in (f"from={day_to_date(first)}&to={day_to_date(last)}",
                     f"from={day_to_date(first + 1)}&to={day_to_date(last - 1)}"):
            for query in (span, span + "&region=Rongchang-MEM", span + "&region=Neijiang-MEM",
                          span + "&product_class=finishing_hog&breed_class=wai_san_yuan",
                          span + "&product_class=piglet"):
                got[f"history {query}"] = ok(await buyer.get(f"/v1/index/history?{query}"))
                got[f"csv {query}"] = (await buyer.get(f"/v1/index/history.csv?{query}")).body.decode()
        return got

    await projector.wait_for(read_model.applied_seq)
    await projector.stop()
    try:
        for day in range(first, last + 1):
            ok(await op.post("/v1/admin/clock", json={"to_ms": _at(day, "09:00")}))
            for n, symbol in enumerate(symbols):
                for price, heads in ((2_800 + 10 * (day - first), 10 + n), (2_900, 5)):
                    lot_id = await sim.register_lot(farmer, symbol, heads=heads, avg_weight_g=110_000)
                    ref = next(refs)
                    ok(await farmer.post("/v1/orders", json={
                        "client_order_id": f"ms{ref}", "instrument": symbol, "side": "sell", "price_fen": price,
                        "quantity_heads": heads, "lot_id": lot_id}), 201)
                    ok(await buyer.post("/v1/orders", json={
                        "client_order_id": f"mb{ref}", "instrument": symbol, "side": "buy", "price_fen": price,
                        "quantity_heads": heads}), 201)
        ok(await op.post("/v1/admin/clock", json={"to_ms": _at(last + 1, "08:00")}))  # every day ended
        assert set(range(first, last + 1)) <= set(index.days)  # final, not projected: held
        before = await answers()
    finally:
        projector.attach(sim.app[EXCHANGE].sequencer)
        await projector.start()
    await projector.wait_for(read_model.applied_seq)
    for _ in range(2):  # the first tick passes the projection's seq on to the index, the second seals
        ok(await op.post("/v1/admin/clock", json={"advance_ms": 1_000}))
    assert not [d for d in index.days if d <= last] and index.held_rows() == 0
    after = await answers()
    assert after == before
    history = after[f"history from={day_to_date(first)}&to={day_to_date(last)}"]
    assert len(history) == 2 * days and not any(r["provisional"] for r in history)
    assert next(r for r in history if r["region"] == "Neijiang-MEM")["index"] is None  # before its named base
    assert {r["base_date"] for r in history} == {day_to_date(first), day_to_date(first + 1)}
