"""Shared test factories: instruments, lots and orders with sensible defaults (no mocks)."""

from __future__ import annotations

from exchange.commands import ListInstrument, PlaceOrder, RegisterLot
from exchange.domain import (
    BreedClass,
    InstrumentSpec,
    OrderType,
    ProductClass,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradingState,
)

OPERATOR = 1
SYMBOL = "RC-LH-WSY"  # Rongchang, live finishing hogs, 外三元
REFERENCE_FEN = 2800  # ¥28.00 per kg live weight


def hog_spec(
    symbol: str = SYMBOL,
    reference_price_fen: int = REFERENCE_FEN,
    price_band_bps: int = 400,
    tick_fen: int = 10,
    min_order_heads: int = 1,
    max_order_heads: int = 500,
    initial_state: TradingState = TradingState.CONTINUOUS,
) -> InstrumentSpec:
    return InstrumentSpec(
        symbol=symbol,
        product_class=ProductClass.FINISHING_HOG,
        breed_class=BreedClass.WAI_SAN_YUAN,
        delivery_point="Rongchang",
        lot_avg_min_g=100_000,
        lot_avg_max_g=120_000,
        animal_min_g=90_000,
        animal_max_g=140_000,
        tick_fen=tick_fen,
        min_order_heads=min_order_heads,
        max_order_heads=max_order_heads,
        price_band_bps=price_band_bps,
        reference_price_fen=reference_price_fen,
        initial_state=initial_state,
    )


def list_instrument(spec: InstrumentSpec | None = None, ts_ns: int = 1) -> ListInstrument:
    return ListInstrument(participant_id=OPERATOR, ts_ns=ts_ns, spec=spec or hog_spec())


def register_lot(seller: int, heads: int = 1000, ts_ns: int = 1, instrument: str = SYMBOL,
                 avg_weight_g: int = 110_000) -> RegisterLot:
    return RegisterLot(
        participant_id=seller, ts_ns=ts_ns, instrument=instrument, heads=heads, avg_weight_g=avg_weight_g,
        origin="Rongchang, Chongqing", quarantine_cert="CQ-2026-000001",
    )


def order(
    participant: int,
    side: Side,
    price_fen: int,
    heads: int,
    cid: str | None = None,
    ts_ns: int = 1,
    lot_id: int = 0,
    order_type: OrderType = OrderType.LIMIT,
    tif: TimeInForce = TimeInForce.GTC,
    expire_at_ns: int = 0,
    post_only: bool = False,
    min_quantity_heads: int = 0,
    all_or_none: bool = False,
    stp: SelfTradePrevention = SelfTradePrevention.EXPIRE_TAKER,
    instrument: str = SYMBOL,
) -> PlaceOrder:
    order.counter += 1  # type: ignore[attr-defined]
    return PlaceOrder(
        participant_id=participant, ts_ns=ts_ns, client_order_id=cid or f"c{order.counter}",  # type: ignore[attr-defined]
        instrument=instrument, side=side, order_type=order_type, price_fen=price_fen, quantity_heads=heads,
        time_in_force=tif, expire_at_ns=expire_at_ns, post_only=post_only,
        min_quantity_heads=min_quantity_heads, all_or_none=all_or_none, stp=stp, lot_id=lot_id,
    )


order.counter = 0  # type: ignore[attr-defined]
