"""Gateway benchmark: durable orders per second over HTTP and over the WebSocket, against the ceiling of
aiohttp answering a constant on the same machine with the same client.

    python -m benchmarks.gateway --seconds 10 --json

Uses `DATABASE_URL` when set, otherwise the embedded server (`./.hogx/pgdata`); either way in a scratch
database created and dropped by the run, with the server's own durability settings.

1. Trivial ceiling: a separate process runs aiohttp with one POST handler that reads the body and
   answers a constant JSON. The same client as in step 2 (same concurrency, same signed bodies and
   headers) drives it for `--seconds`.
2. HTTP order entry: `hogx serve` in a separate process on the scratch database, an instrument listed,
   buyers (each with confirmed cash: the exchange runs with settlement, so a bid must be covered) and
   farmers (with lots) registered. `--http-concurrency` client tasks on keep-alive
   connections each POST a signed limit order, wait for the execution report (sent only once the
   order is journaled), and go again. Buys and sells overlap, so most trade at once and the book stays thin.
   Counted: 201 answers; latency: request to response, measured by the client.
3. WebSocket order entry: `--ws-connections` logged-in sockets each keep `--ws-window` `place_order`
   messages in flight. Counted: `result` replies (durable acks) received within the run; latency:
   send to reply per request id.

Every answer is tallied by order status (NEW, PARTIALLY_FILLED, FILLED, ...) or rejection code
(`http_statuses`, `ws_statuses`). All the orders are valid and covered, so a phase with fewer than 99 %
accepted is a broken set-up, not a measurement: the run prints its figures with `invalid` set and
exits with an error.

The server runs as `hogx serve` runs in production (the PostgreSQL read-model projector on, as by
default; `--no-read-models` measures the lighter path without it), its JSON request log included (written to this
script's stderr: redirect it, `2>requests.log`, to keep it off the terminal). Each phase has a short
untimed warm-up. The client is one process of this script; on a 2-core machine
the server, PostgreSQL and the client share the cores, so figures are for the whole system.
Prints figures, then as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from benchmarks.journal import scratch_database
from gateway.client import signed_headers
from gateway.signing import WS_SIGNED_PATH, sign

SYMBOL = "RC-LH-WSY"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


class _ReplyData(msgspec.Struct):
    status: str = "?"


class _Reply(msgspec.Struct):
    """What the WebSocket client reads of a reply (the rest is skipped, not built: the client shares
    the machine with the server)."""

    type: str = ""
    id: int | str | None = None
    code: str = "?"
    data: _ReplyData | None = None


_decode_reply = msgspec.json.Decoder(_Reply).decode


# -- servers ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def trivial_app() -> web.Application:
    """The ceiling: read the body, answer a constant."""
    body = b'{"ok":true}'

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/orders", handle)
    return app


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc); 0.0 where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def subprocess_server(args: list[str], env: dict[str, str], ready_url: str, *, wrapper: Sequence[str] = (),
                            ready_timeout_s: float = 60.0,
                            quiet: bool = False) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run a server process (`python args`, behind `wrapper`, e.g. valgrind) until the block ends; wait
    until `ready_url` answers 200. `quiet`: its stderr is discarded."""
    proc = await asyncio.create_subprocess_exec(*wrapper, sys.executable, *args, env=env,
                                                stderr=asyncio.subprocess.DEVNULL if quiet else None)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(round(ready_timeout_s / 0.05)):
                if proc.returncode is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(ready_url) as reply:
                        if reply.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"server did not become ready in {ready_timeout_s:g} s")
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# -- participants and orders ----------------------------------------------------------------------------


@dataclass
class Trader:
    api_key: str
    api_secret: str
    side: str
    lot_id: int = 0
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def order(self, rng: random.Random, tag: str) -> dict[str, Any]:
        """A 1-head limit order across the touch (bids 2800-2820, asks 2790-2810 fen/kg): most trade at
        once, the rest rest briefly, so the book stays a few levels deep as in a liquid session."""
        base = 2800 if self.side == "buy" else 2790
        body: dict[str, Any] = {"client_order_id": f"{tag}{next(self.ids)}", "instrument": SYMBOL,
                                "side": self.side, "price_fen": base + 10 * rng.randrange(3), "quantity_heads": 1}
        if self.lot_id:
            body["lot_id"] = self.lot_id
        return body


async def _signed_post(session: aiohttp.ClientSession, base: str, key: str, secret: str, path: str,
                       body: dict[str, Any]) -> Any:
    data = _encode(body)
    headers = signed_headers(key, secret, time.time_ns() // 1_000_000, "POST", path, data)
    headers["Content-Type"] = "application/json"
    async with session.post(base + path, data=data, headers=headers) as reply:
        payload = await reply.read()
        if reply.status not in (200, 201):
            raise RuntimeError(f"POST {path}: {reply.status} {payload[:200]!r}")
        return _decode(payload)


# Every bench buyer's confirmed cash. A bid holds heads x animal_max_g x price (140 kg x 28.20 ¥/kg
# = 394,800 fen a head at the top bid), so this covers about 2.5 million one-head bids per buyer: far
# more than a run places, so no order is ever refused for want of cash.
BUYER_CASH_FEN = 10**12
HOG_INSTRUMENT: dict[str, Any] = {
    "symbol": SYMBOL, "product_class": "finishing_hog", "breed_class": "wai_san_yuan",
    "delivery_point": "Rongchang, Chongqing", "lot_avg_min_g": 100_000, "lot_avg_max_g": 120_000,
    "animal_min_g": 90_000, "animal_max_g": 140_000, "tick_fen": 10, "min_order_heads": 1,
    "max_order_heads": 500, "price_band_bps": 400, "reference_price_fen": 2800,
}


async def prepare_market(base: str, operator: tuple[str, str], pairs: int) -> list[Trader]:
    """List the instrument; register `pairs` buyers, each with `BUYER_CASH_FEN` of confirmed cash (the
    exchange runs with settlement: a bid must be covered), and `pairs` farmers with lots of 1,000,000
    heads. Participants carry a settlement profile (masked ID number, bank account) like real ones."""
    key, secret = operator
    async with aiohttp.ClientSession() as session:
        await _signed_post(session, base, key, secret, "/v1/instruments", HOG_INSTRUMENT)
        traders: list[Trader] = []
        for i in range(pairs):
            for role, side in (("buyer", "buy"), ("farmer", "sell")):
                issued = await _signed_post(session, base, key, secret, "/v1/admin/participants", {
                    "role": role, "name": f"bench {role} {i}", "id_number_masked": "5002**********1234",
                    "bank_account": f"6222 0200 0000 {i:04d}"})
                trader = Trader(issued["api_key"], issued["api_secret"], side)
                if side == "buy":
                    await _signed_post(session, base, key, secret, "/v1/deposits", {
                        "deposit_ref": f"bench-cash-{issued['participant_id']}",
                        "owner_id": issued["participant_id"], "account": "trading_cash",
                        "amount_fen": BUYER_CASH_FEN})
                else:
                    lot = await _signed_post(session, base, trader.api_key, trader.api_secret, "/v1/lots", {
                        "instrument": SYMBOL, "heads": 1_000_000, "avg_weight_g": 110_000,
                        "origin": "荣昌区", "quarantine_cert": f"渝动检 {i:06d}"})
                    trader.lot_id = lot["lot_id"]
                traders.append(trader)
        return traders


# -- load -----------------------------------------------------------------------------------------------


# A phase fails unless at least this share of its answers were execution reports: the benchmark's
# orders are all valid and covered, so a rejection means the set-up is wrong (as when settlement made
# every unfunded bid `insufficient_funds`), and a rate of rejections is not a rate of orders.
MIN_ACCEPTED_SHARE = 0.99


@dataclass
class Load:
    acks: int = 0
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # error codes of answers in the timed window
    # Every answer of the phase (warm-up and drain included): the order's status (NEW, FILLED, ...) for an
    # execution report, "rejected:<code>" for an error.
    statuses: Counter[str] = field(default_factory=Counter)

    def figures(self, seconds: float) -> tuple[float, float, float]:
        lat = sorted(self.latencies_s)
        if not lat:
            return 0.0, 0.0, 0.0
        return (self.acks / seconds, 1000 * lat[len(lat) // 2], 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))])

    def rejections(self) -> dict[str, int]:
        return {k.removeprefix("rejected:"): n for k, n in self.statuses.most_common() if k.startswith("rejected:")}

    def check_accepted(self, phase: str) -> None:
        """Raise unless the phase's orders were accepted (see `MIN_ACCEPTED_SHARE`)."""
        answers = sum(self.statuses.values())
        rejected = sum(self.rejections().values())
        if self.acks == 0 or answers == 0 or rejected > (1 - MIN_ACCEPTED_SHARE) * answers:
            raise BenchmarkInvalid(f"{phase}: {answers - rejected} of {answers} orders accepted "
                                   f"({self.acks} acks timed); rejections: {self.rejections()}")


class BenchmarkInvalid(RuntimeError):
    """The run measured something other than accepted orders."""


async def drive_http(url: str, traders: list[Trader], concurrency: int, seconds: float, warmup_s: float,
                     tag: str, ok_status: int, reports: bool = True) -> Load:
    """`concurrency` tasks POST signed orders back to back; only answers inside the timed window count.
    With `reports`, every answer is decoded into `Load.statuses` (the trivial server's are not)."""
    load = Load()
    path = "/v1/orders"
    start = time.perf_counter() + warmup_s
    end = start + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(index: int) -> None:
            trader = traders[index % len(traders)]
            rng = random.Random(index)
            while (now := time.perf_counter()) < end:
                data = _encode(trader.order(rng, f"{tag}{index}-"))
                headers = signed_headers(trader.api_key, trader.api_secret, time.time_ns() // 1_000_000, "POST",
                                         path, data)
                headers["Content-Type"] = "application/json"
                async with session.post(url + path, data=data, headers=headers) as reply:
                    payload = await reply.read()
                    status = reply.status
                done = time.perf_counter()
                if reports:
                    load.statuses[_answer_status(status == ok_status, payload)] += 1
                if start <= now and done <= end:
                    if status == ok_status:
                        load.acks += 1
                        load.latencies_s.append(done - now)
                    else:
                        load.errors[str(status)] += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return load


async def drive_ws(url: str, traders: list[Trader], connections: int, window: int, seconds: float,
                   warmup_s: float) -> Load:
    """Each socket keeps `window` place_order messages in flight; acks inside the timed window count."""
    load = Load()
    start = time.perf_counter() + warmup_s
    end = start + seconds
    async with aiohttp.ClientSession() as session:

        async def connection(index: int) -> None:
            trader = traders[index % len(traders)]
            ws = await session.ws_connect(url + "/v1/ws", max_msg_size=0)
            ts_ms = time.time_ns() // 1_000_000
            await ws.send_bytes(_encode({"op": "auth", "key": trader.api_key, "timestamp_ms": ts_ms,
                                         "signature": sign(trader.api_secret, ts_ms, "GET", WS_SIGNED_PATH)}))
            login = _decode((await ws.receive()).data)
            if login.get("type") != "result":
                raise RuntimeError(f"WebSocket login refused: {login}")
            slots = asyncio.Semaphore(window)
            sent_at: dict[int, float] = {}
            rng = random.Random(1000 + index)
            stop = asyncio.Event()

            async def reader() -> None:
                while True:
                    msg = await ws.receive()
                    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        return
                    reply = _decode_reply(msg.data)
                    began = sent_at.pop(reply.id, None)  # type: ignore[arg-type]
                    if began is None:
                        continue
                    slots.release()
                    done = time.perf_counter()
                    data = reply.data if reply.type == "result" else None
                    load.statuses[f"rejected:{reply.code}" if data is None else data.status] += 1
                    if data is None:
                        load.errors[reply.code] += 1
                    elif start <= began and done <= end:
                        load.acks += 1
                        load.latencies_s.append(done - began)
                    if stop.is_set() and not sent_at:
                        return

            reading = asyncio.create_task(reader())
            request_ids = itertools.count(1)
            while time.perf_counter() < end:
                await slots.acquire()
                request_id = next(request_ids)
                message = {"op": "place_order", "id": request_id, **trader.order(rng, f"w{index}-")}
                sent_at[request_id] = time.perf_counter()
                await ws.send_bytes(_encode(message))
            stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reading, 10)
            await ws.close()

        await asyncio.gather(*(connection(i) for i in range(connections)))
    return load


def _answer_status(ok: bool, payload: bytes) -> str:
    """An HTTP answer's entry in `Load.statuses`."""
    try:
        body = _decode(payload)
    except msgspec.DecodeError:
        return "rejected:not_json"
    if ok:
        return str(body.get("status", "?"))
    return f"rejected:{body.get('code', '?')}"


# -- the run --------------------------------------------------------------------------------------------


def outside_env() -> dict[str, str]:
    """This process's environment without `HOGX_` settings: every server starts from its defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HOGX_")}


def server_env(dsn: str, operator: tuple[str, str], read_models: bool, ws_window: int) -> dict[str, str]:
    """`hogx serve` as in production on database `dsn`, but with rate limits lifted (the load comes from
    one address and few keys) and room for `ws_window` messages in flight per socket."""
    return outside_env() | {
        "DATABASE_URL": dsn, "HOGX_OPERATOR_KEY": operator[0], "HOGX_OPERATOR_SECRET": operator[1],
        "HOGX_RATE_LIMIT_PER_S": "1000000000", "HOGX_RATE_LIMIT_BURST": "1000000000",
        "HOGX_WS_MAX_INFLIGHT": str(max(1024, ws_window)), "HOGX_DB_POOL_MAX": "4",
        "HOGX_PROJECT_READ_MODELS": "true" if read_models else "false",
    }


def serve_args(port: int) -> list[str]:
    return ["-m", "gateway", "serve", "--port", str(port), "--log-level", "WARNING"]


def new_operator() -> tuple[str, str]:
    return ("bench_operator_" + secrets.token_hex(4), secrets.token_hex(24))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = outside_env()
    trivial_port = _free_port()
    trivial_url = f"http://127.0.0.1:{trivial_port}"
    async with subprocess_server(["-m", "benchmarks.gateway", "--trivial-server", str(trivial_port)], env,
                                 trivial_url + "/ready") as trivial_proc:
        fake = [Trader("hk_" + secrets.token_hex(12), secrets.token_hex(32), side) for side in ("buy", "sell")]
        cpu_s = cpu_seconds(trivial_proc.pid)
        trivial = await drive_http(trivial_url, fake, args.http_concurrency, args.seconds, args.warmup_s, "t", 200,
                                   reports=False)
        trivial_cpu_s = cpu_seconds(trivial_proc.pid) - cpu_s
    async with scratch_database() as dsn:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        operator = new_operator()
        async with subprocess_server(serve_args(port), server_env(dsn, operator, args.read_models, args.ws_window),
                                     base + "/readyz") as server:
            traders = await prepare_market(base, operator, args.pairs)
            cpu_s = cpu_seconds(server.pid)
            http = await drive_http(base, traders, args.http_concurrency, args.seconds, args.warmup_s, "h", 201)
            http_cpu_s, cpu_s = cpu_seconds(server.pid) - cpu_s, cpu_seconds(server.pid)
            ws = await drive_ws(base, traders, args.ws_connections, args.ws_window, args.seconds, args.warmup_s)
            ws_cpu_s = cpu_seconds(server.pid) - cpu_s
    trivial_rps = trivial.acks / args.seconds
    http_rate, http_p50, http_p99 = http.figures(args.seconds)
    ws_rate, ws_p50, ws_p99 = ws.figures(args.seconds)
    return {
        "seconds": args.seconds,
        "http_concurrency": args.http_concurrency,
        "ws_connections": args.ws_connections,
        "ws_window": args.ws_window,
        "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
        "read_models": args.read_models,
        "http_errors": dict(http.errors),
        "ws_errors": dict(ws.errors),
        # Every answer by order status, rejections as "rejected:<code>" (see `Load.statuses`).
        "http_statuses": dict(http.statuses.most_common()),
        "ws_statuses": dict(ws.statuses.most_common()),
        "invalid": _invalid(http, ws),
        "trivial_p99_ms": round(trivial.figures(args.seconds)[2], 2),
        # Server CPU per answer (warm-up included in both counts): robust to other load on the machine.
        "trivial_server_cpu_us_per_request": _per(trivial_cpu_s, trivial, args),
        "http_server_cpu_us_per_order": _per(http_cpu_s, http, args),
        "ws_server_cpu_us_per_order": _per(ws_cpu_s, ws, args),
        "cpu_count": os.cpu_count(),
        "http_orders_per_s": round(http_rate),
        "http_p50_ms": round(http_p50, 2),
        "http_p99_ms": round(http_p99, 2),
        "ws_orders_per_s": round(ws_rate),
        "ws_p50_ms": round(ws_p50, 2),
        "ws_p99_ms": round(ws_p99, 2),
        "trivial_requests_per_s": round(trivial_rps),
        "ratio_http_vs_trivial": round(http_rate / trivial_rps, 3) if trivial_rps else 0.0,
    }


def _invalid(http: Load, ws: Load) -> str | None:
    """Why the run does not measure accepted orders, or None."""
    problems: list[str] = []
    for phase, load in (("HTTP", http), ("WebSocket", ws)):
        try:
            load.check_accepted(phase)
        except BenchmarkInvalid as exc:
            problems.append(str(exc))
    return "; ".join(problems) or None


def _per(cpu_s: float, load: Load, args: argparse.Namespace) -> float:
    """CPU microseconds per acknowledged request, counting warm-up answers at the timed rate."""
    answered = load.acks * (args.seconds + args.warmup_s) / args.seconds
    return round(1e6 * cpu_s / answered, 1) if answered else 0.0


def _serve_trivial(port: int) -> None:
    app = trivial_app()

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/ready", ready)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=lambda *_: None)


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per phase")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="untimed warm-up per phase")
    parser.add_argument("--http-concurrency", type=int, default=32, help="client tasks posting orders")
    parser.add_argument("--ws-connections", type=int, default=8)
    parser.add_argument("--ws-window", type=int, default=24,
                        help="place_order messages in flight per socket (32 saturates: more queueing, same rate)")
    parser.add_argument("--pairs", type=int, default=8, help="buyers and as many farmers")
    parser.add_argument("--no-read-models", dest="read_models", action="store_false",
                        help="a lighter path than `hogx serve`: without the PostgreSQL read-model projector "
                             "(on by default, as in the gateway: HOGX_PROJECT_READ_MODELS)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--trivial-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trivial_server:
        _serve_trivial(args.trivial_server)
        return
    result = asyncio.run(run(args))
    for key, value in result.items():
        out(f"{key:>24}: {value}")
    if args.json:
        out(json.dumps(result))
    if result["invalid"]:
        raise SystemExit(f"INVALID RUN: {result['invalid']}")


if __name__ == "__main__":
    main()
