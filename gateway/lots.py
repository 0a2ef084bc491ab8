"""Lots: a seller (farmer or cooperative) registers the pigs it offers, then sells them by `lot_id`.

`POST /v1/lots` journals a `RegisterLot` command (the core assigns the id and checks the grade);
`GET /v1/lots/{lot_id}` and `GET /v1/lots` show the seller's own lots only: another seller's lot is a
404, exactly like a missing one.
"""

from __future__ import annotations

from exchange.commands import RegisterLot
from exchange.events import LotRegistered, Rejected
from exchange.settlement import pgstore
from gateway.auth import SELLERS
from gateway.errors import ApiError
from gateway.exchange_port import EXCHANGE
from gateway.readmodel import LotRecord
from gateway.readmodel_snapshots import retired_lot, retired_lots
from gateway.routes import Call, RouteTable
from gateway.schemas import LotPath, LotView, RegisterLotRequest, rejection
from gateway.settlement import refuse_expired_reference

__all__ = ["lot_view", "routes"]

routes = RouteTable()


def lot_view(rec: LotRecord) -> LotView:
    lot = rec.lot
    return LotView(lot.lot_id, lot.instrument, lot.heads, lot.avg_weight_g, lot.origin, lot.quarantine_cert,
                   lot.ear_tags, rec.reserved_heads, rec.sold_heads, rec.available_heads)


@routes.post("/v1/lots", roles=SELLERS, body=RegisterLotRequest, response=LotView, status=201, errors=(409,))
async def register_lot(call: Call, body: RegisterLotRequest) -> LotView:
    """Register a lot of pigs to sell; the answer carries its `lot_id`. With `client_lot_ref` a retry
    (after a timeout or a 503) gets the same lot back; the same ref with other content is a 409."""
    port = call.app[EXCHANGE]
    principal = call.principal
    ref = body.client_lot_ref or ""
    await refuse_expired_reference(call, pgstore.REF_LOT, principal.participant_id, ref,
                                   (principal.participant_id, ref) in port.sequencer.core.lot_refs)
    command = RegisterLot(principal.participant_id, 0, body.instrument, body.heads, body.avg_weight_g,
                          body.origin, body.quarantine_cert, body.ear_tags, body.client_lot_ref or "")
    result = await port.submit(command)
    for event in result.events:
        if event.__class__ is LotRegistered and event.lot.seller_id == principal.participant_id:
            rec = port.read_model.lot_of(principal.participant_id, event.lot.lot_id)
            assert rec is not None  # folded before this handler resumed
            return lot_view(rec)
        if event.__class__ is Rejected:
            raise rejection(event.reason)
    raise RuntimeError(f"no lot event in the result of {command!r}")


@routes.get("/v1/lots/{lot_id}", roles=SELLERS, params=LotPath, response=LotView)
async def get_lot(call: Call, params: LotPath) -> LotView:
    """One of your lots with its reserved, sold and free heads."""
    port = call.app[EXCHANGE]
    rec = port.read_model.lot_of(call.principal.participant_id, params.lot_id)
    if rec is None and port.pool is not None:  # sold out longer ago than the retention window
        rec = await retired_lot(port.pool, call.principal.participant_id, params.lot_id)
    if rec is None:
        raise ApiError(404, "lot_not_found", "no such lot")
    return lot_view(rec)


@routes.get("/v1/lots", roles=SELLERS, response=list[LotView])
async def list_lots(call: Call) -> list[LotView]:
    """All your lots, oldest first."""
    port = call.app[EXCHANGE]
    held = port.read_model.list_lots(call.principal.participant_id)
    # memory first (exact as of the last commit), then the lots it retired to PostgreSQL
    old = [] if port.pool is None else await retired_lots(port.pool, call.principal.participant_id)
    seen = {rec.lot.lot_id for rec in held}
    merged = held + [rec for rec in old if rec.lot.lot_id not in seen]
    return [lot_view(rec) for rec in sorted(merged, key=lambda rec: rec.lot.lot_id)]
