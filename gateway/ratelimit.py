"""Per-key token buckets: each API key may make `rate_per_s` requests per second, bursting to `burst`.

One `TokenBuckets` per purpose: the API keys' requests (HTTP and WebSocket order entry take from the
same bucket of a key) and the client addresses' failed authentications (`gateway.auth`).
Keys are only charged after their signature checked out, so a stranger cannot drain someone else's
bucket; memory is bounded by the number of keys, and idle (full) buckets are dropped when it grows.
The clock is passed in (monotonic seconds) so tests can drive it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["TokenBuckets"]


class TokenBuckets:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock_s: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self._rate_per_s = rate_per_s
        self._burst = float(burst)
        self._clock_s = clock_s
        self._max_keys = max_keys
        # key -> (tokens left, clock reading when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, cost: float = 1.0) -> float:
        """Spend `cost` tokens of `key`: 0.0 when allowed, else the seconds until it would be allowed."""
        # Called for every request and every WebSocket order: one look-up and one tuple, no call of min().
        now_s = self._clock_s()
        buckets = self._buckets
        hit = buckets.get(key)
        if hit is None:
            tokens = self._burst
            if len(buckets) >= self._max_keys:
                self._forget_idle(now_s)
        else:
            tokens = hit[0] + (now_s - hit[1]) * self._rate_per_s
            if tokens > self._burst:
                tokens = self._burst
        if tokens < cost:
            buckets[key] = (tokens, now_s)
            return (cost - tokens) / self._rate_per_s
        buckets[key] = (tokens - cost, now_s)
        return 0.0

    def wait_s(self, key: str, cost: float = 1.0) -> float:
        """Like `take` without spending: 0.0 when `cost` tokens are there, else the seconds until they are."""
        hit = self._buckets.get(key)
        if hit is None:
            return 0.0
        tokens = min(self._burst, hit[0] + (self._clock_s() - hit[1]) * self._rate_per_s)
        return 0.0 if tokens >= cost else (cost - tokens) / self._rate_per_s

    @staticmethod
    def retry_after_s(wait_s: float) -> int:
        """Retry-After is whole seconds; round up so a client that obeys it is not refused again."""
        return max(1, math.ceil(wait_s))

    def _forget_idle(self, now_s: float) -> None:
        full = [k for k, (tokens, then_s) in self._buckets.items()
                if tokens + (now_s - then_s) * self._rate_per_s >= self._burst]
        for key in full:
            del self._buckets[key]
