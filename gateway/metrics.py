"""Prometheus metrics of the whole exchange, on one `CollectorRegistry` per `Metrics` instance.

Conventions: the `hogx_` prefix, base units in the name (`_seconds`), counters end in `_total`,
histograms (never summaries), route templates rather than raw paths, and no participant, key or order
ids as labels (instrument codes and reasons are bounded sets, so they are fine).

The gateway's own metrics are updated here and in the middleware; the exchange metrics (orders,
trades, latencies, book depth, journal, sequencer) are defined here so that the sequencer and the order
handlers only have to call them, e.g. `metrics.orders_received.labels(instrument).inc()`.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# Latency buckets: matching is microseconds, an acknowledgement waits for a database commit.
_MATCH_BUCKETS_S = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
_ACK_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_HTTP_BUCKETS_S = _ACK_BUCKETS_S
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class _Pool(Protocol):
    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...
    def get_max_size(self) -> int: ...


class Metrics:
    """All metric objects; one instance per application so tests can run several apps in a process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # -- HTTP and authentication (gateway) --
        self.http_requests = Counter(
            "hogx_http_requests_total", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=r)
        self.http_request_duration = Histogram(
            "hogx_http_request_duration_seconds", "Time from request to response, by route template.",
            ["route", "method"], buckets=_HTTP_BUCKETS_S, registry=r)
        self.auth_failures = Counter(
            "hogx_auth_failures_total", "Rejected authentications (HTTP and WebSocket), by error code.",
            ["code"], registry=r)
        self.rate_limited = Counter(
            "hogx_rate_limited_total", "Requests refused with 429 by the per-key rate limit.",
            registry=r)
        # -- WebSocket --
        self.ws_connections = Gauge(
            "hogx_ws_connections", "Open WebSocket connections.", registry=r)
        self.ws_slow_consumer_drops = Counter(
            "hogx_ws_slow_consumer_drops_total",
            "WebSocket connections closed because their outgoing queue was full.", registry=r)
        self.ws_messages_sent = Counter(
            "hogx_ws_messages_sent_total", "Messages queued to WebSocket connections.", registry=r)
        # -- database pool (read at scrape time, see bind_pool) --
        self.db_pool_connections = Gauge(
            "hogx_db_pool_connections", "Connections currently open in the asyncpg pool.", registry=r)
        self.db_pool_connections_in_use = Gauge(
            "hogx_db_pool_connections_in_use", "Pool connections checked out right now.", registry=r)
        self.db_pool_max_connections = Gauge(
            "hogx_db_pool_max_connections", "Configured maximum size of the asyncpg pool.", registry=r)
        # -- exchange (defined now, updated by the order handlers and the sequencer) --
        self.orders_received = Counter(
            "hogx_orders_received_total", "Order commands received, by instrument.",
            ["instrument"], registry=r)
        self.orders_rejected = Counter(
            "hogx_orders_rejected_total", "Order commands rejected, by reason code.",
            ["reason"], registry=r)
        self.trades = Counter(
            "hogx_trades_total", "Trades executed, by instrument.", ["instrument"], registry=r)
        self.traded_heads = Counter(
            "hogx_traded_heads_total", "Heads traded, by instrument.", ["instrument"], registry=r)
        self.match_latency = Histogram(
            "hogx_match_latency_seconds", "Time the core spends applying one command (one command in 16 is timed).",
            buckets=_MATCH_BUCKETS_S, registry=r)
        self.ack_latency = Histogram(
            "hogx_ack_latency_seconds",
            "Time from receiving a command to its durable acknowledgement.",
            ["transport"], buckets=_ACK_BUCKETS_S, registry=r)
        self.book_depth_levels = Gauge(
            "hogx_book_depth_levels", "Price levels resting in the book, by instrument and side.",
            ["instrument", "side"], registry=r)
        self.book_depth_heads = Gauge(
            "hogx_book_depth_heads", "Heads resting in the book, by instrument and side.",
            ["instrument", "side"], registry=r)
        self.journal_batch_size = Histogram(
            "hogx_journal_batch_size_commands", "Commands per journal batch committed by the sequencer.",
            buckets=_BATCH_BUCKETS, registry=r)
        self.journal_commit_latency = Histogram(
            "hogx_journal_commit_latency_seconds", "Time to commit one journal batch to PostgreSQL.",
            buckets=_ACK_BUCKETS_S, registry=r)
        self.sequencer_queue_depth = Gauge(
            "hogx_sequencer_queue_depth", "Commands waiting in the sequencer queue.", registry=r)
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_http(self, route: str, method: str, status: int, duration_s: float, *, is_stream: bool) -> None:
        # Label lookups cost more than the increments; the label sets are bounded (route templates), so
        # their children are cached.
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (self.http_requests.labels(route, method, str(status)),
                                                   self.http_request_duration.labels(route, method))
        children[0].inc()
        if not is_stream:  # a WebSocket's "duration" is its whole life; it would drown the histogram
            children[1].observe(duration_s)

    def bind_pool(self, pool: _Pool) -> None:
        """Read the pool's figures at scrape time instead of updating them on every acquire."""
        self.db_pool_connections.set_function(pool.get_size)
        self.db_pool_connections_in_use.set_function(lambda: pool.get_size() - pool.get_idle_size())
        self.db_pool_max_connections.set_function(pool.get_max_size)

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format (content type `CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)
