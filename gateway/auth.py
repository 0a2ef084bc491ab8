"""Who is calling: roles, the authenticated `Principal`, the API-key cache and signature checks.

Checks run in a fixed order, each failure a 401 with its own code:
`missing_credentials` -> `timestamp_out_of_window` -> `unknown_key` -> `bad_signature` ->
`revoked_key` -> `replayed_request`, then the caller's admission (an HTTP route's role check and
per-key rate limit, 403/429), and only then is the signature remembered. Revocation is reported only
after the signature verified, so a stranger learns nothing about a key; replay is checked after it so a
replayed copy of a genuine request cannot be used to probe, and before rate limiting so it cannot drain
the victim's bucket. Signatures are remembered per API key, each key in its own bounded share, and
only once the rate limiter admitted the request: one key's flood fills its own share and gets 429s,
and never costs another key anything.

Guessing is bounded: every 401 spends a token of the client address's failure bucket
(`auth_failure_burst`, refilled at `auth_failures_per_s`), and an address with none left gets 429
`too_many_auth_failures` before anything is checked or read. A key that is not in the database is
remembered as unknown for a few seconds (a bounded table), so made-up keys cost no query each
(`hogx_auth_key_lookups_total` counts the reads).

The wall clock is read here (the gateway stamps time; the exchange core never reads a clock).
"""

from __future__ import annotations

import hmac
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from enum import StrEnum
from typing import Final, Protocol

import msgspec

from gateway.errors import ApiError, Code
from gateway.metrics import Metrics
from gateway.ratelimit import TokenBuckets
from gateway.signing import digest, signature_bytes

__all__ = [
    "ANY_ROLE",
    "BUYERS",
    "FINANCIERS",
    "OPERATORS",
    "PUBLIC",
    "SELLERS",
    "Authenticator",
    "KeyRecord",
    "Principal",
    "Role",
    "roles",
    "wall_clock_ms",
]

KEY_HEADER = "X-Hogx-Key"
TIMESTAMP_HEADER = "X-Hogx-Timestamp"
SIGNATURE_HEADER = "X-Hogx-Signature"
_KEY_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")  # all keys ever issued: others are unknown, unread


class Role(StrEnum):
    FARMER = "farmer"
    COOPERATIVE = "cooperative"
    BUYER = "buyer"
    FINANCIER = "financier"
    OPERATOR = "operator"


def roles(*members: Role) -> frozenset[Role]:
    return frozenset(members)


# Role sets routes declare (`roles=SELLERS`). PUBLIC means "no authentication at all".
PUBLIC: Final[None] = None
ANY_ROLE: Final = frozenset(Role)
SELLERS: Final = roles(Role.FARMER, Role.COOPERATIVE)
BUYERS: Final = roles(Role.BUYER)
FINANCIERS: Final = roles(Role.FINANCIER)
OPERATORS: Final = roles(Role.OPERATOR)


class Principal(msgspec.Struct, frozen=True):
    """The authenticated caller of one request or WebSocket."""

    participant_id: int
    role: Role
    api_key: str

    def has_role(self, allowed: Iterable[Role]) -> bool:
        return self.role in allowed


class KeyRecord(msgspec.Struct, frozen=True):
    api_key: str
    participant_id: int
    role: Role
    secret: str
    revoked: bool


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class _Headers(Protocol):
    """Anything with `get(name) -> str | None`, like aiohttp's CIMultiDictProxy."""

    def get(self, name: str, /) -> str | None: ...


KeyLoader = Callable[[str], Awaitable[KeyRecord | None]]
# Called by `verify` between the replay check and remembering the signature; raises `ApiError` to refuse.
Admit = Callable[[Principal], None]


class _KeyCache:
    """API keys by key, trusted for `ttl_s` (so a revocation made by another gateway is seen within it).

    Unknown keys are remembered briefly in a bounded table so a flood of made-up keys cannot turn
    into a flood of database queries.
    """

    def __init__(self, load: KeyLoader, ttl_s: float, clock_s: Callable[[], float],
                 negative_ttl_s: float = 2.0, negative_capacity: int = 10_000) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._clock_s = clock_s
        self._negative_ttl_s = negative_ttl_s
        self._negative_capacity = negative_capacity
        self._known: dict[str, tuple[KeyRecord, float]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        # Keys this process revoked: a load that read the row before the revocation must not bring the
        # key back. Revocation is final, and this holds one string per revocation.
        self._revoked_here: set[str] = set()

    async def get(self, api_key: str) -> KeyRecord | None:
        now_s = self._clock_s()
        hit = self._known.get(api_key)
        if hit is not None and now_s - hit[1] < self._ttl_s:
            return hit[0]
        until_s = self._unknown.get(api_key)
        if until_s is not None and now_s < until_s:
            return None
        record = await self._load(api_key)
        if record is not None and api_key in self._revoked_here:
            record = msgspec.structs.replace(record, revoked=True)
        if record is None:
            self._remember_unknown(api_key, now_s)
            self._known.pop(api_key, None)
        else:
            self._unknown.pop(api_key, None)
            self._known[api_key] = (record, now_s)
        return record

    def put(self, record: KeyRecord) -> None:
        self._unknown.pop(record.api_key, None)
        self._known[record.api_key] = (record, self._clock_s())

    def fresh(self, api_key: str) -> KeyRecord | None:
        """The cached record while it is trusted, without loading; None when it must be re-read."""
        hit = self._known.get(api_key)
        if hit is not None and self._clock_s() - hit[1] < self._ttl_s:
            return hit[0]
        return None

    def revoke(self, api_key: str) -> None:
        self._revoked_here.add(api_key)
        hit = self._known.get(api_key)
        if hit is not None:
            self._known[api_key] = (msgspec.structs.replace(hit[0], revoked=True), hit[1])

    def _remember_unknown(self, api_key: str, now_s: float) -> None:
        self._unknown[api_key] = now_s + self._negative_ttl_s
        self._unknown.move_to_end(api_key)
        while len(self._unknown) > self._negative_capacity:
            self._unknown.popitem(last=False)


class _ReplayMemory:
    """Accepted signatures per API key, each until its timestamp leaves the window; at most `per_key`
    live ones for any key.

    A signature needs remembering only while a copy could still pass the timestamp check, i.e. until
    `ts_ms + window_ms`. Entries expire from the front of one arrival-ordered queue (expiries are nearly
    sorted, skewed only by client clocks), O(1) amortised per request, and a key with nothing left is
    dropped. Whatever is held arrived within the last two windows (timestamps may be a window ahead),
    so a key the rate limiter admits at most `per_key` times in two windows never fills its share.
    A full share is refused, never forgotten early, which would reopen the replay hole.
    """

    def __init__(self, window_ms: int, per_key: int) -> None:
        self._window_ms = window_ms
        self._per_key = per_key
        self._by_key: dict[str, dict[bytes, int]] = {}  # api key -> signature -> expiry (ms)
        self._order: deque[tuple[int, str, bytes]] = deque()

    def __len__(self) -> int:
        return sum(len(signatures) for signatures in self._by_key.values())

    def seen(self, api_key: str, signature: bytes, now_ms: int) -> bool:
        self._expire(now_ms)
        signatures = self._by_key.get(api_key)
        return signatures is not None and signatures.get(signature, -1) >= now_ms

    def remember(self, api_key: str, signature: bytes, ts_ms: int) -> bool:
        """Remember an admitted signature; False (nothing remembered) when the key's share is full."""
        signatures = self._by_key.get(api_key)
        if signatures is None:
            signatures = self._by_key[api_key] = {}
        elif len(signatures) >= self._per_key:
            return False
        expiry_ms = ts_ms + self._window_ms
        signatures[signature] = expiry_ms
        self._order.append((expiry_ms, api_key, signature))
        return True

    def _expire(self, now_ms: int) -> None:
        order, by_key = self._order, self._by_key
        while order and order[0][0] < now_ms:
            expiry_ms, api_key, signature = order.popleft()
            signatures = by_key.get(api_key)
            if signatures is not None and signatures.get(signature) == expiry_ms:
                del signatures[signature]
                if not signatures:
                    del by_key[api_key]


class Authenticator:
    """Verifies signed HTTP requests and WebSocket logins; one per application."""

    def __init__(
        self,
        load_key: KeyLoader,
        metrics: Metrics,
        *,
        window_ms: int,
        replay_capacity: int,
        key_ttl_s: float,
        clock_ms: Callable[[], int] = wall_clock_ms,
        clock_s: Callable[[], float] = time.monotonic,
        failures_per_s: float = 1.0,
        failure_burst: int = 50,
    ) -> None:
        self._keys = _KeyCache(load_key, key_ttl_s, clock_s)
        self._failures = TokenBuckets(failures_per_s, failure_burst, clock_s=clock_s)  # by client address
        # `replay_capacity` is each API key's share (config `replay_cache_size`).
        self._replay = _ReplayMemory(window_ms, replay_capacity)
        self._metrics = metrics
        self._window_ms = window_ms
        self._clock_ms = clock_ms

    async def verify(
        self,
        api_key: str | None,
        timestamp: str | None,
        signature: str | None,
        method: str,
        path: str,
        body: bytes = b"",
        admit: Admit | None = None,
        address: str | None = None,
    ) -> Principal:
        """Check one signed message; raise `ApiError(401, code)` or return who signed it.

        `admit(principal)` (an HTTP route's role check and rate limit) runs after the replay check and
        before the signature is remembered, so a refused request takes no replay memory; it must not
        await, so no copy of the same signature can slip in between. `address` (the client's) is
        refused 429 once it failed too often, and charged for each failure.
        """
        if address is None:
            return await self._verify(api_key, timestamp, signature, method, path, body, admit)
        wait_s = self._failures.wait_s(address)
        if wait_s:
            self._metrics.auth_failures.labels(Code.TOO_MANY_AUTH_FAILURES.value).inc()
            raise ApiError(429, Code.TOO_MANY_AUTH_FAILURES, "too many failed authentications from this "
                           f"address; retry in {wait_s:.1f} s", retry_after_s=TokenBuckets.retry_after_s(wait_s))
        try:
            return await self._verify(api_key, timestamp, signature, method, path, body, admit)
        except ApiError as exc:
            if exc.status == 401:
                self._failures.take(address)
            raise

    async def _verify(self, api_key: str | None, timestamp: str | None, signature: str | None, method: str,
                      path: str, body: bytes, admit: Admit | None) -> Principal:
        if not api_key or not timestamp or not signature:
            raise self._fail(Code.MISSING_CREDENTIALS, "X-Hogx-Key, X-Hogx-Timestamp and X-Hogx-Signature "
                                                       "are required")
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 16:
            raise self._fail(Code.MISSING_CREDENTIALS, "X-Hogx-Timestamp must be integer milliseconds")
        ts_ms = int(timestamp)
        now_ms = self._clock_ms()
        if abs(now_ms - ts_ms) > self._window_ms:
            raise self._fail(Code.TIMESTAMP_OUT_OF_WINDOW,
                             f"timestamp {ts_ms} is more than {self._window_ms} ms from server time {now_ms}")
        record = await self._keys.get(api_key) if _KEY_RE.fullmatch(api_key) else None
        if record is None:
            raise self._fail(Code.UNKNOWN_KEY, "unknown API key")
        given = signature_bytes(signature)
        expected = digest(record.secret, timestamp, method, path, body)
        if given is None or not hmac.compare_digest(given, expected):
            raise self._fail(Code.BAD_SIGNATURE, "signature does not match timestamp + METHOD + path + body")
        if record.revoked:
            raise self._fail(Code.REVOKED_KEY, "API key has been revoked")
        if self._replay.seen(api_key, expected, now_ms):
            raise self._fail(Code.REPLAYED_REQUEST, "this signature was already used")
        principal = Principal(record.participant_id, record.role, record.api_key)
        if admit is not None:
            admit(principal)
        if not self._replay.remember(api_key, expected, ts_ms):
            # Only this key's own signed requests fill its share (WebSocket logins are not rate limited).
            raise ApiError(429, Code.RATE_LIMITED, "too many signed requests with this key in the replay "
                           "window", retry_after_s=max(1, math.ceil(self._window_ms / 1000)))
        return principal

    async def authenticate(self, method: str, raw_path: str, headers: _Headers, body: bytes,
                           admit: Admit | None = None, address: str | None = None) -> Principal:
        return await self.verify(headers.get(KEY_HEADER), headers.get(TIMESTAMP_HEADER),
                                 headers.get(SIGNATURE_HEADER), method, raw_path, body, admit, address)

    def key_usable(self, principal: Principal) -> bool | None:
        """Without I/O: is the key of an authenticated session still good? True or False from a trusted
        cache entry, None when the entry is stale or gone (then await `recheck_key`)."""
        record = self._keys.fresh(principal.api_key)
        return None if record is None else _usable(record, principal)

    async def recheck_key(self, principal: Principal) -> bool:
        """Re-read the key of an authenticated session through the cache (from the database when stale)."""
        record = await self._keys.get(principal.api_key)
        return record is not None and _usable(record, principal)

    def remember(self, record: KeyRecord) -> None:
        """Cache a key just created by this gateway."""
        self._keys.put(record)

    def revoke(self, api_key: str) -> None:
        """Honour a revocation at once (the database has already been updated)."""
        self._keys.revoke(api_key)

    def _fail(self, code: Code, message: str) -> ApiError:
        self._metrics.auth_failures.labels(code.value).inc()
        return ApiError(401, code, message)


def _usable(record: KeyRecord, principal: Principal) -> bool:
    return not record.revoked and record.participant_id == principal.participant_id \
        and record.role == principal.role
