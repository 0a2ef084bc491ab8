"""Run a gateway on a real loopback socket for tests and benchmarks.

- `async with serve(app) as url`: any application on a free port.
- `async with running_exchange(database_url) as ex`: the whole exchange (sequencer, read model,
  routes) with a bootstrap operator; `await ex.register(Role.BUYER)` gives a signed client of a new
  participant (a buyer with `BUYER_DEPOSIT_FEN` of confirmed cash, so its bids are covered),
  `await ex.list_instrument("RC-LH-WSY")` lists a finishing-hog instrument (reference ¥28.00/kg,
  tick 10 fen, ±4 %).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.auth import Role
from gateway.client import Reply, SignedClient
from gateway.config import DEMO_PAYER, GatewayConfig
from gateway.routes import RouteTable
from gateway.server import Runner

__all__ = [
    "BUYER_DEPOSIT_FEN", "LOT_CERT", "Exchange", "Trader", "error_code", "hog_instrument", "ok", "running_exchange",
    "serve",
]

# The quarantine certificate of every lot `register_lot` makes: a weigh-in must name it (issue 11 item 11).
LOT_CERT = "渝动检 5001530001"
BUYER_DEPOSIT_FEN = 10**12  # ¥10bn: covers any bid a test makes, yet a bid beyond it is refused


def ok(reply: Reply, status: int = 200) -> Any:
    """The decoded body of a reply that must have `status`; otherwise fail with what came instead."""
    assert reply.status == status, (reply.status, reply.body)
    return reply.json()


def error_code(reply: Reply) -> tuple[int, str]:
    """(status, code) of an error reply, which must have exactly the `{code, message}` shape."""
    body = reply.json()
    assert set(body) == {"code", "message"}, body
    return reply.status, body["code"]


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0,
                shutdown_timeout_s: float = 5.0) -> AsyncIterator[str]:
    """Start `app` on `host:port` (0: a free port) and yield its base URL; clean up on exit."""
    runner = Runner(app, shutdown_timeout=shutdown_timeout_s, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()

_PAYER_FIELDS = ("payer_name", "payer_account", "payer_bank_code", "payer_branch_code")


def hog_instrument(symbol: str, **overrides: Any) -> dict[str, Any]:
    """The JSON of a finishing-hog instrument at Rongchang (fen per kg live weight)."""
    body: dict[str, Any] = {
        "symbol": symbol, "product_class": "finishing_hog", "breed_class": "wai_san_yuan",
        "delivery_point": "Rongchang, Chongqing", "lot_avg_min_g": 100_000, "lot_avg_max_g": 120_000,
        "animal_min_g": 90_000, "animal_max_g": 140_000, "tick_fen": 10, "min_order_heads": 1,
        "max_order_heads": 500, "price_band_bps": 400, "reference_price_fen": 2800,
    }
    body.update(overrides)
    return body


class Trader(SignedClient):
    """A signed client that knows its participant id and role."""

    participant_id: int = 0
    role: Role = Role.BUYER


@dataclass
class Exchange:
    app: web.Application
    url: str
    session: aiohttp.ClientSession
    operator: SignedClient
    traders: list[Trader] = field(default_factory=list)

    def client(self, key: str | None = None, secret: str | None = None) -> SignedClient:
        return SignedClient(self.url, key, secret, session=self.session)

    async def register(self, role: Role, name: str = "test participant", *, deposit_fen: int | None = None,
                       **profile: Any) -> Trader:
        """A new participant (settlement `profile` fields as the admin route takes them); buyers get
        `BUYER_DEPOSIT_FEN` of cash unless `deposit_fen` says otherwise (0: none)."""
        reply = await self.operator.post("/v1/admin/participants",
                                         json={"role": role.value, "name": name, **profile})
        if reply.status != 201:
            raise RuntimeError(f"registration failed: {reply.status} {reply.body!r}")
        issued = reply.json()
        trader = Trader(self.url, issued["api_key"], issued["api_secret"], session=self.session)
        trader.participant_id, trader.role = issued["participant_id"], role
        self.traders.append(trader)
        if deposit_fen is None and role == Role.BUYER:
            deposit_fen = BUYER_DEPOSIT_FEN
        if deposit_fen:
            await self.deposit(trader.participant_id, deposit_fen)
        return trader

    async def deposit(self, owner_id: int, amount_fen: int, account: str = "trading_cash",
                      deposit_ref: str | None = None) -> dict[str, Any]:
        """Confirm a deposit as the operator (owner 0 with account poverty_subsidy_fund: the subsidy fund)."""
        body = {"deposit_ref": deposit_ref or f"test-deposit-{secrets.token_hex(8)}", "owner_id": owner_id,
                "account": account, "amount_fen": amount_fen}
        reply = await self.operator.post("/v1/deposits", json=body)
        if reply.status != 201:
            raise RuntimeError(f"deposit failed: {reply.status} {reply.body!r}")
        return reply.json()

    async def list_instrument(self, symbol: str, **overrides: Any) -> dict[str, Any]:
        reply = await self.operator.post("/v1/instruments", json=hog_instrument(symbol, **overrides))
        if reply.status != 201:
            raise RuntimeError(f"listing failed: {reply.status} {reply.body!r}")
        return reply.json()

    async def register_lot(self, seller: Trader, instrument: str, heads: int = 100,
                           avg_weight_g: int = 110_000) -> int:
        reply = await seller.post("/v1/lots", json={
            "instrument": instrument, "heads": heads, "avg_weight_g": avg_weight_g,
            "origin": "荣昌区, 重庆", "quarantine_cert": LOT_CERT})
        if reply.status != 201:
            raise RuntimeError(f"lot registration failed: {reply.status} {reply.body!r}")
        return int(reply.json()["lot_id"])


@contextlib.asynccontextmanager
async def running_exchange(database_url: str, *, extra_routes: Iterable[RouteTable] = (),
                           **overrides: Any) -> AsyncIterator[Exchange]:
    """The gateway with its sequencer on `database_url` (migrated), a bootstrap operator, a session;
    `overrides` are `GatewayConfig` fields."""
    from gateway.app import create_app  # here: the app imports this module's neighbours

    key, secret = f"op_{secrets.token_hex(8)}", secrets.token_hex(16)
    # Every test client shares 127.0.0.1: the per-address limit on failed authentications would let
    # one test's deliberate failures refuse the next test's requests (a test of that limit sets it).
    # A test market's settlement account for payout files (a real one has no default: config.DEMO_PAYER's
    # figures, which tests of the file's bytes expect); a test of the refusal sets payer_account="".
    settings: dict[str, Any] = {"db_pool_min": 1, "db_pool_max": 4, "clock_tick_s": 0.0,
                                "auth_failure_burst": 1_000_000, **dict(zip(_PAYER_FIELDS, DEMO_PAYER, strict=True))}
    session_policy = overrides.pop("session_policy", None)  # the web app's sign-in rules (gateway.sessions)
    settings.update(overrides)
    config = GatewayConfig(database_url=database_url, operator_key=key, operator_secret=secret, **settings)
    app = create_app(config, extra_routes=extra_routes, session_policy=session_policy)
    # The session outlives the server, so a test can watch in-flight requests during shutdown.
    async with aiohttp.ClientSession() as session, serve(app) as url:
        yield Exchange(app, url, session, SignedClient(url, key, secret, session=session))
