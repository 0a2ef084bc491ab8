"""Events: everything the core says happened, one tagged union ``Event``.

Each event carries ``seq``, the sequence number of its instrument (1, 2, 3, ... per instrument, so a
market-data consumer can detect gaps), and ``ts_ns`` of the command that caused it. Events that
belong to no instrument (a rejection naming an unknown one) carry ``seq`` 0.

``BookChanged`` carries the absolute number of heads now resting at one price level of one side;
0 means the level is gone. The events of one command are complete: applying a command's
``BookChanged`` events to an L2 picture of the book gives the book after the command.
"""

from __future__ import annotations

from typing import Union

import msgspec

from exchange.domain import (
    ExpireReason,
    InstrumentSpec,
    Lot,
    RejectReason,
    Side,
    TradingState,
)


class _Event(msgspec.Struct, frozen=True, tag=True, array_like=True, gc=False):
    seq: int
    ts_ns: int


class InstrumentListed(_Event, frozen=True):
    spec: InstrumentSpec


class LotRegistered(_Event, frozen=True):
    lot: Lot


class OrderAccepted(_Event, frozen=True):
    order_id: int
    participant_id: int
    client_order_id: str
    instrument: str
    side: Side
    price_fen: int  # the limit; for a market order the band edge it may trade up to, 0 if unbanded
    quantity_heads: int
    lot_id: int


class Rejected(_Event, frozen=True):
    """A command that changed nothing. It takes no sequence number (``seq`` is 0)."""

    participant_id: int
    reason: RejectReason
    client_order_id: str = ""  # for a rejected PlaceOrder
    order_id: int = 0  # for a rejected CancelOrder / AmendOrder
    instrument: str = ""


class Trade(_Event, frozen=True):
    """One fill. ``taker_side`` is the aggressor's side, or 0 for an auction uncross."""

    instrument: str
    trade_id: int
    price_fen: int
    quantity_heads: int
    buy_order_id: int
    sell_order_id: int
    buyer_id: int
    seller_id: int
    lot_id: int
    taker_side: int
    buy_remaining_heads: int
    sell_remaining_heads: int


class OrderCancelled(_Event, frozen=True):
    order_id: int
    participant_id: int
    instrument: str
    cancelled_heads: int


class OrderExpired(_Event, frozen=True):
    order_id: int
    participant_id: int
    instrument: str
    expired_heads: int
    reason: ExpireReason


class OrderAmended(_Event, frozen=True):
    order_id: int
    participant_id: int
    instrument: str
    price_fen: int
    quantity_heads: int  # new total: filled + remaining
    remaining_heads: int
    priority_kept: bool


class BookChanged(_Event, frozen=True):
    instrument: str
    side: Side
    price_fen: int
    level_heads: int


class TradingStateChanged(_Event, frozen=True):
    instrument: str
    state: TradingState


class ReferencePriceSet(_Event, frozen=True):
    instrument: str
    price_fen: int


class AuctionUncrossed(_Event, frozen=True):
    instrument: str
    price_fen: int  # 0 when nothing could trade
    quantity_heads: int


Event = Union[  # noqa: UP007 - msgspec needs a real Union object to build a tagged decoder
    InstrumentListed,
    LotRegistered,
    OrderAccepted,
    Rejected,
    Trade,
    OrderCancelled,
    OrderExpired,
    OrderAmended,
    BookChanged,
    TradingStateChanged,
    ReferencePriceSet,
    AuctionUncrossed,
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    return _decoder.decode(data)
