"""Snapshots of the core: one canonical encoding of the whole state, used both to restore a core and,
hashed, as its state hash.

The encoding lists markets, lots, client order ids and client lot refs in the order they were created
and each book's orders in priority order, so two cores that saw the same commands encode to the same
bytes. It holds only what the core holds: live lots, resting orders, the ids and refs inside the
retention window and when each was last looked at (``order_id_times``, ``lot_times``: the core's
"Memory"), and the clearing's and ledger's live state, so its size and encoding time follow the open
state, not the history.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec

from exchange.domain import InstrumentSpec, Lot, SelfTradePrevention, Side, TimeInForce, TradingState
from exchange.matching.book import Counters, LotState, Order, OrderBook
from exchange.settlement.clearing import Clearing

SNAPSHOT_VERSION = 1


# What this module reads of a core and sets on one it restores, declared here so that it needs nothing of
# core.py: core.py imports this module (``Core.snapshot``, ``Core.from_snapshot``), never the reverse.
class Snapshotted(Protocol):
    """A part of the core with its own snapshot (the trading calendar, the lot auctions)."""

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class MarketState(Protocol):
    """A market (``core.Market``): its specification, trading state, reference price and book."""

    spec: InstrumentSpec
    state: int
    resume_state: int
    reference_price_fen: int
    book: OrderBook

    def set_reference(self, price_fen: int) -> None: ...


class CoreState(Protocol):
    """A core (``core.Core``): what its snapshot holds (see the module docstring)."""

    clearing: Clearing | None
    counters: Counters
    markets: dict[str, Any]  # symbol -> its MarketState (``core.Market``: Any, as dict values are invariant)
    lots: dict[int, LotState]
    lot_records: dict[int, Lot]
    orders: dict[int, Order]
    client_order_ids: dict[int, dict[str, int]]
    lot_refs: dict[tuple[int, str], int]
    id_times: list[Any]
    id_owners: list[Any]
    id_names: list[Any]
    id_head: int
    lot_times: deque[tuple[Any, Any, Any]]
    unqueued: bool
    expiries: list[tuple[int, int]]

    @property
    def calendar(self) -> Snapshotted: ...  # calendar.TradingCalendar

    @property
    def auctions(self) -> Snapshotted: ...  # matching.lot_auction.LotAuctions


AnyCore = TypeVar("AnyCore", bound=CoreState)


class OrderRecord(msgspec.Struct, frozen=True, array_like=True):
    order_id: int
    participant_id: int
    client_order_id: str
    side: Side
    price_fen: int
    quantity_heads: int
    remaining_heads: int
    filled_heads: int
    time_in_force: TimeInForce
    expire_at_ns: int
    post_only: bool
    all_or_none: bool
    stp: SelfTradePrevention
    lot_id: int
    priority: int


class MarketRecord(msgspec.Struct, frozen=True, array_like=True):
    spec: InstrumentSpec
    state: TradingState
    resume_state: TradingState
    reference_price_fen: int
    seq: int
    bids: list[OrderRecord]
    asks: list[OrderRecord]


class LotRecord(msgspec.Struct, frozen=True, array_like=True):
    lot: Lot
    reserved_heads: int
    sold_heads: int


class CoreRecord(msgspec.Struct, frozen=True, array_like=True):
    version: int
    counters: tuple[int, int, int, int]
    markets: list[MarketRecord]
    lots: list[LotRecord]
    client_order_ids: list[tuple[int, str, int]]
    clearing: bytes = b""  # the settlement stage's own snapshot; empty for a matching-only core
    lot_refs: list[tuple[int, str, int]] = []  # (seller, client lot ref, lot id), in registration order
    auctions: bytes = b""  # the live lot auctions (matching/lot_auction.py); empty if none was ever offered
    # When each client order id held (by its order id) and each lot held was last looked at, in the order
    # the core looks at them again (Core.forget); empty in snapshots of earlier versions.
    order_id_times: list[tuple[int, int]] = []  # (accepted or last looked at, order id)
    lot_times: list[tuple[int, int]] = []  # (registered or last looked at, lot id)
    calendar: bytes = b""  # the trading calendar's own snapshot (exchange/calendar.py); empty if never used


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CoreRecord)
_REQUIRED_FIELDS = 6  # version .. clearing: always written


def _order_record(o: Order) -> OrderRecord:
    return OrderRecord(
        o.order_id, o.participant_id, o.client_order_id, Side(o.side), o.price_fen, o.quantity_heads,
        o.remaining_heads, o.filled_heads, TimeInForce(o.time_in_force), o.expire_at_ns, o.post_only, o.all_or_none,
        SelfTradePrevention(o.stp), 0 if o.lot is None else o.lot.lot_id, o.priority,
    )  # fmt: skip


def _market_record(m: MarketState) -> MarketRecord:
    bids = [_order_record(o) for o in m.book.bids.iter_orders()]
    asks = [_order_record(o) for o in m.book.asks.iter_orders()]
    return MarketRecord(
        m.spec, TradingState(m.state), TradingState(m.resume_state), m.reference_price_fen, m.book.seq, bids, asks
    )


def encode_core(core: CoreState) -> bytes:
    c = core.counters
    markets = [_market_record(m) for m in core.markets.values()]
    lots = [LotRecord(core.lot_records[i], s.reserved_heads, s.sold_heads) for i, s in core.lots.items()]
    # in order id order, which is the order they were used in (and the order earlier versions wrote)
    ids = sorted(((p, cid, oid) for p, used in core.client_order_ids.items() for cid, oid in used.items()),
                 key=lambda entry: entry[2])
    clearing = b"" if core.clearing is None else core.clearing.snapshot()
    lot_refs = [(p, ref, lot_id) for (p, ref), lot_id in core.lot_refs.items()]
    used = core.client_order_ids
    head = core.id_head
    order_id_times = [(at, used[p][cid]) for at, p, cid in zip(core.id_times[head:], core.id_owners[head:],
                                                                core.id_names[head:], strict=True)]
    lot_times = [(at, lot_id) for at, lot_id, _ in core.lot_times]
    record = CoreRecord(
        SNAPSHOT_VERSION, (c.next_order_id, c.next_trade_id, c.next_priority, c.next_lot_id), markets, lots, ids,
        clearing, lot_refs, core.auctions.snapshot(), order_id_times, lot_times,
        core.calendar.snapshot(),
    )
    fields = msgspec.structs.astuple(record)
    # An array-like struct encodes as the tuple of its fields. Empty trailing optional fields (lot refs,
    # auctions, the forgetting queues, the calendar) are left out, so a state without them encodes to
    # exactly the bytes earlier versions wrote: their snapshots still restore to their recorded hashes
    # (the version stays 1).
    while len(fields) > _REQUIRED_FIELDS and not fields[-1]:
        fields = fields[:-1]
    return _encoder.encode(fields)


def decode_core(
    data: bytes, core_type: Callable[[Clearing | None], AnyCore],
    market_type: Callable[[InstrumentSpec, OrderBook], MarketState],
) -> AnyCore:
    """The core a snapshot holds, built by ``core_type`` (``Core`` or a subclass) from its clearing, with
    its markets built by ``market_type`` (``core.Market``)."""
    record = _decoder.decode(data)
    core = core_type(Clearing.restore(record.clearing) if record.clearing else None)
    core.counters = Counters(*record.counters)
    for lot_record in record.lots:
        lot = lot_record.lot
        core.lot_records[lot.lot_id] = lot
        core.lots[lot.lot_id] = LotState(
            lot.lot_id, lot.seller_id, lot.instrument, lot.heads, lot_record.reserved_heads, lot_record.sold_heads
        )
    for m in record.markets:
        book = OrderBook(m.spec.symbol, core.counters, core.orders)
        book.seq = m.seq
        market = market_type(m.spec, book)
        market.state, market.resume_state = m.state, m.resume_state
        market.set_reference(m.reference_price_fen)
        core.markets[m.spec.symbol] = market
        for r in [*m.bids, *m.asks]:
            _restore_order(core, book, m.spec.symbol, r)
    for p, cid, oid in record.client_order_ids:
        core.client_order_ids.setdefault(p, {})[cid] = oid
    core.lot_refs = {(p, ref): lot_id for p, ref, lot_id in record.lot_refs}
    core.auctions.restore(record.auctions)
    by_order_id = {oid: (p, cid) for p, cid, oid in record.client_order_ids}
    core.id_times = [at for at, _ in record.order_id_times]
    core.id_owners = [by_order_id[oid][0] for _, oid in record.order_id_times]
    core.id_names = [by_order_id[oid][1] for _, oid in record.order_id_times]
    core.id_head = 0
    refs = {lot_id: ref for (_, ref), lot_id in core.lot_refs.items()}
    core.lot_times = deque((at, lot_id, refs.get(lot_id, "")) for at, lot_id in record.lot_times)
    # a snapshot of an earlier version lists no times: the first tick queues what it holds
    core.unqueued = not record.order_id_times and not record.lot_times
    core.calendar.restore(record.calendar)
    heapq.heapify(core.expiries)
    return core


def _restore_order(core: CoreState, book: OrderBook, instrument: str, r: OrderRecord) -> None:
    order = Order(
        r.order_id, r.participant_id, r.client_order_id, instrument, r.side, r.price_fen, r.quantity_heads,
        r.remaining_heads, r.time_in_force, r.expire_at_ns, r.post_only, r.all_or_none, r.stp,
        core.lots.get(r.lot_id), r.priority, r.filled_heads,
    )  # fmt: skip
    core.orders[order.order_id] = order
    book.side_of(order.side).append(order)
    if order.time_in_force == TimeInForce.GTD:
        core.expiries.append((order.expire_at_ns, order.order_id))
