"""The OpenAPI 3.1 document, generated from the route registry and its msgspec structs.

Nothing here is written by hand per route: bodies and responses come from
`msgspec.json.schema_components`, query and path parameters from the fields of the route's `query` and
`params` structs, security and error responses from its roles. A route added to any installed
`RouteTable` appears in `/v1/openapi.json` automatically.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import msgspec

from gateway.errors import ErrorBody
from gateway.routes import Route

__all__ = ["build_openapi"]

_REF = "#/components/schemas/{name}"
_SECURITY_SCHEMES = {
    "HogxKey": {"type": "apiKey", "in": "header", "name": "X-Hogx-Key"},
    "HogxTimestamp": {"type": "apiKey", "in": "header", "name": "X-Hogx-Timestamp",
                      "description": "Unix time in milliseconds; must be within the window of server time."},
    "HogxSignature": {"type": "apiKey", "in": "header", "name": "X-Hogx-Signature",
                      "description": "hex HMAC-SHA256 of timestamp + METHOD + path_with_query + body."},
}
_ERROR_TEXT = {
    400: "Malformed request or JSON", 401: "Missing, bad, stale, revoked or replayed credentials",
    403: "The caller's role may not call this route", 404: "No such resource",
    409: "Conflicts with the current state (e.g. a reused client_order_id, an order no longer open)",
    410: "No longer usable (e.g. an invitation used or expired)", 423: "Locked (e.g. too many wrong passwords)",
    413: "Body too large", 415: "Body is not application/json", 422: "Invalid fields or values",
    429: "Rate limited (rate_limited: the key's requests; too_many_auth_failures: this address's failed "
         "authentications); see Retry-After",
    503: "Not ready, shutting down, or temporarily unavailable (the message names the reference to reconcile "
         "by when the outcome is unknown); see Retry-After",
}


def build_openapi(routes: Iterable[Route], *, title: str, version: str) -> dict[str, Any]:
    routes = [r for r in routes if r.in_schema]
    types: list[Any] = [ErrorBody]
    for route in routes:
        types.extend(t for t in (route.body, route.query, route.params, route.response) if t is not None)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    _ecma_patterns(components)
    by_type = dict(zip(map(id, types), schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, by_type, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
    }


def _ecma_patterns(node: Any) -> None:
    """Show the Python-only anchors of our patterns (`\\A...\\Z`: see `gateway.inputs`) in ECMA-262 form
    (`^...$`, where `$` is the end of the text), as JSON Schema wants them."""
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("\\A") and pattern.endswith("\\Z"):
            node["pattern"] = f"^{pattern[2:-2]}$"
        for value in node.values():
            _ecma_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _ecma_patterns(value)


def _operation(route: Route, by_type: dict[int, Any], components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.handler.__name__, "summary": route.summary,
                          "tags": [_tag(route.path)]}
    doc = inspect.cleandoc(route.handler.__doc__ or "")
    if "\n" in doc:  # more than the summary: the rules and error codes the handler documents
        op["description"] = doc
    parameters = _parameters(route.query, "query", by_type, components)
    parameters += _parameters(route.params, "path", by_type, components)
    declared = {p["name"] for p in parameters if p["in"] == "path"}
    parameters += [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                   for n in route.path_param_names if n not in declared]
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": by_type[id(route.body)]}}}
    op["responses"] = _responses(route, by_type)
    if route.roles is not None:
        op["security"] = [{"HogxKey": [], "HogxTimestamp": [], "HogxSignature": []}]
        op["x-hogx-roles"] = sorted(role.value for role in route.roles)
    return op


def _parameters(struct: type[msgspec.Struct] | None, where: str, by_type: dict[int, Any],
                components: dict[str, Any]) -> list[dict[str, Any]]:
    if struct is None:
        return []
    schema = components[by_type[id(struct)]["$ref"].rsplit("/", 1)[1]]
    required = set(schema.get("required", ()))
    return [{"name": name, "in": where, "required": where == "path" or name in required,
             "schema": prop} for name, prop in schema.get("properties", {}).items()]


def _responses(route: Route, by_type: dict[int, Any]) -> dict[str, Any]:
    success: dict[str, Any] = {"description": "Success"}
    if route.response is not None:
        success["content"] = {route.media_type: {"schema": by_type[id(route.response)]}}
    elif route.status != 204:
        success["content"] = {route.media_type: {}}
    codes = [400, 422, 503]  # 422 on every route: unknown query parameters are refused everywhere
    if route.roles is not None:
        codes += [401, 403, 429]
    if route.body is not None:
        codes += [413, 415, 422]
    if route.query is not None or route.params is not None:
        codes.append(422)
    if route.path_param_names:
        codes.append(404)
    codes += route.errors
    error = {"application/json": {"schema": by_type[id(ErrorBody)]}}
    responses = {str(route.status): success}
    responses.update({str(c): {"description": _ERROR_TEXT[c], "content": error} for c in sorted(set(codes))})
    return responses


def _tag(path: str) -> str:
    parts = [p for p in path.split("/") if p and not p.startswith("{")]
    return parts[1] if len(parts) > 1 and parts[0] == "v1" else (parts[0] if parts else "root")
