"""Request signatures: the HMAC-SHA256 scheme shared by server and clients, and the replay guard.

A request is signed with the key's secret over `timestamp_ms + METHOD + path_with_query + body`,
where `path_with_query` is exactly the raw path sent on the wire (percent-encoding included) and
`timestamp_ms` is the decimal string sent in `X-Hogx-Timestamp`. The WebSocket's first message is
signed the same way over `timestamp_ms + "GET/v1/ws"` with an empty body.

This module is pure (no clock, no I/O) so that clients, benchmarks and the server share it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque

__all__ = ["WS_SIGNED_PATH", "ReplayGuard", "digest", "sign", "signature_bytes"]

WS_SIGNED_PATH = "/v1/ws"


def digest(secret: str, ts_ms: int | str, method: str, path: str, body: bytes = b"") -> bytes:
    """The raw 32-byte HMAC-SHA256 of one request."""
    message = f"{ts_ms}{method.upper()}{path}".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def sign(secret: str, ts_ms: int | str, method: str, path: str, body: bytes = b"") -> str:
    """The value of `X-Hogx-Signature`: lower-case hex of `digest`."""
    return digest(secret, ts_ms, method, path, body).hex()


def signature_bytes(signature: str) -> bytes | None:
    """Parse a hex signature header; None when it is not 64 hex digits."""
    if len(signature) != 64:
        return None
    try:
        return bytes.fromhex(signature)
    except ValueError:
        return None


class ReplayGuard:
    """Remembers accepted signatures until their timestamp leaves the window, in bounded memory.

    A signature only needs remembering while a request carrying it could still pass the timestamp
    check, i.e. until `ts_ms + window_ms`. Entries expire from the front of an arrival-ordered queue
    (expiries are nearly sorted, skewed only by client clocks), O(1) amortised per request. When
    `capacity` live entries are held, `check_and_remember` refuses (the caller answers 503) rather than
    forget a live signature, which would reopen the replay hole.
    """

    def __init__(self, window_ms: int, capacity: int) -> None:
        self._window_ms = window_ms
        self._capacity = capacity
        self._expiry_ms: dict[bytes, int] = {}
        self._order: deque[tuple[int, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._expiry_ms)

    def check_and_remember(self, signature: bytes, ts_ms: int, now_ms: int) -> bool | None:
        """True if new (now remembered), False if seen within the window, None if the guard is full."""
        self._expire(now_ms)
        seen = self._expiry_ms
        expiry_ms = seen.get(signature)
        if expiry_ms is not None and expiry_ms >= now_ms:
            return False
        if len(seen) >= self._capacity:
            return None
        expiry_ms = ts_ms + self._window_ms
        seen[signature] = expiry_ms
        self._order.append((expiry_ms, signature))
        return True

    def _expire(self, now_ms: int) -> None:
        order, seen = self._order, self._expiry_ms
        while order and order[0][0] < now_ms:
            expiry_ms, signature = order.popleft()
            if seen.get(signature) == expiry_ms:
                del seen[signature]
