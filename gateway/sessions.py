"""Web sessions: the cookie that authenticates a person, its CSRF token, idle and absolute expiry.

`SessionAuth.authenticate` is the second way (beside a signed request, `gateway.auth`) to establish a
`Principal`; `gateway.routes` calls it when a request carries the `hogx_session` cookie and no API key,
and then applies the very same role check and rate limit. The routes that create and end sessions and
the rules they follow are in `gateway.people`.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import msgspec
from aiohttp import web

from gateway import people_store as db
from gateway.auth import Principal
from gateway.errors import ApiError
from gateway.ratelimit import TokenBuckets
from gateway.state import POOL

__all__ = ["CSRF_HEADER", "SESSIONS", "SESSION_COOKIE", "SessionAuth", "SessionPolicy", "same_token"]

SESSION_COOKIE: Final = "hogx_session"
CSRF_HEADER: Final = "X-CSRF-Token"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_CACHED: Final = 100_000
_UNKNOWN_TTL_S: Final = 10.0  # a made-up session id is answered from memory this long, not re-read
_MAX_UNKNOWN: Final = 10_000


class SessionPolicy(msgspec.Struct, frozen=True, kw_only=True):
    invitation_ttl_s: int = 72 * 3600
    idle_s: int = 30 * 60
    absolute_s: int = 12 * 3600
    max_failures: int = 5
    signin_per_address_per_s: float = 0.5
    signin_per_address_burst: int = 20
    signin_per_phone_per_s: float = 0.2
    signin_per_phone_burst: int = 10
    cache_ttl_s: float = 5.0  # how long a session read from the database is trusted (revocation elsewhere)
    touch_every_s: float = 60.0  # last_seen is written at most this often


class SessionAuth:
    """Authenticates requests by session cookie; one per application (`app[SESSIONS]`)."""

    def __init__(self, policy: SessionPolicy, clock_s: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock_s = clock_s
        self._cache: dict[str, tuple[db.SessionRecord, float]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()  # ids the database did not know, until when
        self.lookups = 0  # database reads of sessions (observable in tests)
        self._seen: dict[str, float] = {}  # wall-clock seconds of each cached session's latest request
        self._touched: dict[str, float] = {}  # ... and of its latest last_seen_at write
        self.by_address = TokenBuckets(policy.signin_per_address_per_s, policy.signin_per_address_burst)
        self.by_phone = TokenBuckets(policy.signin_per_phone_per_s, policy.signin_per_phone_burst)

    async def session(self, request: web.Request, session_id: str) -> db.SessionRecord | None:
        """The live session of this id, or None (unknown, ended, idle too long, past its absolute expiry)."""
        record = await self._load(request, session_id)
        if record is None:
            return None
        now_s = time.time()
        seen_s = max(record.last_seen_ms / 1000, self._seen.get(session_id, 0.0))
        if now_s * 1000 >= record.expires_at_ms or now_s - seen_s > self.policy.idle_s:
            await self.end(request, session_id)
            return None
        if now_s - self._touched.get(session_id, seen_s) >= self.policy.touch_every_s:
            self._touched[session_id] = now_s
            await db.touch_session(request.app[POOL], session_id)
        self._seen[session_id] = now_s
        return record

    async def _load(self, request: web.Request, session_id: str) -> db.SessionRecord | None:
        now_s = self._clock_s()
        hit = self._cache.get(session_id)
        if hit is not None and now_s - hit[1] < self.policy.cache_ttl_s:
            return hit[0]
        until_s = self._unknown.get(session_id)
        if until_s is not None and now_s < until_s:
            return None
        self.lookups += 1
        record = await db.load_session(request.app[POOL], session_id)
        if record is None:
            # A flood of made-up cookies costs one read each per 10 s, in bounded memory.
            self._cache.pop(session_id, None)
            self._unknown[session_id] = now_s + _UNKNOWN_TTL_S
            self._unknown.move_to_end(session_id)
            while len(self._unknown) > _MAX_UNKNOWN:
                self._unknown.popitem(last=False)
            return None
        if len(self._cache) >= _MAX_CACHED:  # bounded: a flood of sessions costs reads, not memory
            self._cache.clear()
            self._seen.clear()
            self._touched.clear()
        self._cache[session_id] = (record, now_s)
        return record

    async def authenticate(self, request: web.Request, admit: Callable[[Principal], None]) -> Principal:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        record = await self.session(request, session_id) if session_id else None
        if record is None:
            raise ApiError(401, "session_expired", "not signed in, or the session ended: sign in again")
        if request.method not in _SAFE_METHODS:
            given = request.headers.get(CSRF_HEADER, "")
            if not given or not same_token(given, record.csrf_token):
                raise ApiError(403, "csrf_failed", f"state-changing requests need the session's {CSRF_HEADER}")
        principal = Principal(record.participant_id, record.role, f"person:{record.person_id}")
        admit(principal)
        return principal

    async def end(self, request: web.Request, session_id: str) -> None:
        self._cache.pop(session_id, None)
        self._seen.pop(session_id, None)
        self._touched.pop(session_id, None)
        await db.end_session(request.app[POOL], session_id)

    def forget_person(self, person_id: int) -> None:
        """Drop cached sessions of a revoked person at once (the database row is already ended)."""
        for session_id, (record, _) in list(self._cache.items()):
            if record.person_id == person_id:
                del self._cache[session_id]


def same_token(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


SESSIONS = web.AppKey("hogx_sessions", SessionAuth)
