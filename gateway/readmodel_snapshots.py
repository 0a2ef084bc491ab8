"""Snapshots of the gateway's read model in PostgreSQL (table `read_model_snapshots`, migration 0022).

The gateway saves its read model (`ReadModel.snapshot`) every `snapshot_every` commands and at a clean
stop, and starts from the newest one at or before the recovered seq, folding only the journal after it
(`gateway.exchange_port.Shard`). So a start reads what is open plus a bounded tail, not the history, and
works after old journal days were archived: the snapshot's seq is the `gateway_read_model` watermark in
`projections`, and archival (`exchange.store.archive_journal`) refuses rows after it.

Only the newest `KEEP` snapshots are kept: one is enough to start, the one before it covers a snapshot
that does not load (a new snapshot format, say), and the watermark is never moved back.
"""

from __future__ import annotations

from typing import Final

import asyncpg

__all__ = ["KEEP", "PROJECTION", "latest_read_model", "save_read_model"]

PROJECTION: Final = "gateway_read_model"
KEEP: Final = 2


async def save_read_model(conn: asyncpg.Connection, seq: int, state: bytes) -> None:
    """Store the read model as of `seq`, move the watermark to it, drop all but the newest `KEEP`."""
    async with conn.transaction():
        await conn.execute("INSERT INTO read_model_snapshots (seq, state) VALUES ($1, $2) "
                           "ON CONFLICT (seq) DO NOTHING", seq, state)
        await conn.execute("UPDATE projections SET seq = greatest(seq, $2) WHERE name = $1", PROJECTION, seq)
        await conn.execute("DELETE FROM read_model_snapshots WHERE seq < (SELECT min(seq) FROM "
                           "(SELECT seq FROM read_model_snapshots ORDER BY seq DESC LIMIT $1) AS newest)", KEEP)


async def latest_read_model(conn: asyncpg.Connection, at_or_before: int) -> list[tuple[int, bytes]]:
    """The snapshots at or before `at_or_before`, newest first (the caller takes the first that loads)."""
    rows = await conn.fetch("SELECT seq, state FROM read_model_snapshots WHERE seq <= $1 ORDER BY seq DESC",
                            at_or_before)
    return [(int(r["seq"]), bytes(r["state"])) for r in rows]
