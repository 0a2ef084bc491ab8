"""Runs the price index projection (`exchange.priceindex.IndexProjector`) while the app runs, so the
index's history (per CST day and series: trades, heads, value, sum of price x heads) is kept in
PostgreSQL (migration 0019), from the journal, exactly once.

The API's index routes and the `index` channel are `gateway.index`'s: the rows still moving from the
read model's in-memory `PriceIndex`, the final ones from these tables. After each batch the projector's
watermark is handed to the index (`PriceIndex.projected_seq`), which lets a final row go only once the
projection has passed it. `PROJECTOR` lets a handler or a test wait for the tables:
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
    port = app[EXCHANGE]
    projector.attach(port.sequencer)

    def follow(_batch: object, _digest: object) -> None:
        # how far the projection is, for the read model's index to let go of the final rows it holds
        index = port.read_model.index
        index.projected_seq = max(index.projected_seq, projector.projected_seq)

    port.add_listener(follow)
    await projector.start()
    try:
        yield
    finally:
        await projector.stop()
