"""The `hogx` command line (also `python -m gateway`).

    hogx serve [--host 127.0.0.1] [--port 8080] [--demo]
    hogx sign [--key K] [--secret S] METHOD PATH [BODY]

`serve`: configuration comes from the environment (see `gateway.config`); flags override it. Without
`DATABASE_URL` the embedded PostgreSQL is started (data in `./.hogx/pgdata`). Migrations are applied
before the server opens. `--demo` also creates the demo market (`gateway.demo`) and prints its keys.
SIGINT/SIGTERM shut down gracefully (`gateway.server`): answer new requests 503 `not_ready` for
`HOGX_DRAIN_S` while the listener stays open, close WebSockets, then close the listener, let requests in
flight finish and drain the sequencer.

`sign`: prints the three authentication headers for one request as curl arguments
(`-H X-Hogx-Key:... -H X-Hogx-Timestamp:... -H X-Hogx-Signature:...`, no spaces inside, so
`curl $(hogx sign POST /v1/orders "$BODY") ...` works unquoted). Key and secret default to `$HOGX_KEY`
and `$HOGX_SECRET`. PATH includes the query string exactly as sent; BODY is the exact body bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import msgspec
from aiohttp import web

from exchange import store
from gateway import server
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
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sign = commands.add_parser("sign", help="print signed-request headers as curl arguments")
    sign.add_argument("method", help="HTTP method, e.g. POST")
    sign.add_argument("path", help="path with query string exactly as sent, e.g. /v1/orders?limit=10")
    sign.add_argument("body", nargs="?", default="", help="the exact request body (default: empty)")
    sign.add_argument("--key", default=os.environ.get("HOGX_KEY"), help="API key (default $HOGX_KEY)")
    sign.add_argument("--secret", default=os.environ.get("HOGX_SECRET"), help="API secret (default $HOGX_SECRET)")
    args = parser.parse_args(argv)
    if args.command == "sign":
        return _sign(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = GatewayConfig.from_env(host=args.host, port=args.port, demo=args.demo or None)
    except ConfigError as exc:
        print(f"hogx: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(config))
    return 0


async def _serve(config: GatewayConfig) -> None:
    app = await _prepare(config)
    await server.run(app, config)


def _sign(args: argparse.Namespace) -> int:
    if not args.key or not args.secret:
        print("hogx sign: set HOGX_KEY and HOGX_SECRET (or pass --key and --secret)", file=sys.stderr)
        return 2
    headers = signed_headers(args.key, args.secret, wall_clock_ms(), args.method.upper(), args.path,
                             args.body.encode())
    print(" ".join(f"-H {name}:{value}" for name, value in headers.items()))
    return 0


async def _prepare(config: GatewayConfig) -> web.Application:
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
    return create_app(msgspec.structs.replace(config, database_url=url))
