"""Error replies: the `ApiError` handlers raise, the stable codes, and the middleware that turns every
failure into `{"code": ..., "message": ...}`.

A 5xx means "outcome unknown" to a client, so bad input must never produce one: malformed JSON is 400,
a well-formed body of the wrong shape 422, and only a genuine bug gives 500 `internal_error`, logged here
with its traceback and never echoed to the client.

Every connection-level failure of the database (`is_unavailable`: the backend terminated, the
connection closed or broken mid-operation, the pool closing or exhausted, a network error, a
serialization failure) is 503 `unavailable` with `Retry-After`, never a 500: the request may be retried.
A 503 whose outcome is unknown (`ApiError(..., outcome_unknown=True)`, or a database failure on a route
that changes something) names how to reconcile: the route's own reference (`Route.reconcile_by`:
`client_order_id` for orders, `client_lot_ref` for lots, `deposit_ref` for deposits, the order for a
cancel or amend, ...), never one the route does not have. While the gateway drains after SIGTERM every
request is answered 503 `not_ready` (see `gateway.server`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Protocol

import asyncpg
import msgspec
from aiohttp import web

from gateway.metrics import Metrics

__all__ = ["ApiError", "Code", "ErrorBody", "error_middleware", "error_response", "is_unavailable", "unavailable"]

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
    BAD_TOKEN = "bad_token"  # 401 GET /metrics without the bearer token HOGX_METRICS_TOKEN asks for
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
    TOO_MANY_AUTH_FAILURES = "too_many_auth_failures"  # 429 this address failed authentication too often
    TOO_MANY_SOCKETS = "too_many_sockets"  # 429 (or WebSocket close 1008) per-address or per-key socket cap
    URI_TOO_LONG = "uri_too_long"  # 414 request line over aiohttp's limit (8,190 bytes)
    HEADERS_TOO_LARGE = "headers_too_large"  # 431 a header over 8,190 bytes, or too many headers
    NOT_READY = "not_ready"  # 503 recovery still running, or shutting down (draining)
    UNAVAILABLE = "unavailable"  # 503 database or sequencer cannot take work now, with Retry-After
    INTERNAL_ERROR = "internal_error"  # 500 a bug; details only in the log


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every error reply."""

    code: str
    message: str


class ApiError(Exception):
    """Raise from a handler to answer `status` with `{"code": code, "message": message}`.

    `code` is a `Code` member or any other stable snake_case string (e.g. a core rejection reason).
    `retry_after_s` adds a Retry-After header (429 and 503). `outcome_unknown`: the request may or may
    not have taken effect; the reply adds how to reconcile on the route that failed.
    """

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: int | None = None,
                 outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = str(code)
        self.message = message
        self.retry_after_s = retry_after_s
        self.outcome_unknown = outcome_unknown

    def reconciled(self, reconcile_by: str) -> ApiError:
        """This error with how to reconcile added to its message (when its outcome is unknown)."""
        if not self.outcome_unknown:
            return self
        how = f"reconcile by {reconcile_by}" if reconcile_by else "check before retrying"
        return ApiError(self.status, self.code, f"{self.message}: {how}", retry_after_s=self.retry_after_s)

    def response(self) -> web.Response:
        headers = None if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        return error_response(self.status, self.code, self.message, headers)


_encode = msgspec.json.Encoder().encode

# Connection-level failures: the database went away, closed the connection or could not take the work.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # includes ConnectionError: the socket to the database broke
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: connection failure, does not exist, ...
    asyncpg.InterfaceError,  # the connection closed mid-operation, the pool is closing, ...
    asyncpg.InternalClientError,  # the protocol state lost when the backend was terminated
    asyncpg.exceptions.OperatorInterventionError,  # class 57: admin/crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, out of memory
    asyncpg.exceptions.TransactionRollbackError,  # class 40: serialization failure, deadlock
)


def is_unavailable(exc: BaseException) -> bool:
    """Is `exc` the database being unavailable (retry later), rather than a bug of ours?"""
    if isinstance(exc, asyncpg.exceptions.DataError):  # an InterfaceError, but a bad argument: our bug
        return False
    return isinstance(exc, _UNAVAILABLE)


def unavailable(method: str) -> ApiError:
    """The 503 for a database failure: nothing changed on a read; outcome unknown on a write."""
    if method in ("GET", "HEAD"):
        return ApiError(503, Code.UNAVAILABLE, "storage unavailable: nothing was changed, retry", retry_after_s=1)
    return ApiError(503, Code.UNAVAILABLE, "storage unavailable: the outcome is unknown", retry_after_s=1,
                    outcome_unknown=True)


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


class _Draining(Protocol):
    draining: bool


# Called with every final answer, its route template and when the request arrived
# (`gateway.requestlog.finish`: the request id and the request log).
Finish = Callable[[web.Request, web.StreamResponse, str, float], None]


def error_middleware(metrics: Metrics, readiness: _Draining, finish: Finish | None = None
                     ) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
    """The single middleware: maps every failure to a coded JSON error, records HTTP metrics, then hands
    the final answer to `finish` with its route template and the `time.perf_counter()` reading taken when
    the request arrived.

    The jobs share one middleware because each middleware layer costs a coroutine per request.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        started_s = time.perf_counter()
        try:
            response = _draining() if readiness.draining else await handler(request)
        except ApiError as exc:
            if exc.outcome_unknown:
                exc = exc.reconciled(_reconcile_by(request))
            response = exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects are not errors
            response = _from_http_exception(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_unavailable(exc):
                # The store is down or lost the connection: the client may retry (reconciling first if
                # the request changes something); nothing was half-done by the gateway.
                _log.warning("database unavailable on %s %s: %r", request.method, request.path, exc)
                response = unavailable(request.method).reconciled(_reconcile_by(request)).response()
            else:
                _log.exception("unhandled error on %s %s", request.method, request.path)
                response = error_response(500, Code.INTERNAL_ERROR, "internal error")
        route = _route_label(request)
        metrics.observe_http(route, request.method, response.status, time.perf_counter() - started_s,
                             is_stream=isinstance(response, web.WebSocketResponse))
        if finish is not None:
            finish(request, response, route, started_s)
        return response

    return middleware


def _draining() -> web.Response:
    response = error_response(503, Code.NOT_READY, "shutting down: send this request to another gateway",
                              {"Retry-After": "1"})
    response.force_close()  # the client reconnects (to another gateway)
    return response


def _reconcile_by(request: web.Request) -> str:
    """The matched route's reference to reconcile by (set on its endpoint by `gateway.routes.install`)."""
    return getattr(request.match_info.handler, "reconcile_by", "")


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, Code.BAD_REQUEST if exc.status < 500 else Code.INTERNAL_ERROR)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    message = exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
    return error_response(exc.status, code, message, headers)


def _route_label(request: web.Request) -> str:
    """The route template (`/v1/orders/{order_id}`), never the raw path, to keep label cardinality fixed."""
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical
