"""The read model's snapshot format (gateway/readmodel_codec.py): exact round trips, a snapshot taken in
slices while batches are folded between them, slices of bounded size, the event loop running between
slices in the gateway, and format 3 (pickle) rows still read, through an unpickler that builds nothing
else. Nothing here measures time: the bound on a stall is the slice's size, asserted as a count.
"""

from __future__ import annotations

import asyncio
import math
import os
import pickle
from typing import Any

import msgspec
import pytest

from benchmarks.readmodel_snapshot import OrderFlow
from gateway import exchange_port, readmodel_codec
from gateway.auth import Role
from gateway.index import DayCell, Finality
from gateway.readmodel import ReadModel
from gateway.testing import ok, running_exchange
from tests.conftest import FreshDatabase

RETENTION_NS = 1_000_000  # 1 ms of the flow's clock (1 µs a command): orders close and are forgotten


def _view(model: ReadModel) -> dict[str, Any]:
    """Everything the model answers from, as plain values (the model's own attributes, not the codec's)."""
    finality = Finality([r.spec for r in model.instruments.values()], model.non_trading_days, 0)
    return {
        "seq": (model.applied_seq, model.seq, model.projected_seq, model.trade_count, model.traded_heads,
                model.last_lot_id),
        "orders": [msgspec.structs.astuple(r) for r in model.orders.values()],
        "orders_by_participant": model.orders_by_participant,
        "fills": model.fills_by_participant,
        "lots": (model.lots, model.lots_by_participant, model.retired_lots, model.auctions, model.retired_auctions),
        "instruments": {s: (r.spec, r.state, r.state_reason, r.seq, list(r.bids.items()), list(r.asks.items()),
                            list(r.trades), r.seller_fee_bps, r.reference_price_fen, r.band_low_fen, r.band_high_fen,
                            r.trades.maxlen, [list(x.candles) for x in r.series])
                        for s, r in model.instruments.items()},
        "candles": {k: (s.interval_ms, s.max_candles, list(s.candles)) for k, s in model.candles.items()},
        "index": [row for day in sorted(model.index.days) for row in model.index.rows(day, finality)],
        "index_held": _index_view(model),
        "queues": (list(model.closed_orders), list(model.fill_times), list(model.lot_closes),
                   list(model.auction_ends)),
        "forgotten": (model.forgotten_orders, model.forgotten_fills, model.non_trading_days),
    }


def _index_view(model: ReadModel) -> tuple[Any, ...]:
    """The price index's state; a series' first and base rows are the held rows themselves when held."""
    index = model.index
    cells = {id(c): (day, key) for day, row in index.days.items() for key, c in row.items()}

    def cell(c: DayCell) -> tuple[Any, ...]:
        return (c.day, c.heads, c.price_heads, c.value_fen, c.trades, c.last_ns, c.last_seq, cells.get(id(c)))

    return ({day: {key: cell(c) for key, c in row.items()} for day, row in index.days.items()},
            {key: cell(c) for key, c in index.first.items()}, index.named,
            {key: cell(c) for key, c in index.named_base.items()}, index.unresolved, index.dropped_through,
            index.open_from, index.projected_seq)


def _restored(data: bytes) -> ReadModel:
    model = ReadModel()
    readmodel_codec.restore(model, data)
    return model


def _shares_fills(model: ReadModel) -> bool:
    """A held fill is the very object in its order's fills, as the fold makes it."""
    in_orders = {id(f) for r in model.orders.values() for f in r.fills}
    return all(id(f) in in_orders for fills in model.fills_by_participant.values() for f in fills)


def _flow(open_orders: int) -> OrderFlow:
    """A model with open orders, fills, closed and forgotten orders, candles and index days."""
    flow = OrderFlow(seed=3)
    while len(flow.core.orders) < open_orders:
        flow.orders(500)
        flow.model.projected_seq = flow.seq  # the PostgreSQL projection has everything: ticks forget
        flow.tick(RETENTION_NS)
    return flow


def test_a_snapshot_restores_exactly_what_the_model_holds() -> None:
    flow = _flow(3 * readmodel_codec.ORDER_SLICE)
    model = flow.model
    assert model.forgotten_orders and model.closed_orders and model.fill_times and model.candles
    data = readmodel_codec.snapshot(model)
    assert data.startswith(readmodel_codec.MAGIC)
    restored = _restored(data)
    assert _view(restored) == _view(model)
    assert _shares_fills(restored)
    assert readmodel_codec.snapshot(restored) == data


def test_a_model_restored_then_folded_equals_the_one_folded_throughout() -> None:
    original, twin = _flow(2 * readmodel_codec.ORDER_SLICE), _flow(2 * readmodel_codec.ORDER_SLICE)
    twin.model = _restored(readmodel_codec.snapshot(twin.model))
    for flow in (original, twin):
        flow.orders(3_000)
        flow.model.projected_seq = flow.seq
        flow.tick(RETENTION_NS)
    assert _view(twin.model) == _view(original.model)


@pytest.mark.parametrize(("order_slice", "queue_slice"), [(readmodel_codec.ORDER_SLICE, readmodel_codec.QUEUE_SLICE),
                                                        (300, 40)])
def test_a_snapshot_taken_in_slices_while_batches_fold_is_the_model_at_its_last_slice(order_slice: int,
                                                                                    queue_slice: int) -> None:
    """Between slices: new orders, fills, cancels, and a tick that forgets closed orders and old fills
    (the queues lose entries at the front while they are sliced, with small slices)."""
    flow = _flow(4 * readmodel_codec.ORDER_SLICE)
    model = flow.model
    steps = readmodel_codec.snapshot_steps(model, order_slice, queue_slice)
    kinds = []
    while True:
        try:
            kinds.append(next(steps)[0])
        except StopIteration as done:
            data = b"".join(done.value)
            break
        flow.orders(100)
        model.projected_seq = flow.seq
        flow.tick(RETENTION_NS)
    assert {"orders", "instruments", "closed_orders", "fill_times"} <= set(kinds)
    assert kinds.count("orders") >= 4
    if queue_slice < readmodel_codec.QUEUE_SLICE:
        assert kinds.count("closed_orders") > 3 and kinds.count("fill_times") > 3
    assert model.snapshot_changes is None
    restored = _restored(data)
    assert _view(restored) == _view(model)
    assert _shares_fills(restored)


def test_each_slice_encodes_at_most_a_slice() -> None:
    """The bound on one stall: a slice's size, not the open state's (which is larger than a slice here)."""
    flow = _flow(5 * readmodel_codec.ORDER_SLICE)
    model = flow.model
    limits = {"orders": readmodel_codec.ORDER_SLICE, "instruments": 1, "closed_orders": 50, "fill_times": 50}
    sizes = {"orders": len(model.orders), "instruments": len(model.instruments),
             "closed_orders": len(model.closed_orders), "fill_times": len(model.fill_times)}
    assert sizes["orders"] > limits["orders"] and sizes["closed_orders"] > 50 and sizes["fill_times"] > 50
    steps = readmodel_codec.snapshot_steps(model, queue_slice=50)
    counts: dict[str, list[int]] = {kind: [] for kind in limits}
    with pytest.raises(StopIteration):
        while True:
            kind, count = next(steps)
            counts[kind].append(count)
    for kind, limit in limits.items():
        assert max(counts[kind]) <= limit
        assert sum(counts[kind]) == sizes[kind]
        assert len(counts[kind]) == math.ceil(sizes[kind] / limit)


def test_an_abandoned_snapshot_stops_noting_changes_and_one_at_a_time() -> None:
    model = _flow(100).model
    steps = readmodel_codec.snapshot_steps(model)
    next(steps)
    with pytest.raises(RuntimeError, match="already being taken"):
        next(readmodel_codec.snapshot_steps(model))
    steps.close()
    assert model.snapshot_changes is None
    assert _view(_restored(readmodel_codec.snapshot(model))) == _view(model)


def _pickled(model: ReadModel, form: int = 4) -> bytes:
    """What the read model saved before format 5 (its `snapshot` then): the oracle of the old rows."""
    state = {k: v for k, v in model.__dict__.items()
             if k not in {"_handlers", "orders", "fills_by_participant", "snapshot_changes"}}
    bulk = msgspec.msgpack.encode(readmodel_codec._PickledBulk(list(model.orders.values()),
                                                               model.fills_by_participant))
    return pickle.dumps((form, state, bulk), protocol=pickle.HIGHEST_PROTOCOL)


def test_a_format_4_snapshot_is_still_read() -> None:
    model = _flow(1_000).model
    model.non_trading_days.add(20260501)
    restored = _restored(_pickled(model))
    assert _view(restored) == _view(model)
    assert _shares_fills(restored)
    with pytest.raises(ValueError, match="older or unknown format"):  # format 3: another price index
        _restored(_pickled(model, 3))


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo unsafe",))


@pytest.mark.parametrize("data", [pickle.dumps((3, {"x": _Boom()}, b"")), b"HXRM\x00\x09rest", b"not a snapshot"])
def test_a_row_of_another_format_or_a_hostile_pickle_is_refused(data: bytes) -> None:
    model = ReadModel()
    with pytest.raises(ValueError):
        readmodel_codec.restore(model, data)
    assert _view(model) == _view(ReadModel())


async def test_the_gateway_gives_the_event_loop_a_turn_between_slices(fresh_database_url: FreshDatabase) -> None:
    """While the gateway takes a snapshot, other tasks (requests, batches) run after every slice."""
    dsn = await fresh_database_url()
    async with running_exchange(dsn, snapshot_every=10**9) as exchange:
        await exchange.list_instrument("LH-SNAP")
        buyer = await exchange.register(Role.BUYER, "重庆肉联")
        for i in range(5):
            ok(await buyer.post("/v1/orders", json={"client_order_id": f"b{i}", "instrument": "LH-SNAP",
                                                    "side": "buy", "quantity_heads": 1, "price_fen": 2_700}), 201)
        shard = exchange.app[exchange_port.EXCHANGE].shard
        turns = 0

        async def ticker() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)
        before, started = shard.snapshot_slices, turns
        await shard._save_snapshot()
        slices = shard.snapshot_slices - before
        task.cancel()
        assert slices >= 2  # the orders, then the instrument
        assert turns - started >= slices  # the ticker ran after each slice
        assert ok(await buyer.get("/v1/orders"))["orders"]
