"""A small signed HTTP/WebSocket client for tests, benchmarks and scripts.

    async with SignedClient("http://127.0.0.1:8080", api_key, api_secret) as client:
        reply = await client.request("POST", "/v1/admin/participants", json={"role": "farmer", "name": "Li"})
        reply.status, reply.json()

Requests are signed exactly as sent: the path is used as given (already percent-encoded), and the
body is the bytes on the wire. The server refuses a second request with the same signature (same
timestamp, method, path and body) as a replay, so the client moves the timestamp of an exact repeat
to the next free millisecond.
Without a key the client sends unsigned requests (public routes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from gateway.auth import KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, wall_clock_ms
from gateway.signing import WS_SIGNED_PATH, sign

__all__ = ["Reply", "SignedClient", "signed_headers"]


class Reply(msgspec.Struct, frozen=True):
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


def signed_headers(api_key: str, api_secret: str, ts_ms: int, method: str, path: str,
                   body: bytes = b"") -> dict[str, str]:
    """The three authentication headers for one request."""
    return {
        KEY_HEADER: api_key,
        TIMESTAMP_HEADER: str(ts_ms),
        SIGNATURE_HEADER: sign(api_secret, ts_ms, method, path, body),
    }


class SignedClient:
    """Wraps an `aiohttp.ClientSession` (its own unless one is passed in) and signs every request."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        api_secret: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.api_secret = api_secret
        self._session = session
        self._owns_session = session is None
        self._clock_ms = clock_ms
        self._used: dict[int, set[str]] = {}  # signatures sent, by timestamp (recent ones only)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        ts_ms: int | None = None,
        signed: bool = True,
    ) -> Reply:
        """Send one request and read the whole answer. `json` is encoded with msgspec; `body` is sent raw.

        `ts_ms` overrides the timestamp (tests of the window); `signed=False` sends no credentials.
        """
        method = method.upper()
        url = URL(self.base_url + path, encoded=True)
        data = msgspec.json.encode(json) if json is not None else (body or b"")
        send_headers: dict[str, str] = {}
        if json is not None:
            send_headers["Content-Type"] = "application/json"
        if signed and self.api_key is not None and self.api_secret is not None:
            path_qs = url.raw_path_qs
            if ts_ms is None:
                ts, signature = self._unique_signature(self.api_secret, method, path_qs, data)
            else:
                ts, signature = ts_ms, sign(self.api_secret, ts_ms, method, path_qs, data)
            send_headers.update({KEY_HEADER: self.api_key, TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: signature})
        if headers:
            send_headers.update(headers)
        async with self.session.request(method, url, data=data or None, headers=send_headers) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    def _unique_signature(self, secret: str, method: str, path: str, body: bytes) -> tuple[int, str]:
        """Timestamp and signature, bumping the timestamp only if this exact request was already
        signed with it (the server would refuse the copy as a replay). Identical requests are thus
        limited to one per millisecond per key; distinct ones keep the wall-clock time.
        """
        ts_ms = self._clock_ms()
        while True:
            signature = sign(secret, ts_ms, method, path, body)
            used = self._used.setdefault(ts_ms, set())
            if signature not in used:
                used.add(signature)
                break
            ts_ms += 1
        if len(self._used) > 64:  # keep only the last few milliseconds
            for old in [t for t in self._used if t < ts_ms - 32]:
                del self._used[old]
        return ts_ms, signature

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("POST", path, **kwargs)

    def ws_auth_message(self, ts_ms: int | None = None, request_id: int | str | None = None) -> dict[str, Any]:
        """The first WebSocket message that authenticates this client's key."""
        if self.api_key is None or self.api_secret is None:
            raise ValueError("an unauthenticated client cannot log in")
        if ts_ms is None:
            ts, signature = self._unique_signature(self.api_secret, "GET", WS_SIGNED_PATH, b"")
        else:
            ts, signature = ts_ms, sign(self.api_secret, ts_ms, "GET", WS_SIGNED_PATH)
        return {"op": "auth", "id": request_id, "key": self.api_key, "timestamp_ms": ts, "signature": signature}

    async def ws_connect(self, *, login: bool = True, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
        """Open `/v1/ws`; with `login` (and a key) send the auth message and check its reply."""
        ws = await self.session.ws_connect(self.base_url + WS_SIGNED_PATH, **kwargs)
        if login and self.api_key is not None:
            await ws.send_str(msgspec.json.encode(self.ws_auth_message()).decode())
            msg = await ws.receive()
            reply = msgspec.json.decode(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else {}
            if reply.get("type") != "result":
                await ws.close()
                raise PermissionError(f"WebSocket login refused: {reply}")
        return ws

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> SignedClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
