"""People in the web app over real HTTP: invitations, sign-in, cookie sessions, CSRF, lockout, revocation,
and the same role boundaries as for API keys (gateway.people, gateway.sessions, gateway.webapp)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio

from gateway import demo
from gateway.auth import Role
from gateway.sessions import SESSIONS, SessionPolicy
from gateway.state import POOL
from gateway.testing import Exchange, running_exchange

PASSWORD = "pig-market-2026"


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    # Small per-phone sign-in buckets, so the tests can reach them (the idle expiry has its own exchange).
    policy = SessionPolicy(signin_per_address_per_s=50.0, signin_per_address_burst=200,
                           signin_per_phone_per_s=0.01, signin_per_phone_burst=8, cache_ttl_s=0.0)
    try:
        async with running_exchange(dsn, session_policy=policy) as exchange:
            await exchange.list_instrument("T-WEB-1")
            yield exchange
    finally:
        await _test_databases.drop(dsn)


class Browser:
    """One person's cookie jar and CSRF token, as a browser keeps them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # unsafe: an IP host
        self.csrf = ""

    async def request(self, method: str, path: str, json: Any = None, csrf: str | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        sent = dict(headers or {})
        token = self.csrf if csrf is None else csrf
        if method != "GET" and token:
            sent["X-CSRF-Token"] = token
        async with self.http.request(method, self.url + path, json=json, headers=sent) as reply:
            body = await reply.json() if reply.content_type == "application/json" else await reply.text()
            return reply.status, body

    async def sign_in(self, phone: str, password: str = PASSWORD) -> tuple[int, Any]:
        status, body = await self.request("POST", "/v1/sessions", {"phone": phone, "password": password})
        if status == 201:
            self.csrf = body["csrf_token"]
        return status, body

    async def close(self) -> None:
        await self.http.close()


async def invite(ex: Exchange, participant_id: int) -> str:
    reply = await ex.operator.post(f"/v1/admin/participants/{participant_id}/invitations")
    assert reply.status == 201, reply.body
    body = reply.json()
    assert body["path"] == "/#/invite/" + body["invitation_token"]
    return str(body["invitation_token"])


async def person(ex: Exchange, role: Role, phone: str) -> tuple[int, Browser]:
    """A participant of `role` with one signed-in person; returns its participant id and browser."""
    trader = await ex.register(role, f"web {role.value}")
    token = await invite(ex, trader.participant_id)
    browser = Browser(ex.url)
    status, _ = await browser.request("POST", "/v1/invitations/accept",
                                      {"token": token, "phone": phone, "display_name": "王芳", "password": PASSWORD})
    assert status == 201
    assert (await browser.sign_in(phone))[0] == 201
    return trader.participant_id, browser


async def test_an_invited_person_signs_in_and_acts_for_its_participant(ex: Exchange) -> None:
    participant_id, farmer = await person(ex, Role.FARMER, "13800000001")
    try:
        status, session = await farmer.request("GET", "/v1/session")
        assert status == 200
        assert (session["participant_id"], session["role"]) == (participant_id, "farmer")
        assert session["display_name"] == "王芳"
        lot = {"instrument": "T-WEB-1", "heads": 20, "avg_weight_g": 110_000, "origin": "荣昌区",
               "quarantine_cert": "渝动检 5001530042"}
        status, made = await farmer.request("POST", "/v1/lots", lot)
        assert status == 201
        status, lots = await farmer.request("GET", "/v1/lots")
        assert (status, [x["lot_id"] for x in lots]) == (200, [made["lot_id"]])
        status, me = await farmer.request("GET", "/v1/me")
        assert (me["participant_id"], me["role"]) == (participant_id, "farmer")
        assert me["api_key"].startswith("person:")
    finally:
        await farmer.close()


async def test_the_cookie_is_httponly_strict_and_the_session_ends_at_sign_out(ex: Exchange) -> None:
    trader = await ex.register(Role.BUYER, "cookie buyer")
    token = await invite(ex, trader.participant_id)
    browser = Browser(ex.url)
    try:
        await browser.request("POST", "/v1/invitations/accept",
                              {"token": token, "phone": "13800000002", "display_name": "李", "password": PASSWORD})
        async with browser.http.post(ex.url + "/v1/sessions",
                                     json={"phone": "13800000002", "password": PASSWORD}) as reply:
            assert reply.status == 201
            browser.csrf = (await reply.json())["csrf_token"]
            cookie = reply.cookies["hogx_session"]
        assert cookie["httponly"] is True
        assert (cookie["samesite"], cookie["path"]) == ("Strict", "/")
        assert not cookie["secure"]  # plain HTTP here; over TLS it is Secure
        assert (await browser.request("DELETE", "/v1/session", csrf="wrong"))[0] == 403
        assert (await browser.request("GET", "/v1/balances"))[0] == 200
        assert (await browser.request("DELETE", "/v1/session"))[0] == 204
        status, body = await browser.request("GET", "/v1/balances")
        assert (status, body["code"]) == (401, "missing_credentials")  # the cookie is gone
        browser.http.cookie_jar.update_cookies({"hogx_session": cookie.value})  # a copy kept: ended server-side
        status, body = await browser.request("GET", "/v1/balances")
        assert (status, body["code"]) == (401, "session_expired")
    finally:
        await browser.close()


async def test_a_state_changing_request_without_the_csrf_token_is_refused_and_changes_nothing(ex: Exchange) -> None:
    _, buyer = await person(ex, Role.BUYER, "13800000003")
    try:
        order = {"client_order_id": "web-csrf-1", "instrument": "T-WEB-1", "side": "buy", "quantity_heads": 1,
                 "price_fen": 2800}
        for token in ("", "forged-token"):
            status, body = await buyer.request("POST", "/v1/orders", order, csrf=token)
            assert (status, body["code"]) == (403, "csrf_failed")
        status, page = await buyer.request("GET", "/v1/orders")
        assert (status, page["orders"]) == (200, [])
        status, report = await buyer.request("POST", "/v1/orders", order)
        assert (status, report["status"]) == (201, "NEW")
    finally:
        await buyer.close()


async def test_every_role_boundary_holds_for_a_session(ex: Exchange) -> None:
    _, buyer = await person(ex, Role.BUYER, "13800000004")
    visitor = Browser(ex.url)
    try:
        for method, path in (("GET", "/v1/lots"), ("GET", "/v1/admin/participants"),
                             ("GET", "/v1/financing/clients"), ("POST", "/v1/payout-runs")):
            status, body = await buyer.request(method, path, {"run_ref": "x"} if method == "POST" else None)
            assert (status, body["code"]) == (403, "forbidden"), path
            status, body = await visitor.request(method, path, {"run_ref": "x"} if method == "POST" else None)
            assert status == 401, path
        # A made-up cookie is no session, and asking again does not cost another database read.
        visitor.http.cookie_jar.update_cookies({"hogx_session": "A" * 43})
        lookups = ex.app[SESSIONS].lookups
        for _ in range(3):
            status, body = await visitor.request("GET", "/v1/balances")
            assert (status, body["code"]) == (401, "session_expired")
        assert ex.app[SESSIONS].lookups == lookups + 1
    finally:
        await buyer.close()
        await visitor.close()


async def test_wrong_passwords_lock_the_person_until_an_operator_unlocks(ex: Exchange) -> None:
    participant_id, farmer = await person(ex, Role.FARMER, "13800000005")
    await farmer.close()
    browser = Browser(ex.url)
    try:
        codes = [(await browser.sign_in("13800000005", "not-the-password"))[1]["code"] for _ in range(5)]
        assert codes == ["bad_credentials"] * 5  # the same answer as for a phone that does not exist
        status, body = await browser.sign_in("13800000005")  # the right password: still locked, and told so
        assert (status, body["code"]) == (423, "locked")
        people = (await ex.operator.get(f"/v1/admin/participants/{participant_id}/people")).json()
        assert [(p["phone"], p["locked"]) for p in people] == [("13800000005", True)]
        assert (await ex.operator.post(f"/v1/admin/people/{people[0]['person_id']}/unlock")).status == 204
        assert (await browser.sign_in("13800000005"))[0] == 201
    finally:
        await browser.close()


async def test_sign_in_attempts_are_limited_per_phone_number(ex: Exchange) -> None:
    browser = Browser(ex.url)
    try:
        statuses = [(await browser.sign_in("13900000099", "whatever-it-is"))[0] for _ in range(9)]
        assert statuses == [401] * 8 + [429]
    finally:
        await browser.close()


async def test_an_invitation_is_used_once_and_a_phone_number_signs_in_once(ex: Exchange) -> None:
    trader = await ex.register(Role.COOPERATIVE, "web coop")
    token = await invite(ex, trader.participant_id)
    browser = Browser(ex.url)
    try:
        body = {"token": token, "phone": "13800000006", "display_name": "clerk one", "password": PASSWORD}
        assert (await browser.request("POST", "/v1/invitations/accept", body))[0] == 201
        status, reply = await browser.request("POST", "/v1/invitations/accept", {**body, "phone": "13800000007"})
        assert (status, reply["code"]) == (410, "invitation_used")
        second = await invite(ex, trader.participant_id)  # a second clerk of the same cooperative ...
        status, reply = await browser.request("POST", "/v1/invitations/accept", {**body, "token": second})
        assert (status, reply["code"]) == (409, "phone_taken")  # ... needs a phone number of its own
        status, _ = await browser.request("POST", "/v1/invitations/accept",
                                          {**body, "token": second, "phone": "13800000007"})
        assert status == 201
        status, reply = await browser.request("POST", "/v1/invitations/accept", {**body, "token": "x" * 43})
        assert (status, reply["code"]) == (404, "unknown_invitation")
        people = (await ex.operator.get(f"/v1/admin/participants/{trader.participant_id}/people")).json()
        assert [p["phone"] for p in people] == ["13800000006", "13800000007"]
        status, reply = await browser.request("POST", "/v1/invitations/accept", {**body, "password": "short"})
        assert status == 422
    finally:
        await browser.close()


async def test_revoking_a_person_ends_their_session_at_once(ex: Exchange) -> None:
    _, farmer = await person(ex, Role.FARMER, "13800000008")
    try:
        person_id = (await farmer.request("GET", "/v1/session"))[1]["person_id"]
        assert (await ex.operator.post(f"/v1/admin/people/{person_id}/revoke")).status == 204
        status, body = await farmer.request("GET", "/v1/lots")
        assert (status, body["code"]) == (401, "session_expired")
        status, body = await farmer.sign_in("13800000008")
        assert (status, body["code"]) == (401, "bad_credentials")
    finally:
        await farmer.close()


async def test_an_idle_session_expires(fresh_database_url: Any) -> None:
    dsn = await fresh_database_url()
    async with running_exchange(dsn, session_policy=SessionPolicy(idle_s=2, cache_ttl_s=0.0)) as idle_ex:
        _, buyer = await person(idle_ex, Role.BUYER, "13800000009")
        try:
            assert (await buyer.request("GET", "/v1/balances"))[0] == 200
            await asyncio.sleep(1.0)
            assert (await buyer.request("GET", "/v1/balances"))[0] == 200  # a request keeps it alive
            await asyncio.sleep(2.5)  # idle for longer than this exchange's 2 s
            status, body = await buyer.request("GET", "/v1/balances")
            assert (status, body["code"]) == (401, "session_expired")
        finally:
            await buyer.close()


async def test_two_invitations_accepted_at_once_with_one_phone_make_one_person(ex: Exchange) -> None:
    trader = await ex.register(Role.COOPERATIVE, "race coop")
    tokens = [await invite(ex, trader.participant_id) for _ in range(2)]
    browser = Browser(ex.url)
    try:
        replies = await asyncio.gather(*(browser.request("POST", "/v1/invitations/accept", {
            "token": token, "phone": "13800000010", "display_name": "clerk", "password": PASSWORD})
            for token in tokens))
        assert sorted(status for status, _ in replies) == [201, 409]
        people = (await ex.operator.get(f"/v1/admin/participants/{trader.participant_id}/people")).json()
        assert [p["phone"] for p in people] == ["13800000010"]
    finally:
        await browser.close()


async def test_the_page_is_served_with_a_strict_content_security_policy(ex: Exchange) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(ex.url + "/") as reply:
            assert reply.status == 200
            assert reply.content_type == "text/html"
            csp = reply.headers["Content-Security-Policy"]
            html = await reply.text()
        assert "unsafe-inline" not in csp and "script-src 'self'" in csp
        assert '<script type="module" src="/static/js/main.js">' in html
        assert "<script>" not in html and "style=" not in html
        async with http.get(ex.url + "/static/js/format.js") as reply:
            assert (reply.status, reply.content_type) == (200, "text/javascript")
            assert "Content-Security-Policy" in reply.headers
        async with http.get(ex.url + "/static/../app.py") as reply:
            assert reply.status == 404
        async with http.get(ex.url + "/static/js/nothing.js") as reply:
            assert (reply.status, (await reply.json())["code"]) == (404, "not_found")


async def test_the_demo_market_has_a_sign_in_for_each_participant(fresh_database_url: Any) -> None:
    dsn = await fresh_database_url()
    for _ in range(2):  # a restart finds the demo people and creates none twice
        async with running_exchange(dsn, demo=True) as demo_ex:
            browser = Browser(demo_ex.url)
            try:
                status, session = await browser.sign_in(demo.demo_phone(3), demo.DEMO_PASSWORD)
                assert (status, session["role"]) == (201, "buyer")
                assert (await browser.request("GET", "/v1/balances"))[0] == 200
            finally:
                await browser.close()
            phones = await demo_ex.app[POOL].fetch("SELECT phone FROM people ORDER BY phone")
            assert [r["phone"] for r in phones] == [demo.demo_phone(i) for i in range(5)]
