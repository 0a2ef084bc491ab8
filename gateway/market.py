"""Public market data: instruments, books, trades and candles over HTTP, and the `book.{instrument}` and
`trades.{instrument}` WebSocket channels.

Everything is read from the read model, which holds committed state only.

WebSocket `book.{instrument}`: on subscribe, a `book_snapshot` with every level and the instrument's
sequence number `seq`; then, per committed batch that touched the instrument, a `book_delta` with
`first_seq`..`last_seq` (the seq range of all the instrument's events in the batch, book changes or
not) and the levels that changed, as absolute heads, 0 removing the level. The first delta after a
snapshot has `first_seq` = snapshot `seq` + 1 and each next one `first_seq` = previous `last_seq` + 1;
a client that sees a gap re-subscribes for a fresh snapshot. `trades.{instrument}` carries the public
trades of each batch.
"""

from __future__ import annotations

from typing import Final

import msgspec
from aiohttp import web

from gateway.auth import PUBLIC, Principal
from gateway.calendar import label_date, session_view
from gateway.errors import ApiError
from gateway.exchange_port import EXCHANGE, ExchangePort
from gateway.readmodel import BatchDigest, InstrumentRecord, ReadModel
from gateway.routes import Call, RouteTable
from gateway.schemas import (
    BREED_CLASS_NAME,
    PRODUCT_CLASS_NAME,
    QUARANTINE_REGION_NAME,
    QUOTE_UNIT,
    TRADING_STATE_NAME,
    BookQuery,
    BookView,
    CandlePage,
    CandleQuery,
    InstrumentPath,
    InstrumentView,
    TradePage,
    TradeQuery,
    TradeView,
)
from gateway.ws import Hub

__all__ = ["BookDelta", "BookSnapshot", "TradesMessage", "attach", "instrument_view", "routes", "wire"]

routes = RouteTable()
_NS_PER_MS: Final = 1_000_000


class BookSnapshot(msgspec.Struct, frozen=True, tag="book_snapshot", tag_field="type"):
    channel: str
    instrument: str
    seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


class BookDelta(msgspec.Struct, frozen=True, tag="book_delta", tag_field="type"):
    channel: str
    instrument: str
    first_seq: int
    last_seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


class TradesMessage(msgspec.Struct, frozen=True, tag="trades", tag_field="type"):
    channel: str
    instrument: str
    trades: list[TradeView]


def unknown_instrument(symbol: str) -> ApiError:
    return ApiError(404, "unknown_instrument", f"no instrument {symbol[:40]!r}")


def _record(read_model: ReadModel, symbol: str) -> InstrumentRecord:
    record = read_model.instruments.get(symbol)
    if record is None:
        raise unknown_instrument(symbol)
    return record


def instrument_view(record: InstrumentRecord) -> InstrumentView:
    spec = record.spec
    return InstrumentView(
        spec.symbol, PRODUCT_CLASS_NAME[spec.product_class], QUOTE_UNIT[spec.product_class],
        BREED_CLASS_NAME[spec.breed_class], spec.delivery_point, spec.lot_avg_min_g, spec.lot_avg_max_g,
        spec.animal_min_g, spec.animal_max_g, spec.tick_fen, spec.min_order_heads, spec.max_order_heads,
        spec.price_band_bps, record.reference_price_fen, record.band_low_fen, record.band_high_fen,
        TRADING_STATE_NAME[record.state], record.seq, record.seller_fee_bps, spec.overweight_limit_g,
        spec.overweight_discount_fen_per_kg, spec.underweight_limit_g, spec.underweight_discount_fen_per_kg,
        spec.dispute_window_ns // _NS_PER_MS, QUARANTINE_REGION_NAME[spec.quarantine_region], spec.shrink_bps,
        session_view(spec.session),
        label_date(spec.index_base_day) if spec.index_base_day else None, record.state_reason,
    )  # fmt: skip


# -- HTTP -----------------------------------------------------------------------------------------------


@routes.get("/v1/instruments", roles=PUBLIC, response=list[InstrumentView])
async def list_instruments(call: Call) -> list[InstrumentView]:
    """Every listed instrument with its trading state and price band."""
    read_model = call.app[EXCHANGE].read_model
    return [instrument_view(record) for record in read_model.instruments.values()]


@routes.get("/v1/instruments/{instrument}", roles=PUBLIC, params=InstrumentPath, response=InstrumentView)
async def get_instrument(call: Call, params: InstrumentPath) -> InstrumentView:
    """One instrument."""
    return instrument_view(_record(call.app[EXCHANGE].read_model, params.instrument))


@routes.get("/v1/markets/{instrument}/book", roles=PUBLIC, params=InstrumentPath, query=BookQuery,
            response=BookView)
async def get_book(call: Call, params: InstrumentPath, query: BookQuery) -> BookView:
    """The order book, aggregated by price level, best first, `depth` levels a side."""
    record = _record(call.app[EXCHANGE].read_model, params.instrument)
    bids, asks = record.depth(query.depth)
    return BookView(params.instrument, record.seq, bids, asks)


@routes.get("/v1/markets/{instrument}/trades", roles=PUBLIC, params=InstrumentPath, query=TradeQuery,
            response=TradePage)
async def get_trades(call: Call, params: InstrumentPath, query: TradeQuery) -> TradePage:
    """Recent public trades, newest first (the last 10,000 are kept)."""
    read_model = call.app[EXCHANGE].read_model
    _record(read_model, params.instrument)
    trades, next_id = read_model.trades(params.instrument, limit=query.limit,
                                        before_trade_id=None if query.cursor is None else int(query.cursor))
    return TradePage(trades, None if next_id is None else str(next_id))


@routes.get("/v1/markets/{instrument}/candles", roles=PUBLIC, params=InstrumentPath, query=CandleQuery,
            response=CandlePage)
async def get_candles(call: Call, params: InstrumentPath, query: CandleQuery) -> CandlePage:
    """Open, high, low, close and volume per interval, oldest first (the last 1,000 intervals kept)."""
    read_model = call.app[EXCHANGE].read_model
    _record(read_model, params.instrument)
    return CandlePage(params.instrument, query.interval,
                      read_model.candles_of(params.instrument, query.interval, query.limit))


# -- WebSocket ------------------------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def wire(app: web.Application, hub: Hub) -> None:
    """Give the `book` and `trades` channels their snapshot providers (at app creation)."""

    def book_snapshot(channel: str, principal: Principal | None) -> bytes:
        symbol = channel.partition(".")[2]
        record = _record(app[EXCHANGE].read_model, symbol)
        bids, asks = record.depth()
        return _encode(BookSnapshot(channel, symbol, record.seq, bids, asks))

    def trades_check(channel: str, principal: Principal | None) -> None:
        _record(app[EXCHANGE].read_model, channel.partition(".")[2])

    hub.register_channel_kind("book", snapshot=book_snapshot)
    hub.register_channel_kind("trades", snapshot=trades_check)


def attach(port: ExchangePort, hub: Hub) -> None:
    """Publish each committed batch's book deltas and trades to the subscribed sockets."""

    def publish(_batch: object, digest: BatchDigest) -> None:
        for symbol, delta in digest.instruments.items():
            channel = "book." + symbol
            if hub.subscriber_count(channel):
                bids, asks = delta.bids_asks()
                hub.publish(channel, _encode(BookDelta(channel, symbol, delta.first_seq, delta.last_seq, bids, asks)))
            if delta.trades:
                channel = "trades." + symbol
                if hub.subscriber_count(channel):
                    hub.publish(channel, _encode(TradesMessage(channel, symbol, delta.trades)))

    port.add_listener(publish)
