"""`hogx simulate`: a market that moves, driven only through a running exchange's public HTTP API.

    hogx simulate --farmers 20 --buyers 10 --minutes 5 [--speed 2] [--url http://127.0.0.1:8080]

With an operator's key (`HOGX_OPERATOR_KEY`/`HOGX_OPERATOR_SECRET`, or `--operator-key/--operator-secret`)
it registers its own participants (farmers, a few of them registered poor households, cooperatives,
buyers with cash, a financier with funds the farmers consent to) and then plays rounds: the price of each
continuously traded instrument drifts, farmers and cooperatives register lots and offer them a few ticks
around it, buyers bid around it (now and then a fat finger: off the tick or outside the band, which the
exchange rejects), some resting bids are cancelled; trades are weighed in a few rounds later with a
realistic weight spread (about one in ten lots outside the grade's band), a few are disputed (an operator
resolves them at 2 % less) or rejected when out of grade, the financier advances part of some trades, the
operator confirms buyers' top-up deposits, runs payouts, sends the bank file and imports the bank's
confirmations (about one payout in ten fails and is retried at the next run); now and then an operator
runs a call auction on one market (orders collect for a few rounds, then it is uncrossed).

Every request is signed (`gateway.client.SignedClient`) and goes to `--url` only. The run is bounded: it
stops after `--minutes` of wall time or `--max-requests` requests, whichever comes first (and when
cancelled, e.g. with the server it runs beside: `hogx serve --demo --simulate`). It prints a progress
line while it runs and a summary at the end: orders, trades, heads, value, weigh-ins, disputes,
advances, deposits, call auctions, payouts, and rejects by reason. `--seed` makes the choices repeatable (the
exchange's answers still depend on timing).

Settlement needs the instrument's dispute window to pass (48 h by default): on such instruments the
trades of a short run stay weighed in, and the payouts pay the advances (paid to a payable at once).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from exchange.settlement.bankfiles import read_payout_file
from gateway.client import Reply, SignedClient

__all__ = ["Options", "Simulation", "Summary", "beside", "run", "wait_ready"]

_log = logging.getLogger(__name__)

_ROUND_S = 0.5  # one round every half second at speed 1


@dataclass
class Options:
    url: str
    operator_key: str
    operator_secret: str
    farmers: int = 10
    buyers: int = 5
    minutes: float = 1.0
    speed: float = 1.0
    seed: int | None = None
    max_requests: int = 1_000_000
    progress: TextIO | None = sys.stderr
    progress_every_s: float = 5.0


@dataclass
class Summary:
    """What the simulation did, as the exchange answered it."""

    orders: int = 0  # order requests sent
    orders_accepted: int = 0
    cancels: int = 0
    trades: int = 0
    heads: int = 0
    value_fen: int = 0  # the weighed-in amounts (what buyers pay for delivered animals)
    weigh_ins: int = 0
    weigh_ins_outside_band: int = 0
    disputes: int = 0
    disputes_resolved: int = 0
    delivery_rejections: int = 0
    advances: int = 0
    deposits: int = 0
    auctions: int = 0  # call auctions started and uncrossed
    auction_trades: int = 0
    payout_runs: int = 0
    payouts_sent: int = 0
    payouts_confirmed: int = 0
    payouts_confirmed_fen: int = 0
    payouts_failed: int = 0
    requests: int = 0
    order_rejects: collections.Counter[str] = field(default_factory=collections.Counter)
    other_refusals: collections.Counter[str] = field(default_factory=collections.Counter)

    def progress_line(self, elapsed_s: float) -> str:
        return (f"[simulate {int(elapsed_s) // 60:02d}:{int(elapsed_s) % 60:02d}] orders {self.orders} "
                f"trades {self.trades} heads {self.heads} weigh-ins {self.weigh_ins} disputes {self.disputes} "
                f"payouts {self.payouts_confirmed} rejects {sum(self.order_rejects.values())}")

    def render(self, elapsed_s: float) -> str:
        rejects = ", ".join(f"{code} {n}" for code, n in self.order_rejects.most_common()) or "none"
        refusals = ", ".join(f"{code} {n}" for code, n in self.other_refusals.most_common()) or "none"
        return "\n".join([
            f"simulation summary ({elapsed_s:.1f} s, {self.requests} requests)",
            f"  orders {self.orders} (accepted {self.orders_accepted}, cancelled {self.cancels})",
            f"  trades {self.trades}, heads {self.heads}, value {_yuan(self.value_fen)} (weighed in)",
            f"  weigh-ins {self.weigh_ins} ({self.weigh_ins_outside_band} outside the band), disputes {self.disputes} "
            f"(resolved {self.disputes_resolved}), deliveries rejected {self.delivery_rejections}",
            f"  advances {self.advances}, deposits {self.deposits}, call auctions {self.auctions} "
            f"({self.auction_trades} trades at the uncross)",
            f"  payout runs {self.payout_runs}, payouts sent {self.payouts_sent}: confirmed {self.payouts_confirmed} "
            f"({_yuan(self.payouts_confirmed_fen)}), failed {self.payouts_failed}",
            f"  rejects by reason: {rejects}",
            f"  other refusals: {refusals}",
        ])


def _yuan(fen: int) -> str:
    return f"¥{fen // 100:,}.{fen % 100:02d}"


@dataclass
class _Market:
    symbol: str
    per_kg: bool
    reference_fen: int
    tick_fen: int
    band_low_fen: int
    band_high_fen: int
    lot_min_g: int
    lot_max_g: int
    max_heads: int
    mid_fen: float = 0.0
    # The quarantine certificate of every simulated load on this market: a Chinese certificate number (10
    # digits under Chongqing's province code 50), as the demo market's instruments require of lots and the
    # lot's at the weigh-in (exchange/settlement/rules.py); one per market, so a weigh-in of a trade whose
    # seller the simulation did not see (an auction's) still names its lot's.
    cert: str = "5001530001"

    def price(self, ticks: int) -> int:
        price = int(round(self.mid_fen / self.tick_fen) + ticks) * self.tick_fen
        if self.band_high_fen:
            price = min(max(price, self.band_low_fen), self.band_high_fen)
        return max(price, self.tick_fen)


@dataclass
class _Trader:
    client: SignedClient
    participant_id: int
    role: str
    poor: bool = False
    consented: bool = False
    lots: dict[str, list[int]] = field(default_factory=dict)  # instrument -> [lot id, heads free]
    resting: list[str] = field(default_factory=list)  # order ids of resting bids


@dataclass
class _TradeSeen:
    instrument: str
    heads: int
    price_fen: int
    round_no: int
    buyer: _Trader | None = None
    seller: _Trader | None = None
    weighed: bool = False
    advance_wanted: bool = False
    amount_fen: int = 0


class Simulation:
    """One run; see the module docstring."""

    def __init__(self, options: Options, session: aiohttp.ClientSession) -> None:
        self.o = options
        self.session = session
        self.rng = random.Random(options.seed)
        self.tag = f"sim{options.seed if options.seed is not None else ''}-{time.time_ns() // 1_000_000:x}"
        self.summary = Summary()
        self.operator = SignedClient(options.url, options.operator_key, options.operator_secret, session=session)
        self.markets: list[_Market] = []
        self.sellers: list[_Trader] = []
        self.buyers: list[_Trader] = []
        self.financier: _Trader | None = None
        self.trades: dict[int, _TradeSeen] = {}
        self.disputed: list[int] = []
        self.failed_payouts: list[int] = []
        self.auction: tuple[_Market, int] | None = None  # the market in a call auction, since which round
        self._refs = 0
        self.round_no = 0

    # -- plumbing ---------------------------------------------------------------------------------------

    def _ref(self, kind: str) -> str:
        self._refs += 1
        return f"{self.tag}-{kind}-{self._refs}"

    async def _call(self, client: SignedClient, method: str, path: str, body: Any = None,
                    refusals: collections.Counter[str] | None = None) -> Reply | None:
        """One request; a refusal (4xx/5xx) is counted by its code and gives None."""
        self.summary.requests += 1
        reply = await client.request(method, path, json=body)
        if reply.status < 300:
            return reply
        code = "http_" + str(reply.status)
        with contextlib.suppress(Exception):
            code = str(reply.json()["code"])
        (refusals if refusals is not None else self.summary.other_refusals)[code] += 1
        return None

    def _budget_left(self) -> bool:
        return self.summary.requests < self.o.max_requests

    # -- set-up ---------------------------------------------------------------------------------------

    async def setup(self) -> None:
        reply = await self._call(self.operator, "GET", "/v1/instruments")
        if reply is None:
            raise RuntimeError("cannot list the instruments (is the operator key right?)")
        for view in reply.json():
            if view["state"] != "continuous":
                continue
            market = _Market(view["symbol"], view["quote_unit"] == "fen_per_kg", view["reference_price_fen"],
                             view["tick_fen"], view["band_low_fen"], view["band_high_fen"], view["lot_avg_min_g"],
                             view["lot_avg_max_g"], min(view["max_order_heads"], 50))
            market.mid_fen = float(view["reference_price_fen"])
            market.cert = f"50015{len(self.markets) + 30001:05d}"
            self.markets.append(market)
        if not self.markets:
            raise RuntimeError("no instrument in continuous trading to simulate on")
        cooperatives = max(1, self.o.farmers // 4)
        for n in range(self.o.farmers):
            self.sellers.append(await self._register("farmer", f"sim farmer {n + 1}", poor=n % 3 == 0))
        for n in range(cooperatives):
            self.sellers.append(await self._register("cooperative", f"sim cooperative {n + 1}"))
        for n in range(self.o.buyers):
            buyer = await self._register("buyer", f"sim buyer {n + 1}")
            await self._deposit(buyer.participant_id, "trading_cash", 200_000_000)
            self.buyers.append(buyer)
        self.financier = await self._register("financier", "sim financier")
        await self._deposit(self.financier.participant_id, "financier_funds", 1_000_000_000)
        await self._deposit(0, "poverty_subsidy_fund", 1_000_000)
        for seller in self.sellers[::2]:  # half of the sellers let the financier advance to them
            if await self._call(seller.client, "POST", "/v1/consents",
                                {"financier_id": self.financier.participant_id}) is not None:
                seller.consented = True

    async def _register(self, role: str, name: str, *, poor: bool = False) -> _Trader:
        number = self._refs + 1
        bank = f"6217{number:04d}{time.time_ns() % 10**8:08d}"
        body: dict[str, Any] = {"role": role, "name": f"{name} ({self.tag})", "id_number_masked": "5002**********0000",
                                "bank_account": bank}
        if poor:
            body["poor_registration_no"] = self._ref("poor")
        reply = await self._call(self.operator, "POST", "/v1/admin/participants", body)
        if reply is None:
            raise RuntimeError(f"cannot register a {role}: {self.summary.other_refusals}")
        issued = reply.json()
        pid = int(issued["participant_id"])
        trader = _Trader(SignedClient(self.o.url, issued["api_key"], issued["api_secret"], session=self.session),
                         pid, role, poor=poor)
        await self._call(self.operator, "POST", f"/v1/admin/participants/{pid}/bank-account/verify",
                         {"bank_account": bank})
        if poor:
            await self._call(self.operator, "POST", f"/v1/admin/participants/{pid}/poor-household",
                             {"registration_no": body["poor_registration_no"]})
        return trader

    async def _deposit(self, owner_id: int, account: str, amount_fen: int) -> None:
        body = {"deposit_ref": self._ref("dep"), "owner_id": owner_id, "account": account, "amount_fen": amount_fen}
        if await self._call(self.operator, "POST", "/v1/deposits", body) is not None:
            self.summary.deposits += 1

    # -- rounds ---------------------------------------------------------------------------------------

    async def round(self) -> None:
        self.round_no += 1
        rng = self.rng
        for market in self.markets:
            market.mid_fen += rng.gauss(0, 0.6) * market.tick_fen
            low, high = market.reference_fen * 0.97, market.reference_fen * 1.03
            market.mid_fen = min(max(market.mid_fen, low), high)
        actions: list[Callable[[], Any]] = [self._offer, self._bid, self._bid, self._weigh_ins]
        if rng.random() < 0.15:
            actions.append(self._cancel)
        if rng.random() < 0.05:
            actions.append(self._fat_finger)
        if self.round_no % 10 == 0:
            actions.append(self._disputes)
        if self.round_no % 20 == 0:
            actions.append(lambda: self._deposit(rng.choice(self.buyers).participant_id, "trading_cash", 20_000_000))
        if self.round_no % 30 == 0:
            actions.append(self._payouts)
        if self.round_no % 60 == 20 or (self.auction is not None and self.round_no - self.auction[1] >= 8):
            actions.append(self._call_auction)
        for action in actions:
            if self._budget_left():
                await action()

    async def _offer(self) -> None:
        rng, seller, market = self.rng, self.rng.choice(self.sellers), self.rng.choice(self.markets)
        lot = seller.lots.get(market.symbol)
        if lot is None or lot[1] < 1:
            avg_g = rng.randint(market.lot_min_g + 2_000, market.lot_max_g - 2_000)
            heads = rng.randint(50, 300)
            reply = await self._call(seller.client, "POST", "/v1/lots", {
                "instrument": market.symbol, "heads": heads, "avg_weight_g": avg_g, "origin": "荣昌区, 重庆",
                "quarantine_cert": market.cert})
            if reply is None:
                return
            lot = seller.lots[market.symbol] = [int(reply.json()["lot_id"]), heads]
        heads = min(lot[1], rng.randint(5, 30), market.max_heads)
        report = await self._order(seller, market, "sell", market.price(rng.randint(-1, 3)), heads, lot_id=lot[0])
        if report is not None:
            lot[1] -= heads

    async def _bid(self) -> None:
        rng, buyer, market = self.rng, self.rng.choice(self.buyers), self.rng.choice(self.markets)
        report = await self._order(buyer, market, "buy", market.price(rng.randint(-3, 1)),
                                   min(rng.randint(2, 20), market.max_heads))
        if report is not None and report["status"] in ("NEW", "PARTIALLY_FILLED"):
            buyer.resting.append(str(report["order_id"]))

    async def _fat_finger(self) -> None:
        """An order the exchange must refuse: off the tick or outside the daily band."""
        buyer, market = self.rng.choice(self.buyers), self.rng.choice(self.markets)
        price = market.price(0) + market.tick_fen // 2 if self.rng.random() < 0.5 or not market.band_high_fen \
            else market.band_high_fen + market.tick_fen * 10
        await self._order(buyer, market, "buy", price, 1)

    async def _order(self, who: _Trader, market: _Market, side: str, price_fen: int, heads: int,
                     lot_id: int = 0) -> dict[str, Any] | None:
        body: dict[str, Any] = {"client_order_id": self._ref("o"), "instrument": market.symbol, "side": side,
                                "price_fen": price_fen, "quantity_heads": heads}
        if lot_id:
            body["lot_id"] = lot_id
        self.summary.orders += 1
        reply = await self._call(who.client, "POST", "/v1/orders", body, self.summary.order_rejects)
        if reply is None:
            return None
        report: dict[str, Any] = reply.json()
        self.summary.orders_accepted += 1
        for fill in report.get("fills", []):
            self._saw_trade(fill, who, market)
        return report

    def _saw_trade(self, fill: dict[str, Any], who: _Trader, market: _Market) -> None:
        trade_id = int(fill["trade_id"])
        seen = self.trades.get(trade_id)
        if seen is None:
            seen = self.trades[trade_id] = _TradeSeen(market.symbol, int(fill["quantity_heads"]),
                                                      int(fill["price_fen"]), self.round_no)
            self.summary.trades += 1
            self.summary.heads += seen.heads
        if fill["side"] == "buy":
            seen.buyer = who
        else:
            seen.seller = who
            # the financier advances part of it before the weigh-in (made in _weigh_ins' pass)
            seen.advance_wanted = who.consented and self.rng.random() < 0.1

    async def _cancel(self) -> None:
        buyer = self.rng.choice(self.buyers)
        if buyer.resting:
            order_id = buyer.resting.pop(self.rng.randrange(len(buyer.resting)))
            if await self._call(buyer.client, "DELETE", f"/v1/orders/{order_id}") is not None:
                self.summary.cancels += 1

    async def _weigh_ins(self) -> None:
        rng = self.rng
        markets = {m.symbol: m for m in self.markets}
        due = [t for t, s in self.trades.items() if not s.weighed and self.round_no - s.round_no >= 2][:5]
        for trade_id in due:
            seen = self.trades[trade_id]
            market = markets[seen.instrument]
            if seen.advance_wanted and self.financier is not None:
                value = seen.heads * seen.price_fen * ((market.lot_min_g // 1000) if market.per_kg else 1)
                if await self._call(self.financier.client, "POST", "/v1/advances", {
                        "trade_id": trade_id, "amount_fen": value // 5, "rate_bps": 600}) is not None:
                    self.summary.advances += 1
            seen.weighed = True
            # lot averages around the middle of the band; about one in ten outside it (a substitute or out of grade)
            middle = (market.lot_min_g + market.lot_max_g) // 2
            avg_g = int(rng.gauss(middle, (market.lot_max_g - market.lot_min_g) / 6))
            if rng.random() < 0.1:
                avg_g = market.lot_max_g + rng.randint(1_000, 15_000) if rng.random() < 0.7 \
                    else market.lot_min_g - rng.randint(1_000, 5_000)
            outside = not market.lot_min_g <= avg_g <= market.lot_max_g
            who = seen.seller or self.operator_trader
            reply = await self._call(who.client, "POST", f"/v1/trades/{trade_id}/weigh-in", {
                "heads_delivered": seen.heads, "total_weight_g": seen.heads * avg_g,
                "quarantine_cert": market.cert, "quarantine_checked": True})
            if reply is None:
                continue
            view = reply.json()
            self.summary.weigh_ins += 1
            self.summary.weigh_ins_outside_band += outside
            seen.amount_fen = int(view["amount_fen"])
            self.summary.value_fen += seen.amount_fen
            buyer = seen.buyer
            if buyer is None:
                continue
            if view["grade"] == "OUT_OF_GRADE" and rng.random() < 0.5:
                if await self._call(buyer.client, "POST", f"/v1/trades/{trade_id}/rejection") is not None:
                    self.summary.delivery_rejections += 1
                    self.summary.value_fen -= seen.amount_fen
            elif rng.random() < 0.05 and await self._call(buyer.client, "POST", f"/v1/trades/{trade_id}/dispute",
                                                          {"reason": "体重与单据不符"}) is not None:
                self.summary.disputes += 1
                self.disputed.append(trade_id)

    async def _call_auction(self) -> None:
        """Now and then a call auction on one market: orders collect for 8 rounds, then the operator uncrosses
        it; its trades (no taker side) are read back from the market's public trades."""
        if self.auction is None:
            market = self.rng.choice(self.markets)
            if await self._call(self.operator, "POST", f"/v1/instruments/{market.symbol}/auction") is not None:
                self.auction = (market, self.round_no)
            return
        market, self.auction = self.auction[0], None
        if await self._call(self.operator, "POST", f"/v1/instruments/{market.symbol}/uncross") is None:
            return
        self.summary.auctions += 1
        cursor = ""
        for _ in range(20):  # newest first, back to the first trade already seen
            reply = await self._call(self.operator, "GET", f"/v1/markets/{market.symbol}/trades?limit=100{cursor}")
            if reply is None:
                return
            page = reply.json()
            for trade in page["trades"]:
                trade_id = int(trade["trade_id"])
                if trade_id in self.trades:
                    return
                if trade["taker_side"] is not None:  # a continuous trade someone else made since
                    continue
                self.trades[trade_id] = _TradeSeen(market.symbol, int(trade["quantity_heads"]),
                                                   int(trade["price_fen"]), self.round_no)
                self.summary.trades += 1
                self.summary.auction_trades += 1
                self.summary.heads += int(trade["quantity_heads"])
            if page["next_cursor"] is None:
                return
            cursor = f"&cursor={page['next_cursor']}"

    @property
    def operator_trader(self) -> _Trader:
        return _Trader(self.operator, 0, "operator")

    async def _disputes(self) -> None:
        """An operator resolves the disputes: 2 % off the weighed-in amount."""
        for trade_id in self.disputed:
            seen = self.trades[trade_id]
            resolved = seen.amount_fen * 98 // 100
            if await self._call(self.operator, "POST", f"/v1/trades/{trade_id}/resolution",
                                {"amount_fen": resolved}) is not None:
                self.summary.disputes_resolved += 1
                self.summary.value_fen -= seen.amount_fen - resolved
        self.disputed.clear()

    async def _payouts(self) -> None:
        """Retry what failed, run payouts, send the bank file, import the bank's answers (one in ten fails)."""
        for payout_id in self.failed_payouts:
            await self._call(self.operator, "POST", f"/v1/payouts/{payout_id}/retry")
        self.failed_payouts.clear()
        if await self._call(self.operator, "POST", "/v1/payout-runs", {"run_ref": self._ref("run")}) is None:
            return
        self.summary.payout_runs += 1
        reply = await self._call(self.operator, "POST", "/v1/payout-files", {"file_ref": self._ref("file")})
        if reply is None:
            return
        details = read_payout_file(reply.body).details  # format HOGXPAY1: header, details, trailer
        if not details:
            return
        answers, amounts = ["payout_id,attempt,status,bank_ref,reason"], {}
        for detail in details:
            payout_id, attempt = detail["payout_id"], detail["attempt"]
            amounts[payout_id] = int(detail["amount_fen"])
            ok = self.rng.random() >= 0.1
            answers.append(f"{payout_id},{attempt},{'OK' if ok else 'FAILED'},{self._ref('bank')},"
                           f"{'' if ok else 'account frozen'}")
        self.summary.payouts_sent += len(amounts)
        imported = await self._call(self.operator, "POST", "/v1/payout-confirmations",
                                    {"file_ref": self._ref("conf"), "csv": "\n".join(answers) + "\n"})
        if imported is None:
            return
        failed_ids = {str(e["payout_id"]) for e in imported.json().get("errors", [])}
        for answer in answers[1:]:
            payout_id, _, status = answer.split(",")[:3]
            if payout_id in failed_ids:
                continue
            if status == "OK":
                self.summary.payouts_confirmed += 1
                self.summary.payouts_confirmed_fen += amounts[payout_id]
            else:
                self.summary.payouts_failed += 1
                self.failed_payouts.append(int(payout_id))

    # -- the run --------------------------------------------------------------------------------------

    async def run(self) -> Summary:
        started = time.monotonic()
        deadline = started + self.o.minutes * 60
        await self.setup()
        interval = _ROUND_S / max(self.o.speed, 0.01)
        next_progress = started + self.o.progress_every_s
        while time.monotonic() < deadline and self._budget_left():
            round_started = time.monotonic()
            await self.round()
            now = time.monotonic()
            if self.o.progress is not None and now >= next_progress:
                print(self.summary.progress_line(now - started), file=self.o.progress, flush=True)
                next_progress = now + self.o.progress_every_s
            await asyncio.sleep(max(0.0, min(interval - (now - round_started), deadline - now)))
        return self.summary


async def run(options: Options, out: TextIO = sys.stdout) -> Summary:
    """Run one simulation and print its summary (also when cancelled: what was done so far)."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        simulation = Simulation(options, session)
        try:
            return await simulation.run()
        finally:
            print(simulation.summary.render(time.monotonic() - started), file=out, flush=True)


def beside(farmers: int, buyers: int, minutes: float, speed: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context for `hogx serve --demo --simulate`: once the server answers, simulate against it
    (as the configured operator key, else the demo market's operator) until it stops or `minutes` pass."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_beside(app, farmers, buyers, minutes, speed), name="simulate")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return context


async def wait_ready(url: str, *, tries: int = 300, interval_s: float = 0.1) -> None:
    """Until the gateway at `url` answers /readyz 200 (it listens once start-up is over); RuntimeError
    after `tries` attempts: a simulation against a gateway that never got ready would only fail later."""
    async with aiohttp.ClientSession() as session:
        for _ in range(tries):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(interval_s)
    raise RuntimeError(f"the gateway at {url} was not ready after {tries} tries ({tries * interval_s:g} s): "
                       "the simulation does not start")


async def _beside(app: web.Application, farmers: int, buyers: int, minutes: float, speed: float) -> None:
    from gateway import demo  # here: the demo imports the exchange port, which imports the app's modules
    from gateway.state import CONFIG, POOL

    config = app[CONFIG]
    key, secret = config.operator_key, config.operator_secret
    if key is None or secret is None:
        operator = await demo.operator(app[POOL])
        key, secret = operator.api_key, operator.api_secret
    host = "127.0.0.1" if config.host in ("", "0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}"
    try:
        await wait_ready(url)
        await run(Options(url, key, secret, farmers=farmers, buyers=buyers, minutes=minutes, speed=speed,
                          progress_every_s=30.0))
    except (RuntimeError, aiohttp.ClientError) as exc:  # the simulation must never take the server down
        _log.warning("simulation stopped: %s", exc)
