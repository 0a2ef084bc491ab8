"""Order history the gateway's read model forgot, from PostgreSQL.

The in-memory read model (`gateway.readmodel`) keeps open orders and recent history only; orders closed
and fills made longer than the retention window ago are answered from the `orders` and `trades` tables
that `exchange.readmodel.Projector` keeps (migration 0005). The read model forgets only what those
tables already hold, so between the two every order and fill is found, and answered in the same shape
as from memory: an order's execution report with all its fills, pages newest first whose cursors are
order ids and trade ids.

These functions merge the two: memory first (it is exact as of the last commit), PostgreSQL for the ids
memory says it no longer holds (`ReadModel.forgotten_orders`, `forgotten_fills`).
"""

from __future__ import annotations

from typing import Final

import asyncpg

from gateway.readmodel import OrderRecord, ReadModel
from gateway.schemas import SIDE_NAME, Fill, Liquidity, OrderStatus

__all__ = ["forgotten_order", "list_fills", "list_orders"]

_NS_PER_MS: Final = 1_000_000
_MAX_ID: Final = 2**63 - 1
_ORDER_COLUMNS: Final = (
    "order_id, participant_id, client_order_id, instrument, side, order_type, time_in_force, price_fen, "
    "quantity_heads, remaining_heads, lot_id, expire_at_ns, created_ts_ns, updated_ts_ns, filled_heads, status"
)
# A participant's side of each trade of some of its orders (by order id), oldest first.
_FILLS_OF_ORDERS: Final = """
SELECT trade_id, order_id, instrument, side, price_fen, quantity_heads, taker_side, ts_ns, lot_id FROM (
    SELECT trade_id, buy_order_id AS order_id, instrument, 1 AS side, price_fen, quantity_heads, taker_side,
           ts_ns, lot_id
      FROM trades WHERE buyer_id = $1 AND buy_order_id = ANY($2::bigint[])
    UNION ALL
    SELECT trade_id, sell_order_id, instrument, 2, price_fen, quantity_heads, taker_side, ts_ns, lot_id
      FROM trades WHERE seller_id = $1 AND sell_order_id = ANY($2::bigint[])) AS fills
ORDER BY trade_id"""
# A participant's fills with trade ids below $3, newest first.
_FILLS_BELOW: Final = """
SELECT trade_id, order_id, instrument, side, price_fen, quantity_heads, taker_side, ts_ns, lot_id FROM (
    SELECT trade_id, buy_order_id AS order_id, instrument, 1 AS side, price_fen, quantity_heads, taker_side,
           ts_ns, lot_id
      FROM trades WHERE buyer_id = $1 AND trade_id < $3 AND sell_order_id <> 0
    UNION ALL
    SELECT trade_id, sell_order_id, instrument, 2, price_fen, quantity_heads, taker_side, ts_ns, lot_id
      FROM trades WHERE seller_id = $1 AND trade_id < $3 AND sell_order_id <> 0) AS fills
WHERE $2::text IS NULL OR instrument = $2
ORDER BY trade_id DESC LIMIT $4"""


def _fill(row: asyncpg.Record) -> Fill:
    trade_id, order_id, instrument, side, price_fen, heads, taker_side, ts_ns, lot_id = row
    liquidity = Liquidity.AUCTION if taker_side == 0 else (Liquidity.TAKER if taker_side == side else Liquidity.MAKER)
    return Fill(trade_id, order_id, instrument, SIDE_NAME[side], price_fen, heads, liquidity, ts_ns // _NS_PER_MS,
                lot_id)


async def _records(db: asyncpg.Pool, participant_id: int, rows: list[asyncpg.Record]) -> list[OrderRecord]:
    """Order records of `orders` rows, each with all its fills."""
    if not rows:
        return []
    fills: dict[int, list[Fill]] = {}
    for row in await db.fetch(_FILLS_OF_ORDERS, participant_id, [r["order_id"] for r in rows]):
        fills.setdefault(row["order_id"], []).append(_fill(row))
    return [OrderRecord(*row[:-1], status=OrderStatus(row[-1]), fills=tuple(fills.get(row[0], ())))
            for row in rows]


async def forgotten_order(db: asyncpg.Pool, read_model: ReadModel, participant_id: int,
                          order_id: int) -> OrderRecord | None:
    """The participant's order that memory no longer holds, from PostgreSQL; None if it is not one."""
    if order_id > read_model.forgotten_orders.get(participant_id, 0):
        return None  # never forgotten: memory's answer (none) stands
    rows = await db.fetch(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE order_id = $1 AND participant_id = $2",
                          order_id, participant_id)
    records = await _records(db, participant_id, rows)
    return records[0] if records else None


async def list_orders(db: asyncpg.Pool, read_model: ReadModel, participant_id: int, *,
                      status: OrderStatus | None, instrument: str | None, before_id: int | None,
                      limit: int) -> tuple[list[OrderRecord], int | None]:
    """`ReadModel.list_orders` over memory and what it forgot: newest first, order ids below `before_id`."""
    page, next_id = read_model.list_orders(participant_id, status=status, instrument=instrument,
                                           before_id=before_id, limit=limit)
    forgotten = read_model.forgotten_orders.get(participant_id)
    if forgotten is None:
        return page, next_id
    # forgotten ids below the cursor, but not below where memory's scan stopped (its next page goes on there)
    below = min(_MAX_ID if before_id is None else before_id, forgotten + 1)
    rows = await db.fetch(
        f"""SELECT {_ORDER_COLUMNS} FROM orders
            WHERE participant_id = $1 AND order_id IS NOT NULL AND order_id < $2 AND order_id >= $3
              AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR instrument = $5)
            ORDER BY seq DESC LIMIT $6""",
        participant_id, below, next_id or 0, None if status is None else status.value, instrument, limit + 1)
    held = read_model.orders
    more = len(rows) > limit or next_id is not None
    merged = sorted([*page, *await _records(db, participant_id, [r for r in rows[:limit] if r[0] not in held])],
                    key=lambda rec: rec.order_id, reverse=True)
    more = more or len(merged) > limit
    merged = merged[:limit]
    return merged, (merged[-1].order_id if more and merged else next_id)


async def list_fills(db: asyncpg.Pool, read_model: ReadModel, participant_id: int, *, instrument: str | None,
                     before_trade_id: int | None, limit: int) -> tuple[list[Fill], int | None]:
    """`ReadModel.list_fills` over memory and what it forgot: newest first, trade ids below `before_trade_id`."""
    page, next_id = read_model.list_fills(participant_id, instrument=instrument, before_trade_id=before_trade_id,
                                          limit=limit)
    forgotten = read_model.forgotten_fills.get(participant_id)
    if forgotten is None or next_id is not None:
        return page, next_id  # nothing forgotten, or memory goes on
    # memory holds this participant's fills above `forgotten` only: the rest is in the database, which
    # is asked even when memory's page is whole (need 0), to say whether a next page exists
    below = min(_MAX_ID if before_trade_id is None else before_trade_id, forgotten + 1)
    need = limit - len(page)
    rows = await db.fetch(_FILLS_BELOW, participant_id, instrument, below, need + 1)
    page = [*page, *(_fill(row) for row in rows[:need])]
    return page, (page[-1].trade_id if len(rows) > need else None)
