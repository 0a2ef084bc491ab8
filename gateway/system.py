"""Operational routes: liveness, readiness, metrics, the OpenAPI document, and `whoami`."""

from __future__ import annotations

import hmac

import msgspec
from aiohttp import web

from gateway.auth import ANY_ROLE, PUBLIC, Role
from gateway.errors import ApiError, Code
from gateway.metrics import CONTENT_TYPE_LATEST
from gateway.routes import Call, RouteTable
from gateway.state import OPENAPI

__all__ = ["Health", "Me", "routes"]

routes = RouteTable()


class Health(msgspec.Struct, frozen=True):
    status: str


class Me(msgspec.Struct, frozen=True):
    participant_id: int
    role: Role
    api_key: str


@routes.get("/healthz", roles=PUBLIC, response=Health)
async def healthz(call: Call) -> Health:
    """Liveness: the process answers."""
    return Health("ok")


@routes.get("/readyz", roles=PUBLIC, response=Health)
async def readyz(call: Call) -> Health:
    """Readiness: 200 once recovery finished, 503 before that and while shutting down."""
    readiness = call.readiness
    if not readiness.ready:
        raise ApiError(503, Code.NOT_READY, readiness.reason, retry_after_s=1)
    return Health("ready")


@routes.get("/metrics", roles=PUBLIC, media_type="text/plain")
async def metrics(call: Call) -> web.Response:
    """Prometheus metrics in the text exposition format; with `HOGX_METRICS_TOKEN` set, only for a request
    presenting it as `Authorization: Bearer <token>` (401 `bad_token` otherwise)."""
    token = call.config.metrics_token
    if token is not None:
        given = call.request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):  # no timing hint
            raise ApiError(401, Code.BAD_TOKEN, "GET /metrics needs Authorization: Bearer <HOGX_METRICS_TOKEN>")
    response = web.Response(body=call.metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


@routes.get("/v1/openapi.json", roles=PUBLIC)
async def openapi(call: Call) -> web.Response:
    """This API's OpenAPI 3.1 document."""
    return web.Response(body=call.app[OPENAPI], content_type="application/json")


@routes.get("/v1/me", roles=ANY_ROLE, response=Me)
async def me(call: Call) -> Me:
    """Who the signed request authenticates as."""
    who = call.principal
    return Me(who.participant_id, who.role, who.api_key)
