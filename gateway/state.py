"""Typed application state: the `web.AppKey`s under which `create_app` stores the gateway's services.

Handlers normally reach these through `Call` (`call.pool`, `call.hub`, ...); code that only has the
`web.Application` uses `app[POOL]` and gets the declared type.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from gateway.auth import Authenticator
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.ratelimit import TokenBuckets
from gateway.ws import Hub

__all__ = ["AUTH", "CONFIG", "HUB", "LIMITER", "METRICS", "OPENAPI", "POOL", "READINESS", "Readiness"]


class Readiness:
    """Whether the gateway takes traffic: false until recovery finished, false again when shutting down,
    and whether it is draining (answering every request 503 until its listener closes).

    A mutable holder because the application's own mapping is frozen once it has started.
    """

    __slots__ = ("draining", "ready", "reason")

    def __init__(self) -> None:
        self.ready = False
        self.reason = "starting"
        # Set on SIGTERM (`gateway.server`): every new request is answered 503 `not_ready` until the
        # listener closes.
        self.draining = False

    def set_ready(self) -> None:
        self.ready, self.reason = True, "ready"

    def set_not_ready(self, reason: str) -> None:
        self.ready, self.reason = False, reason

    def start_draining(self) -> None:
        self.set_not_ready("shutting down")
        self.draining = True


CONFIG = web.AppKey("hogx_config", GatewayConfig)
METRICS = web.AppKey("hogx_metrics", Metrics)
AUTH = web.AppKey("hogx_auth", Authenticator)
LIMITER = web.AppKey("hogx_limiter", TokenBuckets)
HUB = web.AppKey("hogx_hub", Hub)
READINESS = web.AppKey("hogx_readiness", Readiness)
POOL = web.AppKey("hogx_pool", asyncpg.Pool)
OPENAPI = web.AppKey("hogx_openapi", bytes)
