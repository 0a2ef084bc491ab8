"""The operator's gauges (`gateway.opsmetrics`): exact figures after a known scenario on the exchange as it
runs (the core with its clearing, at a controlled exchange time), the same figures from a fresh index, from a
core restored from a snapshot, and over HTTP from a running exchange's `/metrics`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from exchange.commands import (
    BankConfirmation,
    FundsAccount,
    GrantAdvance,
    ImportBankConfirmations,
    MarkPayoutsSent,
    OpenDispute,
    ReturnPayout,
    RunPayouts,
)
from exchange.events import AdvanceGranted, PayoutChanged
from gateway import opsmetrics
from gateway.auth import Role
from gateway.config import ConfigError, GatewayConfig
from gateway.opsmetrics import CoreGauges
from gateway.testing import running_exchange
from tests.settlement_support import BUYER, FARMER, FINANCIER, HOUR_NS, OPERATOR, POOR_FARMER, SECOND_NS, T0, world

WINDOW_NS = 48 * HOUR_NS


def figures(gauges: CoreGauges, core: Any) -> dict[str, float]:
    """`name{label=value,...}` -> value, for every sample the gauges export."""
    out: dict[str, float] = {}
    for family in gauges.collect(core):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_exact_figures_through_trades_settlement_advances_and_payouts() -> None:
    x = world()
    gauges = CoreGauges(ttl_s=0)  # every collect walks: the test follows the state command by command
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.deposit(BUYER, 10_000_000)
    x.deposit(0, 1_000_000, FundsAccount.POVERTY_SUBSIDY_FUND)
    first = figures(gauges, x.core)  # the index is built here, before anything trades
    assert (first["hogx_trades_awaiting_weigh_in"], first["hogx_escrow_obligations_fen"],
            first["hogx_subsidy_fund_fen"]) == (0, 0, 1_000_000)
    assert "hogx_trades_awaiting_weigh_in_oldest_timestamp_seconds" not in first  # none: no sample at all

    # 10 heads at 28.00 from the farmer: 10 x ceil(140 kg x 2800) = 3,920,000 in escrow; an advance of
    # 2,000,000 against it goes to the farmer's payable at once.
    trade = x.trade(BUYER, FARMER, 2800, 10)
    x.consent(FARMER, FINANCIER)
    loan_id = x.of(AdvanceGranted, x.ok(GrantAdvance(FINANCIER, 0, trade.trade_id, 2_000_000, 0)))[0].loan_id
    f = figures(gauges, x.core)
    assert (f["hogx_escrow_obligations_fen"], f["hogx_trades_awaiting_weigh_in"],
            f["hogx_trades_awaiting_weigh_in_oldest_timestamp_seconds"]) == (3_920_000, 1, T0 / SECOND_NS)
    assert (f["hogx_loans_outstanding{kind=advance}"], f["hogx_loans_outstanding_fen{kind=advance}"],
            f["hogx_loans_overdue"]) == (1, 2_000_000, 0)
    assert (f["hogx_payout_queue_payees{priority=other}"], f["hogx_payout_queue_fen{priority=other}"],
            f["hogx_payout_queue_payees{priority=poor_household}"]) == (1, 2_000_000, 0)

    # Weigh-in an hour later: 5 heads, 550 kg -> 1,540,000 into the receivable, the rest back to the buyer.
    x.advance(HOUR_NS)
    x.weigh_in(trade.trade_id, 5, 550_000)
    f = figures(gauges, x.core)
    assert (f["hogx_escrow_obligations_fen"], f["hogx_seller_receivables_fen"], f["hogx_trades_awaiting_weigh_in"],
            f["hogx_trades_awaiting_settlement"]) == (0, 1_540_000, 0, 1)
    assert (f["hogx_trades_awaiting_settlement_oldest_timestamp_seconds"],
            f["hogx_trades_awaiting_settlement_oldest_deadline_timestamp_seconds"]) == (
        (T0 + HOUR_NS) / SECOND_NS, (T0 + HOUR_NS + WINDOW_NS) / SECOND_NS)

    # The window closes: fee 7,700, 1,532,300 repays the advance, 467,700 of it is left: overdue.
    x.tick(WINDOW_NS)
    f = figures(gauges, x.core)
    assert (f["hogx_seller_receivables_fen"], f["hogx_trades_awaiting_settlement"], f["hogx_loans_overdue"],
            f["hogx_loans_overdue_fen"], f["hogx_loans_outstanding_fen{kind=advance}"]) == (
        0, 0, 1, 467_700, 467_700)
    assert x.clearing.loans[loan_id].principal_fen == 467_700

    # A poor household's 5 heads (560 kg: 1,568,000); its fee of 7,840 is the subsidy fund's.
    poor_trade = x.trade(BUYER, POOR_FARMER, 2800, 5)
    x.weigh_in(poor_trade.trade_id, 5, 560_000)
    x.tick(WINDOW_NS)
    settled_s = x.ts_ns / SECOND_NS
    # A dispute on a third trade, and a resting buy holding 3 x ceil(140 kg x 2700) = 1,134,000.
    disputed = x.trade(BUYER, FARMER, 2800, 2)
    x.advance(HOUR_NS)
    x.weigh_in(disputed.trade_id, 2, 220_000)
    x.ok(OpenDispute(BUYER, 0, disputed.trade_id, "两头猪有伤"))
    x.buy(BUYER, 2700, 3)
    f = figures(gauges, x.core)
    assert (f["hogx_subsidy_fund_fen"], f["hogx_fees_subsidised_fen_total"], f["hogx_fees_forgone_fen_total"]) == (
        1_000_000 - 7_840, 7_840, 0)
    assert (f["hogx_payout_queue_payees{priority=poor_household}"], f["hogx_payout_queue_fen{priority=poor_household}"],
            f["hogx_payable_poor_household_oldest_timestamp_seconds"]) == (1, 1_568_000, settled_s)
    assert (f["hogx_disputes_open"], f["hogx_disputes_open_oldest_timestamp_seconds"],
            f["hogx_seller_receivables_fen"]) == (1, x.ts_ns / SECOND_NS, 616_000)
    assert f["hogx_escrow_holds_fen"] == 1_134_000
    assert f["hogx_payables_fen"] == 2_000_000 + 1_568_000

    # A payout run (the poor household first), a bank file, the bank pays one and refuses the other.
    payouts = x.of(PayoutChanged, x.ok(RunPayouts(OPERATOR, 0, "run-1")))
    assert [(p.payee_id, p.amount_fen) for p in payouts] == [(POOR_FARMER, 1_568_000), (FARMER, 2_000_000)]
    poor_payout, farmer_payout = (p.payout_id for p in payouts)
    f = figures(gauges, x.core)
    assert (f["hogx_payouts{state=pending}"], f["hogx_payouts_fen{state=pending}"],
            f["hogx_payout_queue_payees{priority=poor_household}"], f["hogx_payout_queue_payees{priority=other}"],
            f["hogx_payable_poor_household_oldest_timestamp_seconds"]) == (2, 3_568_000, 0, 0, settled_s)
    x.ok(MarkPayoutsSent(OPERATOR, 0, "file-1", ((poor_payout, 1), (farmer_payout, 1))))
    assert figures(gauges, x.core)["hogx_payouts{state=sent}"] == 2
    x.ok(ImportBankConfirmations(OPERATOR, 0, "conf-1", (
        BankConfirmation(poor_payout, 1, True, "ICBC-1"),
        BankConfirmation(farmer_payout, 1, False, "ICBC-2", "frozen"))))
    f = figures(gauges, x.core)
    assert (f["hogx_payouts{state=sent}"], f["hogx_payouts{state=failed}"], f["hogx_payouts_fen{state=failed}"],
            f["hogx_payouts_confirmed_total"], f["hogx_payouts_returned_total"]) == (0, 1, 2_000_000, 1, 0)
    assert "hogx_payable_poor_household_oldest_timestamp_seconds" not in f  # the poor household was paid
    x.ok(ReturnPayout(OPERATOR, 0, farmer_payout))
    f = figures(gauges, x.core)
    assert (f["hogx_payouts{state=failed}"], f["hogx_payouts_returned_total"],
            f["hogx_payout_queue_fen{priority=other}"], f["hogx_payables_fen"]) == (0, 1, 2_000_000, 2_000_000)
    assert (f["hogx_ledger_debits_minus_credits_fen{balance=posted}"],
            f["hogx_ledger_debits_minus_credits_fen{balance=pending}"]) == (0, 0)
    assert f["hogx_market_halted{instrument=RC-LH-WSY}"] == 0

    # Counted once: a fresh index (one walk of the history) and a restored core give the same figures.
    assert figures(CoreGauges(), x.core) == f
    x.restore_from_snapshot()
    assert figures(gauges, x.core) == f


async def test_metrics_endpoint_has_the_operator_gauges_and_no_created_series(fresh_database_url: Any) -> None:
    dsn = await fresh_database_url()
    async with running_exchange(dsn) as ex:
        await ex.list_instrument("OPS-1")
        buyer = await ex.register(Role.BUYER, deposit_fen=5_000_000)
        reply = await buyer.post("/v1/orders", json={"client_order_id": "ops-1", "instrument": "OPS-1", "side": "buy",
                                                     "price_fen": 2800, "quantity_heads": 2})
        assert reply.status == 201, reply.body
        assert (await ex.operator.post("/v1/instruments/OPS-1/halt")).status == 200
        text = (await ex.client().get("/metrics")).body.decode()
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert "_created" not in text
    assert (lines["hogx_ready"], lines["hogx_escrow_holds_fen"], lines['hogx_market_halted{instrument="OPS-1"}'],
            lines["hogx_sequencer_queue_capacity"]) == ("1.0", "784000.0", "1.0", "50000.0")
    assert lines["hogx_ledger_debits_minus_credits_fen{balance=\"posted\"}"] == "0.0"
    build = next(k for k in lines if k.startswith("hogx_build_info{"))
    assert 'compiled="' in build and lines[build] == "1.0"
    assert float(lines["hogx_recovery_duration_seconds"]) > 0


async def test_the_newest_snapshot_seq_and_size_are_read_from_the_database(
        fresh_database_url: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opsmetrics, "_SNAPSHOT_POLL_S", 0.05)  # poll often: the test waits for a snapshot
    dsn = await fresh_database_url()
    async with running_exchange(dsn, snapshot_every=5) as ex:
        assert "hogx_snapshot_seq" not in (await ex.client().get("/metrics")).body.decode()  # none yet
        for n in range(3):
            await ex.list_instrument(f"SNAP-{n}")
        await ex.register(Role.BUYER)
        deadline = time.monotonic() + 10
        while True:
            text = (await ex.client().get("/metrics")).body.decode()
            lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
            if "hogx_snapshot_seq" in lines:
                break
            assert time.monotonic() < deadline, "no snapshot within 10 s"
            await asyncio.sleep(0.05)
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT seq, octet_length(state) + coalesce(octet_length(client_orders), 0) AS size"
                                  " FROM snapshots WHERE seq = $1", int(float(lines["hogx_snapshot_seq"])))
    finally:
        await conn.close()
    assert row is not None and row["seq"] >= 5
    assert float(lines["hogx_snapshot_size_bytes"]) == row["size"] > 0


def test_scrapes_inside_the_ttl_walk_the_core_once() -> None:
    x = world()
    now = [100.0]
    gauges = CoreGauges(clock=lambda: now[0])
    x.deposit(BUYER, 10_000_000)
    first = figures(gauges, x.core)
    x.deposit(BUYER, 1_000)  # moves nothing the gauges show, but a walk would see the ledger anew
    now[0] += 0.999
    assert figures(gauges, x.core) == first and gauges.walks == 1  # the burst costs one walk
    now[0] += 0.001
    figures(gauges, x.core)
    assert gauges.walks == 2  # 1 s after the walk the figures are read again
    x.restore_from_snapshot()  # a recovered core is never served the old core's figures
    figures(gauges, x.core)
    assert gauges.walks == 3


async def test_metrics_need_the_bearer_token_when_one_is_set(fresh_database_url: Any) -> None:
    dsn = await fresh_database_url()
    token = "t0ken-" + "x" * 20
    async with running_exchange(dsn, metrics_token=token) as ex:
        url = ex.url + "/metrics"
        for headers in ({}, {"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"}, {"Authorization": token}):
            async with ex.session.get(url, headers=headers) as reply:
                assert reply.status == 401
                body = await reply.json()
                assert body == {"code": "bad_token",
                                "message": "GET /metrics needs Authorization: Bearer <HOGX_METRICS_TOKEN>"}
        async with ex.session.get(url, headers={"Authorization": f"Bearer {token}"}) as reply:
            assert reply.status == 200
            text = await reply.text()
    assert "hogx_escrow_obligations_fen" in text and "hogx_metrics_core_walks_total 1.0" in text
    async with running_exchange(dsn) as ex, ex.session.get(ex.url + "/metrics") as reply:
        assert reply.status == 200  # no token configured: open, as before


def test_a_metrics_token_too_short_is_refused() -> None:
    with pytest.raises(ConfigError, match="HOGX_METRICS_TOKEN"):
        GatewayConfig.from_env({"HOGX_METRICS_TOKEN": "short"})
    assert GatewayConfig.from_env({"HOGX_METRICS_TOKEN": "a" * 16}).metrics_token == "a" * 16
