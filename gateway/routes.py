"""The route registry: each HTTP route declares its method, path template, roles and msgspec structs.

A handler module owns a `RouteTable` and decorates thin handlers:

    routes = RouteTable()

    @routes.post("/v1/orders", roles=TRADERS, body=PlaceOrderRequest, response=ExecutionReport, status=201)
    async def place_order(call: Call, body: PlaceOrderRequest) -> ExecutionReport: ...

    @routes.get("/v1/orders/{order_id}", roles=ANY_ROLE, params=OrderPath, response=OrderView)
    async def get_order(call: Call, params: OrderPath) -> OrderView: ...

The same declaration drives everything else: `install` wraps the handler with authentication (signature,
role, rate limit), decodes `body` (JSON), `query` and `params` (path) with one reusable decoder per
route, encodes the returned struct, and `gateway.openapi` documents it. Structs must be declared with
`forbid_unknown_fields=True`, so unknown fields are a 422, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import asyncpg
import msgspec
from aiohttp import web

from gateway.auth import KEY_HEADER, Authenticator, Principal, Role
from gateway.config import GatewayConfig
from gateway.errors import ApiError, Code
from gateway.inputs import check_integers, duplicate_key_error, has_duplicate_keys, int_fields, validation_error
from gateway.metrics import Metrics
from gateway.ratelimit import TokenBuckets
from gateway.requestlog import PRINCIPAL
from gateway.sessions import SESSION_COOKIE, SESSIONS
from gateway.state import CONFIG, HUB, METRICS, POOL, READINESS, Readiness
from gateway.ws import Hub

__all__ = ["Call", "Route", "RouteTable", "install"]

_JSON = "application/json"
_PATH_PARAM_RE = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


class Call:
    """What a handler gets besides its decoded inputs: the request, the caller, the app's services."""

    __slots__ = ("_principal", "request", "route")

    def __init__(self, request: web.Request, route: Route, principal: Principal | None) -> None:
        self.request = request
        self.route = route
        self._principal = principal

    @property
    def principal(self) -> Principal:
        """The authenticated caller; only on routes that declare roles (a public route has none)."""
        if self._principal is None:
            raise RuntimeError(f"{self.route.method} {self.route.path} is public: no principal")
        return self._principal

    @property
    def principal_or_none(self) -> Principal | None:
        return self._principal

    @property
    def app(self) -> web.Application:
        return self.request.app

    @property
    def config(self) -> GatewayConfig:
        return self.request.app[CONFIG]

    @property
    def pool(self) -> asyncpg.Pool:
        return self.request.app[POOL]

    @property
    def metrics(self) -> Metrics:
        return self.request.app[METRICS]

    @property
    def hub(self) -> Hub:
        return self.request.app[HUB]

    @property
    def readiness(self) -> Readiness:
        return self.request.app[READINESS]

    def json(self, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        """An explicit JSON response, for handlers whose status depends on the outcome."""
        return web.Response(body=_encode(value), status=status, content_type=_JSON, headers=headers)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    roles: frozenset[Role] | None  # None: public, no authentication
    body: type[msgspec.Struct] | None = None
    query: type[msgspec.Struct] | None = None
    params: type[msgspec.Struct] | None = None
    response: Any = None  # a type msgspec can describe; None for raw responses
    status: int = 200
    summary: str = ""
    media_type: str = _JSON  # of the success response, for the OpenAPI document
    in_schema: bool = True
    errors: tuple[int, ...] = ()  # statuses beyond those implied by roles, body and path (e.g. 404, 409)
    # How a client reconciles after a 503 whose outcome is unknown (`gateway.errors`); "" on reads.
    reconcile_by: str = ""

    @property
    def path_param_names(self) -> list[str]:
        return _PATH_PARAM_RE.findall(self.path)


class RouteTable:
    """An ordered collection of routes, one per handler module; `create_app` installs the tables."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def route(
        self,
        method: str,
        path: str,
        *,
        roles: frozenset[Role] | None,
        body: type[msgspec.Struct] | None = None,
        query: type[msgspec.Struct] | None = None,
        params: type[msgspec.Struct] | None = None,
        response: Any = None,
        status: int = 200,
        summary: str | None = None,
        media_type: str = _JSON,
        in_schema: bool = True,
        errors: tuple[int, ...] = (),
        reconcile_by: str | None = None,
    ) -> Callable[[_F], _F]:
        """Declare a route. `roles` is required: a role set, or `PUBLIC` (None) for no authentication.

        `reconcile_by` says how to reconcile after a 503 with an unknown outcome when the body has no
        idempotency reference of its own (a reference in the body always wins: see `_reconcile_by`).
        """

        def decorate(handler: _F) -> _F:
            route = Route(method.upper(), path, handler, roles, body, query, params, response, status,
                          summary if summary is not None else _first_line(handler.__doc__), media_type,
                          in_schema, errors)
            route = dataclasses.replace(route, reconcile_by=_reconcile_by(route, reconcile_by))
            _check(route)
            self._routes.append(route)
            return handler

        return decorate

    def get(self, path: str, **kwargs: Any) -> Callable[[_F], _F]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[_F], _F]:
        return self.route("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Callable[[_F], _F]:
        return self.route("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[_F], _F]:
        return self.route("DELETE", path, **kwargs)


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


# Body fields that make a request idempotent: a retry with the same value gets the original answer.
_IDEMPOTENCY_FIELDS: Final = ("client_order_id", "client_lot_ref", "registration_ref")
_NOT_IDEMPOTENCY_REFS: Final = frozenset({"bank_ref"})  # the bank's reference, not the request's


def _reconcile_by(route: Route, declared: str | None) -> str:
    """How to reconcile a request of `route` whose outcome is unknown: by the body's idempotency
    reference when it has one, else as declared, else by reading what the path names again."""
    if route.method in ("GET", "HEAD"):
        return ""
    fields = route.body.__struct_fields__ if route.body is not None else ()
    refs = [f for f in fields if f in _IDEMPOTENCY_FIELDS] + \
        [f for f in fields if f.endswith("_ref") and f not in _IDEMPOTENCY_FIELDS and f not in _NOT_IDEMPOTENCY_REFS]
    if refs:
        return f"{refs[0]} (a retry with the same {refs[0]} gets the original answer)"
    if declared:
        return declared
    names = route.path_param_names
    if names:
        return f"{names[0]} (read it again to see whether the change took effect)"
    return "reading the current state before retrying"


def _check(route: Route) -> None:
    """Refuse at import time the declarations that would weaken input checking."""
    for part in (route.body, route.query, route.params):
        if part is not None and not part.__struct_config__.forbid_unknown_fields:
            raise TypeError(f"{route.path}: {part.__name__} must set forbid_unknown_fields=True")
    if route.params is not None:
        declared = set(route.params.__struct_fields__)
        if declared != set(route.path_param_names):
            raise TypeError(f"{route.path}: params struct fields {sorted(declared)} do not match the path")


_encode = msgspec.json.Encoder().encode


def install(app: web.Application, routes: list[Route], auth: Authenticator, limiter: TokenBuckets,
            metrics: Metrics) -> None:
    """Add every route to the app's router, each wrapped in its own endpoint."""
    for route in routes:
        endpoint = _endpoint(route, auth, limiter, metrics)
        endpoint.reconcile_by = route.reconcile_by  # type: ignore[attr-defined]  # read by the error middleware
        app.router.add_route(route.method, route.path, endpoint, name=route.handler.__name__)


def _endpoint(route: Route, auth: Authenticator, limiter: TokenBuckets,
              metrics: Metrics) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for one route; everything per-route (decoders) is built once, here."""
    body_decoder = None if route.body is None else msgspec.json.Decoder(route.body)
    query_type, params_type, handler = route.query, route.params, route.handler
    query_ints = frozenset() if query_type is None else int_fields(query_type)
    params_ints = frozenset() if params_type is None else int_fields(params_type)
    roles, status = route.roles, route.status

    def admit(principal: Principal) -> None:
        """Role, then the key's rate limit: run by `verify` before it remembers the signature, so a
        refused request takes none of the key's replay memory."""
        if roles is not None and principal.role not in roles:
            raise ApiError(403, Code.FORBIDDEN, f"role {principal.role.value} may not call this route")
        wait_s = limiter.take(principal.api_key)
        if wait_s:
            metrics.rate_limited.inc()
            raise ApiError(429, Code.RATE_LIMITED, f"rate limit exceeded, retry in {wait_s:.3f} s",
                           retry_after_s=TokenBuckets.retry_after_s(wait_s))

    async def endpoint(request: web.Request) -> web.StreamResponse:
        raw = await request.read() if request.body_exists else b""
        principal = None
        if roles is not None:
            # The key header first: a signed request (every API client) never has its cookies parsed.
            if KEY_HEADER not in request.headers and SESSION_COOKIE in request.cookies:
                # A person signed in to the web app: the same role check and rate limit (admit).
                principal = await request.app[SESSIONS].authenticate(request, admit)
            else:
                principal = await auth.authenticate(request.method, request.raw_path, request.headers, raw, admit,
                                                    request.remote or "")
            request[PRINCIPAL] = principal  # for the request log (gateway.requestlog)
        kwargs: dict[str, Any] = {}
        if body_decoder is not None:
            kwargs["body"] = _decode_body(body_decoder, request, raw)
        elif raw:
            raise ApiError(400, Code.BAD_REQUEST, "this route takes no request body")
        if query_type is not None:
            kwargs["query"] = _convert(query_type, request.query, "query", query_ints)
        elif request.query:
            raise ApiError(422, Code.INVALID, "this route takes no query parameters")
        if params_type is not None:
            kwargs["params"] = _convert(params_type, request.match_info, "path", params_ints)
        result = await handler(Call(request, route, principal), **kwargs)
        if isinstance(result, web.StreamResponse):
            return result
        if result is None and status == 204:
            return web.Response(status=204)
        return web.Response(body=_encode(result), status=status, content_type=_JSON)

    return endpoint


def _decode_body(decoder: msgspec.json.Decoder[Any], request: web.Request, raw: bytes) -> Any:
    if request.content_type != _JSON:
        raise ApiError(415, Code.UNSUPPORTED_MEDIA_TYPE, f"send the body as {_JSON}")
    try:
        body = decoder.decode(raw)
    except msgspec.ValidationError as exc:  # before DecodeError: it is a subclass
        raise validation_error(exc, "body") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, Code.BAD_JSON, f"malformed JSON: {exc}") from None
    except RecursionError:  # nested deeper than the decoder follows (it stops before the stack does)
        raise ApiError(400, Code.BAD_JSON, "malformed JSON: nested too deeply") from None
    if has_duplicate_keys(raw):
        raise duplicate_key_error("body")
    return body


def _convert(struct: type[msgspec.Struct], values: Any, where: str, int_names: frozenset[str]) -> Any:
    check_integers(values, int_names, where)
    try:
        # strict=False: query and path values arrive as strings and are converted to the field types
        # (integers were checked above: lax conversion alone would take "1.0" and "1e3").
        return msgspec.convert(dict(values), struct, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, f"{where} parameters") from None
