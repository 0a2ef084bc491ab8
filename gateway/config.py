"""Gateway configuration: one frozen value read from environment variables.

Every setting has a default except the database, so `hogx serve` works out of the box. The variables
(all optional):

=============================  ==========================================================  ==========
variable                       meaning                                                     default
=============================  ==========================================================  ==========
DATABASE_URL                   PostgreSQL DSN; unset means the embedded server             (unset)
HOGX_HOST / HOGX_PORT          address the HTTP server binds                               127.0.0.1 / 8080
HOGX_OPERATOR_KEY              operator API key created on first start when missing        (unset)
HOGX_OPERATOR_SECRET           its secret (both or neither)                                (unset)
HOGX_AUTH_WINDOW_MS            accepted clock skew of X-Hogx-Timestamp, both directions    5000
HOGX_REPLAY_CACHE_SIZE         signatures remembered for replay protection, per API key    200000
                               (see below)
HOGX_KEY_CACHE_TTL_S           how long a cached key is trusted before re-reading it       10
HOGX_RATE_LIMIT_PER_S          sustained requests per second per API key                   200
HOGX_RATE_LIMIT_BURST          token bucket size per API key                               400
                               (HTTP and WebSocket order entry share a key's bucket)
HOGX_AUTH_FAILURES_PER_S       failed authentications an address may sustain per second    1
HOGX_AUTH_FAILURE_BURST        failed authentications an address may make at once; past    50
                               them it gets 429 too_many_auth_failures
HOGX_WS_MAX_PER_KEY            WebSockets logged in with one API key                       32
HOGX_WS_MAX_PER_ADDRESS        WebSockets open from one client address                     256
HOGX_MAX_BODY_BYTES            largest accepted request body                               65536
HOGX_DB_POOL_MIN / _MAX        asyncpg pool size bounds                                    2 / 10
HOGX_WS_QUEUE_SIZE             outgoing messages buffered per WebSocket before it is       1024
                               dropped as a slow consumer
HOGX_WS_MAX_CHANNELS           subscriptions per WebSocket                                 64
HOGX_WS_MAX_INFLIGHT           concurrent requests per WebSocket (order entry)             1024
HOGX_WS_HEARTBEAT_S            ping interval that detects dead peers                       30
HOGX_DRAIN_S                   after SIGTERM, how long new requests still get an answer    2
                               (503 not_ready) before the listener closes
HOGX_SHUTDOWN_TIMEOUT_S        grace period for in-flight requests on shutdown             10
HOGX_SEQUENCER_QUEUE_SIZE      commands the sequencer queues before answering 503 busy     50000
HOGX_SEQUENCER_MAX_BATCH       most commands journaled in one commit                       1000
HOGX_SNAPSHOT_EVERY            commands between core snapshots                             100000
HOGX_CLOCK_TICK_S              exchange clock tick (expires GTD orders); 0 turns it off    1
HOGX_RETENTION_S               exchange seconds final records and idempotency keys stay    0 (24 h)
                               in memory (exchange/core.py "Memory"); 0: the default
HOGX_CLOCK                     `wall`, or `simulated` for tests and demos (gateway/clock.py)  wall
HOGX_CLOCK_START_MS            where a simulated clock starts; 0: the wall clock at start  0
HOGX_TRADE_HISTORY             public trades kept per instrument for GET .../trades        10000
HOGX_CANDLE_HISTORY            candles kept per instrument and interval                    1000
HOGX_PROJECT_READ_MODELS       keep the PostgreSQL `orders`/`trades` tables up to date     true
HOGX_METRICS_TOKEN             when set, GET /metrics needs `Authorization: Bearer` it     (unset)
                               (16-256 printable characters, no spaces)
HOGX_PAYER_NAME                the exchange's settlement account that payout files debit:  (unset)
HOGX_PAYER_ACCOUNT             its holder's name, account number (1-32 of 0-9 A-Z a-z),
HOGX_PAYER_BANK_CODE           bank code (3 digits) and branch code (12 digits, starting
HOGX_PAYER_BRANCH_CODE         with the bank code): all four or none. Unset, no payout
                               file is made (422 payer_not_configured) except with --demo,
                               which debits a made-up demo account (`DEMO_PAYER`)
=============================  ==========================================================  ==========

Client addresses are the TCP peer's: behind a reverse proxy every client shares the proxy's address, so
raise the per-address limits there (or let the proxy enforce its own).

Rates are floats (requests per second); nothing here is money. A signature is remembered for up to two
auth windows (a timestamp may be a window ahead) and only once the rate limiter admitted its request, so
a key's share holding `rate_limit_burst + rate_limit_per_s * 2 * auth_window_ms / 1000` signatures
(2,400 with the defaults) is never full for a key within its rate limit. A key whose share is full gets
429 `rate_limited`; one key's flood never touches another key's share.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import msgspec

__all__ = ["ConfigError", "GatewayConfig"]

_KEY_RE = re.compile(r"[A-Za-z0-9_\-]{8,64}")
_PAYER_ACCOUNT_RE = re.compile(r"[0-9A-Za-z]{1,32}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]{16,256}")


class ConfigError(ValueError):
    """An environment variable is malformed or inconsistent."""


# The demo market's made-up settlement account (`hogx serve --demo` only): never a real market's payer.
DEMO_PAYER: tuple[str, str, str, str] = ("重庆荣昌生猪交易市场", "3100000000000000001", "102", "102653000019")


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the gateway needs to start; build it with `from_env` or directly in tests."""

    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    operator_key: str | None = None
    operator_secret: str | None = None
    demo: bool = False
    auth_window_ms: int = 5_000
    replay_cache_size: int = 200_000  # per API key
    key_cache_ttl_s: float = 10.0
    rate_limit_per_s: float = 200.0
    rate_limit_burst: int = 400
    auth_failures_per_s: float = 1.0
    auth_failure_burst: int = 50
    ws_max_per_key: int = 32
    ws_max_per_address: int = 256
    max_body_bytes: int = 64 * 1024
    db_pool_min: int = 2
    db_pool_max: int = 10
    ws_queue_size: int = 1024
    ws_max_channels: int = 64
    ws_max_inflight: int = 1024
    ws_heartbeat_s: float = 30.0
    drain_s: float = 2.0
    shutdown_timeout_s: float = 10.0
    sequencer_queue_size: int = 50_000
    sequencer_max_batch: int = 1_000  # the sequencer's measured default
    snapshot_every: int = 100_000
    clock_tick_s: float = 1.0
    # The core's retention window for final records and idempotency keys, in exchange seconds (the
    # ticks carry it: exchange/core.py "Memory"); 0 is the core's default, 24 h.
    retention_s: int = 0
    clock: str = "wall"  # or "simulated": tests and demos move it with POST /v1/admin/clock
    clock_start_ms: int = 0  # a simulated clock's start; 0: the wall clock at start
    trade_history: int = 10_000
    candle_history: int = 1_000
    # Off by default: the API answers from the in-memory read model; the PostgreSQL projection serves
    # SQL readers only and costs ~28 µs of database CPU per order (run it where the database has room).
    project_read_models: bool = True  # order history forgotten from memory is read there
    # /metrics shows exchange-wide money: when set, a scrape must present it as a bearer token.
    metrics_token: str | None = None
    # The payer of payout files (exchange.settlement.bankfiles). No default: a real market that forgot
    # them must not send files debiting a made-up account; `payer()` falls back to DEMO_PAYER only in a demo.
    payer_name: str = ""
    payer_account: str = ""
    payer_bank_code: str = ""
    payer_branch_code: str = ""

    def __post_init__(self) -> None:
        if (self.operator_key is None) != (self.operator_secret is None):
            raise ConfigError("set both HOGX_OPERATOR_KEY and HOGX_OPERATOR_SECRET, or neither")
        if self.operator_key is not None and not _KEY_RE.fullmatch(self.operator_key):
            raise ConfigError("HOGX_OPERATOR_KEY must be 8-64 characters of A-Z a-z 0-9 _ -")
        if self.operator_secret is not None and len(self.operator_secret) < 16:
            raise ConfigError("HOGX_OPERATOR_SECRET must have at least 16 characters")
        for name in ("auth_window_ms", "replay_cache_size", "rate_limit_burst", "auth_failure_burst",
                     "auth_failures_per_s", "ws_max_per_key", "ws_max_per_address", "max_body_bytes",
                     "db_pool_max", "ws_queue_size", "ws_max_channels", "ws_max_inflight",
                     "sequencer_queue_size", "sequencer_max_batch", "snapshot_every", "trade_history",
                     "candle_history"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.retention_s < 0:
            raise ConfigError("retention_s must be 0 (the default, 24 h) or positive")
        if self.drain_s < 0:
            raise ConfigError("drain_s must be 0 or positive")
        if self.clock_tick_s < 0:
            raise ConfigError("clock_tick_s must be 0 (off) or positive")
        if self.clock not in ("wall", "simulated"):
            raise ConfigError("HOGX_CLOCK must be wall or simulated")
        if not 0 <= self.clock_start_ms <= 9_000_000_000_000:
            raise ConfigError("HOGX_CLOCK_START_MS must be milliseconds since the epoch")
        if self.rate_limit_per_s <= 0:
            raise ConfigError("rate_limit_per_s must be positive")
        if self.metrics_token is not None and not _TOKEN_RE.fullmatch(self.metrics_token):
            raise ConfigError("HOGX_METRICS_TOKEN must be 16-256 printable characters without spaces")
        if not 0 <= self.db_pool_min <= self.db_pool_max:
            raise ConfigError("need 0 <= db_pool_min <= db_pool_max")
        payer = (self.payer_name, self.payer_account, self.payer_bank_code, self.payer_branch_code)
        if any(payer) and not (0 < len(self.payer_name) <= 100 and _PAYER_ACCOUNT_RE.fullmatch(self.payer_account)
                and re.fullmatch(r"[0-9]{3}", self.payer_bank_code)
                and re.fullmatch(r"[0-9]{12}", self.payer_branch_code)
                and self.payer_branch_code.startswith(self.payer_bank_code)):
            raise ConfigError("HOGX_PAYER_NAME (1-100 characters), HOGX_PAYER_ACCOUNT (1-32 of 0-9 A-Z a-z), "
                              "HOGX_PAYER_BANK_CODE (3 digits), HOGX_PAYER_BRANCH_CODE (12 digits starting "
                              "with the bank code): all four, or none")

    def payer(self) -> tuple[str, str, str, str] | None:
        """The payer of payout files (name, account, bank code, branch code): the configured one; with
        `demo`, `DEMO_PAYER` when none is; else None (no payout file can be made)."""
        if self.payer_account:
            return (self.payer_name, self.payer_account, self.payer_bank_code, self.payer_branch_code)
        return DEMO_PAYER if self.demo else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> GatewayConfig:
        """Read the variables in the module docstring; `overrides` (e.g. CLI flags) win over them."""
        env = os.environ if environ is None else environ
        fields: dict[str, object] = {}
        for field_name, var in _ENV_VARS.items():
            raw = env.get(var)
            if raw is not None and raw != "":
                fields[field_name] = raw
        fields.update({k: v for k, v in overrides.items() if v is not None})
        try:
            # strict=False converts the strings ("8080", "2.5", "true") to the declared types.
            return msgspec.convert(fields, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"bad gateway configuration: {exc}") from exc


_ENV_VARS: dict[str, str] = {
    "database_url": "DATABASE_URL",
    "host": "HOGX_HOST",
    "port": "HOGX_PORT",
    "operator_key": "HOGX_OPERATOR_KEY",
    "operator_secret": "HOGX_OPERATOR_SECRET",
    "auth_window_ms": "HOGX_AUTH_WINDOW_MS",
    "replay_cache_size": "HOGX_REPLAY_CACHE_SIZE",
    "key_cache_ttl_s": "HOGX_KEY_CACHE_TTL_S",
    "rate_limit_per_s": "HOGX_RATE_LIMIT_PER_S",
    "rate_limit_burst": "HOGX_RATE_LIMIT_BURST",
    "auth_failures_per_s": "HOGX_AUTH_FAILURES_PER_S",
    "auth_failure_burst": "HOGX_AUTH_FAILURE_BURST",
    "ws_max_per_key": "HOGX_WS_MAX_PER_KEY",
    "ws_max_per_address": "HOGX_WS_MAX_PER_ADDRESS",
    "max_body_bytes": "HOGX_MAX_BODY_BYTES",
    "db_pool_min": "HOGX_DB_POOL_MIN",
    "db_pool_max": "HOGX_DB_POOL_MAX",
    "ws_queue_size": "HOGX_WS_QUEUE_SIZE",
    "ws_max_channels": "HOGX_WS_MAX_CHANNELS",
    "ws_max_inflight": "HOGX_WS_MAX_INFLIGHT",
    "ws_heartbeat_s": "HOGX_WS_HEARTBEAT_S",
    "drain_s": "HOGX_DRAIN_S",
    "shutdown_timeout_s": "HOGX_SHUTDOWN_TIMEOUT_S",
    "sequencer_queue_size": "HOGX_SEQUENCER_QUEUE_SIZE",
    "sequencer_max_batch": "HOGX_SEQUENCER_MAX_BATCH",
    "snapshot_every": "HOGX_SNAPSHOT_EVERY",
    "clock_tick_s": "HOGX_CLOCK_TICK_S",
    "retention_s": "HOGX_RETENTION_S",
    "clock": "HOGX_CLOCK",
    "clock_start_ms": "HOGX_CLOCK_START_MS",
    "trade_history": "HOGX_TRADE_HISTORY",
    "candle_history": "HOGX_CANDLE_HISTORY",
    "project_read_models": "HOGX_PROJECT_READ_MODELS",
    "payer_name": "HOGX_PAYER_NAME",
    "payer_account": "HOGX_PAYER_ACCOUNT",
    "payer_bank_code": "HOGX_PAYER_BANK_CODE",
    "payer_branch_code": "HOGX_PAYER_BRANCH_CODE",
    "metrics_token": "HOGX_METRICS_TOKEN",
}
