"""`hogx simulate` against a real server: a short run bounded by its request budget, whose summary must
agree with what the exchange recorded (trades, heads, weigh-ins, disputes, advances, deposits, payouts,
orders and rejects), and the command line's checks."""

from __future__ import annotations

import io
import socket
from typing import Any

import pytest

from exchange.events import LoanKind, PayoutState
from exchange.settlement.model import TradeState
from gateway import cli, simulate
from gateway.exchange_port import EXCHANGE
from gateway.state import METRICS
from gateway.testing import running_exchange


def _counter_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


async def test_a_short_simulation_agrees_with_the_exchange(fresh_database_url: Any) -> None:
    dsn = await fresh_database_url()
    async with running_exchange(dsn, clock_tick_s=0.05) as ex:
        await ex.list_instrument("SIM-LH-WSY", dispute_window_ms=300, quarantine_region="cn")  # as the demo market
        await ex.list_instrument("SIM-LH-NSY", breed_class="nei_san_yuan", dispute_window_ms=300,
                                 reference_price_fen=2700)
        out = io.StringIO()
        options = simulate.Options(ex.url, ex.operator.api_key or "", ex.operator.api_secret or "", farmers=4,
                                   buyers=3, minutes=1.0, speed=100.0, seed=7, max_requests=400, progress=None)
        summary = await simulate.run(options, out)
        clearing = ex.app[EXCHANGE].sequencer.core.clearing
        metrics = ex.app[METRICS].render().decode()
    assert clearing is not None
    # Bounded by the budget, not by time: a step begun inside the budget finishes its few calls.
    assert 400 <= summary.requests <= 405, out.getvalue()
    trades = list(clearing.trades.values())
    assert summary.trades == len(trades) > 0
    assert summary.heads == sum(t.heads for t in trades)
    assert summary.weigh_ins == sum(t.state != TradeState.OPEN for t in trades) > 0
    # the simulated sellers' certificates pass a Chinese-certificate instrument, lots and weigh-ins alike
    assert any(t.instrument == "SIM-LH-WSY" and t.state != TradeState.OPEN for t in trades)
    assert not {"invalid_quarantine_cert", "quarantine_cert_mismatch"} & set(summary.other_refusals)
    assert summary.disputes == sum(t.disputed_by != 0 for t in trades)
    assert summary.delivery_rejections == sum(t.state == TradeState.REJECTED for t in trades)
    assert summary.value_fen == sum(t.amount_fen for t in trades)
    assert summary.advances == sum(loan.kind == LoanKind.ADVANCE for loan in clearing.loans.values())
    assert summary.deposits == len(clearing.deposits)
    payouts = list(clearing.payouts.values())
    confirmed = [p for p in payouts if p.state == PayoutState.CONFIRMED]
    assert (summary.payouts_confirmed, summary.payouts_confirmed_fen) == (
        len(confirmed), sum(p.amount_fen for p in confirmed))
    assert summary.payouts_confirmed > 0
    # every failure the bank answered: the retried ones (attempt - 1) and those not retried yet
    assert summary.payouts_failed == sum(p.attempt - 1 for p in payouts) + sum(
        p.state == PayoutState.FAILED for p in payouts)
    assert summary.payout_runs >= 1 and summary.weigh_ins_outside_band <= summary.weigh_ins
    assert summary.auctions >= 1  # the first started at round 20, uncrossed at round 28
    assert summary.orders == _counter_sum(metrics, "hogx_orders_received_total")
    assert sum(summary.order_rejects.values()) == _counter_sum(metrics, "hogx_orders_rejected_total")
    text = out.getvalue()
    assert text.startswith("simulation summary") and f"trades {summary.trades}, heads {summary.heads}" in text
    assert "rejects by reason:" in text


def test_the_command_line_refuses_what_it_cannot_run(capsys: Any) -> None:
    assert cli.main(["simulate", "--operator-key", "", "--operator-secret", ""]) == 2
    assert "HOGX_OPERATOR_KEY" in capsys.readouterr().err
    for bad in (["--farmers", "0"], ["--minutes", "100000"], ["--speed", "-1"]):
        try:
            cli.main(["simulate", *bad])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"{bad} accepted")


async def test_waiting_for_a_gateway_that_never_gets_ready_is_an_error() -> None:
    with socket.socket() as probe:  # a port nothing listens on: every readiness try is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RuntimeError, match=rf"gateway at http://127.0.0.1:{port} was not ready after 3 tries"):
        await simulate.wait_ready(f"http://127.0.0.1:{port}", tries=3, interval_s=0.01)
