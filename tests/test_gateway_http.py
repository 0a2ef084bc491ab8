"""The gateway over real HTTP on a loopback port, backed by the test PostgreSQL.

Covers authentication (every 401 code), roles, decoding errors, rate limits, metrics, readiness and
the OpenAPI document. Order routes are tested where they are added.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from gateway import store, webapp
from gateway.app import create_app
from gateway.auth import PUBLIC, Role
from gateway.client import SignedClient
from gateway.config import GatewayConfig
from gateway.routes import Call, RouteTable
from gateway.state import POOL, READINESS
from gateway.testing import serve

# -- test-only routes: an unexpected exception and a query-parameter struct --------------------------

_extra = RouteTable()


class _Echo(msgspec.Struct, forbid_unknown_fields=True):
    n: int


class _Page(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


@_extra.get("/test/boom", roles=PUBLIC)
async def boom(call: Call) -> None:
    raise RuntimeError("secret internal detail")


@_extra.post("/test/echo", roles=PUBLIC, body=_Echo, response=_Echo)
async def echo(call: Call, body: _Echo) -> _Echo:
    return body


@_extra.get("/test/page", roles=PUBLIC, query=_Page, response=_Page)
async def page(call: Call, query: _Page) -> _Page:
    return query


@dataclass
class Gateway:
    app: web.Application
    url: str
    session: aiohttp.ClientSession
    operator: SignedClient
    operator_key: str

    def client(self, key: str | None = None, secret: str | None = None) -> SignedClient:
        return SignedClient(self.url, key, secret, session=self.session)

    async def register(self, role: Role) -> SignedClient:
        reply = await self.operator.post("/v1/admin/participants", json={"role": role, "name": f"test {role}"})
        assert reply.status == 201, reply.body
        issued = reply.json()
        return self.client(issued["api_key"], issued["api_secret"])


def _config(database_url: str, **overrides: object) -> tuple[GatewayConfig, str, str]:
    key, secret = f"op_{secrets.token_hex(8)}", secrets.token_hex(16)
    config = GatewayConfig(database_url=database_url, operator_key=key, operator_secret=secret,
                           db_pool_min=1, db_pool_max=4, **overrides)  # type: ignore[arg-type]
    return config, key, secret


@pytest_asyncio.fixture(scope="module")
async def gw(database_url: str) -> AsyncIterator[Gateway]:
    config, key, secret = _config(database_url, max_body_bytes=4096)
    app = create_app(config, extra_routes=[_extra])
    async with serve(app) as url, aiohttp.ClientSession() as session:
        operator = SignedClient(url, key, secret, session=session)
        yield Gateway(app, url, session, operator, key)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _error(reply_coro: object) -> tuple[int, str]:
    reply = await reply_coro  # type: ignore[misc]
    body = reply.json()
    assert set(body) == {"code", "message"}, body
    return reply.status, body["code"]


# -- liveness, readiness, bootstrap ------------------------------------------------------------------

async def test_health_and_readiness(gw: Gateway) -> None:
    anonymous = gw.client()
    assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
    assert (await anonymous.get("/readyz")).json() == {"status": "ready"}
    gw.app[READINESS].set_not_ready("recovering")
    try:
        reply = await anonymous.get("/readyz")
        assert (reply.status, reply.json(), reply.headers["Retry-After"]) == (
            503, {"code": "not_ready", "message": "recovering"}, "1")
    finally:
        gw.app[READINESS].set_ready()


async def test_bootstrap_operator_key_is_created_once(gw: Gateway) -> None:
    me = (await gw.operator.get("/v1/me")).json()
    assert me["role"] == "operator" and me["api_key"] == gw.operator_key
    # A second gateway starting with the same variables finds the key and creates nothing.
    assert await store.ensure_operator_key(gw.app[POOL], gw.operator_key, "x" * 32) is False
    count = await gw.app[POOL].fetchval("SELECT count(*) FROM api_keys WHERE api_key = $1", gw.operator_key)
    assert count == 1


# -- signatures ------------------------------------------------------------------------------------

async def test_signed_request_authenticates_as_its_participant(gw: Gateway) -> None:
    farmer = await gw.register(Role.FARMER)
    me = (await farmer.get("/v1/me")).json()
    assert me["role"] == "farmer" and me["api_key"] == farmer.api_key
    assert isinstance(me["participant_id"], int)


async def test_missing_credentials(gw: Gateway) -> None:
    assert await _error(gw.client().get("/v1/me")) == (401, "missing_credentials")
    headers = {"X-Hogx-Key": gw.operator_key, "X-Hogx-Timestamp": "12x", "X-Hogx-Signature": "00" * 32}
    assert await _error(gw.client().get("/v1/me", headers=headers)) == (401, "missing_credentials")


async def test_unknown_key(gw: Gateway) -> None:
    stranger = gw.client("hk_" + secrets.token_hex(12), secrets.token_hex(32))
    assert await _error(stranger.get("/v1/me")) == (401, "unknown_key")
    too_long = gw.client("k" * 65, secrets.token_hex(32))
    assert await _error(too_long.get("/v1/me")) == (401, "unknown_key")


async def test_bad_signature_wrong_secret_or_tampered_body(gw: Gateway) -> None:
    forger = gw.client(gw.operator_key, secrets.token_hex(16))
    assert await _error(forger.get("/v1/me")) == (401, "bad_signature")
    # Signed for one body, sent with another: the body is part of the signature.
    ts = _now_ms()
    body = b'{"role":"buyer","name":"a"}'
    headers = {"X-Hogx-Key": gw.operator_key, "X-Hogx-Timestamp": str(ts),
               "X-Hogx-Signature": "0" * 64, "Content-Type": "application/json"}
    assert await _error(gw.client().post("/v1/admin/participants", body=body, headers=headers)) == (
        401, "bad_signature")
    # Signed for one path, sent to another (query strings included).
    good = gw.operator
    from gateway.client import signed_headers
    headers = signed_headers(good.api_key or "", good.api_secret or "", _now_ms(), "GET", "/v1/me?x=1")
    assert await _error(gw.client().get("/v1/me", headers=headers)) == (401, "bad_signature")


async def test_timestamp_outside_the_five_second_window(gw: Gateway) -> None:
    assert await _error(gw.operator.get("/v1/me", ts_ms=_now_ms() - 6_000)) == (401, "timestamp_out_of_window")
    assert await _error(gw.operator.get("/v1/me", ts_ms=_now_ms() + 6_000)) == (401, "timestamp_out_of_window")
    assert (await gw.operator.get("/v1/me", ts_ms=_now_ms() - 3_000)).status == 200


async def test_replayed_request_is_rejected(gw: Gateway) -> None:
    ts = _now_ms()
    first = await gw.operator.get("/v1/me", ts_ms=ts)
    assert first.status == 200
    assert await _error(gw.operator.get("/v1/me", ts_ms=ts)) == (401, "replayed_request")
    assert (await gw.operator.get("/v1/me", ts_ms=ts + 1)).status == 200  # a new signature is fine


async def test_revoked_key_is_refused_at_once(gw: Gateway) -> None:
    buyer = await gw.register(Role.BUYER)
    assert (await buyer.get("/v1/me")).status == 200
    reply = await gw.operator.post(f"/v1/admin/keys/{buyer.api_key}/revoke")
    assert (reply.status, reply.json()) == (200, {"api_key": buyer.api_key, "revoked": True})
    assert await _error(buyer.get("/v1/me")) == (401, "revoked_key")
    # A forger who does not know the secret learns nothing about the revocation.
    forger = gw.client(buyer.api_key, secrets.token_hex(16))
    assert await _error(forger.get("/v1/me")) == (401, "bad_signature")
    assert await _error(gw.operator.post("/v1/admin/keys/hk_nosuchkey/revoke")) == (404, "not_found")


async def test_issued_key_works_and_secret_is_never_stored_elsewhere(gw: Gateway) -> None:
    coop = await gw.register(Role.COOPERATIVE)
    participant_id = (await coop.get("/v1/me")).json()["participant_id"]
    reply = await gw.operator.post(f"/v1/admin/participants/{participant_id}/keys")
    assert reply.status == 201
    issued = reply.json()
    assert issued["participant_id"] == participant_id and issued["role"] == "cooperative"
    second = gw.client(issued["api_key"], issued["api_secret"])
    assert (await second.get("/v1/me")).json()["participant_id"] == participant_id
    assert await _error(gw.operator.post("/v1/admin/participants/999999999/keys")) == (404, "not_found")
    assert await _error(gw.operator.post("/v1/admin/participants/abc/keys")) == (422, "invalid")


# -- roles -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", [Role.FARMER, Role.COOPERATIVE, Role.BUYER, Role.FINANCIER])
async def test_only_operators_reach_admin_routes(gw: Gateway, role: Role) -> None:
    caller = await gw.register(role)
    body = {"role": "buyer", "name": "sneaky"}
    assert await _error(caller.post("/v1/admin/participants", json=body)) == (403, "forbidden")
    assert await _error(caller.post(f"/v1/admin/keys/{caller.api_key}/revoke")) == (403, "forbidden")
    assert await _error(caller.post("/v1/admin/participants/1/keys")) == (403, "forbidden")
    assert (await caller.get("/v1/me")).status == 200  # the key itself still works


# -- decoding and error bodies -----------------------------------------------------------------------

async def test_unknown_field_is_422_and_wrong_type_names_the_field(gw: Gateway) -> None:
    status, code = await _error(gw.operator.post("/v1/admin/participants",
                                                 json={"role": "farmer", "name": "a", "extra": 1}))
    assert (status, code) == (422, "invalid")
    reply = await gw.operator.post("/v1/admin/participants", json={"role": "farmer", "name": 7})
    assert reply.status == 422 and "$.name" in reply.json()["message"]
    reply = await gw.operator.post("/v1/admin/participants", json={"role": "pig", "name": "a"})
    assert reply.status == 422 and "$.role" in reply.json()["message"]
    reply = await gw.operator.post("/v1/admin/participants", json={"role": "farmer", "name": ""})
    assert reply.status == 422


async def test_malformed_json_is_400(gw: Gateway) -> None:
    headers = {"Content-Type": "application/json"}
    assert await _error(gw.operator.post("/v1/admin/participants", body=b'{"role": ', headers=headers)) == (
        400, "bad_json")
    assert await _error(gw.client().post("/test/echo", body=b"\xff\xfe", headers=headers)) == (400, "bad_json")


async def test_other_malformed_requests_get_their_codes(gw: Gateway) -> None:
    anonymous = gw.client()
    assert await _error(anonymous.post("/test/echo", body=b'{"n":1}')) == (415, "unsupported_media_type")
    big = b'{"n":1,"pad":"' + b"x" * 5000 + b'"}'
    assert await _error(anonymous.post("/test/echo", body=big, headers={"Content-Type": "application/json"})) == (
        413, "payload_too_large")
    assert await _error(anonymous.get("/healthz", body=b"x")) == (400, "bad_request")
    assert await _error(anonymous.get("/nowhere")) == (404, "not_found")
    reply = await anonymous.request("DELETE", "/healthz")
    assert (reply.status, reply.json()["code"], reply.headers["Allow"]) == (405, "method_not_allowed", "GET")
    assert (await anonymous.get("/test/page?limit=7")).json() == {"limit": 7}
    assert await _error(anonymous.get("/test/page?limit=0")) == (422, "invalid")
    assert await _error(anonymous.get("/test/page?limit=7&spy=1")) == (422, "invalid")
    assert await _error(anonymous.get("/healthz?x=1")) == (422, "invalid")


async def test_unexpected_exception_is_a_bare_500(gw: Gateway) -> None:
    reply = await gw.client().get("/test/boom")
    assert (reply.status, reply.json()) == (500, {"code": "internal_error", "message": "internal error"})
    assert b"secret" not in reply.body and b"Traceback" not in reply.body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=10).map(lambda v: msgspec.json.encode(v))))
async def test_bad_input_never_gets_a_5xx(gw: Gateway, payload: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    reply = await gw.client().post("/test/echo", body=payload, headers=headers)
    assert reply.status in (200, 400, 422), reply.body
    if reply.status != 200:
        assert set(reply.json()) == {"code", "message"}


# -- rate limits ---------------------------------------------------------------------------------------

async def test_rate_limit_answers_429_with_retry_after(database_url: str) -> None:
    config, key, secret = _config(database_url, rate_limit_per_s=0.5, rate_limit_burst=3)
    async with serve(create_app(config)) as url, SignedClient(url, key, secret) as operator:
        assert [(await operator.get("/v1/me")).status for _ in range(3)] == [200, 200, 200]
        reply = await operator.get("/v1/me")
        assert (reply.status, reply.json()["code"]) == (429, "rate_limited")
        assert reply.headers["Retry-After"] == "2"  # one token at 0.5/s
        families = _scrape((await operator.get("/metrics")).body)
        assert families[("hogx_rate_limited_total", ())] == 1.0


# -- metrics and OpenAPI -------------------------------------------------------------------------------

def _scrape(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_parse_and_move_with_requests(gw: Gateway) -> None:
    anonymous = gw.client()
    me_ok = ("hogx_http_requests_total", (("method", "GET"), ("route", "/v1/me"), ("status", "200")))
    bad_sig = ("hogx_auth_failures_total", (("code", "bad_signature"),))
    before = _scrape((await anonymous.get("/metrics")).body)
    for _ in range(3):
        assert (await gw.operator.get("/v1/me")).status == 200
    await gw.client(gw.operator_key, secrets.token_hex(16)).get("/v1/me")
    await anonymous.get("/v1/orders/12345")  # unmatched: counted under one label, not the raw path
    after = _scrape((await anonymous.get("/metrics")).body)
    assert after[me_ok] - before.get(me_ok, 0.0) == 3
    assert after[bad_sig] - before.get(bad_sig, 0.0) == 1
    unmatched = ("hogx_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))
    assert after[unmatched] >= 1
    assert not any("12345" in str(labels) for _, labels in after)
    count_key = ("hogx_http_request_duration_seconds_count", (("method", "GET"), ("route", "/v1/me")))
    assert after[count_key] - before.get(count_key, 0.0) == 4
    assert after[("hogx_db_pool_max_connections", ())] == 4
    assert after[("hogx_db_pool_connections", ())] >= 1
    for name in ("hogx_orders_received_total", "hogx_match_latency_seconds", "hogx_ack_latency_seconds",
                 "hogx_journal_batch_size_commands", "hogx_journal_commit_latency_seconds",
                 "hogx_sequencer_queue_depth", "hogx_book_depth_levels", "hogx_ws_connections",
                 "hogx_ws_slow_consumer_drops_total"):
        assert name in (await anonymous.get("/metrics")).body.decode(), name


async def test_openapi_lists_every_installed_route(gw: Gateway) -> None:
    reply = await gw.client().get("/v1/openapi.json")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    doc = reply.json()
    assert doc["openapi"] == "3.1.0"
    routes = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    installed = {(r.resource.canonical, r.method) for r in gw.app.router.routes()
                 if r.method != "HEAD" and r.resource is not None and r.resource.canonical != "/v1/ws"
                 and r.name not in webapp.ROUTE_NAMES}
    assert routes == installed
    register = doc["paths"]["/v1/admin/participants"]["post"]
    assert register["x-hogx-roles"] == ["operator"]
    assert register["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/RegisterParticipant")
    role_schema = doc["components"]["schemas"]["Role"]
    assert sorted(role_schema["enum"]) == ["buyer", "cooperative", "farmer", "financier", "operator"]
