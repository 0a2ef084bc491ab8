"""Order entry and order queries, over HTTP and over the WebSocket, and the private `orders` channel.

Routes: `POST /v1/orders`, `DELETE /v1/orders/{order_id}`, `PATCH /v1/orders/{order_id}`,
`GET /v1/orders/{order_id}`, `GET /v1/orders` (cursor pages, newest first), `GET /v1/fills`.
WebSocket ops: `place_order`, `cancel_order`, `amend_order` (same fields as the HTTP bodies, plus `id`).

Each handler decodes, checks the role, builds one command, submits it through `ExchangePort.submit`
and answers with the execution report built from that command's own events, once it is durable.
Role rules: a buyer may only buy; a seller (farmer, cooperative) may only sell, and only its own lots
(the core answers another seller's lot as `lot_not_found`, 404); financiers and operators do not
trade. Another participant's order is a 404, exactly like a missing one. A core rejection becomes the
error `{"code": <reason>, ...}` with the status of `schemas.REJECT_STATUS`; a retried order (same
`client_order_id`, same content) gets its original answer again, a conflicting one 409
`duplicate_client_order_id`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import msgspec
from aiohttp import web

from exchange.commands import AmendOrder, CancelOrder, PlaceOrder
from exchange.domain import RejectReason, Side
from exchange.events import Event, OrderAccepted, Rejected
from gateway import orderhistory
from gateway.auth import BUYERS, SELLERS, Principal
from gateway.errors import ApiError, Code
from gateway.exchange_port import EXCHANGE, ExchangePort
from gateway.metrics import Metrics
from gateway.readmodel import (
    OPEN_STATUSES,
    BatchDigest,
    OrderRecord,
    fold_order,
    order_event_ids,
    order_from_accepted,
    to_report,
)
from gateway.routes import Call, RouteTable
from gateway.schemas import (
    ORDER_TYPE,
    SIDE,
    STP,
    TIF,
    AmendOrderRequest,
    ExecutionReport,
    FillPage,
    FillQuery,
    Id,
    OrderPage,
    OrderPath,
    OrderQuery,
    OrderTypeName,
    PlaceOrderRequest,
    TimeInForceName,
    rejection,
)
from gateway.ws import Deferred, Hub, WsConnection, WsRequest

__all__ = ["TRADERS", "AmendOrderMessage", "CancelOrderMessage", "PlaceOrderMessage", "routes", "wire"]

routes = RouteTable()
TRADERS: Final = SELLERS | BUYERS
_NS_PER_MS: Final = 1_000_000





# -- commands from requests -----------------------------------------------------------------------------


def _invalid(code: str, message: str) -> ApiError:
    return ApiError(422, code, message)


def place_command(principal: Principal, body: Any) -> PlaceOrder:
    """The PlaceOrder for a `PlaceOrderRequest` (or the WebSocket message with the same fields)."""
    side = SIDE[body.side]
    role = principal.role
    if role in BUYERS and side != Side.BUY:
        raise ApiError(403, Code.FORBIDDEN, "a buyer may only buy")
    if role in SELLERS and side != Side.SELL:
        raise ApiError(403, Code.FORBIDDEN, "a seller may only sell its own lots")
    market = body.type == OrderTypeName.MARKET
    if market and body.price_fen is not None:
        raise _invalid("invalid_order", "price_fen is not allowed on a market order")
    if not market and body.price_fen is None:
        raise _invalid("invalid_order", "a limit order needs price_fen")
    if side == Side.SELL and body.lot_id is None:
        raise _invalid("invalid_order", "a sell order needs the lot_id of the pigs it sells")
    tif = body.time_in_force or (TimeInForceName.IOC if market else TimeInForceName.GTC)
    if (tif == TimeInForceName.GTD) != (body.expire_at_ms is not None):
        raise _invalid("invalid_expiry", "GTD needs expire_at_ms, and only GTD takes it")
    return PlaceOrder(
        principal.participant_id, 0, body.client_order_id, body.instrument, side, ORDER_TYPE[body.type],
        body.price_fen or 0, body.quantity_heads, TIF[tif], (body.expire_at_ms or 0) * _NS_PER_MS,
        body.post_only, body.min_quantity_heads, body.all_or_none, STP[body.stp], body.lot_id or 0,
    )  # fmt: skip


def place_outcome(command: PlaceOrder, events: list[Event]) -> ExecutionReport:
    """The execution report of a placed order from its command's events; raises its rejection."""
    rec: OrderRecord | None = None
    for event in events:
        cls = event.__class__
        if rec is not None:
            if rec.order_id in order_event_ids(event):
                fold_order(rec, event)
        elif cls is OrderAccepted and event.participant_id == command.participant_id \
                and event.client_order_id == command.client_order_id:
            rec = order_from_accepted(command, event)
        elif cls is Rejected and event.participant_id == command.participant_id:
            raise rejection(event.reason)
    if rec is None:
        raise RuntimeError(f"no acceptance or rejection among the events of {command!r}")
    return to_report(rec, rec.fills)


def order_outcome(base: OrderRecord, events: list[Event]) -> ExecutionReport:
    """The report of a cancel or amend of `base` (the read model's record) from that command's events.

    The record may already show later commands of the same batch; the command's own events reset
    everything a cancel or amend changes, so the report is exact as of the command.
    """
    rec = msgspec.structs.replace(base, fills=())
    touched = False
    for event in events:
        if event.__class__ is Rejected and event.order_id == base.order_id:
            raise rejection(event.reason)
        if base.order_id in order_event_ids(event):
            fold_order(rec, event)
            touched = True
    if not touched:
        raise RuntimeError(f"no events of order {base.order_id} in its command's result")
    return to_report(rec, rec.fills)


# -- shared by HTTP and WebSocket -----------------------------------------------------------------------


async def place(port: ExchangePort, principal: Principal, body: Any, transport: str) -> ExecutionReport:
    started_s = time.perf_counter()
    port.count_received(body.instrument)
    try:
        command = place_command(principal, body)
        result = await port.submit(command)
        report = port.placed_report(result)
        if report is None:
            report = place_outcome(command, result.events)
    except ApiError as exc:
        port.count_rejected(exc.code)
        raise
    port.ack_latency[transport].observe(time.perf_counter() - started_s)
    return report


async def own_order(port: ExchangePort, participant_id: int, order_id: int) -> OrderRecord | None:
    """The participant's order: from memory, or (closed long enough ago to be forgotten) PostgreSQL."""
    rec = port.read_model.order_of(participant_id, order_id)
    if rec is None and port.pool is not None:
        rec = await orderhistory.forgotten_order(port.pool, port.read_model, participant_id, order_id)
    return rec


async def _own_open_order(port: ExchangePort, principal: Principal, order_id: int) -> OrderRecord:
    rec = await own_order(port, principal.participant_id, order_id)
    if rec is None:
        raise rejection(RejectReason.UNKNOWN_ORDER)
    if rec.status not in OPEN_STATUSES:
        raise ApiError(409, "order_not_open", f"the order is {rec.status.value}")
    return rec


async def _change(port: ExchangePort, principal: Principal, order_id: int, command: CancelOrder | AmendOrder,
                  transport: str) -> ExecutionReport:
    started_s = time.perf_counter()
    await _own_open_order(port, principal, order_id)
    result = await port.submit(command)
    rec = await own_order(port, principal.participant_id, order_id)  # open a moment ago: in memory still
    if rec is None:
        raise rejection(RejectReason.UNKNOWN_ORDER)
    try:
        report = order_outcome(rec, result.events)
    except ApiError as exc:
        if exc.code == "unknown_order" and rec.status not in OPEN_STATUSES:
            # It filled, expired or was cancelled in the meantime: say so rather than "unknown".
            raise ApiError(409, "order_not_open", f"the order is {rec.status.value}") from None
        raise
    port.ack_latency[transport].observe(time.perf_counter() - started_s)
    return report


async def cancel(port: ExchangePort, principal: Principal, order_id: int, transport: str) -> ExecutionReport:
    command = CancelOrder(principal.participant_id, 0, order_id)
    return await _change(port, principal, order_id, command, transport)


async def amend(port: ExchangePort, principal: Principal, order_id: int, body: Any,
                transport: str) -> ExecutionReport:
    command = AmendOrder(principal.participant_id, 0, order_id, body.price_fen or 0, body.quantity_heads or 0)
    return await _change(port, principal, order_id, command, transport)


# -- HTTP -----------------------------------------------------------------------------------------------


@routes.post("/v1/orders", roles=TRADERS, body=PlaceOrderRequest, response=ExecutionReport, status=201,
             errors=(404, 409))
async def place_order(call: Call, body: PlaceOrderRequest) -> ExecutionReport:
    """Place an order; the answer is its execution report once the order is durable."""
    return await place(call.app[EXCHANGE], call.principal, body, "http")


_RECONCILE_CHANGE: Final = "order_id (GET /v1/orders/{order_id} shows whether the change took effect)"


@routes.delete("/v1/orders/{order_id}", roles=TRADERS, params=OrderPath, response=ExecutionReport,
               errors=(409,), reconcile_by=_RECONCILE_CHANGE)
async def cancel_order(call: Call, params: OrderPath) -> ExecutionReport:
    """Cancel what is left of an open order."""
    return await cancel(call.app[EXCHANGE], call.principal, params.order_id, "http")


@routes.patch("/v1/orders/{order_id}", roles=TRADERS, params=OrderPath, body=AmendOrderRequest,
              response=ExecutionReport, errors=(409,), reconcile_by=_RECONCILE_CHANGE)
async def amend_order(call: Call, params: OrderPath, body: AmendOrderRequest) -> ExecutionReport:
    """Amend an open order's price and/or total quantity."""
    return await amend(call.app[EXCHANGE], call.principal, params.order_id, body, "http")


@routes.get("/v1/orders/{order_id}", roles=TRADERS, params=OrderPath, response=ExecutionReport)
async def get_order(call: Call, params: OrderPath) -> ExecutionReport:
    """One of your orders with all its fills."""
    rec = await own_order(call.app[EXCHANGE], call.principal.participant_id, params.order_id)
    if rec is None:
        raise rejection(RejectReason.UNKNOWN_ORDER)
    return to_report(rec, list(rec.fills))


@routes.get("/v1/orders", roles=TRADERS, query=OrderQuery, response=OrderPage)
async def list_orders(call: Call, query: OrderQuery) -> OrderPage:
    """Your orders, newest first, optionally by status and instrument (at most 1000 a page)."""
    records, next_id = await orderhistory.list_orders(
        call.pool, call.app[EXCHANGE].read_model, call.principal.participant_id, status=query.status,
        instrument=query.instrument,
        before_id=None if query.cursor is None else int(query.cursor), limit=query.limit)
    return OrderPage([to_report(rec, list(rec.fills)) for rec in records],
                     None if next_id is None else str(next_id))


@routes.get("/v1/fills", roles=TRADERS, query=FillQuery, response=FillPage)
async def list_fills(call: Call, query: FillQuery) -> FillPage:
    """Your fills, newest first (at most 1000 a page)."""
    fills, next_id = await orderhistory.list_fills(
        call.pool, call.app[EXCHANGE].read_model, call.principal.participant_id, instrument=query.instrument,
        before_trade_id=None if query.cursor is None else int(query.cursor), limit=query.limit)
    return FillPage(fills, None if next_id is None else str(next_id))


# -- WebSocket ------------------------------------------------------------------------------------------


def _ws_message(name: str, tag: str, fields: type[msgspec.Struct], extra: list[tuple[Any, ...]]) -> Any:
    """A WebSocket request type: `WsRequest` (tag + `id`) with the fields of an HTTP body struct."""
    spec: list[tuple[Any, ...]] = list(extra)
    for field in msgspec.structs.fields(fields):
        if field.required:
            spec.append((field.name, field.type))
        else:
            spec.append((field.name, field.type, field.default))
    return msgspec.defstruct(name, spec, bases=(WsRequest,), tag=tag, kw_only=True, frozen=True,
                             forbid_unknown_fields=True, module=__name__)


PlaceOrderMessage = _ws_message("PlaceOrderMessage", "place_order", PlaceOrderRequest, [])
AmendOrderMessage = _ws_message("AmendOrderMessage", "amend_order", AmendOrderRequest, [("order_id", Id)])


class CancelOrderMessage(WsRequest, tag="cancel_order", frozen=True):
    order_id: Id


def _ws_place(conn: WsConnection, msg: Any) -> Deferred:
    """`place` without a task per message: the reply is built in the commit's callback."""
    assert conn.principal is not None
    port = conn.request.app[EXCHANGE]
    started_s = time.perf_counter()
    port.count_received(msg.instrument)
    try:
        command = place_command(conn.principal, msg)
        future = port.submit_nowait(command)
    except ApiError as exc:
        port.count_rejected(exc.code)
        raise

    def finish(done: asyncio.Future[Any]) -> ExecutionReport:
        try:
            result = port.result_of(done)
            report = port.placed_report(result)
            if report is None:
                report = place_outcome(command, result.events)
        except ApiError as exc:
            port.count_rejected(exc.code)
            raise
        port.ack_latency["ws"].observe(time.perf_counter() - started_s)
        return report

    return Deferred(future, finish)


async def _ws_cancel(conn: WsConnection, msg: CancelOrderMessage) -> ExecutionReport:
    assert conn.principal is not None
    return await cancel(conn.request.app[EXCHANGE], conn.principal, msg.order_id, "ws")


async def _ws_amend(conn: WsConnection, msg: Any) -> ExecutionReport:
    assert conn.principal is not None
    return await amend(conn.request.app[EXCHANGE], conn.principal, msg.order_id, msg, "ws")


class OrderUpdate(msgspec.Struct, frozen=True, tag="execution_report", tag_field="type"):
    """A message of the private `orders` channel."""

    channel: str
    report: ExecutionReport


_encode = msgspec.json.Encoder().encode


def wire(hub: Hub) -> None:
    """Register the order-entry ops on the application's hub (at app creation)."""
    hub.register_op(PlaceOrderMessage, _ws_place, roles=TRADERS,
                    reconcile_by="client_order_id (a retry with the same client_order_id gets the original answer)")
    hub.register_op(CancelOrderMessage, _ws_cancel, roles=TRADERS, reconcile_by=_RECONCILE_CHANGE)
    hub.register_op(AmendOrderMessage, _ws_amend, roles=TRADERS, reconcile_by=_RECONCILE_CHANGE)


def attach(app: web.Application, port: ExchangePort, hub: Hub, metrics: Metrics) -> None:
    """Publish every participant's execution reports to its `orders` subscribers."""

    def publish(_batch: object, digest: BatchDigest) -> None:
        for participant_id, report in digest.reports:
            hub.publish_private("orders", participant_id, _encode(OrderUpdate("orders", report)))

    port.add_report_wanted(hub.private_subscribers("orders"))
    port.add_listener(publish)

