"""WebSocket fan-out at `/v1/ws`: connections, channels, per-connection bounded queues, and ops.

Protocol (JSON text frames; every inbound message is an object tagged by `op`, with an optional `id`
echoed in the reply):

- `{"op": "auth", "key": ..., "timestamp_ms": ..., "signature": ...}` — optional, and only as the
  first message; `signature` = hex HMAC-SHA256 over `timestamp_ms + "GET/v1/ws"` (see `signing`).
  Failure answers an error and closes with 4001. Revoking the key closes its sockets with 4003
  "key revoked" (`Hub.close_key`), and every later message re-checks the key against the key cache
  (a dict look-up while the entry is trusted; re-read after `key_cache_ttl_s`, so a revocation made by
  another gateway closes the socket at the first message after that), before it is handled.
- `{"op": "subscribe", "channels": ["book.RC-FH", "orders"]}`, `{"op": "unsubscribe", ...}`,
  `{"op": "ping"}`.
- ops registered later with `Hub.register_op` (order entry), run concurrently up to a per-connection
  in-flight bound. A coroutine handler runs as its own task; a plain function runs at once and may
  return a `Deferred` (a future and how to turn it into the reply), which costs no task per message.
  A connection's deferred replies are sent in the order of their requests. Only the oldest pending
  future of a connection carries a done-callback: the sequencer resolves a whole batch's futures in
  one step, so when that callback runs it finds the later ones of the batch done too and answers them
  all, one callback per connection and batch rather than one per order.

Limits: an op of a logged-in socket takes a token from its API key's bucket, the same bucket as the key's
HTTP requests (`rate_limited` error reply when empty). At most `max_per_key` sockets are logged in with
one key (the next login gets `too_many_sockets` and a 1008 close) and `max_per_address` are open from
one client address (the next upgrade is refused: HTTP 429 `too_many_sockets`).

Replies are `{"type": "result", "op": ..., "id": ..., "data": ...}` or
`{"type": "error", "op": ..., "id": ..., "code": ..., "message": ...}`; channel messages are whatever
bytes the publisher passed to `Hub.publish`.

Public channels are `<kind>.<name>` for registered public kinds (`book`, `trades`, `auctions`; a `bare` kind is
also a public channel by its own name: `auctions`); private kinds
(`orders`) are subscribed by their bare name after auth and delivered only to that participant.

Each connection owns a bounded outbox drained by its own writer task. `publish` never awaits: a
connection whose outbox is full is a slow consumer and is closed with 4008 "slow consumer", so one slow
reader never delays the others or the publisher (the sequencer).

The writer takes everything queued since it last ran and writes it as consecutive frames in ONE
transport write (one system call for a whole batch of replies rather than one per message), then
waits while the socket's send buffer is above `_WRITE_HIGH_WATER_BYTES`: a reader that stops reading
stalls its writer, its outbox fills, and it is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import itertools
import logging
import re
import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, Final, Union, get_args, get_origin

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.auth import Authenticator, Principal, Role
from gateway.errors import ApiError, Code, is_unavailable, unavailable
from gateway.inputs import has_duplicate_keys_of, validation_error
from gateway.metrics import Metrics
from gateway.ratelimit import TokenBuckets
from gateway.signing import WS_SIGNED_PATH

__all__ = [
    "CLOSE_AUTH_FAILED",
    "CLOSE_KEY_REVOKED",
    "CLOSE_SLOW_CONSUMER",
    "AuthMessage",
    "Deferred",
    "Hub",
    "MessageDecoder",
    "SnapshotProvider",
    "WsConnection",
    "WsError",
    "WsRequest",
    "WsResult",
]

_log = logging.getLogger(__name__)

CLOSE_SLOW_CONSUMER: Final = 4008
CLOSE_AUTH_FAILED: Final = 4001
CLOSE_KEY_REVOKED: Final = 4003
_CLOSE_TIMEOUT_S: Final = 5.0
# A writer waits while more than this is buffered in the transport (asyncio's own default high-water
# mark), polling every `_DRAIN_POLL_S`: only a reader that stopped reading ever gets there.
_WRITE_HIGH_WATER_BYTES: Final = 64 * 1024
_DRAIN_POLL_S: Final = 0.005
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_\-]{1,40}")


# -- inbound messages --------------------------------------------------------------------------------

class WsRequest(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True, frozen=True,
                omit_defaults=True):
    """Base of every inbound message; subclass with `tag="<op name>"` to add an op. (`omit_defaults`: the
    duplicate-key check re-encodes a message, `gateway.inputs.has_duplicate_keys_of`.)"""

    id: int | str | None = None


class AuthMessage(WsRequest, tag="auth", frozen=True):
    key: str
    timestamp_ms: int
    signature: str


class SubscribeMessage(WsRequest, tag="subscribe", frozen=True):
    channels: list[str]


class UnsubscribeMessage(WsRequest, tag="unsubscribe", frozen=True):
    channels: list[str]


class PingMessage(WsRequest, tag="ping", frozen=True):
    pass


# -- outbound replies --------------------------------------------------------------------------------

class WsResult(msgspec.Struct, tag="result", tag_field="type", frozen=True):
    op: str
    id: int | str | None = None
    data: Any = None


class WsError(msgspec.Struct, tag="error", tag_field="type", frozen=True):
    code: str
    message: str
    op: str | None = None
    id: int | str | None = None


class _Envelope(msgspec.Struct, frozen=True):
    """Just the op and id of an inbound message, to answer one that is refused before it is decoded."""

    op: str | None = None
    id: int | str | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)


class _Close(msgspec.Struct, frozen=True):
    """Queued after the last message a connection should get before being closed."""

    code: int
    message: bytes


OpHandler = Callable[["WsConnection", Any], Any]  # a coroutine function, or a function (value or Deferred)


class Deferred:
    """A synchronous op handler's answer that is not ready yet: the reply's data is `finish(future)`
    once `future` is done (`finish` raises `ApiError` for an error reply)."""

    __slots__ = ("finish", "future")

    def __init__(self, future: asyncio.Future[Any], finish: Callable[[asyncio.Future[Any]], Any]) -> None:
        self.future = future
        self.finish = finish


# A deferred reply waiting for its future: (future, op name, request id, finish).
_Pending = tuple[asyncio.Future[Any], str, "int | str | None", Callable[[asyncio.Future[Any]], Any]]
# (channel, principal or None) -> the snapshot to send before any delta, or None; raise ApiError to refuse.
SnapshotProvider = Callable[[str, "Principal | None"], "bytes | None"]


class _Op(msgspec.Struct, frozen=True):
    name: str
    message_type: type[WsRequest]
    handler: OpHandler
    roles: frozenset[Role] | None
    is_async: bool
    reconcile_by: str  # named in an error whose outcome is unknown (see `gateway.errors`)


class _ChannelKind(msgspec.Struct, frozen=True):
    private: bool
    snapshot: SnapshotProvider | None
    bare: bool = False  # a public kind that is also one channel by its bare name (`auctions`)


_encode = msgspec.json.Encoder().encode


class WsConnection:
    """One open socket: its outbox, its writer task, who it is, and what it subscribed to."""

    __slots__ = ("armed", "channels", "closing", "conn_id", "deferred", "inflight", "messages_in", "outbox",
                 "principal", "request", "settle", "wake", "writer", "ws")

    def __init__(self, conn_id: int, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.conn_id = conn_id
        self.ws = ws
        self.request = request
        # Messages not yet taken by the writer (bounded by the hub's queue_size), and the future the
        # idle writer waits on: set by the first message queued after the writer emptied the outbox.
        self.outbox: list[bytes | _Close] = []
        self.wake: asyncio.Future[None] | None = None
        self.principal: Principal | None = None
        self.channels: set[str] = set()  # internal subscription keys
        self.closing = False
        self.inflight = 0
        self.messages_in = 0
        self.writer: asyncio.Task[None] | None = None
        # Deferred replies in request order: (future, op, request id, finish). `armed`: the first one's
        # future carries the done-callback `settle` (set by the hub).
        self.deferred: collections.deque[_Pending] = collections.deque()
        self.armed = False
        self.settle: Callable[[asyncio.Future[Any]], None] | None = None

    def put(self, item: bytes | _Close, limit: int) -> bool:
        """Queue one item for the writer; False if `limit` items are already waiting."""
        outbox = self.outbox
        if len(outbox) >= limit:
            return False
        outbox.append(item)
        wake = self.wake
        if wake is not None:
            self.wake = None
            if not wake.done():
                wake.set_result(None)
        return True


class Hub:
    """All WebSocket connections of one application and the channels they listen to."""

    def __init__(
        self,
        auth: Authenticator,
        metrics: Metrics,
        limiter: TokenBuckets,
        *,
        queue_size: int,
        max_channels: int,
        max_inflight: int,
        max_message_bytes: int,
        heartbeat_s: float,
        max_per_key: int = 32,
        max_per_address: int = 256,
    ) -> None:
        self._auth = auth
        self._metrics = metrics
        self._limiter = limiter  # the API keys' buckets, shared with HTTP
        self._max_per_key = max_per_key
        self._max_per_address = max_per_address
        self._per_key: dict[str, int] = {}  # logged-in sockets by API key
        self._per_address: dict[str, int] = {}  # open sockets by client address
        self._queue_size = queue_size
        self._max_channels = max_channels
        self._max_inflight = max_inflight
        self._max_message_bytes = max_message_bytes
        self._heartbeat_s = heartbeat_s
        self._ids = itertools.count(1)
        self._connections: set[WsConnection] = set()
        self._subscribers: dict[str, set[WsConnection]] = {}
        # Per private kind, the participants with at least one subscribed connection (a live set).
        self._private_ids: dict[str, set[int]] = {}
        self._kinds: dict[str, _ChannelKind] = {}
        self._ops: dict[str, _Op] = {}
        self._op_of_type: dict[type, _Op] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._decoder = self._build_decoder()
        self.accepting = True

    # -- configuration (at app creation) ---------------------------------------------------------

    def register_channel_kind(self, kind: str, *, private: bool = False,
                              snapshot: SnapshotProvider | None = None, bare: bool = False) -> None:
        """Allow subscriptions to `kind.<name>` (public) or to the bare `kind` (private, after auth; or
        public too with `bare`)."""
        if not _NAME_RE.fullmatch(kind):
            raise ValueError(f"bad channel kind {kind!r}")
        self._kinds[kind] = _ChannelKind(private, snapshot, bare and not private)

    def register_op(self, message_type: type[WsRequest], handler: OpHandler,
                    *, roles: Iterable[Role] | None, reconcile_by: str = "") -> None:
        """Add an op: `message_type` subclasses `WsRequest` with `tag="<op>"`; `roles=None` is public.
        `reconcile_by` names the reference to reconcile by when the outcome is unknown (a 503).

        `handler(conn, message)` returns the reply's `data` (any msgspec-encodable value) or raises
        `ApiError` for an error reply; it runs as its own task so a connection can pipeline requests.
        """
        op = message_type.__struct_config__.tag
        if not isinstance(op, str) or op in self._ops or op in _BUILTIN_OPS:
            raise ValueError(f"op {op!r} is not a new string tag")
        self._ops[op] = _Op(op, message_type, handler, None if roles is None else frozenset(roles),
                            inspect.iscoroutinefunction(handler), reconcile_by)
        self._op_of_type[message_type] = self._ops[op]
        self._decoder = self._build_decoder()

    def _build_decoder(self) -> MessageDecoder:
        decoder = MessageDecoder((AuthMessage, SubscribeMessage, UnsubscribeMessage, PingMessage,
                                  *(op.message_type for op in self._ops.values())))
        for quick, exact in decoder.exact_type.items():  # an op's message may come decoded as either
            if exact in self._op_of_type:
                self._op_of_type[quick] = self._op_of_type[exact]
        return decoder

    # -- publishing (synchronous, never blocks) ----------------------------------------------------

    def publish(self, channel: str, payload: bytes) -> int:
        """Queue `payload` (a UTF-8 JSON text) to every subscriber of a public channel; returns how many."""
        return self._deliver(self._subscribers.get(channel), payload)

    def publish_private(self, kind: str, participant_id: int, payload: bytes) -> int:
        """Queue `payload` to the connections of `participant_id` subscribed to private channel `kind`."""
        return self._deliver(self._subscribers.get(_private_key(kind, participant_id)), payload)

    def send(self, conn: WsConnection, payload: bytes) -> bool:
        """Queue one message to one connection; False (and the connection dropped) if it is full."""
        if conn.closing:
            return False
        if not conn.put(payload, self._queue_size):
            self._drop_slow(conn)
            return False
        return True

    def _deliver(self, subscribers: set[WsConnection] | None, payload: bytes) -> int:
        """Queue the same bytes (encoded once) to every subscriber."""
        if not subscribers:
            return 0
        limit = self._queue_size
        slow = [conn for conn in subscribers if not conn.put(payload, limit)]
        for conn in slow:  # outside the loop: dropping edits the set being iterated
            self._drop_slow(conn)
        return len(subscribers) - len(slow)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def subscriber_count(self, channel: str) -> int:
        return len(self._subscribers.get(channel, ()))

    def has_private_subscribers(self, kind: str, participant_id: int) -> bool:
        """Is any connection of `participant_id` subscribed to private channel `kind`?"""
        return participant_id in self.private_subscribers(kind)

    def private_subscribers(self, kind: str) -> set[int]:
        """The participants with a connection subscribed to private channel `kind`: a live set, kept
        up to date by the hub (read it, never change it)."""
        ids = self._private_ids.get(kind)
        if ids is None:
            ids = self._private_ids[kind] = set()
        return ids

    # -- connection life cycle ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The aiohttp handler of `GET /v1/ws`."""
        if not self.accepting:
            raise ApiError(503, Code.NOT_READY, "shutting down", retry_after_s=1)
        address = request.remote or ""
        if self._per_address.get(address, 0) >= self._max_per_address:
            raise ApiError(429, Code.TOO_MANY_SOCKETS, f"at most {self._max_per_address} WebSockets per "
                           "address", retry_after_s=1)
        ws = web.WebSocketResponse(heartbeat=self._heartbeat_s, compress=False, decode_text=False,
                                   max_msg_size=self._max_message_bytes, timeout=_CLOSE_TIMEOUT_S)
        # Counted before the handshake's await: upgrades racing in from one address all see each other.
        self._per_address[address] = self._per_address.get(address, 0) + 1
        try:
            await ws.prepare(request)
        except BaseException:
            _count_down(self._per_address, address)
            raise
        conn = WsConnection(next(self._ids), ws, request)
        self._connections.add(conn)
        self._metrics.ws_connections.inc()
        conn.writer = asyncio.create_task(self._write_loop(conn))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    principal = conn.principal
                    # Awaits only when the cached key is stale: nothing is read until the re-check is done.
                    if principal is not None and self._auth.key_usable(principal) is not True \
                            and not await self._recheck_key(conn, principal, msg.data):
                        continue
                    auth = self._on_message(conn, msg.data)
                    if auth is not None:  # awaited too: nothing is read until it is done
                        await self._on_auth(conn, auth)
        finally:
            self._forget(conn)
            if conn.writer is not None:
                conn.writer.cancel()
        return ws

    def close_key(self, api_key: str) -> int:
        """Close every connection logged in with `api_key` (just revoked) with 4003; returns how many."""
        doomed = [conn for conn in self._connections if not conn.closing and conn.principal is not None
                  and conn.principal.api_key == api_key]
        for conn in doomed:
            self._close_revoked(conn)
        return len(doomed)

    def _close_revoked(self, conn: WsConnection) -> None:
        _log.info("closing WebSocket %d: its API key was revoked", conn.conn_id)
        self._stop_delivery(conn)  # at once: no later message is handled, no reply or publish is sent
        self._spawn(self._close(conn, CLOSE_KEY_REVOKED, b"key revoked"))

    async def _recheck_key(self, conn: WsConnection, principal: Principal, data: bytes) -> bool:
        """May a message of this logged-in connection be handled? Closes it with 4003 if its key was
        revoked; a failed re-read (database down) refuses just this message."""
        if conn.closing:
            return False
        usable = self._auth.key_usable(principal)
        if usable is None:
            try:
                usable = await self._auth.recheck_key(principal)
            except Exception:
                _log.exception("could not re-check the API key of WebSocket %d", conn.conn_id)
                envelope = _envelope(data)
                self._reply_error(conn, envelope.op, envelope.id, Code.UNAVAILABLE,
                                  "could not re-check the API key; the message was not handled, retry")
                return False
        if not usable:
            if not conn.closing:
                self._close_revoked(conn)
            return False
        return True

    async def close_all(self, code: int = WSCloseCode.GOING_AWAY, message: bytes = b"server shutdown") -> None:
        """Graceful shutdown: refuse new sockets and close every open one with `code`."""
        self.accepting = False
        await asyncio.gather(*(self._close(conn, code, message) for conn in list(self._connections)))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_CLOSE_TIMEOUT_S)

    def _forget(self, conn: WsConnection) -> None:
        # Replies still due (orders in flight when the peer left) are dropped quietly, not counted as a
        # slow consumer once the outbox fills.
        conn.closing = True
        if conn in self._connections:
            self._connections.discard(conn)
            self._metrics.ws_connections.dec()
            _count_down(self._per_address, conn.request.remote or "")
            if conn.principal is not None:
                _count_down(self._per_key, conn.principal.api_key)
        self._unsubscribe_all(conn)

    def _unsubscribe_all(self, conn: WsConnection) -> None:
        for key in conn.channels:
            self._remove_subscriber(key, conn)
        conn.channels.clear()

    def _add_subscriber(self, key: str, conn: WsConnection) -> None:
        conn.channels.add(key)
        subscribers = self._subscribers.get(key)
        if subscribers is None:
            subscribers = self._subscribers[key] = set()
            kind, at, participant_id = key.partition("@")
            if at:
                self.private_subscribers(kind).add(int(participant_id))
        subscribers.add(conn)

    def _remove_subscriber(self, key: str, conn: WsConnection) -> None:
        subscribers = self._subscribers.get(key)
        if subscribers is None:
            return
        subscribers.discard(conn)
        if not subscribers:
            del self._subscribers[key]
            kind, at, participant_id = key.partition("@")
            if at:
                self.private_subscribers(kind).discard(int(participant_id))

    def _drop_slow(self, conn: WsConnection) -> None:
        if conn.closing:
            return
        self._metrics.ws_slow_consumer_drops.inc()
        _log.info("dropping slow WebSocket consumer %d", conn.conn_id)
        self._stop_delivery(conn)  # at once, so later publishes skip it even before the close runs
        self._spawn(self._close(conn, CLOSE_SLOW_CONSUMER, b"slow consumer"))

    def _stop_delivery(self, conn: WsConnection) -> None:
        conn.closing = True
        self._unsubscribe_all(conn)
        if conn.writer is not None:
            conn.writer.cancel()  # safe mid-send: a frame is written whole before its drain is awaited

    async def _close(self, conn: WsConnection, code: int, message: bytes) -> None:
        """Close now, discarding what is still queued; bounded even if the peer stopped reading."""
        self._stop_delivery(conn)
        try:
            await asyncio.wait_for(conn.ws.close(code=code, message=message), _CLOSE_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            transport = conn.request.transport
            if transport is not None:
                transport.abort()

    async def _write_loop(self, conn: WsConnection) -> None:
        ws = conn.ws
        transport = conn.request.transport
        loop = asyncio.get_running_loop()
        sent = self._metrics.ws_messages_sent
        try:
            while True:
                if not conn.outbox:
                    conn.wake = loop.create_future()
                    await conn.wake
                    continue
                items, conn.outbox = conn.outbox, []
                frames, count, close = _text_frames(items)
                if count and transport is not None and not transport.is_closing() and not ws.closed:
                    # Written whole, before any await: cancelling the writer never cuts a frame.
                    transport.write(frames)
                    sent.inc(count)
                if close is not None:
                    conn.closing = True
                    self._unsubscribe_all(conn)
                    await ws.close(code=close.code, message=close.message)
                    return
                while transport is not None and transport.get_write_buffer_size() > _WRITE_HIGH_WATER_BYTES \
                        and not transport.is_closing():
                    await asyncio.sleep(_DRAIN_POLL_S)
        except ConnectionError:
            pass  # the peer went away; the reading side notices and cleans up

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # keep a reference until done: the loop holds only weak ones
        task.add_done_callback(self._tasks.discard)

    # -- inbound messages ------------------------------------------------------------------------

    def _on_message(self, conn: WsConnection, data: bytes) -> AuthMessage | None:
        """Handle one inbound message at once, without a coroutine; an auth message is returned for the
        caller to await (`_on_auth`)."""
        conn.messages_in += 1
        if conn.closing:
            return None
        try:
            msg = self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            error = validation_error(exc, "message")
            self._reply_error(conn, None, None, error.code, error.message)
            return None
        except msgspec.DecodeError as exc:
            self._reply_error(conn, None, None, Code.BAD_JSON, f"malformed JSON: {exc}")
            return None
        except RecursionError:  # nested deeper than the decoder follows (it stops before the stack does)
            self._reply_error(conn, None, None, Code.BAD_JSON, "malformed JSON: nested too deeply")
            return None
        if has_duplicate_keys_of(data, msg):
            self._reply_error(conn, str(msg.__struct_config__.tag), msg.id, Code.DUPLICATE_KEY,
                              "invalid message: an object names the same key twice")
            return None
        cls = msg.__class__
        try:
            op = self._op_of_type.get(cls)
            if op is not None:
                self._on_op(conn, op, msg)
            elif cls is AuthMessage:
                return msg  # type: ignore[no-any-return]
            elif cls is SubscribeMessage:
                self._on_subscribe(conn, msg)
            elif cls is UnsubscribeMessage:
                self._on_unsubscribe(conn, msg)
            elif cls is PingMessage:
                self._reply(conn, WsResult("ping", msg.id))
        except Exception:  # a bug: answer and keep the socket, never kill the hub
            self._internal_error(conn, msg)
        return None

    def _internal_error(self, conn: WsConnection, msg: WsRequest) -> None:
        op = str(msg.__struct_config__.tag)
        _log.exception("unhandled error in WebSocket %s", op)
        self._reply_error(conn, op, msg.id, Code.INTERNAL_ERROR, "internal error")

    async def _on_auth(self, conn: WsConnection, msg: AuthMessage) -> None:
        try:
            await self._auth_connection(conn, msg)
        except Exception as exc:  # the database down, or a bug: answer and keep the socket
            if not is_unavailable(exc):
                self._internal_error(conn, msg)
                return
            _log.warning("could not check the key of WebSocket %d: %r", conn.conn_id, exc)
            self._reply_error(conn, "auth", msg.id, Code.UNAVAILABLE, "storage unavailable: retry the login")

    async def _auth_connection(self, conn: WsConnection, msg: AuthMessage) -> None:
        if conn.messages_in != 1:
            self._reply_error(conn, "auth", msg.id, "auth_must_be_first",
                              "auth is accepted only as the first message")
            return
        try:
            principal = await self._auth.verify(msg.key, str(msg.timestamp_ms), msg.signature,
                                                "GET", WS_SIGNED_PATH, address=conn.request.remote or "")
        except ApiError as exc:
            self._reply_error(conn, "auth", msg.id, exc.code, exc.message)
            self._enqueue(conn, _Close(CLOSE_AUTH_FAILED, b"authentication failed"))
            return
        if conn.closing:
            return
        key = principal.api_key
        if self._per_key.get(key, 0) >= self._max_per_key:
            self._reply_error(conn, "auth", msg.id, Code.TOO_MANY_SOCKETS,
                              f"at most {self._max_per_key} WebSockets per API key")
            self._enqueue(conn, _Close(WSCloseCode.POLICY_VIOLATION, b"too many sockets for this key"))
            return
        conn.principal = principal
        self._per_key[key] = self._per_key.get(key, 0) + 1
        self._reply(conn, WsResult("auth", msg.id, {"participant_id": principal.participant_id,
                                                    "role": principal.role.value}))

    def _on_subscribe(self, conn: WsConnection, msg: SubscribeMessage) -> None:
        try:
            keys = [self._subscription_key(conn, channel) for channel in msg.channels]
            new = [(channel, key) for channel, key in dict(zip(msg.channels, keys, strict=True)).items()
                   if key not in conn.channels]
            if len(conn.channels) + len(new) > self._max_channels:
                raise ApiError(422, Code.INVALID, f"at most {self._max_channels} subscriptions per connection")
            snapshots = [self._snapshot(conn, channel) for channel, _ in new]
        except ApiError as exc:
            self._reply_error(conn, "subscribe", msg.id, exc.code, exc.message)
            return
        # From here on nothing awaits, so no publish can slip between a snapshot and its first delta.
        self._reply(conn, WsResult("subscribe", msg.id, {"channels": msg.channels}))
        for (_, key), snapshot in zip(new, snapshots, strict=True):
            if snapshot is not None and not self.send(conn, snapshot):
                return
            self._add_subscriber(key, conn)

    def _on_unsubscribe(self, conn: WsConnection, msg: UnsubscribeMessage) -> None:
        for channel in msg.channels:
            key = self._private_or_public_key(conn, channel)
            if key is not None and key in conn.channels:
                conn.channels.discard(key)
                self._remove_subscriber(key, conn)
        self._reply(conn, WsResult("unsubscribe", msg.id, {"channels": msg.channels}))

    def _subscription_key(self, conn: WsConnection, channel: str) -> str:
        kind_name, dot, name = channel.partition(".")
        kind = self._kinds.get(kind_name)
        if kind is not None and kind.bare and not dot:
            return channel
        if kind is None or (kind.private and dot) or (not kind.private and not _NAME_RE.fullmatch(name)):
            raise ApiError(404, "unknown_channel", f"no channel {channel[:80]!r}")
        if not kind.private:
            return channel
        if conn.principal is None:
            raise ApiError(401, Code.MISSING_CREDENTIALS, f"channel {channel!r} needs auth first")
        return _private_key(kind_name, conn.principal.participant_id)

    def _private_or_public_key(self, conn: WsConnection, channel: str) -> str | None:
        try:
            return self._subscription_key(conn, channel)
        except ApiError:
            return None

    def _snapshot(self, conn: WsConnection, channel: str) -> bytes | None:
        kind = self._kinds[channel.partition(".")[0]]
        return None if kind.snapshot is None else kind.snapshot(channel, conn.principal)

    def _on_op(self, conn: WsConnection, op: _Op, msg: WsRequest) -> None:
        op_name = op.name
        if op.roles is not None:
            principal = conn.principal
            if principal is None:
                self._reply_error(conn, op_name, msg.id, Code.MISSING_CREDENTIALS, "auth first")
                return
            if principal.role not in op.roles:
                self._reply_error(conn, op_name, msg.id, Code.FORBIDDEN,
                                  f"role {principal.role.value} may not {op_name}")
                return
        if conn.inflight >= self._max_inflight:
            self._reply_error(conn, op_name, msg.id, Code.RATE_LIMITED,
                              f"at most {self._max_inflight} requests in flight per connection")
            return
        principal = conn.principal
        if principal is not None:
            wait_s = self._limiter.take(principal.api_key)  # the key's one bucket, shared with HTTP
            if wait_s:
                self._metrics.rate_limited.inc()
                self._reply_error(conn, op_name, msg.id, Code.RATE_LIMITED,
                                  f"rate limit exceeded, retry in {wait_s:.3f} s")
                return
        conn.inflight += 1
        if op.is_async:
            self._spawn(self._run_op(conn, op_name, op, msg))
        else:
            self._run_sync_op(conn, op_name, op, msg)

    def _run_sync_op(self, conn: WsConnection, op_name: str, op: _Op, msg: WsRequest) -> None:
        try:
            outcome = op.handler(conn, msg)
        except Exception as exc:
            conn.inflight -= 1
            self._reply_exception(conn, op_name, msg.id, exc)
            return
        if outcome.__class__ is Deferred:
            conn.deferred.append((outcome.future, op_name, msg.id, outcome.finish))
            if not conn.armed:
                self._arm(conn)
        else:
            conn.inflight -= 1
            self._reply(conn, WsResult(op_name, msg.id, outcome))

    def _arm(self, conn: WsConnection) -> None:
        """Put the done-callback on the oldest pending future (see the module docstring)."""
        settle = conn.settle
        if settle is None:
            settle = conn.settle = functools.partial(self._settle, conn)
        conn.armed = True
        conn.deferred[0][0].add_done_callback(settle)

    def _settle(self, conn: WsConnection, _done: asyncio.Future[Any]) -> None:
        """Answer every deferred request whose future is done, oldest first, up to the first pending one."""
        conn.armed = False
        deferred = conn.deferred
        while deferred and deferred[0][0].done():
            future, op_name, request_id, finish = deferred.popleft()
            self._finish_deferred(conn, op_name, request_id, finish, future)
        if deferred:
            self._arm(conn)

    def _finish_deferred(self, conn: WsConnection, op_name: str, request_id: int | str | None,
                         finish: Callable[[asyncio.Future[Any]], Any], future: asyncio.Future[Any]) -> None:
        conn.inflight -= 1
        if future.cancelled():
            self._reply_exception(conn, op_name, request_id, ApiError(
                503, Code.UNAVAILABLE, "cancelled: the outcome is unknown", outcome_unknown=True))
            return
        try:
            data = finish(future)
        except Exception as exc:
            self._reply_exception(conn, op_name, request_id, exc)
        else:
            self._reply(conn, WsResult(op_name, request_id, data))

    async def _run_op(self, conn: WsConnection, op_name: str, op: _Op, msg: WsRequest) -> None:
        try:
            data = await op.handler(conn, msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._reply_exception(conn, op_name, msg.id, exc)
        else:
            self._reply(conn, WsResult(op_name, msg.id, data))
        finally:
            conn.inflight -= 1

    def _reply_exception(self, conn: WsConnection, op_name: str, request_id: int | str | None,
                         exc: Exception) -> None:
        """The error reply for what an op raised: its `ApiError` (naming the op's reference when the
        outcome is unknown), 503 for the database being unavailable, else a logged internal error."""
        if not isinstance(exc, ApiError):
            if not is_unavailable(exc):
                _log.error("unhandled error in WebSocket op %s", op_name, exc_info=exc)
                self._reply_error(conn, op_name, request_id, Code.INTERNAL_ERROR, "internal error")
                return
            _log.warning("database unavailable in WebSocket op %s: %r", op_name, exc)
            exc = unavailable("POST")
        if exc.outcome_unknown:
            exc = exc.reconciled(self._ops[op_name].reconcile_by)
        self._reply_error(conn, op_name, request_id, exc.code, exc.message)

    def _reply(self, conn: WsConnection, result: WsResult) -> None:
        self.send(conn, _encode(result))

    def _reply_error(self, conn: WsConnection, op: str | None, request_id: int | str | None,
                     code: str, message: str) -> None:
        self.send(conn, _encode(WsError(str(code), message, op, request_id)))

    def _enqueue(self, conn: WsConnection, item: _Close) -> None:
        if not conn.put(item, self._queue_size):
            self._drop_slow(conn)


_BUILTIN_OPS: Final = frozenset({"auth", "subscribe", "unsubscribe", "ping"})
_FIN_TEXT: Final = 0x81  # FIN bit + opcode 1 (text); server frames are never masked (RFC 6455 5.1)
_HEADER_SHORT = struct.Struct("!BB").pack
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack


def _text_frames(items: list[bytes | _Close]) -> tuple[bytes, int, _Close | None]:
    """The messages before the first `_Close` (if any) as consecutive unmasked text frames, their
    number, and that close."""
    parts: list[bytes] = []
    append = parts.append
    for item in items:
        if item.__class__ is _Close:
            return b"".join(parts), len(parts) // 2, item  # type: ignore[return-value]
        length = len(item)
        if length < 126:
            append(_HEADER_SHORT(_FIN_TEXT, length))
        elif length < 65_536:
            append(_HEADER_16(_FIN_TEXT, 126, length))
        else:
            append(_HEADER_64(_FIN_TEXT, 127, length))
        append(item)  # type: ignore[arg-type]
    return b"".join(parts), len(parts) // 2, None


def _envelope(data: bytes) -> _Envelope:
    try:
        return _envelope_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):  # ValidationError included: it is a subclass
        return _Envelope()


def _count_down(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _private_key(kind: str, participant_id: int) -> str:
    # "@" cannot appear in a public channel name, so private keys never collide with public ones.
    return f"{kind}@{participant_id}"


class MessageDecoder:
    """Decodes an inbound message into one of `types` (tagged by `op`): the same message, or the same
    exception, as a `msgspec.json.Decoder` of their union, usually for less.

    msgspec checks a string's `pattern` with a Python regex search called from C (some 3,300 instructions
    each, more than decoding the rest of a `place_order`, which has two). So messages are first decoded
    by a quicker decoder, whose types lack the patterns that are one character class repeated
    (`\\A[...]+\\Z`; all other constraints kept), and such a field's value is checked here instead: it
    matches when it is not empty and made of the class's ASCII characters alone. For the class of every
    visible ASCII character (`client_order_id`) `str.isascii`, `str.isprintable` and no space tell;
    for another class, a value seen to match before (`_KNOWN_MAX` of them are kept per field: an
    instrument's symbol recurs) or else `str.strip` of the class's characters leaving nothing. Anything
    else, a message the quick decoder refuses or a value with some other character, is decoded again by
    the exact decoder: its error (which names the field and the pattern) is the answer, or, should it
    accept after all, its message.
    """

    __slots__ = ("checks", "exact", "exact_type", "quick")

    def __init__(self, types: tuple[type[WsRequest], ...]) -> None:
        self.exact: msgspec.json.Decoder[Any] = msgspec.json.Decoder(types[0] if len(types) == 1 else _union(types))
        quick_types: list[type[WsRequest]] = []
        self.checks: dict[type, tuple[_ClassCheck, ...]] = {}  # quick type -> its fields' checks
        self.exact_type: dict[type, type[WsRequest]] = {}  # quick type -> the type it stands for
        for message_type in types:
            quick, checks = _without_class_patterns(message_type)
            quick_types.append(quick)
            if quick is not message_type:
                self.checks[quick] = checks
                self.exact_type[quick] = message_type
        self.quick: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            quick_types[0] if len(quick_types) == 1 else _union(tuple(quick_types)))

    def decode(self, data: bytes) -> Any:
        try:
            msg = self.quick.decode(data)
        except (msgspec.DecodeError, RecursionError):  # (ValidationError included) the exact error follows
            return self.exact.decode(data)
        checks = self.checks.get(msg.__class__)
        if checks is not None:
            for check in checks:
                value = getattr(msg, check.name)
                if value is None:
                    continue
                if check.visible:
                    if value and value.isascii() and value.isprintable() and " " not in value:
                        continue
                elif value in check.known:
                    continue
                elif value and not value.strip(check.allowed):
                    if len(check.known) < _KNOWN_MAX:
                        check.known.add(value)
                    continue
                return self.exact.decode(data)  # the regex decides (and names the field)
        return msg


class _ClassCheck:
    """What stands in for a field's pattern `\\A[...]+\\Z` in `MessageDecoder`."""

    __slots__ = ("allowed", "known", "name", "visible")

    def __init__(self, name: str, allowed: str) -> None:
        self.name = name
        self.allowed = allowed  # the ASCII characters the class takes
        self.visible = allowed == _VISIBLE_ASCII
        self.known: set[str] = set()  # values that matched (`_KNOWN_MAX` at most)


_VISIBLE_ASCII: Final = "".join(map(chr, range(0x21, 0x7F)))  # [!-~]: printable, not the space
_KNOWN_MAX: Final = 1024


_CLASS_PATTERN: Final = re.compile(r"\\A\[([^\]]+)\]\+\\Z")  # \A[...]+\Z, nothing else
_META_KEYS: Final = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "tz", "title", "description",
                     "examples", "extra_json_schema", "extra")


def _without_class_patterns(message_type: type[WsRequest]) -> tuple[type[WsRequest], tuple[_ClassCheck, ...]]:
    """`message_type` with the class patterns of its string fields (`str` or `str | None`, constrained by a
    pattern `\\A[...]+\\Z`) left out, every other constraint kept, and per such field the ASCII characters
    its class allows, as one string: a value that is not empty and made of those alone matches the pattern.
    The type itself and no checks when it has no such field."""
    spec: list[tuple[Any, ...]] = []
    checks: list[_ClassCheck] = []
    base_fields = set(WsRequest.__struct_fields__)
    for field in msgspec.structs.fields(message_type):
        if field.name in base_fields:
            continue
        annotation = field.type
        optional = get_origin(annotation) is Union and type(None) in get_args(annotation) \
            and len(get_args(annotation)) == 2
        inner = next(a for a in get_args(annotation) if a is not type(None)) if optional else annotation
        if get_origin(inner) is Annotated and get_args(inner)[0] is str:
            metas = [m for m in inner.__metadata__ if isinstance(m, msgspec.Meta)]
            match = _CLASS_PATTERN.fullmatch(metas[0].pattern or "") if len(metas) == 1 else None
            if match is not None:
                character_class = re.compile(f"[{match.group(1)}]")
                allowed = "".join(c for c in map(chr, range(128)) if character_class.fullmatch(c))
                checks.append(_ClassCheck(field.name, allowed))
                kept = {key: getattr(metas[0], key) for key in _META_KEYS if getattr(metas[0], key) is not None}
                inner = Annotated[str, msgspec.Meta(**kept)]
                annotation = inner | None if optional else inner
        spec.append((field.name, annotation, msgspec.field(
            default=field.default, default_factory=field.default_factory,
            name=None if field.encode_name == field.name else field.encode_name)))
    if not checks:
        return message_type, ()
    config = message_type.__struct_config__
    quick = msgspec.defstruct(f"Quick{message_type.__name__}", spec, bases=(WsRequest,), tag=config.tag,
                              kw_only=True, frozen=config.frozen, forbid_unknown_fields=config.forbid_unknown_fields,
                              omit_defaults=config.omit_defaults, module=__name__)
    return quick, tuple(checks)


def _union(types: tuple[type[WsRequest], ...]) -> Any:
    return Union[types]  # noqa: UP007 - a runtime union of a variable number of classes
