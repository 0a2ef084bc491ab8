"""Operator routes for markets: list an instrument, halt and resume it, run its call auction, set its
reference price. Each is a journaled command, so replay rebuilds the market exactly.

(Participants and API keys are in `gateway.admin`.) An unknown instrument in the path is a 404
`unknown_instrument`; a transition the instrument's state does not allow is a 409
`invalid_state_transition`.

A listing's settlement terms are checked here as well as by their bounds in `InstrumentRequest`: the
core lists any spec whose trading fields are consistent, so a term that could only be a mistake (a
discount on piglets, which are priced per head; a discount that makes the pigs free; an underweight
tolerance reaching down to nothing) is refused as `invalid_instrument` before it is journaled.
"""

from __future__ import annotations

from typing import Final

from exchange.commands import Command, Halt, ListInstrument, Resume, SetReferencePrice, StartAuction, Uncross
from exchange.domain import InstrumentSpec, ProductClass
from exchange.events import Rejected
from gateway.auth import OPERATORS
from gateway.calendar import date_label, session_of
from gateway.errors import ApiError
from gateway.exchange_port import EXCHANGE
from gateway.market import instrument_view, unknown_instrument
from gateway.routes import Call, RouteTable
from gateway.schemas import (
    BREED_CLASS,
    PRODUCT_CLASS,
    QUARANTINE_REGION,
    TRADING_STATE,
    HaltQuery,
    InstrumentPath,
    InstrumentRequest,
    InstrumentView,
    ReferencePriceRequest,
    rejection,
)

__all__ = ["routes", "spec_from_request"]

routes = RouteTable()
_NS_PER_MS: Final = 1_000_000


def spec_from_request(body: InstrumentRequest) -> InstrumentSpec:
    """The core's spec of a listing request; raises 422 `invalid_instrument` for impossible settlement terms."""
    product_class = PRODUCT_CLASS[body.product_class]
    _check_settlement_terms(body, product_class)
    return InstrumentSpec(
        body.symbol, product_class, BREED_CLASS[body.breed_class], body.delivery_point,
        body.lot_avg_min_g, body.lot_avg_max_g, body.animal_min_g, body.animal_max_g, body.tick_fen,
        body.min_order_heads, body.max_order_heads, body.price_band_bps, body.reference_price_fen,
        TRADING_STATE[body.initial_state], seller_fee_bps=body.seller_fee_bps,
        overweight_limit_g=body.overweight_limit_g, overweight_discount_fen_per_kg=body.overweight_discount_fen_per_kg,
        underweight_limit_g=body.underweight_limit_g,
        underweight_discount_fen_per_kg=body.underweight_discount_fen_per_kg,
        dispute_window_ns=body.dispute_window_ms * _NS_PER_MS,
        quarantine_region=QUARANTINE_REGION[body.quarantine_region], shrink_bps=body.shrink_bps,
        session=None if body.session is None else session_of(body.session),
        index_base_day=0 if body.index_base_date is None else date_label(body.index_base_date, "invalid_instrument"),
    )  # fmt: skip


def _check_settlement_terms(body: InstrumentRequest, product_class: ProductClass) -> None:
    discounts = (body.overweight_discount_fen_per_kg, body.underweight_discount_fen_per_kg)
    if product_class == ProductClass.PIGLET and any(discounts):
        raise _invalid_terms("piglets are priced per head and take no weight discount")
    if body.reference_price_fen and max(discounts) >= body.reference_price_fen:
        raise _invalid_terms("a weight discount must be below the reference price (fen per kg)")
    if body.underweight_limit_g >= body.lot_avg_min_g:
        raise _invalid_terms("underweight_limit_g must be below lot_avg_min_g")


def _invalid_terms(message: str) -> ApiError:
    return ApiError(422, "invalid_instrument", message)


async def _run(call: Call, symbol: str, command: Command) -> InstrumentView:
    """Submit an instrument command; answer the instrument as it stands after it, or its rejection."""
    port = call.app[EXCHANGE]
    result = await port.submit(command)
    for event in result.events:
        if event.__class__ is Rejected:
            raise rejection(event.reason)
    record = port.read_model.instruments.get(symbol)
    if record is None:
        raise unknown_instrument(symbol)
    return instrument_view(record)


def _known(call: Call, symbol: str) -> None:
    if symbol not in call.app[EXCHANGE].read_model.instruments:
        raise unknown_instrument(symbol)


@routes.post("/v1/instruments", roles=OPERATORS, body=InstrumentRequest, response=InstrumentView, status=201,
             errors=(409,))
async def list_instrument(call: Call, body: InstrumentRequest) -> InstrumentView:
    """List a new instrument (a standard grade at a delivery point)."""
    command = ListInstrument(call.principal.participant_id, 0, spec_from_request(body))
    return await _run(call, body.symbol, command)


@routes.post("/v1/instruments/{instrument}/halt", roles=OPERATORS, params=InstrumentPath, query=HaltQuery,
             response=InstrumentView, errors=(409,))
async def halt(call: Call, params: InstrumentPath, query: HaltQuery) -> InstrumentView:
    """Halt trading: no new orders or amendments; cancels still work. `reason` is shown as `state_reason`.

    A market is halted from any state but halted (continuous, auction, closed); with a trading session it
    resumes to where the calendar has moved meanwhile (exchange/calendar.py)."""
    _known(call, params.instrument)
    command = Halt(call.principal.participant_id, 0, params.instrument, query.reason)
    return await _run(call, params.instrument, command)


@routes.post("/v1/instruments/{instrument}/resume", roles=OPERATORS, params=InstrumentPath,
             response=InstrumentView, errors=(409,))
async def resume(call: Call, params: InstrumentPath) -> InstrumentView:
    """Resume a halted instrument in the state it was halted from."""
    _known(call, params.instrument)
    return await _run(call, params.instrument, Resume(call.principal.participant_id, 0, params.instrument))


@routes.post("/v1/instruments/{instrument}/auction", roles=OPERATORS, params=InstrumentPath,
             response=InstrumentView, errors=(409,))
async def start_auction(call: Call, params: InstrumentPath) -> InstrumentView:
    """Start a call auction: orders collect without matching until the uncross."""
    _known(call, params.instrument)
    return await _run(call, params.instrument, StartAuction(call.principal.participant_id, 0, params.instrument))


@routes.post("/v1/instruments/{instrument}/uncross", roles=OPERATORS, params=InstrumentPath,
             response=InstrumentView, errors=(409,))
async def uncross(call: Call, params: InstrumentPath) -> InstrumentView:
    """Uncross the call auction at the volume-maximising price and return to continuous trading."""
    _known(call, params.instrument)
    return await _run(call, params.instrument, Uncross(call.principal.participant_id, 0, params.instrument))


@routes.post("/v1/instruments/{instrument}/reference-price", roles=OPERATORS, params=InstrumentPath,
             body=ReferencePriceRequest, response=InstrumentView)
async def set_reference_price(call: Call, params: InstrumentPath, body: ReferencePriceRequest) -> InstrumentView:
    """Set the reference price the daily band is computed from."""
    _known(call, params.instrument)
    command = SetReferencePrice(call.principal.participant_id, 0, params.instrument, body.price_fen)
    return await _run(call, params.instrument, command)
