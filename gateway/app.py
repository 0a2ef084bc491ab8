"""The application factory: `create_app(config)` wires services, routes, start-up and shutdown.

Start-up and tear-down are paired in `cleanup_ctx`, run in order on start and in reverse on stop:

1. `_database`: the asyncpg pool (bound to the pool metrics) and the bootstrap operator key.
2. `_exchange`: the shard of this database (`gateway.exchange_port`): sequencer recovery, the read
   model rebuilt and checked, the market-data and execution-report publishers, the database's
   participants registered in the core (`gateway.participants`), the demo market with `--demo`. On
   stop it drains the sequencer: everything queued is committed and answered.
3. `opsmetrics.context`: the operator's gauges (money, backlogs, payouts, loans, ledger) on the registry.
4. `_readiness`: marks the gateway ready once everything before it is up.

Shutdown (`on_shutdown`, which aiohttp runs before waiting for in-flight handlers): stop being ready,
stop taking commands (503 `not_ready`), refuse new WebSockets and close open ones with 1001
GOING_AWAY, so the wait for in-flight handlers is short; then the cleanup contexts unwind in reverse.
`hogx serve` runs the same steps first when SIGTERM arrives and keeps the listener open for
`HOGX_DRAIN_S` answering every request 503 `not_ready` (`gateway.server`), before aiohttp's shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable

import msgspec
from aiohttp import web

from exchange.store import create_pool
from gateway import (
    admin,
    auctions,
    calendar,
    clock,
    demo,
    exchange_port,
    index,
    lots,
    market,
    operator,
    opsmetrics,
    orders,
    participants,
    people,
    priceindex,
    requestlog,
    settlement,
    store,
    system,
    webapp,
)
from gateway.auth import Authenticator, KeyRecord, wall_clock_ms
from gateway.config import ConfigError, GatewayConfig
from gateway.errors import error_middleware
from gateway.metrics import Metrics
from gateway.openapi import build_openapi
from gateway.ratelimit import TokenBuckets
from gateway.routes import RouteTable, install
from gateway.sessions import SESSIONS, SessionAuth, SessionPolicy
from gateway.state import AUTH, CONFIG, HUB, LIMITER, METRICS, OPENAPI, POOL, READINESS, Readiness
from gateway.ws import Hub

__all__ = ["API_VERSION", "ROUTE_TABLES", "create_app"]

_log = logging.getLogger(__name__)

API_VERSION = "0.1.0"

# Every installed route table; a new handler module adds its `routes` here.
ROUTE_TABLES: tuple[RouteTable, ...] = (system.routes, admin.routes, orders.routes, lots.routes, market.routes,
                                         operator.routes, participants.routes, *settlement.ROUTE_TABLES,
                                         people.routes, auctions.routes, index.routes, calendar.routes)


def create_app(
    config: GatewayConfig,
    *,
    extra_routes: Iterable[RouteTable] = (),
    clock_ms: Callable[[], int] = wall_clock_ms,
    session_policy: SessionPolicy | None = None,
) -> web.Application:
    """A ready-to-run application; nothing touches the network until it is started."""
    metrics = Metrics()
    readiness = Readiness()
    # one middleware: errors, metrics, then the request id and the request log of the final answer
    app = web.Application(middlewares=[error_middleware(metrics, readiness, requestlog.finish)],
                          client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[METRICS] = metrics
    app[READINESS] = readiness

    async def load_key(api_key: str) -> KeyRecord | None:
        metrics.auth_key_lookups.inc()
        return await store.load_key(app[POOL], api_key)

    auth = Authenticator(load_key, metrics, window_ms=config.auth_window_ms,
                         replay_capacity=config.replay_cache_size, key_ttl_s=config.key_cache_ttl_s,
                         clock_ms=clock_ms, failures_per_s=config.auth_failures_per_s,
                         failure_burst=config.auth_failure_burst)
    limiter = TokenBuckets(config.rate_limit_per_s, config.rate_limit_burst)  # HTTP and WebSocket alike
    hub = Hub(auth, metrics, limiter, queue_size=config.ws_queue_size, max_channels=config.ws_max_channels,
              max_inflight=config.ws_max_inflight, max_message_bytes=config.max_body_bytes,
              heartbeat_s=config.ws_heartbeat_s, max_per_key=config.ws_max_per_key,
              max_per_address=config.ws_max_per_address)
    hub.register_channel_kind("book")
    hub.register_channel_kind("trades")
    hub.register_channel_kind("orders", private=True)
    orders.wire(hub)
    market.wire(app, hub)
    auctions.wire(app, hub)
    index.wire(app, hub)
    app[AUTH], app[LIMITER], app[HUB] = auth, limiter, hub
    app[SESSIONS] = SessionAuth(session_policy or SessionPolicy())

    if config.clock == "simulated":
        extra_routes = (*extra_routes, clock.routes)  # the route exists only with the simulated clock
    routes = [route for table in (*ROUTE_TABLES, *extra_routes) for route in table]
    install(app, routes, auth, limiter, metrics)
    app.router.add_get("/v1/ws", hub.handle, name="websocket")
    webapp.install(app)
    app[OPENAPI] = msgspec.json.encode(build_openapi(routes, title="hogx exchange API", version=API_VERSION))

    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_exchange)
    app.cleanup_ctx.append(priceindex.context)  # the price index's history in PostgreSQL (exchange/priceindex.py)
    app.cleanup_ctx.append(opsmetrics.context)
    app.cleanup_ctx.append(_readiness)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.database_url:
        raise ConfigError("no database: set DATABASE_URL (the CLI starts the embedded server when unset)")
    pool = await create_pool(config.database_url, min_size=config.db_pool_min, max_size=config.db_pool_max)
    app[POOL] = pool
    app[METRICS].bind_pool(pool)
    try:
        key, secret = config.operator_key, config.operator_secret
        if key is not None and secret is not None and await store.ensure_operator_key(pool, key, secret):
            _log.info("created bootstrap operator key %s", key)
        yield
    finally:
        await pool.close()


async def _exchange(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    assert config.database_url is not None
    shard = await exchange_port.attach(config.database_url, config)
    port = exchange_port.ExchangePort(shard, app[METRICS], app[READINESS])
    app[exchange_port.EXCHANGE] = port
    port.pool = app[POOL]
    if shard.clock is not None:
        shard.clock.advance_to(max(shard.clock(), shard.sequencer.last_ts_ns))  # never behind the journal
        app[clock.CLOCK] = shard.clock
    try:
        orders.attach(app, port, app[HUB], app[METRICS])
        market.attach(port, app[HUB])
        auctions.attach(app, port, app[HUB])
        index.attach(app, port, app[HUB])
        # Participants the core does not know yet (the bootstrap operator, registrations cut short by a
        # crash) are registered before anyone can trade.
        await participants.sync_from_database(app[POOL], port)
        if config.demo:
            await demo.seed(app[POOL], port)
        port.start_watching()
        yield
    finally:
        await port.close()
        await exchange_port.detach(shard)


async def _readiness(app: web.Application) -> AsyncIterator[None]:
    app[READINESS].set_ready()
    yield
    app[READINESS].set_not_ready("stopped")


async def _on_shutdown(app: web.Application) -> None:
    app[READINESS].set_not_ready("shutting down")
    port = app.get(exchange_port.EXCHANGE)
    if port is not None:
        port.accepting = False
    await app[HUB].close_all()
