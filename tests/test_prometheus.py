"""The monitoring of `deploy/`: promtool checks the Prometheus config and the alert rules and runs their unit
tests; a real Prometheus (Debian's `prometheus`) scrapes a running exchange, every panel of the Grafana
dashboard is queried through its HTTP API, and alerts fire when their condition is made true.

Where the binaries are missing the tests skip saying so; `.ci/run` installs them (as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from gateway.auth import Role
from gateway.testing import Exchange, Trader, running_exchange

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "hogx.json"
_MISSING = "not installed: Debian's `prometheus` package provides it (.ci/run installs it as root when missing)"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} {_MISSING}")
    return path


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_binary("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True,
                          timeout=60, check=False)


def _alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", (PROMETHEUS_DIR / "alerts.yml").read_text(), re.MULTILINE)


def test_promtool_accepts_the_config_and_the_rules() -> None:
    config = _promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(_alert_names())} rules found" in rules.stdout


def test_every_alert_fires_and_does_not_fire_in_the_unit_tests_and_has_a_runbook_line() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    names = _alert_names()
    assert len(names) == len(set(names)) >= 10
    tests = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    runbooks = readme[readme.index("### Alerts and runbooks"):]
    for name in names:
        checks = re.findall(rf"alertname: {name}\n\s+exp_alerts:(.*?)(?=\n\s+- eval_time|\n\n|\Z)", tests, re.DOTALL)
        assert [c.strip() == "[]" for c in checks].count(True) >= 1, f"{name}: no case where it must not fire"
        assert [c.strip() != "[]" for c in checks].count(True) >= 1, f"{name}: no case where it must fire"
        assert f"`{name}`" in runbooks, f"{name}: no runbook line in the README"


# -- a real Prometheus against a running exchange ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    exchange: Exchange
    prometheus_url: str
    session: aiohttp.ClientSession
    stop_exchange: Callable[[], Any]
    halted_symbol: str

    async def query(self, promql: str) -> dict[str, Any]:
        async with self.session.get(f"{self.prometheus_url}/api/v1/query", params={"query": promql}) as r:
            body = await r.json()
        assert body["status"] == "success", (promql, body)
        return dict(body["data"])

    async def eventually(self, promql: str, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """Poll until the query returns at least one series."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = (await self.query(promql))["result"]
            if result:
                return list(result)
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql} returned nothing within {timeout_s} s")
            await asyncio.sleep(0.25)


async def _ok(reply: Any, status: int = 200) -> Any:
    assert reply.status == status, (reply.status, reply.body)
    return reply.json()


async def _farmer(ex: Exchange, name: str, bank: str, poor_no: str = "") -> Trader:
    profile: dict[str, Any] = {"id_number_masked": "5002**********1234", "bank_account": bank}
    if poor_no:
        profile["poor_registration_no"] = poor_no
    farmer = await ex.register(Role.FARMER, name, **profile)
    await _ok(await ex.operator.post(f"/v1/admin/participants/{farmer.participant_id}/bank-account/verify",
                                     json={"bank_account": bank}))
    if poor_no:
        await _ok(await ex.operator.post(f"/v1/admin/participants/{farmer.participant_id}/poor-household",
                                         json={"registration_no": poor_no}))
    return farmer


async def _trade(ex: Exchange, seller: Trader, buyer: Trader, symbol: str, heads: int, ref: str) -> int:
    lot_id = await ex.register_lot(seller, symbol, heads=heads)
    await _ok(await seller.post("/v1/orders", json={"client_order_id": f"s-{ref}", "instrument": symbol,
                                                    "side": "sell", "price_fen": 2800, "quantity_heads": heads,
                                                    "lot_id": lot_id}), 201)
    report = await _ok(await buyer.post("/v1/orders", json={"client_order_id": f"b-{ref}", "instrument": symbol,
                                                            "side": "buy", "price_fen": 2800,
                                                            "quantity_heads": heads}), 201)
    return int(report["fills"][0]["trade_id"])


async def _weigh_in(seller: Trader, trade_id: int, heads: int) -> None:
    await _ok(await seller.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": heads, "total_weight_g": heads * 110_000, "quarantine_cert": "渝动检 5001530001",
        "quarantine_checked": True}))


async def _activity(ex: Exchange) -> str:
    """Something in every figure the dashboard and the alerts read: trades waiting for a weigh-in, for
    settlement and for an operator, a poor household's settled money not yet paid, a rejected order."""
    await ex.list_instrument("PROM-FAST", dispute_window_ms=200)
    await ex.list_instrument("PROM-SLOW")
    await ex.list_instrument("PROM-HALT")
    await ex.deposit(0, 1_000_000, "poverty_subsidy_fund")
    buyer = await ex.register(Role.BUYER, "buyer")
    poor = await _farmer(ex, "张三", "6217000011110042", poor_no="500226-2016-0042")
    farmer = await _farmer(ex, "李四", "6217000011112222")
    settles = await _trade(ex, poor, buyer, "PROM-FAST", 5, "1")
    await _weigh_in(poor, settles, 5)
    await _trade(ex, farmer, buyer, "PROM-SLOW", 2, "2")  # waits for its weigh-in
    waits = await _trade(ex, farmer, buyer, "PROM-SLOW", 2, "3")
    await _weigh_in(farmer, waits, 2)  # waits for its 48 h dispute window
    disputed = await _trade(ex, farmer, buyer, "PROM-SLOW", 2, "4")
    await _weigh_in(farmer, disputed, 2)
    await _ok(await buyer.post(f"/v1/trades/{disputed}/dispute", json={"reason": "两头猪有伤"}))
    off_tick = await buyer.post("/v1/orders", json={"client_order_id": "b-5", "instrument": "PROM-SLOW",
                                                    "side": "buy", "price_fen": 2805, "quantity_heads": 1})
    assert off_tick.status == 422
    return "PROM-HALT"


def _rules_without_waiting(text: str) -> str:
    """The alert rules with every `for` at 0 s, so a test sees a rule fire as soon as its condition holds."""
    return re.sub(r"^(\s+)for: \S+$", r"\1for: 0s", text, flags=re.MULTILINE)


@pytest_asyncio.fixture(scope="module")
async def live(_test_databases: Any) -> AsyncIterator[Live]:
    prometheus = _binary("prometheus")
    dsn = await _test_databases.create(migrated=True)
    work = Path(tempfile.mkdtemp(prefix="hogx-prometheus-"))
    exchange_stack = contextlib.AsyncExitStack()
    process: subprocess.Popen[bytes] | None = None
    try:
        ex = await exchange_stack.enter_async_context(running_exchange(dsn, clock_tick_s=0.1))
        halted = await _activity(ex)
        target = ex.url.removeprefix("http://")
        (work / "alerts.yml").write_text(_rules_without_waiting((PROMETHEUS_DIR / "alerts.yml").read_text()))
        (work / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 1s}\n"
            "rule_files: [alerts.yml]\n"
            f"scrape_configs: [{{job_name: hogx, static_configs: [{{targets: ['{target}']}}]}}]\n")
        port = _free_port()
        process = subprocess.Popen(
            [prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(work / "prometheus.log").open("wb"))
        async with aiohttp.ClientSession() as session:
            live = Live(ex, f"http://127.0.0.1:{port}", session, exchange_stack.aclose, halted)
            deadline = time.monotonic() + 20
            while True:  # Prometheus answering, one scrape in, the poor household's money settled
                with contextlib.suppress(aiohttp.ClientError, AssertionError):
                    if (await live.query('hogx_payable_poor_household_oldest_timestamp_seconds'))["result"]:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("prometheus did not scrape the exchange: "
                                         + (work / "prometheus.log").read_text()[-2000:])
                await asyncio.sleep(0.25)
            yield live
    finally:
        await exchange_stack.aclose()
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
        await _test_databases.drop(dsn)


async def test_prometheus_reads_the_operator_figures_back(live: Live) -> None:
    up = await live.query('up{job="hogx"}')
    assert [float(s["value"][1]) for s in up["result"]] == [1.0]
    expected = {"hogx_ready": 1.0, "hogx_trades_awaiting_weigh_in": 1.0, "hogx_trades_awaiting_settlement": 1.0,
                "hogx_disputes_open": 1.0, 'hogx_payout_queue_payees{priority="poor_household"}': 1.0,
                'hogx_ledger_debits_minus_credits_fen{balance="posted"}': 0.0}
    figures = {name: float((await live.query(name))["result"][0]["value"][1]) for name in expected}
    assert figures == expected
    rejected = await live.query('hogx_orders_rejected_total{reason="price_off_tick"}')
    assert float(rejected["result"][0]["value"][1]) == 1.0


async def test_every_dashboard_panel_queries_metrics_the_exchange_exports(live: Live) -> None:
    async with live.session.get(f"{live.prometheus_url}/api/v1/label/__name__/values") as r:
        exported = set((await r.json())["data"])
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(expressions) >= 20
    for expr in expressions:
        names = set(re.findall(r"\bhogx_[a-z0-9_]+", expr))
        assert names and names <= exported, f"{expr}: {sorted(names - exported)} not exported"
        data = await live.query(expr.replace("$__rate_interval", "15s"))
        assert data["resultType"] in ("vector", "scalar"), (expr, data)
    alert_names = set(re.findall(r"\bhogx_[a-z0-9_]+", (PROMETHEUS_DIR / "alerts.yml").read_text()))
    assert alert_names <= exported, f"alerts read {sorted(alert_names - exported)}, which are not exported"


async def test_alerts_fire_for_a_halted_market_and_a_stopped_exchange(live: Live) -> None:
    assert not (await live.query('ALERTS{alertname="HogxMarketHalted"}'))["result"]
    assert not (await live.query('ALERTS{alertname="HogxExchangeDown"}'))["result"]
    await _ok(await live.exchange.operator.post(f"/v1/instruments/{live.halted_symbol}/halt"))
    firing = await live.eventually('ALERTS{alertname="HogxMarketHalted",alertstate="firing"}')
    assert [s["metric"]["instrument"] for s in firing] == [live.halted_symbol]
    await live.stop_exchange()
    down = await live.eventually('ALERTS{alertname="HogxExchangeDown",alertstate="firing"}')
    assert [s["metric"]["job"] for s in down] == ["hogx"]
