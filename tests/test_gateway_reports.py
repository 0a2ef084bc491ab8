"""Reports and financing views over HTTP (issue 11, items 6 to 10), against a real server, sequencer
and PostgreSQL: the financing policy is readable, a lender keeps sight of what it financed, collected
interest is the financier's income, and past settlement reports never change."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from gateway.auth import Role
from gateway.client import Reply
from gateway.testing import Exchange, Trader, running_exchange


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.05) as exchange:
            yield exchange
    finally:
        await _test_databases.drop(dsn)


def _ok(reply: Reply, status: int = 200) -> Any:
    assert reply.status == status, (reply.status, reply.body)
    return reply.json()


async def test_the_financing_policy_can_be_read_by_participants_and_set_by_operators(ex: Exchange) -> None:
    financier = await ex.register(Role.FINANCIER, "荣昌农商行")
    farmer = await ex.register(Role.FARMER, "李四")
    assert _ok(await financier.get("/v1/admin/financing-policy")) == {"advance_max_bps": 7000}  # the default
    _ok(await ex.operator.post("/v1/admin/financing-policy", json={"advance_max_bps": 6500}))
    for reader in (ex.operator, financier, farmer):
        assert _ok(await reader.get("/v1/admin/financing-policy")) == {"advance_max_bps": 6500}
    refused = await financier.post("/v1/admin/financing-policy", json={"advance_max_bps": 9000})
    assert (refused.status, refused.json()["code"]) == (403, "forbidden")
    assert _ok(await farmer.get("/v1/admin/financing-policy")) == {"advance_max_bps": 6500}
    paths = _ok(await ex.client().get("/v1/openapi.json"))["paths"]
    assert set(paths["/v1/admin/financing-policy"]) == {"get", "post"}


# -- helpers for trades over HTTP -----------------------------------------------------------------------

_refs = itertools.count(1)
WINDOW_S = 1.0


def _ref(prefix: str) -> str:
    return f"{prefix}-{next(_refs)}-{time.time_ns()}"


def _error(reply: Reply) -> tuple[int, str]:
    body = reply.json()
    assert set(body) == {"code", "message"}, body
    return reply.status, body["code"]


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s")
        await asyncio.sleep(0.05)


async def _market(ex: Exchange) -> str:
    symbol = f"T-REP-{next(_refs)}"
    await ex.list_instrument(symbol, overweight_limit_g=10_000, overweight_discount_fen_per_kg=60,
                             dispute_window_ms=int(WINDOW_S * 1000))
    return symbol


async def _farmer(ex: Exchange, name: str, *, poor_no: str = "") -> Trader:
    bank = f"6217{next(_refs):012d}"
    profile: dict[str, Any] = {"id_number_masked": "5002**********1234", "bank_account": bank}
    if poor_no:
        profile["poor_registration_no"] = poor_no
    farmer = await ex.register(Role.FARMER, name, **profile)
    _ok(await ex.operator.post(f"/v1/admin/participants/{farmer.participant_id}/bank-account/verify",
                               json={"bank_account": bank}))
    if poor_no:
        _ok(await ex.operator.post(f"/v1/admin/participants/{farmer.participant_id}/poor-household",
                                   json={"registration_no": poor_no}))
    return farmer


async def _trade(ex: Exchange, seller: Trader, buyer: Trader, symbol: str, heads: int) -> int:
    """A sell of `heads` at 2800 taken by a buy at 2800: the trade's id."""
    lot_id = await ex.register_lot(seller, symbol, heads=100)
    _ok(await seller.post("/v1/orders", json={"client_order_id": _ref("s"), "instrument": symbol, "side": "sell",
                                              "price_fen": 2800, "quantity_heads": heads, "lot_id": lot_id}), 201)
    report = _ok(await buyer.post("/v1/orders", json={"client_order_id": _ref("b"), "instrument": symbol,
                                                      "side": "buy", "price_fen": 2800, "quantity_heads": heads}), 201)
    [fill] = report["fills"]
    return int(fill["trade_id"])


async def _weigh_in(seller: Trader, trade_id: int, heads: int, grams: int) -> None:
    _ok(await seller.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": heads, "total_weight_g": grams, "quarantine_cert": "渝动检 5001530001",
        "quarantine_checked": True}))


async def _settled(client: Trader, trade_id: int) -> Any:
    async def check() -> Any:
        view = _ok(await client.get(f"/v1/trades/{trade_id}/settlement"))
        return view if view["state"] == "SETTLED" else None

    return await eventually(check)


def _cst_date(ms: int) -> str:
    return (dt.datetime.fromtimestamp(ms / 1000, dt.UTC) + dt.timedelta(hours=8)).date().isoformat()


# -- item 8: a lender keeps sight of what it financed ---------------------------------------------------


async def test_a_lender_sees_the_trades_it_financed_after_the_client_withdraws_consent(ex: Exchange) -> None:
    symbol = await _market(ex)
    fin = await ex.register(Role.FINANCIER, "荣昌农商行")
    await ex.deposit(fin.participant_id, 10_000_000, "financier_funds")
    buyer = await ex.register(Role.BUYER, "借款买家", deposit_fen=0)
    seller = await _farmer(ex, "李四")
    for client in (buyer, seller):
        _ok(await client.post("/v1/consents", json={"financier_id": fin.participant_id}))
    _ok(await fin.post("/v1/credit-lines", json={"buyer_id": buyer.participant_id, "amount_fen": 1_000_000,
                                                 "rate_bps": 500}))
    trade_id = await _trade(ex, seller, buyer, symbol, 2)  # 2 heads held 784,000 against the line
    advance = _ok(await fin.post("/v1/advances", json={"trade_id": trade_id, "amount_fen": 400_000,
                                                       "rate_bps": 600}), 201)
    loan_id = advance["loans"][0]["loan_id"]
    for client in (buyer, seller):
        _ok(await client.post("/v1/consents", json={"financier_id": fin.participant_id, "granted": False}))

    # Consent withdrawn: the lender still sees the trade its line paid for and its advance stands on,
    # with its own loans on it, and nothing else of either side.
    view = _ok(await fin.get(f"/v1/trades/{trade_id}/settlement"))
    assert (view["state"], view["obligation_fen"], view["funded_by_financier_id"], view["advance_loan_id"]) == (
        "OPEN", 784_000, fin.participant_id, loan_id)
    assert (view["fee_fen"], view["payable_fen"], view["principal_repaid_fen"]) == (None, None, None)
    assert [t["trade_id"] for t in _ok(await fin.get("/v1/settlement/trades"))["trades"]] == [trade_id]
    other_fin = await ex.register(Role.FINANCIER)
    assert _error(await other_fin.get(f"/v1/trades/{trade_id}/settlement")) == (404, "unknown_trade")

    # 220 kg x 28.00 = 616,000 (no fee set): the advance is repaid first, the same day without interest.
    await _weigh_in(seller, trade_id, 2, 220_000)
    settled = await _settled(fin, trade_id)
    assert (settled["amount_fen"], settled["funded_by_financier_id"], settled["interest_paid_fen"]) == (
        616_000, fin.participant_id, None)
    date = _cst_date(settled["settled_ms"])
    [row] = _ok(await fin.get(f"/v1/reports/settlement?date={date}"))["rows"]
    assert (row["trade_id"], row["amount_fen"], row["funded_by_financier_id"]) == (
        trade_id, 616_000, fin.participant_id)
    assert (row["seller_poor_household"], row["payable_fen"], row["principal_repaid_fen"]) == (None, None, None)
    assert _ok(await other_fin.get(f"/v1/reports/settlement?date={date}"))["rows"] == []
