"""The HTTP server around the application: the listener, aiohttp's own protocol errors, and draining.

`Runner` is aiohttp's `AppRunner` whose connections answer what aiohttp refuses before any handler runs
(a request line or header over 8,190 bytes, too many headers, a malformed or lower-case method, a
request-target such as `*`) with the API's `{code, message}` body: 414 `uri_too_long`, 431
`headers_too_large`, else 400 `bad_request`, logged as one INFO line (it is the client's mistake, not
ours), where aiohttp would answer plain text and log an ERROR traceback.

`run` serves until SIGTERM or SIGINT, then drains: the gateway stops being ready and from then on
answers every new request `503 not_ready` with `Retry-After` (and `Connection: close`), while the
listener stays open for `drain_s` (`HOGX_DRAIN_S`, 2 s), so a load balancer that still sends requests
gets an answer to retry elsewhere rather than a refused connection. Then the listener closes, requests
in flight get up to `shutdown_timeout_s` to finish, and the exchange drains its sequencer (see
`gateway.app`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.config import GatewayConfig
from gateway.errors import Code, error_response
from gateway.state import READINESS

__all__ = ["Runner", "begin_draining", "run"]

_log = logging.getLogger(__name__)


class _Protocol(RequestHandler):
    """One connection; only its answer to requests aiohttp could not parse differs from aiohttp's."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)  # a timeout or a bug of ours
        if request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot answer the error")
        status, code, text = _protocol_error(exc)
        _log.info("refused a malformed HTTP request from %s: %s %s", request.remote, status, text)
        response = error_response(status, code, text)
        response.force_close()
        return response


def _protocol_error(exc: HttpProcessingError) -> tuple[int, str, str]:
    if isinstance(exc, LineTooLong):
        # aiohttp raises it with the start of the line: the request target starts with "/", a header
        # name never does.
        line = exc.args[0] if exc.args else b""
        first = line[:1] if isinstance(line, bytes | bytearray | str) else b""
        if first == b"/" or first == "/":
            return 414, Code.URI_TOO_LONG, f"the request target is longer than {exc.args[1]} bytes"
        return 431, Code.HEADERS_TOO_LARGE, f"a header is longer than {exc.args[1]} bytes"
    text = (exc.message or "malformed request")[:200]
    if "Too many headers" in text:
        return 431, Code.HEADERS_TOO_LARGE, "too many headers"
    return 400, Code.BAD_REQUEST, f"malformed HTTP request: {text}"


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """`web.AppRunner` whose connections answer protocol errors in the API's shape."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same object; only how it makes connections changes
        return server


async def begin_draining(app: web.Application) -> None:
    """Stop being ready: new requests get 503 `not_ready`, commands are refused, WebSockets closed."""
    app[READINESS].start_draining()
    for hook in app.on_shutdown:  # the app's own shutdown steps; each is safe to run twice
        await hook(app)


async def run(app: web.Application, config: GatewayConfig) -> None:
    """Serve `app` on `config.host:config.port` until SIGTERM or SIGINT, then drain and stop."""
    runner = Runner(app, shutdown_timeout=config.shutdown_timeout_s, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        _log.info("serving on http://%s:%d", config.host, config.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        _log.info("draining for %.1f s: new requests get 503 not_ready", config.drain_s)
        await begin_draining(app)
        await asyncio.sleep(config.drain_s)
    finally:
        await runner.cleanup()
