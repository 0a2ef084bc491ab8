"""Commands: the only way anything changes in the exchange.

Every command is an immutable msgspec struct in one tagged union, ``Command``. The gateway builds
them, the sequencer stamps ``ts_ns`` (``stamp``), journals them in order, and ``Core.apply`` turns
each into events. They are encoded array-like into the journal; add new fields only at the end and
only with defaults, so old journals still decode and replay.
"""

from __future__ import annotations

from typing import Union

import msgspec

from exchange.domain import InstrumentSpec, OrderType, SelfTradePrevention, Side, TimeInForce


class _Command(msgspec.Struct, frozen=True, tag=True, array_like=True, gc=False):
    participant_id: int  # who sent it; operator commands carry the operator's id
    ts_ns: int  # exchange time stamped by the sequencer; the core never reads a clock


class ListInstrument(_Command, frozen=True):
    spec: InstrumentSpec


class RegisterLot(_Command, frozen=True):
    """A seller's lot of pigs. The seller is ``participant_id``; the core assigns the lot id."""

    instrument: str
    heads: int
    avg_weight_g: int
    origin: str
    quarantine_cert: str
    ear_tags: str = ""


class PlaceOrder(_Command, frozen=True):
    """``price_fen`` is ignored for market orders; ``lot_id`` is required on sells, 0 on buys."""

    client_order_id: str
    instrument: str
    side: Side
    order_type: OrderType
    price_fen: int
    quantity_heads: int
    time_in_force: TimeInForce = TimeInForce.GTC
    expire_at_ns: int = 0
    post_only: bool = False
    min_quantity_heads: int = 0
    all_or_none: bool = False
    stp: SelfTradePrevention = SelfTradePrevention.EXPIRE_TAKER
    lot_id: int = 0


class CancelOrder(_Command, frozen=True):
    order_id: int


class AmendOrder(_Command, frozen=True):
    """New limit price and new total quantity (filled + remaining); 0 leaves either unchanged."""

    order_id: int
    price_fen: int = 0
    quantity_heads: int = 0


class Halt(_Command, frozen=True):
    instrument: str


class Resume(_Command, frozen=True):
    instrument: str


class StartAuction(_Command, frozen=True):
    instrument: str


class Uncross(_Command, frozen=True):
    instrument: str


class SetReferencePrice(_Command, frozen=True):
    instrument: str
    price_fen: int


class ClockTick(_Command, frozen=True):
    """Moves exchange time: GTD orders whose expiry has passed expire."""


Command = Union[  # noqa: UP007 - msgspec needs a real Union object to build a tagged decoder
    ListInstrument,
    RegisterLot,
    PlaceOrder,
    CancelOrder,
    AmendOrder,
    Halt,
    Resume,
    StartAuction,
    Uncross,
    SetReferencePrice,
    ClockTick,
]

COMMAND_TYPES: tuple[type, ...] = Command.__args__  # type: ignore[attr-defined]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Command)


def encode_command(command: Command) -> bytes:
    return _encoder.encode(command)


def decode_command(data: bytes) -> Command:
    return _decoder.decode(data)


def stamp(command: Command, ts_ns: int) -> Command:
    """The same command carrying the sequencer's time."""
    return msgspec.structs.replace(command, ts_ns=ts_ns)
