"""Prometheus metrics of the whole exchange, on one `CollectorRegistry` per `Metrics` instance.

Conventions: the `hogx_` prefix, base units in the name (`_seconds`), counters end in `_total`,
histograms (never summaries), route templates rather than raw paths, and no participant, key or order
ids as labels (instrument codes and reasons are bounded sets, so they are fine).

The gateway's own metrics are updated here and in the middleware; the exchange metrics (orders,
trades, latencies, book depth, journal, sequencer) are defined here so that the sequencer and the order
handlers only have to call them, e.g. `metrics.orders_received.labels(instrument).inc()`. The operator's
figures about money, backlogs, payouts, loans and the ledger are gauges read from the core at scrape
time: `gateway.opsmetrics`.

What is counted or observed once per order or per request (orders received, acknowledgement latency,
HTTP requests and their duration) uses `PlainCounter` and `PlainHistogram`: plain Python numbers,
exported by a collector at scrape time. prometheus_client's own take a lock per update and walk the
buckets in Python, which cost more than the rest of an order's bookkeeping. They are not thread-safe,
and need not be: the gateway updates and scrapes them on its one event loop.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "PlainCounter", "PlainHistogram"]

# No `_created` series: nobody alerts on them and they double the counters' and histograms' output. The
# switch is process-wide (prometheus_client's own), so it is thrown when this module is imported.
disable_created_metrics()

# Latency buckets: matching is microseconds, an acknowledgement waits for a database commit.
_MATCH_BUCKETS_S = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
_ACK_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_HTTP_BUCKETS_S = _ACK_BUCKETS_S
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class PlainCounter(Collector):
    """A labelled counter in plain numbers (see the module docstring); `name` ends in `_total`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _CounterChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> _CounterChild:
        """The child of these label values (cache it: the lookup costs more than an increment)."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _CounterChild()
        return child

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        return [family]


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # bisect_left: the first bound >= amount, so a value on a bound lands in that bucket (le).
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class PlainHistogram(Collector):
    """A labelled histogram in plain numbers (see the module docstring), exported like prometheus_client's."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        if list(self._bounds) != sorted(set(self._bounds)):
            raise ValueError("buckets must be increasing")
        self._children: dict[tuple[str, ...], _HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> _HistogramChild:
        """The child of these label values (cache it: the lookup costs more than an observation)."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _HistogramChild(self._bounds)
        return child

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        edges = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for edge, count in zip(edges, child.counts, strict=True):
                cumulative += count
                buckets.append((edge, float(cumulative)))
            family.add_metric(values, buckets, child.sum)
        return [family]


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
        self.http_requests = PlainCounter(
            "hogx_http_requests_total", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=r)
        self.http_request_duration = PlainHistogram(
            "hogx_http_request_duration_seconds", "Time from request to response, by route template.",
            ["route", "method"], buckets=_HTTP_BUCKETS_S, registry=r)
        self.auth_failures = Counter(
            "hogx_auth_failures_total", "Rejected authentications (HTTP and WebSocket), by error code.",
            ["code"], registry=r)
        self.rate_limited = Counter(
            "hogx_rate_limited_total", "Requests refused with 429 by the per-key rate limit.",
            registry=r)
        self.auth_key_lookups = Counter(
            "hogx_auth_key_lookups_total", "API keys read from the database (key cache misses).", registry=r)
        # -- WebSocket --
        self.ws_connections = Gauge(
            "hogx_ws_connections", "Open WebSocket connections.", registry=r)
        self.ws_slow_consumer_drops = Counter(
            "hogx_ws_slow_consumer_drops_total",
            "WebSocket connections closed because their outgoing queue was full.", registry=r)
        self.ws_messages_sent = Counter(
            "hogx_ws_messages_sent_total", "Messages written to WebSocket connections.", registry=r)
        # -- database pool (read at scrape time, see bind_pool) --
        self.db_pool_connections = Gauge(
            "hogx_db_pool_connections", "Connections currently open in the asyncpg pool.", registry=r)
        self.db_pool_connections_in_use = Gauge(
            "hogx_db_pool_connections_in_use", "Pool connections checked out right now.", registry=r)
        self.db_pool_max_connections = Gauge(
            "hogx_db_pool_max_connections", "Configured maximum size of the asyncpg pool.", registry=r)
        # -- exchange (defined now, updated by the order handlers and the sequencer) --
        self.orders_received = PlainCounter(
            "hogx_orders_received_total", "Order commands received, by instrument.",
            ["instrument"], registry=r)
        self.orders_rejected = Counter(
            "hogx_orders_rejected_total", "Order commands rejected, by reason code.",
            ["reason"], registry=r)
        self.trades = Counter(
            "hogx_trades_total", "Trades executed, by instrument.", ["instrument"], registry=r)
        self.traded_heads = Counter(
            "hogx_traded_heads_total", "Heads traded, by instrument.", ["instrument"], registry=r)
        self.match_latency = PlainHistogram(
            "hogx_match_latency_seconds", "Time the core spends applying one command (one command in 16 is timed).",
            [], buckets=_MATCH_BUCKETS_S, registry=r)
        self.ack_latency = PlainHistogram(
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
        self._http_children: dict[tuple[str, str, int], tuple[_CounterChild, _HistogramChild]] = {}

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
