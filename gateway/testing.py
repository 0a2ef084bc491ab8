"""Run a gateway on a real loopback socket for tests and benchmarks: `async with serve(app) as url`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

__all__ = ["serve"]


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0,
                shutdown_timeout_s: float = 5.0) -> AsyncIterator[str]:
    """Start `app` on `host:port` (0: a free port) and yield its base URL; clean up on exit."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout_s, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()
