"""The request log: one JSON line per state-changing HTTP request, and an `X-Request-Id` on every answer.

`finish` (called by the gateway's one middleware, `gateway.errors.error_middleware`, with the final
answer, errors included) gives each request an id: the client's own `X-Request-Id` when it is a short
token (1-64 of `A-Z a-z 0-9 . _ -`), else a new one (16 hex digits: a random per-process start plus a
counter, so unique within the process and unlikely to meet another process's), and returns it in the
`X-Request-Id` response header. For POST, PUT, PATCH and DELETE it then logs one line of JSON:

    {"ts":"2026-12-07T12:00:00.123Z","request_id":"5f0c...","method":"POST","route":"/v1/orders",
     "participant_id":4,"status":422,"code":"price_outside_band","duration_ms":1.9}

`route` is the route template (`/v1/orders/{order_id}`, never the raw path: ids stay out of it, as in the
metrics), `participant_id` is the authenticated participant (null when the request was refused before
authentication or the route is public), `code` the error code of a 4xx/5xx answer (null otherwise). Nothing
else of the request is logged: no headers (keys, signatures), no body (ID numbers, bank accounts, amounts),
no query string. WebSocket messages are not requests and are not logged here.

Where the lines go: `hogx serve` calls `configure`, which starts a `RequestLog` writing them as they are
to stderr, or to the file `--request-log` names (the other logs keep their plain format). The event loop
only appends the encoded line to an in-memory queue; a writer thread writes what has queued in blocks,
every `interval_s` (0.1 s) or as soon as `max_lines` are waiting, so the order path pays for neither a
system call nor a thread switch per request, and a slow stderr never stalls the event loop the sequencer
shares (lines wait in memory meanwhile; none is dropped). `flush()` and `stop()` write what is queued.
Without a `RequestLog` (the gateway embedded, as in tests) the lines go to the `hogx.requests` logger at
INFO, when that is enabled.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import select
import stat
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Final

import msgspec
from aiohttp import web

__all__ = ["LOGGER_NAME", "PRINCIPAL", "REQUEST_ID_HEADER", "RequestLog", "configure", "finish"]

LOGGER_NAME: Final = "hogx.requests"
REQUEST_ID_HEADER: Final = "X-Request-Id"
# where the route wrapper (gateway.routes) leaves the authenticated principal for this log
PRINCIPAL: Final = web.RequestKey("hogx_principal", object)

_log = logging.getLogger(LOGGER_NAME)
_CHANGING: Final = frozenset(("POST", "PUT", "PATCH", "DELETE"))
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


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
_encode_line = msgspec.json.Encoder().encode

# New request ids: a random 64-bit start for this process, counted up (cheaper than reading the system's
# random source for each request; an id only has to tell requests apart, it is no secret).
_next_id = itertools.count(int.from_bytes(os.urandom(8), "big")).__next__
_ID_MASK: Final = (1 << 64) - 1


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _CLIENT_ID.fullmatch(given):
        return given
    return "%016x" % (_next_id() & _ID_MASK)


class _Clock:
    """UTC timestamps with milliseconds; the date and time of day are formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        second, ns = divmod(time.time_ns(), 1_000_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{ns // 1_000_000:03d}Z"


_clock = _Clock()


def _error_code(response: web.StreamResponse) -> str | None:
    if response.status < 400 or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return None
    try:
        return _decode_error(response.body).code
    except msgspec.DecodeError:
        return None


def finish(request: web.Request, response: web.StreamResponse, route: str, started_s: float) -> None:
    """Give the answer its request id and log the request (a state-changing one): called by the gateway's
    one middleware (`gateway.errors.error_middleware`) with the final answer, errors included, the route
    template (`unmatched` for none) and the `time.perf_counter()` reading taken when the request arrived."""
    request_id = _request_id(request)
    if not response.prepared:  # a WebSocket's handshake went out already
        response.headers[REQUEST_ID_HEADER] = request_id
    if request.method in _CHANGING:
        writer = _writer
        if writer is not None or _log.isEnabledFor(logging.INFO):
            principal = request.get(PRINCIPAL)
            line = _encode_line(_Line(
                _clock.now(), request_id, request.method, route, getattr(principal, "participant_id", None),
                response.status, _error_code(response), int((time.perf_counter() - started_s) * 1e6) / 1000))
            if writer is not None:
                writer.write(line)
            else:
                _log.info(line.decode())


class RequestLog:
    """The request log's writer (`configure` makes it). `write(line)` only appends to a queue (no lock, no
    system call, no wake-up of the thread until `max_lines` wait); the writer thread writes the queued
    lines in blocks every `interval_s`. A block never splits a line, and to a pipe or socket it is at most
    `PIPE_BUF` bytes, so it arrives whole even when other writers share stderr. `flush()` returns once
    every line written before it is out; `stop()` writes what is queued, then stops the thread and
    closes the target (not stderr)."""

    def __init__(self, fd: int, *, owns_fd: bool, interval_s: float = 0.1, max_lines: int = 4096) -> None:
        self._fd = fd
        self._owns_fd = owns_fd
        self._interval_s = interval_s
        self._max_lines = max_lines
        mode = os.fstat(fd).st_mode
        self._block_bytes = select.PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else 1 << 16
        self._lines: deque[bytes] = deque()  # unbounded: a line is never dropped
        self._wake = threading.Event()
        self._write_lock = threading.Lock()  # one writer at a time, so blocks keep their order
        self._stopping = False
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="hogx-request-log", daemon=True)
        self._thread.start()

    def write(self, line: bytes) -> None:
        """Queue one line (without its newline); called on the event loop, never blocks."""
        lines = self._lines
        lines.append(line)
        if len(lines) >= self._max_lines:
            self._wake.set()

    def flush(self) -> None:
        """Block until every line queued so far is written (call it off the event loop)."""
        self._write_queued()

    def stop(self) -> None:
        global _writer
        if _writer is self:
            _writer = None
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._write_queued()  # anything queued after the thread's last pass
        if self._owns_fd:
            os.close(self._fd)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            self._write_queued()

    def _write_queued(self) -> None:
        with self._write_lock:
            lines = self._lines
            popleft = lines.popleft
            while lines:
                block: list[bytes] = []
                size = 0
                while lines and (size + len(lines[0]) + 1 <= self._block_bytes or not block):
                    line = popleft()
                    block.append(line)
                    size += len(line) + 1
                block.append(b"")  # the last line's newline
                self._write_all(b"\n".join(block))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view):]
            except BlockingIOError:  # a non-blocking stderr that is full: wait for its reader
                time.sleep(0.01)
            except OSError as exc:  # the target is gone (a closed pipe, a full disk): nothing to do but say so
                if not self._failed:
                    self._failed = True
                    logging.getLogger("hogx").error("the request log cannot be written: %r", exc)
                return


_writer: RequestLog | None = None


def configure(target: str = "-") -> RequestLog:
    """Write the request log's lines as they are (JSON), apart from the other logs' format: to stderr
    (`-`) or appended to the file `target`, from a writer thread. Stop the returned `RequestLog` at exit."""
    global _writer
    if target == "-":
        sys.stderr.flush()
        writer = RequestLog(sys.stderr.fileno(), owns_fd=False)
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        writer = RequestLog(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666), owns_fd=True)
    _writer = writer
    return writer
