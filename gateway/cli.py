"""The `hogx` command line (also `python -m gateway`).

    hogx serve [--host 127.0.0.1] [--port 8080] [--demo [--simulate]] [--request-log -|FILE]
    hogx sign [--key K] [--secret S] METHOD PATH [BODY]
    hogx archive --before YYYY-MM-DD --to DIR
    hogx simulate [--url http://127.0.0.1:8080] [--farmers N] [--buyers M] [--minutes T] [--speed X] [--seed S]

`serve`: configuration comes from the environment (see `gateway.config`); flags override it. Without
`DATABASE_URL` the embedded PostgreSQL is started (data in `./.hogx/pgdata`). Migrations are applied
before the server opens. `--demo` also creates the demo market (`gateway.demo`) and prints its keys.
SIGINT/SIGTERM shut down gracefully (`gateway.server`): answer new requests 503 `not_ready` for
`HOGX_DRAIN_S` while the listener stays open, close WebSockets, then close the listener, let requests in
flight finish and drain the sequencer.

`serve --demo --simulate` also runs the simulation below against the server itself, as the demo
operator, beside the demo market, until the server stops (`make run` does this).

`simulate` (`gateway.simulate`): simulated farmers, cooperatives and buyers trade on a running exchange
through its public API, as the operator key in `$HOGX_OPERATOR_KEY`/`$HOGX_OPERATOR_SECRET` (or
`--operator-key/--operator-secret`) registers them; bounded by `--minutes` and `--max-requests`; prints a
progress line and a summary.

`sign`: prints the three authentication headers for one request as curl arguments
(`-H X-Hogx-Key:... -H X-Hogx-Timestamp:... -H X-Hogx-Signature:...`, no spaces inside, so
`curl $(hogx sign POST /v1/orders "$BODY") ...` works unquoted). Key and secret default to `$HOGX_KEY`
and `$HOGX_SECRET`. PATH includes the query string exactly as sent; BODY is the exact body bytes.

`archive`: moves the journal's day partitions (migration 0013) that end on or before the start of
`--before` (UTC) out of the database into `--to` (`exchange.store.archive_journal`: one binary COPY file
and one JSON manifest per day), after restoring the latest snapshot and checking its state hash. It
refuses (exit 1, nothing archived) when a chosen day holds a journal row at or after the latest
snapshot's seq: recovery (snapshot + tail) needs it. Uses `DATABASE_URL` (or the embedded server), like
`serve`; safe while the exchange runs (the writer is not blocked). Exit 0 prints one line per day.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
from aiohttp import web

from exchange import store
from exchange.sequencer import RecoveryError, restore_snapshot
from gateway import requestlog, server, simulate
from gateway.app import create_app
from gateway.auth import wall_clock_ms
from gateway.client import signed_headers
from gateway.config import ConfigError, GatewayConfig

__all__ = ["main"]

_log = logging.getLogger("hogx")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hogx", description="hogx live-hog exchange")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the exchange gateway (HTTP + WebSocket)")
    serve.add_argument("--host", help="bind address (default $HOGX_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default $HOGX_PORT or 8080)")
    serve.add_argument("--demo", action="store_true", help="also create a demo market and participants")
    serve.add_argument("--simulate", action="store_true",
                       help="with --demo: also simulate traders against this server until it stops")
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    serve.add_argument("--request-log", default="-",
                       help="where the JSON request log goes: - for stderr (default) or a file to append to")
    sim = commands.add_parser("simulate", help="drive a running exchange with simulated traders")
    sim.add_argument("--url", default=os.environ.get("HOGX_URL", "http://127.0.0.1:8080"),
                          help="the exchange (default $HOGX_URL or http://127.0.0.1:8080); nothing else is called")
    sim.add_argument("--operator-key", default=os.environ.get("HOGX_OPERATOR_KEY"),
                          help="an operator's API key (default $HOGX_OPERATOR_KEY)")
    sim.add_argument("--operator-secret", default=os.environ.get("HOGX_OPERATOR_SECRET"),
                          help="its secret (default $HOGX_OPERATOR_SECRET)")
    sim.add_argument("--farmers", type=_bounded(int, 1, 1000), default=10, help="farmers (default 10)")
    sim.add_argument("--buyers", type=_bounded(int, 1, 1000), default=5, help="buyers (default 5)")
    sim.add_argument("--minutes", type=_bounded(float, 0.01, 24 * 60), default=1.0,
                          help="how long to run, wall-clock minutes (default 1)")
    sim.add_argument("--speed", type=_bounded(float, 0.01, 100), default=1.0,
                          help="rounds per half second (default 1)")
    sim.add_argument("--seed", type=int, help="random seed (repeatable choices)")
    sim.add_argument("--max-requests", type=_bounded(int, 1, 10**8), default=1_000_000,
                          help="stop after this many requests (default 1,000,000)")
    sign = commands.add_parser("sign", help="print signed-request headers as curl arguments")
    sign.add_argument("method", help="HTTP method, e.g. POST")
    sign.add_argument("path", help="path with query string exactly as sent, e.g. /v1/orders?limit=10")
    sign.add_argument("body", nargs="?", default="", help="the exact request body (default: empty)")
    sign.add_argument("--key", default=os.environ.get("HOGX_KEY"), help="API key (default $HOGX_KEY)")
    sign.add_argument("--secret", default=os.environ.get("HOGX_SECRET"), help="API secret (default $HOGX_SECRET)")
    archive = commands.add_parser("archive", help="archive old journal days that recovery no longer needs")
    archive.add_argument("--before", required=True, type=date.fromisoformat,
                         help="archive the days before this UTC date (YYYY-MM-DD)")
    archive.add_argument("--to", required=True, type=Path, help="directory for the days' files and manifests")
    args = parser.parse_args(argv)
    if args.command == "sign":
        return _sign(args)
    if args.command == "archive":
        return asyncio.run(_archive(args.before, args.to))
    if args.command == "simulate":
        return _simulate(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = GatewayConfig.from_env(host=args.host, port=args.port, demo=args.demo or None)
    except ConfigError as exc:
        print(f"hogx: {exc}", file=sys.stderr)
        return 2
    if args.simulate and not config.demo:
        print("hogx: --simulate needs --demo (its operator registers the simulated traders)", file=sys.stderr)
        return 2
    request_log = requestlog.configure(args.request_log)
    try:
        asyncio.run(_serve(config, with_simulation=args.simulate))
    finally:
        request_log.stop()  # the lines still queued are written
    return 0


async def _serve(config: GatewayConfig, *, with_simulation: bool) -> None:
    app = await _prepare(config, with_simulation=with_simulation)
    await server.run(app, config)


def _bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def _simulate(args: argparse.Namespace) -> int:
    if not args.operator_key or not args.operator_secret:
        print("hogx simulate: set HOGX_OPERATOR_KEY and HOGX_OPERATOR_SECRET (or pass --operator-key and "
              "--operator-secret)", file=sys.stderr)
        return 2
    options = simulate.Options(args.url, args.operator_key, args.operator_secret, farmers=args.farmers,
                               buyers=args.buyers, minutes=args.minutes, speed=args.speed, seed=args.seed,
                               max_requests=args.max_requests)
    try:
        asyncio.run(simulate.run(options))
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, aiohttp.ClientError) as exc:
        print(f"hogx simulate: {exc}", file=sys.stderr)
        return 1
    return 0


def _sign(args: argparse.Namespace) -> int:
    if not args.key or not args.secret:
        print("hogx sign: set HOGX_KEY and HOGX_SECRET (or pass --key and --secret)", file=sys.stderr)
        return 2
    headers = signed_headers(args.key, args.secret, wall_clock_ms(), args.method.upper(), args.path,
                             args.body.encode())
    print(" ".join(f"-H {name}:{value}" for name, value in headers.items()))
    return 0


async def _archive(before: date, directory: Path) -> int:
    url, server = await store.resolve_database_url()
    try:
        conn = await asyncpg.connect(url)
        try:
            before_ns = int(datetime(before.year, before.month, before.day, tzinfo=UTC).timestamp()) * 10**9
            archived = await store.archive_journal(conn, before_ns, directory, verify_snapshot=restore_snapshot)
        finally:
            await conn.close()
    except (store.ArchiveRefused, RecoveryError) as exc:
        print(f"hogx archive: refused: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
    for day in archived:
        print(f"{day.name}: {day.rows} rows (seq {day.first_seq}..{day.last_seq}) -> {day.path}")
    if not archived:
        print(f"nothing to archive before {before}")
    return 0


async def _prepare(config: GatewayConfig, *, with_simulation: bool = False) -> web.Application:
    """Find (or start) the database, bring its schema up to date, then build the app."""
    url = config.database_url
    if not url:
        url, _server = await store.resolve_database_url()  # the embedded server stops at exit
    pool = await store.create_pool(url, min_size=1, max_size=1)
    try:
        applied = await store.migrate(pool)
    finally:
        await pool.close()
    if applied:
        _log.info("applied migrations %s", applied)
    app = create_app(msgspec.structs.replace(config, database_url=url))
    if with_simulation:
        app.cleanup_ctx.append(simulate.beside(farmers=12, buyers=6, minutes=60, speed=1.0))
    return app
