"""Gateway parts without a server: signing, replay guard, token buckets, config, route registry, OpenAPI,
plain metrics."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import OPERATORS, PUBLIC, SELLERS
from gateway.config import ConfigError, GatewayConfig
from gateway.metrics import PlainCounter, PlainHistogram
from gateway.openapi import build_openapi
from gateway.ratelimit import TokenBuckets
from gateway.routes import Call, RouteTable
from gateway.signing import ReplayGuard, sign, signature_bytes


def test_sign_matches_an_independent_hmac() -> None:
    # Reference computed with: printf '%s' '1700000000000POST/v1/orders?x=1{"a":1}' |
    #   openssl dgst -sha256 -hmac 'secret-0123456789'
    expected = "63890a0e82757dc7833ed3971f80ae403c3214244a194b5e16266b702c4e1396"
    assert sign("secret-0123456789", 1700000000000, "post", "/v1/orders?x=1", b'{"a":1}') == expected


def test_signature_bytes_rejects_non_hex_and_wrong_length() -> None:
    assert signature_bytes("ab" * 32) == bytes([0xAB]) * 32
    assert signature_bytes("ab" * 31) is None
    assert signature_bytes("zz" * 32) is None
    assert signature_bytes("é" * 64) is None


def test_replay_guard_rejects_a_repeat_inside_the_window_only() -> None:
    guard = ReplayGuard(window_ms=5_000, capacity=10)
    sig = b"s" * 32
    assert guard.check_and_remember(sig, ts_ms=1_000, now_ms=1_000) is True
    assert guard.check_and_remember(sig, ts_ms=1_000, now_ms=5_999) is False
    assert guard.check_and_remember(sig, ts_ms=1_000, now_ms=6_000) is False  # expiry is inclusive
    # After ts + window the timestamp check refuses the request anyway, so the guard may forget it.
    assert guard.check_and_remember(b"t" * 32, ts_ms=6_001, now_ms=6_001) is True
    assert len(guard) == 1


def test_replay_guard_is_bounded_and_refuses_rather_than_forgets() -> None:
    guard = ReplayGuard(window_ms=5_000, capacity=3)
    for i in range(3):
        assert guard.check_and_remember(bytes([i]) * 32, ts_ms=0, now_ms=0) is True
    assert guard.check_and_remember(b"x" * 32, ts_ms=0, now_ms=10) is None
    assert guard.check_and_remember(bytes([0]) * 32, ts_ms=0, now_ms=10) is False  # still remembered
    assert guard.check_and_remember(b"x" * 32, ts_ms=5_001, now_ms=5_001) is True  # old ones expired
    assert len(guard) == 1


def test_token_bucket_allows_burst_then_reports_exact_wait() -> None:
    now = [100.0]
    buckets = TokenBuckets(rate_per_s=2.0, burst=3, clock_s=lambda: now[0])
    assert [buckets.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k") == pytest.approx(0.5)
    assert buckets.take("other") == 0.0  # buckets are per key
    now[0] += 0.5
    assert buckets.take("k") == 0.0
    assert buckets.take("k") == pytest.approx(0.5)
    assert TokenBuckets.retry_after_s(0.5) == 1
    assert TokenBuckets.retry_after_s(2.01) == 3


def test_token_buckets_forget_idle_keys_when_full() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate_per_s=1.0, burst=1, clock_s=lambda: now[0], max_keys=2)
    buckets.take("a")
    buckets.take("b")
    now[0] += 10.0  # both refilled: idle
    assert buckets.take("c") == 0.0
    assert len(buckets._buckets) == 1


def test_config_from_env_converts_and_overrides() -> None:
    env = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "HOGX_PORT": "9001", "HOGX_RATE_LIMIT_PER_S": "2.5",
           "HOGX_OPERATOR_KEY": "operator_1", "HOGX_OPERATOR_SECRET": "s" * 32, "HOGX_HOST": ""}
    config = GatewayConfig.from_env(env, host="0.0.0.0", port=None)
    assert (config.port, config.rate_limit_per_s, config.host) == (9001, 2.5, "0.0.0.0")
    assert config.operator_key == "operator_1"
    assert GatewayConfig.from_env({}).database_url is None


@pytest.mark.parametrize("env", [
    {"HOGX_PORT": "eighty"},
    {"HOGX_OPERATOR_KEY": "operator_1"},  # secret missing
    {"HOGX_OPERATOR_KEY": "op", "HOGX_OPERATOR_SECRET": "s" * 32},  # key too short
    {"HOGX_OPERATOR_KEY": "operator_1", "HOGX_OPERATOR_SECRET": "short"},
    {"HOGX_RATE_LIMIT_BURST": "0"},
])
def test_config_rejects_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        GatewayConfig.from_env(env)


class _Loose(msgspec.Struct):
    a: int


class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    a: int


class _ItemPath(msgspec.Struct, forbid_unknown_fields=True):
    item_id: int


class _ListQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    cursor: str | None = None


def test_route_table_refuses_structs_that_accept_unknown_fields() -> None:
    table = RouteTable()
    with pytest.raises(TypeError, match="forbid_unknown_fields"):
        table.post("/x", roles=PUBLIC, body=_Loose)(_handler)


def test_route_table_refuses_params_that_do_not_match_the_path() -> None:
    table = RouteTable()
    with pytest.raises(TypeError, match="do not match"):
        table.get("/items/{other_id}", roles=PUBLIC, params=_ItemPath)(_handler)


async def _handler(call: Call, **_: object) -> None:
    """A handler used only for declarations."""


def test_openapi_documents_every_route_from_its_structs() -> None:
    table = RouteTable()
    table.post("/v1/items", roles=SELLERS, body=_Strict, response=_Strict, status=201)(_handler)
    table.get("/v1/items/{item_id}", roles=OPERATORS, params=_ItemPath, response=list[_Strict])(_handler)
    table.get("/v1/items", roles=PUBLIC, query=_ListQuery, response=list[_Strict])(_handler)
    doc = msgspec.json.decode(msgspec.json.encode(build_openapi(table, title="t", version="1")))
    post = doc["paths"]["/v1/items"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/_Strict"}
    assert post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/_Strict")
    assert post["x-hogx-roles"] == ["cooperative", "farmer"]
    assert {"401", "403", "413", "415", "422", "429"} <= post["responses"].keys()
    get_one = doc["paths"]["/v1/items/{item_id}"]["get"]
    assert get_one["parameters"] == [{"name": "item_id", "in": "path", "required": True,
                                      "schema": {"type": "integer"}}]
    listing = doc["paths"]["/v1/items"]["get"]
    assert "security" not in listing
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["required"] is False
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    assert doc["components"]["schemas"]["_Strict"]["required"] == ["a"]


def test_client_moves_only_exact_repeats_to_the_next_millisecond() -> None:
    from gateway.client import SignedClient

    client = SignedClient("http://127.0.0.1:1", "key_0001", "s" * 32, clock_ms=lambda: 1_000)
    first = client._unique_signature("s" * 32, "GET", "/v1/me", b"")
    repeat = client._unique_signature("s" * 32, "GET", "/v1/me", b"")
    other = client._unique_signature("s" * 32, "GET", "/v1/me?x=1", b"")
    assert (first[0], repeat[0], other[0]) == (1_000, 1_001, 1_000)
    assert repeat[1] == sign("s" * 32, 1_001, "GET", "/v1/me")


# -- plain metrics --------------------------------------------------------------------------------------


def _exposed(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if not s.name.endswith("_created")}


@given(st.lists(st.tuples(st.sampled_from(["http", "ws"]),
                          st.one_of(st.sampled_from([0.0, 0.0005, 0.001, 5.0]),
                                    st.floats(0, 10, allow_nan=False))), max_size=50))
@settings(max_examples=50, deadline=None)
def test_plain_metrics_expose_what_prometheus_client_would(observations: list[tuple[str, float]]) -> None:
    """Same names, labels, cumulative buckets (a value on a bound counts in it), counts and sums."""
    buckets = (0.0005, 0.001, 0.0025, 5.0)
    plain_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    plain = PlainHistogram("t_latency_seconds", "doc", ["transport"], buckets, plain_registry)
    reference = Histogram("t_latency_seconds", "doc", ["transport"], buckets=buckets, registry=reference_registry)
    plain_count = PlainCounter("t_orders_total", "doc", ["transport"], plain_registry)
    reference_count = Counter("t_orders_total", "doc", ["transport"], registry=reference_registry)
    for transport, value in observations:
        plain.labels(transport).observe(value)
        reference.labels(transport).observe(value)
        plain_count.labels(transport).inc()
        reference_count.labels(transport).inc()
    assert _exposed(plain_registry) == pytest.approx(_exposed(reference_registry))
