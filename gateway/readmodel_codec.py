"""The gateway read model's snapshot format: an explicit, versioned msgpack encoding of what the model
holds (gateway/readmodel.py), and nothing of its internals.

Format 5 (`FORMAT`): the bytes start with `MAGIC` and the format as two bytes, then one msgpack array
(`_Snapshot`, field order fixed):

- the orders held (open ones, and closed ones inside the retention window), in slices of at most
  `ORDER_SLICE` `OrderRecord`s (array-like, with their fills), then a patch: the records of the orders
  that changed while the slices were taken and the ids of those that went;
- each instrument (`_Instrument`: specification, state, L2 levels, public trades, candles), one slice
  each, patched the same way;
- the forgetting queues (`ReadModel.closed_orders`, `fill_times`: one entry per held closed order
  and per held fill) as `_Queue`s, in slices of at most `QUEUE_SLICE` entries, with what was added
  while they were taken and how many left their front meanwhile;
- the rest (`_Rest`), taken in the last step: counters, lots, lot auctions, the price index's rows
  held and per series its first, named and base days (`_Index`), forgotten ids, retired lots and
  auctions, and per participant how many fills are held (count, first and last trade id).

Derived indexes are not stored but rebuilt by `restore`: each participant's order and lot ids (from
the orders and lots, held in id order), the held fills (each is one of a held order's fills: the
participant's newest `count`, checked against the stored trade ids), the candle series' sharing
between `ReadModel.candles` and the instruments, the price index's first and base rows' sharing with
the rows held.

Why slices: a snapshot is taken while the gateway serves. `snapshot_steps` encodes one slice per step
(at most `ORDER_SLICE` orders, one instrument, or `QUEUE_SLICE` queue entries) and the caller gives the
event loop a turn between steps (`gateway.exchange_port.Shard`), so the longest stall is one slice, or
the last step, whatever the number of open orders. Batches folded between steps note what they change
(`ReadModel.snapshot_changes`: order ids, instrument symbols, entries gone from the queues' fronts); the
last step, run without a break, encodes the changed orders and instruments again, what was added to the
queues, and the rest (lots, auctions, index: small), so the result is exactly the model as of its
`applied_seq` then. It returns the encoded pieces; joining them into one `bytes` touches no model and
is done off the event loop's thread. `snapshot` runs every step at once and joins.

msgspec structs, not plain tuples: at 75,000 open orders the orders encode in ~45 ms and decode in
~100 ms as array-like structs, against ~500 ms each way when built as tuples in Python and rebuilt
(benchmarks/readmodel_snapshot.py prints both).

Older formats: a format 4 row (pickle of the model's objects with msgspec orders, before this module)
is still read, by `_pickled` through an unpickler that only builds the classes that format held (no
other callable is ever looked up), so a gateway upgraded after old journal days were archived still
starts from it; the next snapshot is written in format 5. Anything else (format 3, whose price index
had another shape, or an unknown format) raises `ValueError`, and the caller tries an older snapshot or
folds the journal (`gateway.exchange_port.Shard._load_snapshot`).
"""

from __future__ import annotations

import collections
import enum
import io
import itertools
import operator
import pickle
import sys
from collections import deque
from collections.abc import Generator
from typing import Any, Final

import msgspec
from sortedcontainers import SortedDict

from exchange.domain import InstrumentSpec, LotAuction, TradingState
from gateway.index import DayCell, PriceIndex, SeriesKey
from gateway.readmodel import InstrumentRecord, LotRecord, OrderRecord, ReadModel, SnapshotChanges, _Series
from gateway.schemas import CANDLE_INTERVAL_MS, CandleInterval, Fill, TradeView

__all__ = ["FORMAT", "MAGIC", "ORDER_SLICE", "restore", "snapshot", "snapshot_steps"]

MAGIC: Final = b"HXRM"
FORMAT: Final = 5  # (4 and 3 were pickles)
ORDER_SLICE: Final = 1_000  # orders encoded per step: a millisecond or two of the event loop
QUEUE_SLICE: Final = 10_000  # forgetting queue entries (three integers) encoded per step: about as long
_HEADER: Final = MAGIC + FORMAT.to_bytes(2, "big")
_INTERVALS: Final = tuple(CandleInterval)
_FOLD_ORDER: Final = operator.attrgetter("trade_id", "side")  # by trade; of a self-trade, "buy" first


class _Instrument(msgspec.Struct, array_like=True, gc=False):
    spec: InstrumentSpec
    state: TradingState
    state_reason: str
    seq: int
    bids: list[tuple[int, int]]  # (-price_fen, heads), as `InstrumentRecord.bids` keys them
    asks: list[tuple[int, int]]
    trades: list[TradeView]  # oldest first
    seller_fee_bps: int
    reference_price_fen: int
    candles: list[list[list[int]]] | None  # per `CandleInterval`, oldest first; None before its first trade


class _Cell(msgspec.Struct, array_like=True, gc=False):
    """A `DayCell`: one (day, series) row's sums."""

    day: int
    heads: int
    price_heads: int
    value_fen: int
    trades: int
    last_ns: int
    last_seq: int


class _Index(msgspec.Struct, array_like=True, gc=False):
    """A `PriceIndex`: its rows held per day, and per series what it keeps whatever is dropped."""

    days: list[tuple[int, list[tuple[SeriesKey, _Cell]]]]
    first: list[tuple[SeriesKey, _Cell]]
    named: list[tuple[SeriesKey, int]]
    named_base: list[tuple[SeriesKey, _Cell]]
    unresolved: list[tuple[SeriesKey, int]]
    dropped_through: list[tuple[SeriesKey, int]]
    open_from: int
    projected_seq: int


class _Rest(msgspec.Struct, array_like=True, gc=False):
    applied_seq: int
    seq: int
    projected_seq: int
    trade_count: int
    traded_heads: int
    last_lot_id: int
    non_trading_days: list[int]
    lots: list[LotRecord]
    auctions: list[LotAuction]
    index: _Index
    forgotten_orders: dict[int, int]
    forgotten_fills: dict[int, int]
    fills_held: dict[int, tuple[int, int, int]]  # participant -> (count, first trade id, last trade id)
    lot_closes: list[tuple[int, int]]
    auction_ends: list[tuple[int, int]]
    retired_lots: list[LotRecord]
    retired_auctions: list[LotAuction]


class _Queue(msgspec.Struct, array_like=True, gc=False):
    """A queue that grows at the back and loses entries at the front, taken in slices: each piece is
    (the position of its first entry, its entries), positions counted from the queue's front when the
    snapshot began; the entries before position `popped` left meanwhile."""

    popped: int
    pieces: list[tuple[int, list[tuple[int, int, int]]]]


class _Snapshot(msgspec.Struct, array_like=True, gc=False):
    """The msgpack array after the header; `snapshot_steps` writes it piece by piece (`_array`)."""

    order_slices: list[list[OrderRecord]]
    order_patch: list[OrderRecord]
    orders_gone: list[int]
    instruments: list[_Instrument]
    instrument_patch: list[_Instrument]
    closed_orders: _Queue
    fill_times: _Queue
    rest: _Rest


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(_Snapshot)


# -- encoding -------------------------------------------------------------------------------------------


def snapshot(model: ReadModel) -> bytes:
    """The whole snapshot at once (a clean stop, tests): every step of `snapshot_steps` in a row."""
    steps = snapshot_steps(model)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return b"".join(done.value)


def snapshot_steps(model: ReadModel, order_slice: int = ORDER_SLICE,
                   queue_slice: int = QUEUE_SLICE) -> Generator[tuple[str, int], None, list[bytes]]:
    """Encode `model` a slice per step; each `next` yields what it encoded (`orders`, `instruments`,
    `closed_orders` or `fill_times`, and how many), the last returns the snapshot as pieces to join
    (`b"".join`, which touches no model: off the loop if one likes), as of the model's `applied_seq` at
    that step. The model may fold batches between steps, not inside one. Closing the generator early
    abandons the snapshot."""
    if model.snapshot_changes is not None:
        raise RuntimeError("a read model snapshot is already being taken")
    changes = model.snapshot_changes = SnapshotChanges()
    try:
        encode = _ENCODER.encode
        ids = list(model.orders)  # ascending: orders are added in id order
        order_slices: list[bytes] = []
        for start in range(0, len(ids), order_slice):
            held = model.orders
            part = [held[i] for i in ids[start:start + order_slice] if i in held]  # gone ones: patched
            order_slices.append(encode(part))
            yield "orders", len(part)
        symbols = list(model.instruments)
        instruments: list[bytes] = []
        for symbol in symbols:
            instruments.append(encode(_instrument(model, model.instruments[symbol])))
            yield "instruments", 1
        closed = yield from _queue_slices(model, "closed_orders", "closed_popped", queue_slice)
        fills = yield from _queue_slices(model, "fill_times", "fills_popped", queue_slice)
        # the last step, without a break: what changed meanwhile, and the rest, as of now
        orders = model.orders
        order_patch = [orders[i] for i in sorted(changes.orders) if i in orders]
        gone = sorted(i for i in changes.orders if i not in orders)
        new_symbols = [s for s in model.instruments if s in changes.instruments or s not in symbols]
        instrument_patch = [_instrument(model, model.instruments[s]) for s in new_symbols]
        return [
            _HEADER, _array_head(len(_Snapshot.__struct_fields__)), *_array(order_slices), encode(order_patch),
            encode(gone), *_array(instruments), encode(instrument_patch),
            *_queue_end(model, "closed_orders", changes.closed_popped, closed),
            *_queue_end(model, "fill_times", changes.fills_popped, fills), encode(_rest(model)),
        ]  # fmt: skip
    finally:
        model.snapshot_changes = None


def _queue_slices(model: ReadModel, name: str, popped_name: str,
                  size: int) -> Generator[tuple[str, int], None, tuple[list[bytes], int]]:
    """Slices of the queue `name` as it is now (positions from the snapshot's start: `_Queue`); returns
    them and the position after the last entry they cover."""
    changes = model.snapshot_changes
    assert changes is not None
    start: int = getattr(changes, popped_name)
    end = start + len(getattr(model, name))
    pieces = []
    for first in range(start, end, size):
        popped: int = getattr(changes, popped_name)  # what left the front since the snapshot began
        last = min(first + size, end)
        first = max(first, popped)
        part = list(itertools.islice(getattr(model, name), first - popped, max(first, last) - popped))
        pieces.append(_ENCODER.encode((first, part)))
        yield name, len(part)
    return pieces, end


def _queue_end(model: ReadModel, name: str, popped: int, sliced: tuple[list[bytes], int]) -> list[bytes]:
    """A `_Queue`'s pieces: the slices, and what was added after the first of them was taken."""
    pieces, end = sliced
    first = max(end, popped)
    added = list(itertools.islice(getattr(model, name), first - popped, None))
    return [_array_head(2), _ENCODER.encode(popped), *_array([*pieces, _ENCODER.encode((first, added))])]


def _array(items: list[bytes]) -> list[bytes]:
    """A msgpack array of already encoded items, as pieces: no copy of them until the join."""
    return [_array_head(len(items)), *items]


def _array_head(length: int) -> bytes:
    """msgpack's array header: fixarray, array 16 or array 32."""
    if length < 16:
        return bytes([0x90 | length])
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


def _instrument(model: ReadModel, record: InstrumentRecord) -> _Instrument:
    candles = [list(series.candles) for series in record.series] if record.series else None
    return _Instrument(record.spec, record.state, record.state_reason, record.seq, list(record.bids.items()),
                       list(record.asks.items()), list(record.trades), record.seller_fee_bps,
                       record.reference_price_fen, candles)


def _cell(c: DayCell) -> _Cell:
    return _Cell(c.day, c.heads, c.price_heads, c.value_fen, c.trades, c.last_ns, c.last_seq)


def _index(index: PriceIndex) -> _Index:
    return _Index(
        [(day, [(key, _cell(c)) for key, c in cells.items()]) for day, cells in index.days.items()],
        [(key, _cell(c)) for key, c in index.first.items()], list(index.named.items()),
        [(key, _cell(c)) for key, c in index.named_base.items()], list(index.unresolved.items()),
        list(index.dropped_through.items()), index.open_from, index.projected_seq,
    )  # fmt: skip


def _rest(model: ReadModel) -> _Rest:
    fills_held = {p: (len(fills), fills[0].trade_id, fills[-1].trade_id)
                  for p, fills in model.fills_by_participant.items() if fills}
    return _Rest(
        model.applied_seq, model.seq, model.projected_seq, model.trade_count, model.traded_heads, model.last_lot_id,
        sorted(model.non_trading_days), list(model.lots.values()), list(model.auctions.values()),
        _index(model.index), model.forgotten_orders, model.forgotten_fills, fills_held,
        list(model.lot_closes), list(model.auction_ends),
        list(model.retired_lots.values()), list(model.retired_auctions.values()),
    )  # fmt: skip


# -- decoding -------------------------------------------------------------------------------------------


def restore(model: ReadModel, data: bytes) -> None:
    """Make `model` the one a snapshot was taken of, in place (its holders keep their reference); the
    history lengths stay the model's configured ones. Raises `ValueError` for a snapshot it cannot read
    (see the module docstring): the model is then as new."""
    trade_history, candle_history = model.trade_history, model.candle_history
    model.__init__(trade_history=trade_history, candle_history=candle_history)  # type: ignore[misc]
    if data[:len(MAGIC)] == MAGIC:
        if data[:len(_HEADER)] != _HEADER:
            raise ValueError(f"read model snapshot of format {int.from_bytes(data[4:6], 'big')}, not {FORMAT}")
        try:
            _apply(model, _DECODER.decode(memoryview(data)[len(_HEADER):]))
        except Exception:
            model.__init__(trade_history=trade_history, candle_history=candle_history)  # type: ignore[misc]
            raise
        return
    _pickled(model, data)
    model.trade_history, model.candle_history = trade_history, candle_history
    for record in model.instruments.values():
        if record.trades.maxlen != trade_history:
            record.trades = deque(record.trades, maxlen=trade_history)
    for series in model.candles.values():
        if series.max_candles != candle_history:
            series.max_candles = candle_history
            series.candles = deque(series.candles, maxlen=candle_history)


def _apply(model: ReadModel, snap: _Snapshot) -> None:
    orders = model.orders
    for part in snap.order_slices:
        for rec in part:
            orders[rec.order_id] = rec
    for rec in snap.order_patch:  # a changed one keeps its place; a new one comes last, in id order
        orders[rec.order_id] = rec
    for order_id in snap.orders_gone:
        orders.pop(order_id, None)
    by_participant = model.orders_by_participant
    for rec in orders.values():
        ids = by_participant.get(rec.participant_id)
        if ids is None:
            ids = by_participant[rec.participant_id] = []
        ids.append(rec.order_id)
    instruments = {i.spec.symbol: i for i in snap.instruments}
    instruments.update((i.spec.symbol, i) for i in snap.instrument_patch)
    for state in instruments.values():
        _restore_instrument(model, state)
    model.closed_orders = _queue(snap.closed_orders)
    model.fill_times = _queue(snap.fill_times)
    _restore_rest(model, snap.rest)


def _queue(queue: _Queue) -> deque[tuple[int, int, int]]:
    out: deque[tuple[int, int, int]] = deque()
    for first, entries in queue.pieces:
        out.extend(entries[max(0, queue.popped - first):])  # (those before `popped` left while slicing)
    return out


def _restore_instrument(model: ReadModel, state: _Instrument) -> None:
    record = InstrumentRecord(state.spec, state.seq, model.trade_history)
    record.state, record.state_reason = state.state, state.state_reason
    record.bids.update(state.bids)
    record.asks.update(state.asks)
    record.trades.extend(state.trades)
    record.seller_fee_bps = state.seller_fee_bps
    record.set_reference(state.reference_price_fen)
    if state.candles is not None:
        symbol = state.spec.symbol
        for interval, candles in zip(_INTERVALS, state.candles, strict=True):
            series = model.candles[(symbol, interval)] = _Series(CANDLE_INTERVAL_MS[interval], model.candle_history)
            series.candles.extend(candles)
            record.series.append(series)
    model.instruments[state.spec.symbol] = record


def _restore_rest(model: ReadModel, rest: _Rest) -> None:
    model.applied_seq, model.seq, model.projected_seq = rest.applied_seq, rest.seq, rest.projected_seq
    model.trade_count, model.traded_heads, model.last_lot_id = rest.trade_count, rest.traded_heads, rest.last_lot_id
    model.non_trading_days = set(rest.non_trading_days)
    for lot in rest.lots:
        model.lots[lot.lot.lot_id] = lot
        model.lots_by_participant.setdefault(lot.lot.seller_id, []).append(lot.lot.lot_id)
    model.auctions = {a.auction_id: a for a in rest.auctions}
    _restore_index(model.index, rest.index)
    model.forgotten_orders, model.forgotten_fills = rest.forgotten_orders, rest.forgotten_fills
    model.lot_closes, model.auction_ends = deque(rest.lot_closes), deque(rest.auction_ends)
    model.retired_lots = {r.lot.lot_id: r for r in rest.retired_lots}
    model.retired_auctions = {a.auction_id: a for a in rest.retired_auctions}
    model.fills_by_participant = _held_fills(model, rest.fills_held)


def _restore_index(index: PriceIndex, state: _Index) -> None:
    index.days = {day: {key: _day_cell(c) for key, c in cells} for day, cells in state.days}

    def held(key: SeriesKey, c: _Cell) -> DayCell:
        """A series' first or base row: the very row held for that day, as the fold shares it, if held."""
        cell = index.days.get(c.day, {}).get(key)
        return cell if cell is not None else _day_cell(c)

    index.first = {key: held(key, c) for key, c in state.first}
    index.named = dict(state.named)
    index.named_base = {key: held(key, c) for key, c in state.named_base}
    index.unresolved, index.dropped_through = dict(state.unresolved), dict(state.dropped_through)
    index.open_from, index.projected_seq = state.open_from, state.projected_seq


def _day_cell(c: _Cell) -> DayCell:
    cell = DayCell(c.day)
    cell.heads, cell.price_heads, cell.value_fen = c.heads, c.price_heads, c.value_fen
    cell.trades, cell.last_ns, cell.last_seq = c.trades, c.last_ns, c.last_seq
    return cell


def _held_fills(model: ReadModel, held: dict[int, tuple[int, int, int]]) -> dict[int, list[Fill]]:
    """Each participant's newest `count` fills, taken from their held orders (the very objects, shared as
    the fold shares them). A held fill's order is always held: an order is forgotten only after its last
    fill (`ReadModel.forget`); the stored first and last trade ids check it."""
    out: dict[int, list[Fill]] = {}
    orders = model.orders
    for participant_id, (count, first_id, last_id) in held.items():
        fills = [f for order_id in model.orders_by_participant.get(participant_id, ())
                 for f in orders[order_id].fills]
        fills.sort(key=_FOLD_ORDER)
        newest = fills[len(fills) - count:] if count <= len(fills) else []
        if not newest or (newest[0].trade_id, newest[-1].trade_id) != (first_id, last_id):
            raise ValueError(f"read model snapshot: participant {participant_id}'s held fills are not in its orders")
        out[participant_id] = newest
    return out


# -- format 4 (pickle), read only ---------------------------------------------------------------------

_PICKLED_FORMAT: Final = 4


class _PickledBulk(msgspec.Struct, array_like=True, gc=False):
    orders: list[OrderRecord]
    fills: dict[int, list[Fill]]


class _Unpickler(pickle.Unpickler):
    """Builds only the kinds of object a format 4 snapshot held: the read model's own classes, deques,
    sorted dicts, and the enums and msgspec structs of the domain and API modules (data, whose building
    has no effect). Any other global is refused, so a row cannot make the loader call anything else."""

    def find_class(self, module: str, name: str) -> Any:
        found = _PICKLED_CLASSES.get((module, name))
        if found is None and module in _PICKLED_DATA_MODULES:
            candidate = getattr(sys.modules[module], name, None)
            if isinstance(candidate, type) and issubclass(candidate, (enum.Enum, msgspec.Struct)):
                found = candidate
        if found is None:
            raise ValueError(f"read model snapshot names {module}.{name}, which format 4 never held")
        return found


_PICKLED_CLASSES: Final = {(c.__module__, c.__qualname__): c for c in (
    collections.deque, SortedDict, InstrumentRecord, _Series, LotRecord, PriceIndex, DayCell)}
_PICKLED_DATA_MODULES: Final = frozenset({"exchange.domain", "gateway.schemas"})


def _pickled(model: ReadModel, data: bytes) -> None:
    """A format 4 snapshot: (4, the model's attributes but orders and fills, msgpack of those)."""
    try:
        loaded = _Unpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"read model snapshot of an unknown format: {exc}") from exc
    if not (isinstance(loaded, tuple) and len(loaded) == 3 and loaded[0] == _PICKLED_FORMAT):
        raise ValueError("read model snapshot of an older or unknown format")
    bulk = msgspec.msgpack.decode(loaded[2], type=_PickledBulk)
    model.__dict__.update(loaded[1])
    model.orders = {rec.order_id: rec for rec in bulk.orders}
    shared = {(f.trade_id, f.order_id): f for rec in bulk.orders for f in rec.fills}
    model.fills_by_participant = {p: [shared.get((f.trade_id, f.order_id), f) for f in fills]
                                  for p, fills in bulk.fills.items()}
    model.snapshot_changes = None
