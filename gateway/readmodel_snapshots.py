"""Snapshots of the gateway's read model in PostgreSQL (table `read_model_snapshots`, migration 0022).

The gateway saves its read model every `snapshot_every` commands and at a clean stop, in the format
of gateway/readmodel_codec.py (explicit and versioned; encoded a slice at a time between batches), and
starts from the newest one at or before the recovered seq, folding only the journal after it
(`gateway.exchange_port.Shard`). So a start reads what is open plus a bounded tail, not the history, and
works after old journal days were archived: the snapshot's seq is the `gateway_read_model` watermark in
`projections`, and archival (`exchange.store.archive_journal`) refuses rows after it.

The lots and lot auctions the read model retired (sold out, ended, older than the retention window) are
written with the snapshot, in its transaction, to `lot_history` and `auction_history` (migration 0023);
the lot and auction routes read what memory no longer holds from there (`retired_lot`, `retired_lots`,
`retired_auction`, `retired_auctions`).

Only the newest `KEEP` snapshots are kept: one is enough to start, the one before it covers a snapshot
that does not load (a new snapshot format, say), and the watermark is never moved back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import asyncpg
import msgspec

from exchange.domain import LotAuction
from gateway.readmodel import LotRecord

__all__ = ["KEEP", "PROJECTION", "latest_read_model", "retired_auction", "retired_auctions", "retired_lot",
           "retired_lots", "save_read_model"]

PROJECTION: Final = "gateway_read_model"
KEEP: Final = 2


_LOT = msgspec.msgpack.Decoder(LotRecord)
_AUCTION = msgspec.msgpack.Decoder(LotAuction)
_ENCODE = msgspec.msgpack.encode


async def save_read_model(conn: asyncpg.Connection, seq: int, state: bytes, lots: Iterable[LotRecord] = (),
                          auctions: Iterable[LotAuction] = ()) -> None:
    """Store the read model as of `seq` with the lots and auctions it retired, move the watermark to it,
    drop all but the newest `KEEP`."""
    async with conn.transaction():
        await conn.executemany("INSERT INTO lot_history (lot_id, seller_id, record) VALUES ($1, $2, $3) "
                               "ON CONFLICT (lot_id) DO NOTHING",
                               [(r.lot.lot_id, r.lot.seller_id, _ENCODE(r)) for r in lots])
        await conn.executemany("INSERT INTO auction_history (auction_id, state, record) VALUES ($1, $2, $3) "
                               "ON CONFLICT (auction_id) DO NOTHING",
                               [(a.auction_id, int(a.state), _ENCODE(a)) for a in auctions])
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


async def retired_lot(db: asyncpg.Pool | asyncpg.Connection, seller_id: int, lot_id: int) -> LotRecord | None:
    record = await db.fetchval("SELECT record FROM lot_history WHERE lot_id = $1 AND seller_id = $2",
                               lot_id, seller_id)
    return None if record is None else _LOT.decode(record)


async def retired_lots(db: asyncpg.Pool | asyncpg.Connection, seller_id: int) -> list[LotRecord]:
    """The seller's retired lots, oldest first."""
    rows = await db.fetch("SELECT record FROM lot_history WHERE seller_id = $1 ORDER BY lot_id", seller_id)
    return [_LOT.decode(r["record"]) for r in rows]


async def retired_auction(db: asyncpg.Pool | asyncpg.Connection, auction_id: int) -> LotAuction | None:
    record = await db.fetchval("SELECT record FROM auction_history WHERE auction_id = $1", auction_id)
    return None if record is None else _AUCTION.decode(record)


async def retired_auctions(db: asyncpg.Pool | asyncpg.Connection, states: list[int], limit: int) -> list[LotAuction]:
    """Retired auctions in one of `states`, newest first, at most `limit`."""
    rows = await db.fetch("SELECT record FROM auction_history WHERE state = ANY($1::smallint[]) "
                          "ORDER BY auction_id DESC LIMIT $2", states, limit)
    return [_AUCTION.decode(r["record"]) for r in rows]
