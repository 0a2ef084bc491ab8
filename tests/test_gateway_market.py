"""Public market data over real HTTP: instruments, the book by depth, trades by cursor, candles, and the
OpenAPI document that describes them; no credentials needed. Then the read model they are served from,
held against the core by hypothesis: books, open orders, lots and chained deltas after every batch."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.commands import (
    AmendOrder,
    CancelOrder,
    Command,
    Halt,
    ListInstrument,
    PlaceOrder,
    RegisterLot,
    Resume,
    StartAuction,
    Uncross,
)
from exchange.core import Core
from exchange.domain import BreedClass, InstrumentSpec, OrderType, ProductClass, Side, TimeInForce
from exchange.events import Event
from gateway.auth import Role
from gateway.client import SignedClient
from gateway.errors import ApiError
from gateway.exchange_port import EXCHANGE
from gateway.orders import place_outcome
from gateway.readmodel import ReadModel
from gateway.schemas import ExecutionReport
from gateway.testing import Exchange, hog_instrument

_symbols = itertools.count(1)


async def _traded_market(ex: Exchange, trades: list[tuple[int, int]]) -> str:
    """A market where a buyer took the farmer's asks at the given (price_fen, heads), in order."""
    symbol = f"T-MKT-{next(_symbols)}"
    await ex.list_instrument(symbol)
    farmer, buyer = await ex.register(Role.FARMER), await ex.register(Role.BUYER)
    lot_id = await ex.register_lot(farmer, symbol, heads=1000)
    for i, (price, heads) in enumerate(trades):
        sell = {"client_order_id": f"s{i}", "instrument": symbol, "side": "sell", "price_fen": price,
                "quantity_heads": heads, "lot_id": lot_id}
        buy = {"client_order_id": f"b{i}", "instrument": symbol, "side": "buy", "price_fen": price,
               "quantity_heads": heads}
        assert (await farmer.post("/v1/orders", json=sell)).status == 201
        assert (await buyer.post("/v1/orders", json=buy)).json()["status"] == "FILLED"
    return symbol


async def test_instruments_are_public_and_say_how_they_are_quoted(ex: Exchange) -> None:
    public = ex.client()
    await ex.list_instrument("T-PIGLET", product_class="piglet", lot_avg_min_g=15_000, lot_avg_max_g=30_000,
                             animal_min_g=10_000, animal_max_g=35_000, tick_fen=100, reference_price_fen=82_100)
    view = (await public.get("/v1/instruments/T-PIGLET")).json()
    assert view == {
        "symbol": "T-PIGLET", "product_class": "piglet", "quote_unit": "fen_per_head", "breed_class": "wai_san_yuan",
        "delivery_point": "Rongchang, Chongqing", "lot_avg_min_g": 15_000, "lot_avg_max_g": 30_000,
        "animal_min_g": 10_000, "animal_max_g": 35_000, "tick_fen": 100, "min_order_heads": 1,
        "max_order_heads": 500, "price_band_bps": 400, "reference_price_fen": 82_100,
        "band_low_fen": 78_900, "band_high_fen": 85_300, "state": "continuous", "seq": 1,
        # Settlement terms as InstrumentSpec's defaults: no fee, no weight tolerance, a 48 h dispute window,
        # certificates unchecked (as before the rule), no shrink.
        "seller_fee_bps": 0, "overweight_limit_g": 0, "overweight_discount_fen_per_kg": 0, "underweight_limit_g": 0,
        "underweight_discount_fen_per_kg": 0, "dispute_window_ms": 172_800_000, "quarantine_region": "matched",
        "shrink_bps": 0,
        # no trading calendar: the state changes only by operators
        "session": None, "index_base_date": None, "state_reason": ""}
    listed = (await public.get("/v1/instruments")).json()
    assert view in listed
    missing = await public.get("/v1/instruments/NOPE")
    assert (missing.status, missing.json()["code"]) == (404, "unknown_instrument")


_TERMS: dict[str, Any] = {
    "seller_fee_bps": 50, "overweight_limit_g": 10_000, "overweight_discount_fen_per_kg": 60,
    "underweight_limit_g": 5_000, "underweight_discount_fen_per_kg": 80, "dispute_window_ms": 86_400_000}


async def test_an_operator_lists_an_instrument_with_its_settlement_terms(ex: Exchange) -> None:
    view = await ex.list_instrument("T-TERMS", **_TERMS)
    assert {name: view[name] for name in _TERMS} == _TERMS
    spec = ex.app[EXCHANGE].sequencer.core.markets["T-TERMS"].spec
    assert (spec.seller_fee_bps, spec.overweight_limit_g, spec.overweight_discount_fen_per_kg, spec.underweight_limit_g,
            spec.underweight_discount_fen_per_kg, spec.dispute_window_ns) == (
        50, 10_000, 60, 5_000, 80, 86_400 * 10**9)
    # The fee schedule overrides the listing's fee; the instrument shows the fee in force.
    reply = await ex.operator.post("/v1/admin/fee-schedule", json={"instrument": "T-TERMS", "seller_fee_bps": 30})
    assert reply.status == 200, reply.body
    assert (await ex.client().get("/v1/instruments/T-TERMS")).json()["seller_fee_bps"] == 30


async def test_impossible_settlement_terms_are_refused(ex: Exchange) -> None:
    piglet = {"product_class": "piglet", "lot_avg_min_g": 15_000, "lot_avg_max_g": 30_000, "animal_min_g": 10_000,
              "animal_max_g": 35_000, "tick_fen": 100, "reference_price_fen": 82_100}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"seller_fee_bps": 1_001}, "invalid"),  # more than 10 %
        ({"seller_fee_bps": -1}, "invalid"),
        ({"overweight_limit_g": -1}, "invalid"),
        ({"underweight_discount_fen_per_kg": 10**10 + 1}, "invalid"),
        ({"dispute_window_ms": 90 * 86_400_000 + 1}, "invalid"),
        ({"dispute_window_ms": 1.5}, "invalid"),  # whole milliseconds only
        ({"overweight_discount_fen_per_kg": 2_800}, "invalid_instrument"),  # the pigs would be free
        ({"overweight_discount_fen_per_kg": 2_690}, "invalid_instrument"),  # free at the band's low edge
        ({"underweight_limit_g": 100_000}, "invalid_instrument"),  # down to a zero-gram pig
        ({**piglet, "overweight_discount_fen_per_kg": 100}, "invalid_instrument"),  # piglets are per head
    ]
    for i, (terms, code) in enumerate(cases):
        body = hog_instrument(f"T-BADTERMS-{i}", **terms)
        reply = await ex.operator.post("/v1/instruments", json=body)
        assert (reply.status, reply.json()["code"]) == (422, code), terms
        assert f"T-BADTERMS-{i}" not in ex.app[EXCHANGE].read_model.instruments
    # At the edges everything is accepted: a 10 % fee, a discount just below the band's low edge (2690), no window.
    view = await ex.list_instrument("T-EDGES", seller_fee_bps=1_000, overweight_discount_fen_per_kg=2_689,
                                    underweight_limit_g=99_999, dispute_window_ms=0)
    assert (view["seller_fee_bps"], view["overweight_discount_fen_per_kg"], view["dispute_window_ms"]) == (
        1_000, 2_689, 0)
    assert (await ex.list_instrument("T-PIGLET-0", **piglet))["overweight_discount_fen_per_kg"] == 0


async def test_book_by_depth(ex: Exchange) -> None:
    symbol = f"T-MKT-{next(_symbols)}"
    await ex.list_instrument(symbol)
    buyer = await ex.register(Role.BUYER)
    for i, (price, heads) in enumerate(((2800, 5), (2790, 3), (2800, 2), (2700, 1))):
        body = {"client_order_id": f"d{i}", "instrument": symbol, "side": "buy", "price_fen": price,
                "quantity_heads": heads}
        assert (await buyer.post("/v1/orders", json=body)).status == 201
    public = ex.client()
    assert (await public.get(f"/v1/markets/{symbol}/book")).json() == {
        "instrument": symbol, "seq": 9, "bids": [[2800, 7], [2790, 3], [2700, 1]], "asks": []}
    assert (await public.get(f"/v1/markets/{symbol}/book?depth=1")).json()["bids"] == [[2800, 7]]
    for bad in ("depth=0", "depth=1001", "depth=x", "levels=3"):
        reply = await public.get(f"/v1/markets/{symbol}/book?{bad}")
        assert (reply.status, reply.json()["code"]) == (422, "invalid"), bad
    reply = await public.get("/v1/markets/NOPE/book")
    assert (reply.status, reply.json()["code"]) == (404, "unknown_instrument")


async def test_trades_newest_first_by_cursor(ex: Exchange) -> None:
    symbol = await _traded_market(ex, [(2800, 1), (2810, 2), (2820, 3), (2830, 4), (2840, 5)])
    public = ex.client()
    first = (await public.get(f"/v1/markets/{symbol}/trades?limit=2")).json()
    assert [(t["price_fen"], t["quantity_heads"], t["taker_side"]) for t in first["trades"]] == [
        (2840, 5, "buy"), (2830, 4, "buy")]
    second = (await public.get(f"/v1/markets/{symbol}/trades?limit=2&cursor={first['next_cursor']}")).json()
    third = (await public.get(f"/v1/markets/{symbol}/trades?limit=2&cursor={second['next_cursor']}")).json()
    assert [t["price_fen"] for t in second["trades"] + third["trades"]] == [2820, 2810, 2800]
    assert third["next_cursor"] is None
    ids = [t["trade_id"] for t in first["trades"] + second["trades"] + third["trades"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5


async def test_candles(ex: Exchange) -> None:
    symbol = await _traded_market(ex, [(2800, 1), (2850, 2), (2790, 3), (2820, 4)])
    public = ex.client()
    for interval in ("1m", "1d"):
        page = (await public.get(f"/v1/markets/{symbol}/candles?interval={interval}")).json()
        assert page["interval"] == interval
        candles = page["candles"]
        # All four trades fall in one day; they may straddle a minute boundary.
        assert sum(c["volume_heads"] for c in candles) == 10 and sum(c["trades"] for c in candles) == 4
        assert (candles[0]["open_fen"], candles[-1]["close_fen"]) == (2800, 2820)
        assert max(c["high_fen"] for c in candles) == 2850 and min(c["low_fen"] for c in candles) == 2790
    [day] = (await public.get(f"/v1/markets/{symbol}/candles?interval=1d")).json()["candles"]
    assert day["start_ms"] % 86_400_000 == 0
    reply = await public.get(f"/v1/markets/{symbol}/candles?interval=2m")
    assert (reply.status, reply.json()["code"]) == (422, "invalid")


async def test_openapi_documents_every_exchange_route_with_its_roles(ex: Exchange) -> None:
    doc = (await SignedClient(ex.url, session=ex.session).get("/v1/openapi.json")).json()
    paths = doc["paths"]
    expected = {
        ("/v1/orders", "post"): ["buyer", "cooperative", "farmer"],
        ("/v1/orders", "get"): ["buyer", "cooperative", "farmer"],
        ("/v1/orders/{order_id}", "delete"): ["buyer", "cooperative", "farmer"],
        ("/v1/orders/{order_id}", "patch"): ["buyer", "cooperative", "farmer"],
        ("/v1/fills", "get"): ["buyer", "cooperative", "farmer"],
        ("/v1/lots", "post"): ["cooperative", "farmer"],
        ("/v1/lots/{lot_id}", "get"): ["cooperative", "farmer"],
        ("/v1/instruments", "post"): ["operator"],
        ("/v1/instruments/{instrument}/halt", "post"): ["operator"],
        ("/v1/instruments/{instrument}/reference-price", "post"): ["operator"],
    }
    for (path, method), roles in expected.items():
        assert paths[path][method]["x-hogx-roles"] == roles, (path, method)
    for path in ("/v1/instruments", "/v1/markets/{instrument}/book", "/v1/markets/{instrument}/trades",
                 "/v1/markets/{instrument}/candles"):
        assert "security" not in paths[path]["get"]
    place = doc["components"]["schemas"]["PlaceOrderRequest"]
    assert place["additionalProperties"] is False
    assert set(place["required"]) == {"client_order_id", "instrument", "side", "quantity_heads"}
    assert place["properties"]["client_order_id"]["maxLength"] == 36


# -- the read model against the core ---------------------------------------------------------------------

_SYMBOLS = ("P-A", "P-B")
_BUYERS, _SELLERS = (11, 12), (21, 22)


def _command_strategy() -> st.SearchStrategy[Command]:
    price = st.integers(2690, 2910).map(lambda p: p - p % 10)
    symbol = st.sampled_from(_SYMBOLS)
    place_buy = st.builds(
        lambda pid, sym, px, qty, tif, market: PlaceOrder(
            pid, 0, "", sym, Side.BUY, OrderType.MARKET if market else OrderType.LIMIT, 0 if market else px, qty,
            TimeInForce.IOC if market else tif),
        st.sampled_from(_BUYERS), symbol, price, st.integers(1, 30),
        st.sampled_from([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC]), st.booleans())
    place_sell = st.builds(
        lambda pid, sym, px, qty, aon: PlaceOrder(pid, 0, "", sym, Side.SELL, OrderType.LIMIT, px, qty,
                                                  all_or_none=aon, lot_id=-1),
        st.sampled_from(_SELLERS), symbol, price, st.integers(1, 30), st.booleans())
    target = st.integers(1, 60)
    cancel = st.builds(lambda pid, oid: CancelOrder(pid, 0, oid), st.sampled_from(_BUYERS + _SELLERS), target)
    amend = st.builds(lambda pid, oid, px, qty: AmendOrder(pid, 0, oid, px, qty),
                      st.sampled_from(_BUYERS + _SELLERS), target, st.one_of(st.just(0), price), st.integers(0, 40))
    session = st.builds(lambda kind, sym: kind(1, 0, sym), st.sampled_from([Halt, Resume, StartAuction, Uncross]),
                        symbol)
    return st.one_of(place_buy, place_buy, place_sell, place_sell, cancel, amend, session)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(_command_strategy(), min_size=1, max_size=80), cuts=st.lists(st.integers(1, 9), max_size=40))
def test_read_model_and_its_deltas_follow_the_core_exactly(commands: list[Command], cuts: list[int]) -> None:
    """Commands in random batches: after every batch the read model's books, open orders and lots equal
    the core's, and the batch's deltas chain on the previous ones and rebuild the same books."""
    core, read_model = Core(), ReadModel()
    setup: list[Command] = [ListInstrument(1, 0, _spec(s)) for s in _SYMBOLS]
    setup += [RegisterLot(pid, 0, s, 10_000, 110_000, "荣昌", "cert") for pid in _SELLERS for s in _SYMBOLS]
    lots = {(pid, s): 1 + i for i, (pid, s) in enumerate((p, s) for p in _SELLERS for s in _SYMBOLS)}
    followers: dict[str, tuple[int, dict[tuple[int, int], int]]] = {}
    entries = []
    for seq, command in enumerate([*setup, *commands], start=1):
        if isinstance(command, PlaceOrder):
            lot_id = lots[(command.participant_id, command.instrument)] if command.side == Side.SELL else 0
            command = msgspec.structs.replace(command, client_order_id=f"c{seq}", lot_id=lot_id)
        command = msgspec.structs.replace(command, ts_ns=seq)
        entries.append((seq, command, core.apply(command)))
    cuts_iter = iter(cuts)
    start = 0
    while start < len(entries):
        end = min(len(entries), start + next(cuts_iter, 5))
        batch = entries[start:end]
        # A batch is folded only once committed; the core ran ahead, so compare against a replay.
        replay = Core()
        for _, command, _ in entries[:end]:
            replay.apply(command)
        digest = read_model.apply_batch(batch, placed=True)
        _check_placed(digest.placed, batch)
        _check_deltas(digest, followers)
        _check_against(read_model, replay, followers)
        start = end


def test_the_report_of_a_placed_order_is_as_of_its_own_command() -> None:
    """A buy sweeping two asks, then (same batch) a sell filling what it left: the fold's report of the
    buy shows its two fills and one head left, as `place_outcome` does, not the later fill."""
    core, read_model = Core(), ReadModel()
    seller, buyer, symbol = _SELLERS[0], 900, _SYMBOLS[0]
    commands: list[Command] = [ListInstrument(1, 0, _spec(symbol)),
                               RegisterLot(seller, 0, symbol, 100, 110_000, "荣昌", "c")]
    sell = PlaceOrder(seller, 0, "s", symbol, Side.SELL, OrderType.LIMIT, 2800, 1, TimeInForce.GTC, lot_id=1)
    commands += [msgspec.structs.replace(sell, client_order_id=f"s{i}") for i in range(2)]
    commands.append(PlaceOrder(buyer, 0, "b", symbol, Side.BUY, OrderType.LIMIT, 2800, 3, TimeInForce.GTC))
    commands.append(msgspec.structs.replace(sell, client_order_id="s2"))
    entries = [(seq, c, core.apply(msgspec.structs.replace(c, ts_ns=seq)))
               for seq, c in enumerate((msgspec.structs.replace(c, ts_ns=0) for c in commands), start=1)]
    read_model.apply_batch(entries[:4])
    placed = read_model.apply_batch(entries[4:], placed=True).placed
    assert placed is not None
    buy = placed[5]
    assert (buy.status, len(buy.fills), buy.filled_heads, buy.remaining_heads) == ("PARTIALLY_FILLED", 2, 2, 1)
    _check_placed(placed, entries[4:])
    assert read_model.orders[buy.order_id].remaining_heads == 0  # filled by the sell after it


def _spec(symbol: str) -> InstrumentSpec:
    return InstrumentSpec(symbol, ProductClass.FINISHING_HOG, BreedClass.WAI_SAN_YUAN, "Rongchang", 100_000,
                          120_000, 90_000, 140_000, 10, 1, 500, 400, 2800)


def _check_placed(placed: dict[int, ExecutionReport] | None, batch: list[tuple[int, Command, list[Event]]]) -> None:
    """The reports the fold made of the orders placed are the order handlers' answers: what `place_outcome`
    makes of each PlaceOrder's own events (which raises the rejection of one not placed)."""
    assert placed is not None
    answered = {}
    for seq, command, events in batch:
        if isinstance(command, PlaceOrder):
            with contextlib.suppress(ApiError):
                answered[seq] = place_outcome(command, events)
    assert placed == answered


def _check_deltas(digest: Any, followers: dict[str, tuple[int, dict[tuple[int, int], int]]]) -> None:
    for symbol, delta in digest.instruments.items():
        last_seq, levels = followers.get(symbol, (0, {}))
        assert delta.first_seq == last_seq + 1, (symbol, delta.first_seq, last_seq)
        for key, heads in delta.levels.items():
            if heads:
                levels[key] = heads
            else:
                levels.pop(key, None)
        followers[symbol] = (delta.last_seq, levels)


def _check_against(read_model: ReadModel, core: Core,
                   followers: dict[str, tuple[int, dict[tuple[int, int], int]]]) -> None:
    for symbol in core.markets:
        seq, bids, asks = core.depth(symbol, 10_000)
        record = read_model.instruments[symbol]
        assert (record.seq, *record.depth()) == (seq, bids, asks)
        assert record.state == core.markets[symbol].state
        last_seq, levels = followers[symbol]
        assert last_seq == seq
        assert sorted((p, h) for (side, p), h in levels.items() if side == Side.BUY) == sorted(bids)
        assert sorted((p, h) for (side, p), h in levels.items() if side == Side.SELL) == sorted(asks)
    open_ids = {oid for oid, rec in read_model.orders.items() if rec.status in ("NEW", "PARTIALLY_FILLED")}
    assert open_ids == set(core.orders)
    for order_id, order in core.orders.items():
        rec = read_model.orders[order_id]
        assert (rec.price_fen, rec.quantity_heads, rec.filled_heads, rec.remaining_heads) == (
            order.price_fen, order.quantity_heads, order.filled_heads, order.remaining_heads)
    for rec in read_model.orders.values():
        assert rec.filled_heads == sum(f.quantity_heads for f in rec.fills)
    for lot_id, lot in core.lots.items():
        mine = read_model.lots[lot_id]
        assert (mine.reserved_heads, mine.sold_heads) == (lot.reserved_heads, lot.sold_heads)
