"""Hypothesis drives every operation of `/v1/openapi.json` against a real server: no input may give a 5xx.

A schemathesis-style fuzzer without the dependency: strategies are built from the document's own JSON
schemas (msgspec's subset: `$ref`, `anyOf`, `enum`, bounded integers and strings with patterns, arrays,
objects without additional properties), biased towards values the exchange knows (its instrument, a
real lot, real order ids) so that requests get past validation and into the core, and mixed with
mutations (wrong types, junk fields, raw bytes, a wrong content type, junk path segments). Requests
are signed as a random participant of every role, or sent unsigned.

Every answer must be below 500, carry `{"code", "message"}` when it is an error, and use a status the
document declares for that operation. The server runs in its own thread and event loop, because
Hypothesis drives a synchronous test. `--soak` runs ten times as many examples.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import Role
from gateway.client import Reply, SignedClient
from gateway.testing import Exchange, running_exchange

SYMBOL = "FZ-LH-WSY"
EXAMPLES = 800
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


class ServerThread:
    """The exchange on a real port, in a thread with its own event loop."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.clients: list[SignedClient] = []
        self.by_role: dict[str, SignedClient] = {}
        self.known: dict[str, list[Any]] = {}
        self.doc: dict[str, Any] = {}
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)
        self._thread.start()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with running_exchange(self.dsn, rate_limit_per_s=1e9, rate_limit_burst=10**9) as ex:
                await self._populate(ex)
                self.ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _populate(self, ex: Exchange) -> None:
        await ex.list_instrument(SYMBOL)
        farmer, buyer = await ex.register(Role.FARMER), await ex.register(Role.BUYER)
        others = [await ex.register(role) for role in (Role.COOPERATIVE, Role.FINANCIER)]
        lot_id = await ex.register_lot(farmer, SYMBOL, heads=100_000)
        sell = await farmer.post("/v1/orders", json={"client_order_id": "seed-s", "instrument": SYMBOL,
                                                     "side": "sell", "price_fen": 2850, "quantity_heads": 50,
                                                     "lot_id": lot_id})
        buy = await buyer.post("/v1/orders", json={"client_order_id": "seed-b", "instrument": SYMBOL,
                                                   "side": "buy", "price_fen": 2750, "quantity_heads": 50})
        self.clients = [ex.client(), ex.operator, farmer, buyer, *others]
        self.by_role = {"operator": ex.operator, "farmer": farmer, "buyer": buyer, "cooperative": others[0],
                        "financier": others[1]}
        self.known = {
            "instrument": [SYMBOL], "symbol": [SYMBOL], "lot_id": [lot_id],
            "order_id": [sell.json()["order_id"], buy.json()["order_id"]],
            "participant_id": [farmer.participant_id], "api_key": [others[-1].api_key],
        }
        self.doc = (await ex.client().get("/v1/openapi.json")).json()

    def call(self, client: SignedClient, method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> Reply:
        coro = client.request(method, path, body=body, headers=headers)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


@pytest_asyncio.fixture(scope="module")
async def server(_test_databases: Any) -> AsyncIterator[ServerThread]:
    dsn = await _test_databases.create(migrated=True)
    thread = ServerThread(dsn)
    try:
        await asyncio.to_thread(thread.ready.wait, 60)
        if thread.error is not None:
            raise thread.error
        yield thread
    finally:
        await asyncio.to_thread(thread.close)
        await _test_databases.drop(dsn)


# -- strategies from JSON schemas -----------------------------------------------------------------------


class Schemas:
    def __init__(self, doc: dict[str, Any], known: dict[str, list[Any]]) -> None:
        self.components = doc["components"]["schemas"]
        self.known = known

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def value(self, schema: dict[str, Any], name: str | None = None) -> st.SearchStrategy[Any]:
        """Mostly a value the schema allows (a known one for known names), sometimes any JSON."""
        valid = self._valid(self.resolve(schema), name)
        if name in self.known:
            valid = st.sampled_from(self.known[name]) | valid
        return st.integers(0, 11).flatmap(lambda roll: _JSON if roll == 0 else valid)

    def _valid(self, schema: dict[str, Any], name: str | None) -> st.SearchStrategy[Any]:
        if "anyOf" in schema:
            return st.one_of([self.value(s, name) for s in schema["anyOf"]])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        kind = schema.get("type")
        if kind == "integer":
            low = schema.get("minimum", schema.get("exclusiveMinimum", -(2**63) - 1) + 1)
            high = schema.get("maximum", schema.get("exclusiveMaximum", 2**63) - 1)
            return st.integers(low, high) | st.integers(low - 2, low + 2) | st.integers(high - 2, high + 2)
        if kind == "string":
            return self._string(schema)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            if "prefixItems" in schema:
                return st.tuples(*(self.value(s) for s in schema["prefixItems"])).map(list)
            return st.lists(self.value(schema.get("items", {})), max_size=3)
        if kind == "object":
            return self._object(schema)
        return _JSON

    def _string(self, schema: dict[str, Any]) -> st.SearchStrategy[str]:
        low, high = schema.get("minLength", 0), min(schema.get("maxLength", 60), 60)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: low <= len(s) <= high)
        return st.text(min_size=low, max_size=high)

    def _object(self, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {k: self.value(v, k) for k, v in properties.items() if k in required}
        optional = {k: self.value(v, k) for k, v in properties.items() if k not in required}
        base = st.fixed_dictionaries(fixed, optional=optional)
        junk = st.dictionaries(st.text(min_size=1, max_size=8), _JSON, max_size=2)
        return st.tuples(base, st.integers(0, 9), junk).map(lambda t: {**t[0], **t[2]} if t[1] == 0 else t[0])


# -- one request ----------------------------------------------------------------------------------------


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return sorted((path, method.upper(), op) for path, methods in doc["paths"].items()
                  for method, op in methods.items())


@st.composite
def requests(draw: st.DrawFn, server: ServerThread) -> tuple[str, str, bytes | None, dict[str, str], dict]:
    schemas = Schemas(server.doc, server.known)
    path, method, op = draw(st.sampled_from(_operations(server.doc)))
    query: dict[str, str] = {}
    for param in op.get("parameters", []):
        name, where = param["name"], param["in"]
        if where == "path":
            value = draw(schemas.value(param["schema"], name) | st.text(min_size=1, max_size=20))
            path = path.replace("{" + name + "}", quote(_text(value), safe="") or "x")
        elif param.get("required") or draw(st.booleans()):
            query[name] = _text(draw(schemas.value(param["schema"], name)))
    if draw(st.integers(0, 9)) == 0:
        query[draw(st.text(min_size=1, max_size=6))] = draw(st.text(max_size=6))
    if query:
        path += "?" + urlencode(query)
    headers = {"Content-Type": draw(st.sampled_from(["application/json"] * 9 + ["text/plain"]))}
    body: bytes | None = None
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        shape = draw(st.integers(0, 19))
        body = draw(st.binary(max_size=40)) if shape == 0 else msgspec.json.encode(draw(schemas.value(schema)))
    elif draw(st.integers(0, 19)) == 0:
        body = b'{"unexpected": true}'
    return method, path, body, headers, op


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return msgspec.json.encode(value).decode() if not isinstance(value, int) else str(value)


def _check(reply: Reply, op: dict[str, Any], method: str, path: str) -> None:
    where = f"{method} {path} -> {reply.status} {reply.body[:300]!r}"
    assert reply.status < 500, where
    assert str(reply.status) in op["responses"], f"undocumented status: {where}"
    if reply.status >= 400:
        body = msgspec.json.decode(reply.body)
        assert set(body) == {"code", "message"} and body["code"], where


def test_no_input_gives_a_5xx(server: ServerThread, request: pytest.FixtureRequest) -> None:
    examples = EXAMPLES * (10 if request.config.getoption("--soak") else 1)
    statuses: Counter[int] = Counter()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        method, path, body, headers, op = data.draw(requests(server))
        roles = op.get("x-hogx-roles")
        if roles and data.draw(st.integers(0, 9)) < 8:  # mostly someone allowed in, to reach the handler
            client = server.by_role[data.draw(st.sampled_from(roles))]
        else:
            client = data.draw(st.sampled_from(server.clients))
        reply = server.call(client, method, path, body, headers)
        statuses[reply.status] += 1
        _check(reply, op, method, path)

    fuzz()
    # The fuzzer must reach the handlers, not only bounce off authentication and validation.
    assert sum(n for s, n in statuses.items() if s < 300) > examples // 20, statuses
    assert statuses[422] and statuses[401] and statuses[403], statuses

