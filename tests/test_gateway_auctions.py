"""Lot auctions over HTTP and WebSocket against a real server, sequencer and PostgreSQL: a farmer lists
a lot by auction, two buyers bid (proxy), the clock closes it, and the sale is weighed in, settled and
paid out like a book trade; plus who sees what (paddles), the error codes and the OpenAPI entries.

The exchange clock ticks every 50 ms (wall clock), so an auction closing in a second closes within the
test, as does the short dispute window.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import aiohttp

from gateway.auth import Role
from gateway.testing import LOT_CERT, Exchange, error_code, ok
from tests.test_gateway_settlement import _farmer, eventually

WINDOW_S = 1.0
_symbols = itertools.count(1)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _market(ex: Exchange) -> str:
    symbol = f"T-AUC-{next(_symbols)}"
    await ex.list_instrument(symbol, dispute_window_ms=int(WINDOW_S * 1000))
    return symbol


def _terms(lot_id: int, close_in_ms: int, **extra: Any) -> dict[str, Any]:
    return {"lot_id": lot_id, "start_price_fen": 2_500, "reserve_price_fen": 2_700,
            "increments": [{"from_price_fen": 0, "increment_fen": 20}, {"from_price_fen": 3_000, "increment_fen": 50}],
            "closes_at_ms": _now_ms() + close_in_ms, **extra}


async def test_list_auction_bid_close_weigh_in_settle_pay_out(ex: Exchange) -> None:
    symbol = await _market(ex)
    farmer = await _farmer(ex, "李四", "6217000011113333")
    buyer, rival = await ex.register(Role.BUYER, "重庆肉联"), await ex.register(Role.BUYER, "永辉")
    lot_id = await ex.register_lot(farmer, symbol, heads=10)
    offered = ok(await farmer.post("/v1/auctions", json=_terms(lot_id, 2_500, extension_s=0)), 201)
    auction_id = offered["auction_id"]
    assert (offered["state"], offered["heads"], offered["quote_unit"], offered["reserve_price_fen"]) == (
        "open", 10, "fen_per_kg", 2_700)
    assert ok(await farmer.get(f"/v1/lots/{lot_id}"))["available_heads"] == 0

    # the public feed of this auction
    async with ex.session.ws_connect(ex.url + "/v1/ws") as ws:
        await ws.send_json({"op": "subscribe", "channels": [f"auctions.{auction_id}", "auctions"]})
        first = [json.loads((await ws.receive()).data) for _ in range(3)]
        snapshot = next(m for m in first if m.get("type") == "auction")
        assert (snapshot["auction"]["state"], snapshot["auction"]["bid_count"]) == ("open", 0)

        mine = ok(await buyer.post(f"/v1/auctions/{auction_id}/bids", json={"max_price_fen": 2_600}), 201)
        assert (mine["price_fen"], mine["your_paddle"], mine["your_max_price_fen"], mine["leader_paddle"]) == (
            2_500, 1, 2_600, 1)
        assert "reserve_price_fen" not in mine and "bidders" not in mine and not mine["reserve_met"]
        mine = ok(await buyer.post(f"/v1/auctions/{auction_id}/bids", json={"max_price_fen": 2_800}), 201)
        assert (mine["price_fen"], mine["reserve_met"]) == (2_700, True)  # its maximum reached the reserve
        theirs = ok(await rival.post(f"/v1/auctions/{auction_id}/bids", json={"max_price_fen": 2_750}), 201)
        # BUYER's proxy answers at 2,750 + 20; the reserve (2,700) is met
        assert (theirs["price_fen"], theirs["leader_paddle"], theirs["your_paddle"], theirs["reserve_met"]) == (
            2_770, 1, 2, True)
        assert error_code(await rival.post(f"/v1/auctions/{auction_id}/bids", json={"max_price_fen": 2_780})) == (
            422, "bid_too_low")
        update = None
        while update is None or update["auction"]["bid_count"] < 3:
            message = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
            if message.get("type") == "auction":
                update = message
        assert (update["auction"]["price_fen"], update["auction"]["leader_paddle"]) == (2_770, 1)
        assert "your_paddle" not in update["auction"] and "bidders" not in update["auction"]

    # nobody but the operator sees who paddle 1 is
    public = ok(await rival.get(f"/v1/auctions/{auction_id}"))
    assert set(public) >= {"price_fen", "bid_count", "leader_paddle", "time_left_ms", "state"}
    assert not {"bidders", "seller_id", "reserve_price_fen", "offer_price_fen"} & set(public)
    assert (public["your_paddle"], public["leader_paddle"]) == (2, 1)
    seen = ok(await ex.operator.get(f"/v1/auctions/{auction_id}"))
    assert [(b["paddle"], b["participant_id"], b["max_price_fen"]) for b in seen["bidders"]] == [
        (1, buyer.participant_id, 2_800), (2, rival.participant_id, 2_750)]
    assert seen["reserve_price_fen"] == 2_700

    async def sold() -> dict[str, Any] | None:
        view = ok(await buyer.get(f"/v1/auctions/{auction_id}"))
        return view if view["state"] == "sold" else None

    view = await eventually(sold)
    trade_id = view["trade_id"]
    assert view["price_fen"] == 2_770
    assert [a["auction_id"] for a in ok(await buyer.get("/v1/auctions?status=sold"))].count(auction_id) == 1
    assert ok(await farmer.get(f"/v1/lots/{lot_id}"))["sold_heads"] == 10

    # from here on a book trade's path: weigh-in, dispute window, settlement, payout
    weighed = ok(await farmer.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 10, "total_weight_g": 1_100_000, "quarantine_cert": LOT_CERT,
        "quarantine_checked": True}))
    assert weighed["amount_fen"] == 1_100 * 2_770  # 1,100 kg x ¥27.70

    async def settled() -> dict[str, Any] | None:
        trade = ok(await farmer.get(f"/v1/trades/{trade_id}/settlement"))
        return trade if trade["state"] == "SETTLED" else None

    trade = await eventually(settled)
    assert trade["amount_fen"] == 3_047_000
    run = ok(await ex.operator.post("/v1/payout-runs", json={"run_ref": f"auc-run-{time.time_ns()}"}), 201)
    ours = [p for p in run["payouts"] if p["payee_id"] == farmer.participant_id]
    assert len(ours) == 1 and ours[0]["amount_fen"] == trade["payable_fen"]


async def test_errors_roles_and_the_openapi_document(ex: Exchange) -> None:
    symbol = await _market(ex)
    farmer = await _farmer(ex, "王五", "6217000011114444")
    buyer = await ex.register(Role.BUYER)
    lot_id = await ex.register_lot(farmer, symbol, heads=5)
    assert error_code(await buyer.post("/v1/auctions", json=_terms(lot_id, 60_000))) == (403, "forbidden")
    assert error_code(await farmer.post("/v1/auctions", json=_terms(lot_id, 60_000, reserve_price_fen=2_000))) == (
        422, "invalid_auction")
    assert error_code(await farmer.post("/v1/auctions", json=_terms(999_999, 60_000))) == (404, "lot_not_found")
    assert error_code(await farmer.post("/v1/auctions", json=_terms(lot_id, 60_000, seller_id=1))) == (
        403, "not_authorized")
    offered = ok(await farmer.post("/v1/auctions", json=_terms(lot_id, 60_000, buy_now_price_fen=3_000)), 201)
    auction_id = offered["auction_id"]
    assert error_code(await buyer.get("/v1/auctions/999999")) == (404, "unknown_auction")
    assert error_code(await farmer.post(f"/v1/auctions/{auction_id}/bids", json={"max_price_fen": 2_600})) == (
        422, "self_trade_prevented")
    assert error_code(await buyer.post(f"/v1/auctions/{auction_id}/bids", json={"max_price_fen": 2_605})) == (
        422, "price_off_tick")
    assert error_code(await buyer.post(f"/v1/auctions/{auction_id}/offers", json={"price_fen": 2_600})) == (
        422, "not_negotiating")
    zero_bid = await buyer.post(f"/v1/auctions/{auction_id}/bids", json={"max_price_fen": 0})
    assert error_code(zero_bid) == (422, "invalid")
    ok(await buyer.post(f"/v1/auctions/{auction_id}/bids", json={"max_price_fen": 2_600}), 201)
    assert error_code(await farmer.post(f"/v1/auctions/{auction_id}/withdraw")) == (422, "auction_has_bids")
    bought = ok(await buyer.post(f"/v1/auctions/{auction_id}/buy-now"))
    assert (bought["state"], bought["price_fen"]) == ("sold", 3_000)
    assert error_code(await buyer.post(f"/v1/auctions/{auction_id}/buy-now")) == (422, "auction_not_open")  # ended
    assert error_code(await buyer.post("/v1/auctions/999999/bids", json={"max_price_fen": 2_600})) == (
        404, "unknown_auction")
    # a withdrawal, and the lot is offered again
    lot2 = await ex.register_lot(farmer, symbol, heads=5)
    second = ok(await farmer.post("/v1/auctions", json=_terms(lot2, 60_000)), 201)
    assert ok(await farmer.post(f"/v1/auctions/{second['auction_id']}/withdraw"))["state"] == "withdrawn"
    again = ok(await farmer.post("/v1/auctions", json=_terms(lot2, 60_000)), 201)
    assert again["auction_id"] == second["auction_id"] + 1
    assert [a["auction_id"] for a in ok(await buyer.get("/v1/auctions?status=withdrawn"))] == [second["auction_id"]]
    assert error_code(await buyer.get("/v1/auctions?status=bogus"))[0] == 422

    async with aiohttp.ClientSession() as session, session.get(ex.url + "/v1/openapi.json") as reply:
        doc = await reply.json()
    paths = doc["paths"]
    for path in ("/v1/auctions", "/v1/auctions/{auction_id}", "/v1/auctions/{auction_id}/bids",
                 "/v1/auctions/{auction_id}/buy-now", "/v1/auctions/{auction_id}/withdraw",
                 "/v1/auctions/{auction_id}/offers"):
        assert path in paths, path
    assert "bid_too_low" in paths["/v1/auctions/{auction_id}/bids"]["post"]["description"]


async def test_a_bid_and_a_negotiation_retried_with_their_reference_act_once(ex: Exchange) -> None:
    symbol = await _market(ex)
    farmer = await _farmer(ex, "钱九", "6217000011118888")
    buyer, rival = await ex.register(Role.BUYER), await ex.register(Role.BUYER)
    lot_id = await ex.register_lot(farmer, symbol, heads=5)
    auction_id = ok(await farmer.post("/v1/auctions", json=_terms(lot_id, 1_500)), 201)["auction_id"]
    bids, offers = f"/v1/auctions/{auction_id}/bids", f"/v1/auctions/{auction_id}/offers"

    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return {**a, "time_left_ms": 0} == {**b, "time_left_ms": 0}

    mine = {"max_price_fen": 2_600, "client_bid_ref": "bid-1"}
    first = ok(await buyer.post(bids, json=mine), 201)
    assert (first["price_fen"], first["your_paddle"], first["leader_paddle"]) == (2_500, 1, 1)
    assert same(ok(await buyer.post(bids, json=mine), 201), first)
    ok(await rival.post(bids, json={"max_price_fen": 2_700, "client_bid_ref": "bid-1"}), 201)  # per participant
    assert same(ok(await buyer.post(bids, json=mine), 201), first)  # the original answer, not the auction now
    assert error_code(await buyer.post(bids, json={**mine, "max_price_fen": 2_640})) == (409, "duplicate_reference")
    assert error_code(await buyer.post(bids, json={**mine, "client_bid_ref": "x" * 37})) == (422, "invalid")
    now = ok(await buyer.get(f"/v1/auctions/{auction_id}"))
    # bid once each: the rival's maximum meets the 2,700 reserve, so the price rises to it
    assert (now["bid_count"], now["price_fen"], now["leader_paddle"]) == (2, 2_700, 2)

    # a negotiation: a lot whose reserve is missed
    lot2 = await ex.register_lot(farmer, symbol, heads=5)
    second = ok(await farmer.post("/v1/auctions", json=_terms(lot2, 1_000, reserve_price_fen=2_900)), 201)
    auction2 = second["auction_id"]
    bids, offers = f"/v1/auctions/{auction2}/bids", f"/v1/auctions/{auction2}/offers"
    ok(await buyer.post(bids, json={"max_price_fen": 2_600}), 201)

    async def passed_in() -> bool:
        return ok(await buyer.get(f"/v1/auctions/{auction2}"))["state"] == "negotiating"

    await eventually(passed_in)
    ask = {"price_fen": 2_800, "client_offer_ref": "ask-1"}
    asked = ok(await farmer.post(offers, json=ask))
    assert (asked["offer_side"], asked["offer_price_fen"]) == ("seller", 2_800)
    assert same(ok(await farmer.post(offers, json=ask)), asked)
    assert error_code(await farmer.post(offers, json={**ask, "price_fen": 2_850})) == (409, "duplicate_reference")
    take = {"accept": True, "client_offer_ref": "take-1"}
    sold = ok(await buyer.post(offers, json=take))
    assert (sold["state"], sold["price_fen"], sold["trade_id"] > 0) == ("sold", 2_800, True)
    assert same(ok(await buyer.post(offers, json=take)), sold)  # the auction has ended: still the answer
    assert error_code(await buyer.post(offers, json={"accept": True})) == (422, "auction_not_open")  # no ref: refused
    assert [a["trade_id"] for a in ok(await buyer.get("/v1/auctions?status=sold")) if a["auction_id"] == auction2] \
        == [sold["trade_id"]]

    async with aiohttp.ClientSession() as session, session.get(ex.url + "/v1/openapi.json") as reply:
        doc = await reply.json()
    for path, field in (("/v1/auctions/{auction_id}/bids", "client_bid_ref"),
                        ("/v1/auctions/{auction_id}/offers", "client_offer_ref")):
        post = doc["paths"][path]["post"]
        assert "409" in post["responses"] and "duplicate_reference" in post["description"], path
        assert field in json.dumps(post["requestBody"]) or field in json.dumps(doc["components"]), field
