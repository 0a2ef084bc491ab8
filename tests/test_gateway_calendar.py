"""The trading day over real HTTP: a listing's session, halts with a reason, DAY orders, and the
operator's non-trading days (`/v1/admin/calendar`). The transitions themselves (opening uncross, close,
DAY expiry) are exercised on the core in tests/test_calendar.py; here the exchange runs on the wall
clock, so the session is chosen to be in pre-open now (all day but the last minute, every weekday)."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest

from exchange.calendar import CST_OFFSET_NS
from gateway.auth import Role
from gateway.testing import Exchange

ALL_DAY_PRE_OPEN = {"pre_open": "00:00", "open": "23:59", "close": "24:00", "weekdays": [1, 2, 3, 4, 5, 6, 7]}


def _cst_today() -> datetime.date:
    return datetime.datetime.fromtimestamp((time.time_ns() + CST_OFFSET_NS) / 1e9, datetime.UTC).date()


@pytest.fixture(autouse=True)
def _not_at_cst_midnight() -> None:
    minute = (time.time_ns() + CST_OFFSET_NS) // 60_000_000_000 % 1_440
    if minute >= 1_436:
        pytest.skip("the all-day pre-open ends at 23:59 CST")


async def test_a_listing_with_a_session_halts_with_a_reason_and_resumes_to_pre_open(ex: Exchange) -> None:
    view = await ex.list_instrument("T-DAY-1", session=ALL_DAY_PRE_OPEN, index_base_date="2026-01-05")
    assert view["session"] == {"pre_open": "00:00", "open": "23:59", "close": "24:00", "break_from": None,
                               "break_to": None, "weekdays": [1, 2, 3, 4, 5, 6, 7]}
    assert (view["state"], view["state_reason"], view["index_base_date"]) == ("auction", "pre_open", "2026-01-05")

    buyer = await ex.register(Role.BUYER)
    day_buy = {"client_order_id": "d1", "instrument": "T-DAY-1", "side": "buy", "price_fen": 2800,
               "quantity_heads": 2, "time_in_force": "DAY"}
    placed = await buyer.post("/v1/orders", json=day_buy)
    assert (placed.status, placed.json()["status"], placed.json()["time_in_force"]) == (201, "NEW", "DAY")

    halted = await ex.operator.post("/v1/instruments/T-DAY-1/halt?reason=quarantine%20alert")
    assert (halted.status, halted.json()["state"], halted.json()["state_reason"]) == (200, "halted", "quarantine alert")
    refused = await buyer.post("/v1/orders", json={**day_buy, "client_order_id": "d2"})
    assert (refused.status, refused.json()["code"]) == (422, "market_halted")
    resumed = (await ex.operator.post("/v1/instruments/T-DAY-1/resume")).json()
    assert (resumed["state"], resumed["state_reason"]) == ("auction", "pre_open")
    too_long = await ex.operator.post("/v1/instruments/T-DAY-1/halt?reason=" + "x" * 201)
    assert (too_long.status, too_long.json()["code"]) == (422, "invalid")


async def test_an_inconsistent_session_or_base_date_is_refused(ex: Exchange) -> None:
    cases: list[dict[str, Any]] = [
        {"session": {"pre_open": "09:10", "open": "09:00"}},
        {"session": {"break_from": "11:30"}},  # a break needs both ends
        {"session": {"open": "9:00"}},
        {"session": {"weekdays": [8]}},
        {"index_base_date": "2026-02-30"},
    ]
    for i, case in enumerate(cases):
        reply = await ex.operator.post("/v1/instruments", json={
            "symbol": f"T-BAD-{i}", "product_class": "finishing_hog", "breed_class": "wai_san_yuan",
            "delivery_point": "Rongchang", "lot_avg_min_g": 100_000, "lot_avg_max_g": 120_000,
            "animal_min_g": 90_000, "animal_max_g": 140_000, "tick_fen": 10, "min_order_heads": 1,
            "max_order_heads": 500, "price_band_bps": 400, "reference_price_fen": 2800, **case})
        assert reply.status == 422, (case, reply.body)
        assert reply.json()["code"] in ("invalid_instrument", "invalid"), case


async def test_a_day_order_needs_an_instrument_with_a_session(ex: Exchange) -> None:
    await ex.list_instrument("T-NODAY")
    buyer = await ex.register(Role.BUYER)
    reply = await buyer.post("/v1/orders", json={"client_order_id": "n1", "instrument": "T-NODAY", "side": "buy",
                                                "price_fen": 2800, "quantity_heads": 1, "time_in_force": "DAY"})
    assert (reply.status, reply.json()["code"]) == (422, "invalid_expiry")


async def test_operators_set_and_remove_non_trading_days(ex: Exchange) -> None:
    today = _cst_today()
    tomorrow, later = (today + datetime.timedelta(days=n) for n in (1, 30))
    assert (await ex.operator.get("/v1/admin/calendar")).json() == {"non_trading_days": []}
    added = await ex.operator.post("/v1/admin/calendar", json={"date": later.isoformat()})
    assert (added.status, added.json()) == (201, {"non_trading_days": [later.isoformat()]})
    await ex.operator.post("/v1/admin/calendar", json={"date": tomorrow.isoformat()})
    assert (await ex.operator.get("/v1/admin/calendar")).json() == {
        "non_trading_days": [tomorrow.isoformat(), later.isoformat()]}
    for bad in (today.isoformat(), "2026-02-30"):
        reply = await ex.operator.post("/v1/admin/calendar", json={"date": bad})
        assert (reply.status, reply.json()["code"]) == (422, "invalid_calendar_day"), bad
    removed = await ex.operator.request("DELETE", f"/v1/admin/calendar/{later.isoformat()}")
    assert (removed.status, removed.json()) == (200, {"non_trading_days": [tomorrow.isoformat()]})
    not_a_date = await ex.operator.request("DELETE", "/v1/admin/calendar/not-a-date")
    assert (not_a_date.status, not_a_date.json()["code"]) == (422, "invalid_calendar_day")
    farmer = await ex.register(Role.FARMER)
    assert (await farmer.get("/v1/admin/calendar")).status == 403
    assert (await farmer.post("/v1/admin/calendar", json={"date": later.isoformat()})).status == 403


async def test_the_openapi_document_describes_the_calendar_routes_and_the_index_tables_fill(ex: Exchange) -> None:
    from exchange import priceindex
    from gateway.exchange_port import EXCHANGE
    from gateway.priceindex import PROJECTOR
    from gateway.state import POOL

    paths = (await ex.client().get("/v1/openapi.json")).json()["paths"]
    assert {"get", "post"} <= set(paths["/v1/admin/calendar"]) and "delete" in paths["/v1/admin/calendar/{date}"]
    assert "invalid_calendar_day" in paths["/v1/admin/calendar"]["post"]["description"]
    # the price index projection runs in the app: a trade reaches its PostgreSQL tables
    await ex.list_instrument("T-IDX-PG")
    farmer, buyer = await ex.register(Role.FARMER), await ex.register(Role.BUYER)
    lot_id = await ex.register_lot(farmer, "T-IDX-PG", heads=10, avg_weight_g=110_000)
    sell = {"client_order_id": "s-idx", "instrument": "T-IDX-PG", "side": "sell", "price_fen": 2830,
            "quantity_heads": 4, "lot_id": lot_id}
    assert (await farmer.post("/v1/orders", json=sell)).status == 201
    buy = {"client_order_id": "b-idx", "instrument": "T-IDX-PG", "side": "buy", "price_fen": 2830, "quantity_heads": 4}
    assert (await buyer.post("/v1/orders", json=buy)).json()["status"] == "FILLED"
    await ex.app[PROJECTOR].wait_for(ex.app[EXCHANGE].sequencer.committed_seq, timeout_s=20)
    today = _cst_today()
    rows = await priceindex.index_on(ex.app[POOL], today.year * 10_000 + today.month * 100 + today.day)
    # 4 heads at 2830 fen/kg of 110 kg: 1,245,200 fen; the series' first day, so its base: 1000.00
    assert [(r.region, r.trades, r.heads, r.value_fen, r.average_price_fen, r.index_x100) for r in rows] == [
        ("Rongchang, Chongqing", 1, 4, 1_245_200, 2830, 100_000)]
