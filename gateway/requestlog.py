"""The request log: one JSON line per state-changing HTTP request, and an `X-Request-Id` on every answer.

`middleware` (the outermost of `gateway.app`, so it sees the final status, errors included) gives each
request an id: the client's own `X-Request-Id` when it is a short token (1-64 of `A-Z a-z 0-9 . _ -`),
else a new random one, and returns it in the `X-Request-Id` response header. For POST, PUT, PATCH and
DELETE it then logs, on the `hogx.requests` logger at INFO, one line of JSON:

    {"ts":"2026-12-07T12:00:00.123Z","request_id":"5f0c...","method":"POST","route":"/v1/orders",
     "participant_id":4,"status":422,"code":"price_outside_band","duration_ms":1.9}

`route` is the route template (`/v1/orders/{order_id}`, never the raw path: ids stay out of it, as in the
metrics), `participant_id` is the authenticated participant (null when the request was refused before
authentication or the route is public), `code` the error code of a 4xx/5xx answer (null otherwise). Nothing
else of the request is logged: no headers (keys, signatures), no body (ID numbers, bank accounts, amounts),
no query string. WebSocket messages are not requests and are not logged here. `hogx serve` writes these
lines as they are to stderr, or to the file `--request-log` names (the other logs keep their plain format),
from a writer thread (`RequestLog`): the event loop only queues the line; stopping writes what is queued.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import re
import sys
import time
from collections.abc import Awaitable, Callable
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Final

import msgspec
from aiohttp import web

__all__ = ["LOGGER_NAME", "PRINCIPAL", "REQUEST_ID_HEADER", "RequestLog", "configure", "middleware"]

LOGGER_NAME: Final = "hogx.requests"
REQUEST_ID_HEADER: Final = "X-Request-Id"
# where the route wrapper (gateway.routes) leaves the authenticated principal for this log
PRINCIPAL: Final = web.RequestKey("hogx_principal", object)

_log = logging.getLogger(LOGGER_NAME)
_CHANGING: Final = frozenset(("POST", "PUT", "PATCH", "DELETE"))
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Line(msgspec.Struct, omit_defaults=False):
    ts: str
    request_id: str
    method: str
    route: str
    participant_id: int | None
    status: int
    code: str | None
    duration_ms: float


class _ErrorBody(msgspec.Struct):
    code: str


_decode_error = msgspec.json.Decoder(_ErrorBody).decode


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _CLIENT_ID.fullmatch(given):
        return given
    return os.urandom(8).hex()


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


def _error_code(response: web.StreamResponse) -> str | None:
    if response.status < 400 or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return None
    try:
        return _decode_error(response.body).code
    except msgspec.DecodeError:
        return None


@web.middleware
async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    started_s = time.perf_counter()
    request_id = _request_id(request)
    response = await handler(request)
    if not response.prepared:  # a WebSocket's handshake went out already
        response.headers[REQUEST_ID_HEADER] = request_id
    if request.method in _CHANGING and _log.isEnabledFor(logging.INFO):
        principal = request.get(PRINCIPAL)
        line = _Line(dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"), request_id,
                     request.method, _route(request), getattr(principal, "participant_id", None), response.status,
                     _error_code(response), round((time.perf_counter() - started_s) * 1000, 3))
        _log.info(msgspec.json.encode(line).decode())
    return response


class RequestLog:
    """The request log's writer (`configure` makes it): the middleware only queues a line (`QueueHandler`);
    a thread (`QueueListener`) writes and flushes them, so a slow disk never stalls the event loop the
    sequencer shares. `flush()` returns once every line queued before it is written; `stop()` writes
    what is queued, then stops the thread and closes the target."""

    def __init__(self, handler: logging.Handler) -> None:
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue()  # unbounded: a line is never dropped
        self._handler = handler
        self._queue_handler = QueueHandler(self._queue)
        self._listener = QueueListener(self._queue, handler)
        self._listener.start()
        _log.addHandler(self._queue_handler)

    def flush(self) -> None:
        """Block until the writer has written (and flushed) every line queued so far."""
        self._queue.join()  # the listener marks each record done once its handler returned
        self._handler.flush()

    def stop(self) -> None:
        _log.removeHandler(self._queue_handler)
        self._listener.stop()  # writes what is still queued first
        self._handler.close()


def configure(target: str = "-") -> RequestLog:
    """Write the request log's lines as they are (JSON), apart from the other logs' format: to stderr
    (`-`) or appended to the file `target`, from a writer thread. Stop the returned `RequestLog` at exit."""
    if target == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(target, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    writer = RequestLog(handler)
    _log.setLevel(logging.INFO)
    _log.propagate = False
    return writer
