"""Error replies: the `ApiError` handlers raise, the stable codes, and the middleware that turns every
failure into `{"code": ..., "message": ...}`.

A 5xx means "outcome unknown" to a client (it must reconcile by client order id), so bad input must
never produce one: malformed JSON is 400, a well-formed body of the wrong shape 422, and only a genuine
bug gives 500 `internal_error`, logged here with its traceback and never echoed to the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum

import asyncpg
import msgspec
from aiohttp import web

from gateway.metrics import Metrics

__all__ = ["ApiError", "Code", "ErrorBody", "error_middleware", "error_response"]

_log = logging.getLogger(__name__)


class Code(StrEnum):
    """Stable error codes of the gateway itself; the core's rejection reasons are added by handlers."""

    BAD_JSON = "bad_json"  # 400 body is not JSON
    BAD_REQUEST = "bad_request"  # 400 other malformed request (e.g. a body where none is taken)
    MISSING_CREDENTIALS = "missing_credentials"  # 401
    UNKNOWN_KEY = "unknown_key"  # 401
    BAD_SIGNATURE = "bad_signature"  # 401
    TIMESTAMP_OUT_OF_WINDOW = "timestamp_out_of_window"  # 401
    REVOKED_KEY = "revoked_key"  # 401
    REPLAYED_REQUEST = "replayed_request"  # 401
    FORBIDDEN = "forbidden"  # 403 authenticated, but the role may not call this route
    NOT_FOUND = "not_found"  # 404 (also for another participant's resources)
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    CONFLICT = "conflict"  # 409
    PAYLOAD_TOO_LARGE = "payload_too_large"  # 413
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415
    INVALID = "invalid"  # 422 well-formed JSON of the wrong shape or out-of-range values
    CONTROL_CHARACTERS = "control_characters"  # 422 free text with a control or bidi formatting character
    DUPLICATE_KEY = "duplicate_key"  # 422 a JSON object names the same key twice
    RATE_LIMITED = "rate_limited"  # 429 with Retry-After
    NOT_READY = "not_ready"  # 503 recovery still running, or shutting down
    UNAVAILABLE = "unavailable"  # 503 database or sequencer cannot take work now, with Retry-After
    INTERNAL_ERROR = "internal_error"  # 500 a bug; details only in the log


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every error reply."""

    code: str
    message: str


class ApiError(Exception):
    """Raise from a handler to answer `status` with `{"code": code, "message": message}`.

    `code` is a `Code` member or any other stable snake_case string (e.g. a core rejection reason).
    `retry_after_s` adds a Retry-After header (429 and 503).
    """

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = str(code)
        self.message = message
        self.retry_after_s = retry_after_s

    def response(self) -> web.Response:
        headers = None if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        return error_response(self.status, self.code, self.message, headers)


_encode = msgspec.json.Encoder().encode


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=_encode(ErrorBody(code, message)),
        content_type="application/json",
        headers=headers,
    )


# aiohttp raises these itself (router, body size limit); they get our body and a code.
_HTTP_CODES: dict[int, Code] = {
    400: Code.BAD_REQUEST,
    404: Code.NOT_FOUND,
    405: Code.METHOD_NOT_ALLOWED,
    413: Code.PAYLOAD_TOO_LARGE,
    415: Code.UNSUPPORTED_MEDIA_TYPE,
}

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_middleware(metrics: Metrics) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
    """The single middleware: maps every failure to a coded JSON error and records HTTP metrics.

    Both jobs share one middleware because each middleware layer costs a coroutine per request.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        started_s = time.perf_counter()
        try:
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects are not errors
            response = _from_http_exception(exc)
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.TooManyConnectionsError) as exc:
            # The store is down or saturated: the client may retry; nothing was half-done by the gateway.
            _log.warning("database unavailable on %s %s: %r", request.method, request.path, exc)
            response = ApiError(503, Code.UNAVAILABLE, "storage unavailable, retry", retry_after_s=1).response()
        except Exception:
            _log.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(500, Code.INTERNAL_ERROR, "internal error")
        metrics.observe_http(_route_label(request), request.method, response.status,
                             time.perf_counter() - started_s, is_stream=isinstance(response, web.WebSocketResponse))
        return response

    return middleware


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, Code.BAD_REQUEST if exc.status < 500 else Code.INTERNAL_ERROR)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    message = exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
    return error_response(exc.status, code, message, headers)


def _route_label(request: web.Request) -> str:
    """The route template (`/v1/orders/{order_id}`), never the raw path, to keep label cardinality fixed."""
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical
