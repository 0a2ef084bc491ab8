"""The web app in a real browser (Debian's Chromium, headless, through chromedriver), against the real
exchange on a loopback socket: people sign in, trade, weigh in and get paid through the pages alone.

Screenshots of every main page at phone (360 x 740) and desktop size are written to
`test-artifacts/screenshots/` (the README shows copies of them from `docs/screenshots/`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.sessions import SessionPolicy
from gateway.testing import Exchange, running_exchange
from tests import webdriver
from tests.webdriver import Browser, chromedriver, eventually

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
PASSWORD = "pig-market-2026"
SYMBOL = "RC-LH-WEB"

pytestmark = pytest.mark.skipif(webdriver.available() is not None, reason=f"browser tests: {webdriver.available()}")


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.2, session_policy=SessionPolicy()) as exchange:
            # Settles at the first clock tick after the weigh-in: the whole way to a payout in seconds.
            await exchange.list_instrument(SYMBOL, dispute_window_ms=0)
            yield exchange
    finally:
        await _test_databases.drop(dsn)


async def sign_up(browser: Browser, url: str, invitation_url: str, phone: str, name: str) -> None:
    """Open the invitation link, set phone, name and password, then sign in on the page it leads to."""
    await browser.open(invitation_url)
    await browser.type("#invite-form input[name=phone]", phone)
    await browser.type("#invite-form input[name=display_name]", name)
    await browser.type("#invite-form input[name=password]", PASSWORD)
    await browser.click("#invite-form button[type=submit]")
    await eventually(lambda: _at(browser, "#/signin"), 10, "the invitation did not lead to the sign-in page")
    await sign_in(browser, phone)


async def sign_in(browser: Browser, phone: str) -> None:
    await browser.type("#signin-form input[name=phone]", phone)
    await browser.type("#signin-form input[name=password]", PASSWORD)
    await browser.click("#signin-form button[type=submit]")
    await browser.element("#signout")


async def _at(browser: Browser, fragment: str) -> bool:
    return (await browser.url()).endswith(fragment)


async def register_and_invite(op: Browser, role: str, name: str, bank: str = "") -> tuple[int, str]:
    """As the operator, on the operator page: register a participant, then invite a person for it."""
    await op.select("#register-form select[name=role]", role)
    await op.type("#register-form input[name=name]", name)
    await op.type("#register-form input[name=bank_account]", bank)
    await op.click("#register-form button[type=submit]")
    status = await done(op, "#register-form")
    participant_id = int(re.findall(r"\d+", status)[-1])
    await op.click(f'#participants span[data-participant="{participant_id}"] button')
    link = f'input.invitation-url[data-participant="{participant_id}"]'
    await op.element(link)
    url = await op.run("return document.querySelector(arguments[0]).value", link)
    return participant_id, str(url)


async def done(browser: Browser, form: str) -> str:
    """The form's answer once it came: its success text (an error fails the test, with the message)."""
    answer = await eventually(lambda: browser.run(
        "const p = document.querySelector(arguments[0] + ' p[role=alert]');"
        " return p && p.textContent ? [p.className, p.textContent] : null", form), 10, f"{form} never answered")
    assert answer[0] == "ok", f"{form}: {answer[1]}"
    return str(answer[1])


async def submit(browser: Browser, form: str, fields: dict[str, str], ticks: tuple[str, ...] = ()) -> None:
    """Fill a form as a person would (text fields, then the boxes to tick) and send it."""
    for name, value in fields.items():
        await browser.type(f"{form} [name={name}]", value)
    for name in ticks:
        await browser.click(f"{form} [name={name}]")
    await browser.click(f"{form} button[type=submit]")


async def no_sideways_scroll(browser: Browser) -> None:
    widths = await browser.run("return [document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], f"{await browser.url()} scrolls sideways: {widths}"


async def every_field_labelled(browser: Browser) -> None:
    unlabelled = await browser.run(
        "return [...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => e.type !== 'hidden' && !e.labels.length && !e.getAttribute('aria-label'))"
        ".map(e => e.outerHTML)")
    assert unlabelled == [], f"{await browser.url()}: fields without a label: {unlabelled}"


async def screenshots(browser: Browser, name: str) -> None:
    """The page at phone and desktop size, checked for sideways scrolling and labels on the way."""
    await no_sideways_scroll(browser)
    await every_field_labelled(browser)
    await browser.run("window.scrollTo(0, 0)")
    await browser.screenshot(ARTIFACTS / f"{name}-phone.png")
    await browser.resize(phone=False)
    await browser.screenshot(ARTIFACTS / f"{name}-desktop.png")
    await browser.resize(phone=True)


async def test_people_trade_weigh_in_and_get_paid_through_the_pages(ex: Exchange) -> None:
    operator_id = (await ex.operator.get("/v1/me")).json()["participant_id"]
    invitation = (await ex.operator.post(f"/v1/admin/participants/{operator_id}/invitations")).json()
    async with chromedriver() as driver:
        op, farmer, buyer, visitor = [await driver.browser(phone=True) for _ in range(4)]
        await sign_up(op, ex.url, ex.url + invitation["path"], "13700000001", "运营 小陈")
        await op.wait_text("h1", "运营")

        farmer_id, farmer_link = await register_and_invite(op, "farmer", "张大伯", bank="6222020000001234")
        buyer_id, buyer_link = await register_and_invite(op, "buyer", "荣昌肉联厂")
        await submit(op, "#verify-bank-form", {"participant_id": str(farmer_id), "bank_account": "6222020000001234"})
        await done(op, "#verify-bank-form")
        await op.select("#deposit-form select[name=account]", "trading_cash")
        await submit(op, "#deposit-form", {"owner_id": str(buyer_id), "amount": "200000.00"})
        await done(op, "#deposit-form")
        await screenshots(op, "operator")

        await sign_up(farmer, ex.url, farmer_link, "13700000002", "张大伯")
        await farmer.wait_text("h1", "我的猪源")
        await submit(farmer, "#lot-form", {"heads": "20", "avg_weight": "110", "origin": "荣昌区 安富街道",
                                           "quarantine_cert": "渝动检 5001530001"})
        await farmer.wait_text("#lots", "110.000")
        await farmer.element("#sell-lot option")
        await submit(farmer, "#sell-form", {"quantity_heads": "20", "price": "28.00"})
        await farmer.wait_text("#orders", "NEW")

        await visitor.open(ex.url + "/#/market")
        await visitor.wait_text("#book", "28.00")  # the ask, live
        assert await visitor.text("#last-price") == "—"

        await sign_up(buyer, ex.url, buyer_link, "13700000003", "采购 老李")
        await buyer.wait_text("h1", "采购")
        await submit(buyer, "#bid-form", {"quantity_heads": "20", "price": "28.00"})
        await buyer.element('#orders [data-order-status="FILLED"]')  # without a reload
        await visitor.wait_text("#last-price", "28.00")  # the market page, live
        await visitor.wait_text("#trades", "28.00")
        await visitor.wait_text("#index", "1000.00")  # the price index's base day: its first day of trades

        # A lot by auction: the farmer offers it on its page, the buyer's page shows it live and takes a bid.
        await submit(farmer, "#lot-form", {"heads": "10", "avg_weight": "112", "origin": "荣昌区 安富街道",
                                           "quarantine_cert": "渝动检 5001530001"})
        await farmer.wait_text("#auction-lot", "10")
        await farmer.select("#auction-lot", await farmer.run("return document.querySelector('#auction-lot').value"))
        await submit(farmer, "#auction-form", {"start": "28.00", "reserve": "28.50"})
        await done(farmer, "#auction-form")
        await farmer.wait_text("#my-auctions", "open")
        # The buyer's page shows the auction live, without a reload.
        bid_form = await eventually(lambda: buyer.run(
            "const f = document.querySelector('form[id^=bid-auction-]'); return f && f.id"), 20,
            "no auction on the buyer's page")
        await submit(buyer, f"#{bid_form}", {"max_price": "29.00"})
        # The page redraws live: the buyer's own paddle and maximum, the leader shown by paddle only.
        mine = await buyer.wait_text("#auctions [data-auction]", "29.00")
        paddle = re.search(r"#(\d+)", mine)
        assert paddle, mine
        await buyer.wait_text("#auctions table", f"1 · #{paddle.group(1)}")
        await screenshots(buyer, "buyer")
        await screenshots(visitor, "market")

        weigh = await farmer.element('form[id^="weigh-"]')  # the delivery appeared without a reload
        assert weigh
        await submit(farmer, 'form[id^="weigh-"]', {"total_weight": "2200", "quarantine_cert": "渝动检 5001530001"},
                     ticks=("quarantine_checked",))
        # The form goes with its answer; the trade is then weighed in, or already settled at the next tick.
        await farmer.element('#deliveries [data-trade-state="DELIVERED"], #deliveries [data-trade-state="SETTLED"]')
        settled = await eventually(lambda: _settled(ex, buyer_id), 15, "the trade never settled")
        assert (settled["amount_fen"], settled["total_weight_g"]) == (20 * 110 * 2800, 2_200_000)
        payable_fen = settled["payable_fen"]

        await op.open(ex.url + "/#/operator")
        await op.click("#payout-run-form button[type=submit]")
        yuan = f"{payable_fen // 100:,}.{payable_fen % 100:02d}"
        assert yuan in await done(op, "#payout-run-form")  # the farmer's payable, formatted from fen
        await farmer.run("location.reload()")  # the farmer looks again
        await farmer.element('#payouts [data-payout-state="PENDING"]')
        await screenshots(farmer, "farmer")
        await op.click("#payout-file-form button[type=submit]")
        href = await eventually(lambda: op.run(
            "const a = document.querySelector('#bank-file-link'); return a && a.getAttribute('href')"), 10,
            "no bank file link")
        status, bank_file = await op.fetch_text(str(href))
        assert status == 200 and str(payable_fen) in bank_file, bank_file
        await farmer.run("location.reload()")
        await farmer.element('#payouts [data-payout-state="SENT"]')

        # Who may go where: a visitor and a buyer are sent away from others' pages, and the API refuses.
        await visitor.open(ex.url + "/#/farmer")
        await eventually(lambda: _at(visitor, "#/signin"), 5, "a visitor reached the farmer's page")
        await screenshots(visitor, "signin")
        assert await visitor.fetch("GET", "/v1/lots") == 401
        await buyer.open(ex.url + "/#/operator")
        await eventually(lambda: _at(buyer, "#/buyer"), 5, "a buyer reached the operator's page")
        assert await buyer.fetch("GET", "/v1/admin/participants") == 403
        assert await buyer.fetch("POST", "/v1/orders", {"client_order_id": "no-csrf", "instrument": SYMBOL,
                                                        "side": "buy", "quantity_heads": 1, "price_fen": 2800}) == 403
        # A locked-out phone number stays locked, even with the right password.
        wrong = {"phone": "13700000003", "password": "not-the-password"}
        assert [await visitor.fetch("POST", "/v1/sessions", wrong) for _ in range(5)] == [401] * 5
        await visitor.open(ex.url + "/#/signin")
        await submit(visitor, "#signin-form", {"phone": "13700000003", "password": PASSWORD})
        await visitor.wait_text("#signin-form p.error", "账号已锁定")

        _, fin_link = await register_and_invite(op, "financier", "重庆农商行")
        await sign_up(visitor, ex.url, fin_link, "13700000004", "信贷员 王")
        await visitor.wait_text("h1", "金融")
        await screenshots(visitor, "financier")


async def _settled(ex: Exchange, buyer_id: int) -> dict[str, Any] | None:
    trades = (await ex.operator.get("/v1/settlement/trades")).json()["trades"]
    return next((t for t in trades if t["buyer_id"] == buyer_id and t["state"] == "SETTLED"), None)
