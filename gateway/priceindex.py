"""Runs the price index projection (`exchange.priceindex.IndexProjector`) while the app runs, so the
index's history (per CST day and series: trades, heads, value, sum of price x heads) is kept in
PostgreSQL (migration 0019), from the journal, exactly once.

The API's index routes and the `index` channel are `gateway.index`'s (answered from the read model's
in-memory `PriceIndex`); serving them from these tables instead, so the history need not live in
memory, is the next step (see the README). `PROJECTOR` lets a handler or a test wait for the tables:
`await app[PROJECTOR].wait_for(seq)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from exchange import priceindex
from gateway.exchange_port import EXCHANGE
from gateway.state import CONFIG

__all__ = ["PROJECTOR", "context"]

PROJECTOR: Final = web.AppKey("hogx_price_index_projector", priceindex.IndexProjector)


async def context(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: the index projector follows the journal while the app runs."""
    config = app[CONFIG]
    assert config.database_url is not None
    projector = priceindex.IndexProjector(config.database_url)
    app[PROJECTOR] = projector
    projector.attach(app[EXCHANGE].sequencer)
    await projector.start()
    try:
        yield
    finally:
        await projector.stop()
