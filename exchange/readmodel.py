"""Read models for the gateway: orders with their current state, and trades (PostgreSQL, asyncpg).

Owns the `orders`, `trades` and `projections` tables (migration 0005) and the queries on them. The
rows are derived from the journal's events only, so they can always be rebuilt from the journal.

Projection. `fold(entries)` turns (seq, command, events) into changes: new order rows (accepted, or
rejected with a well-formed client order id), patches of orders placed earlier (fills, amendments,
cancels, expiries: absolute remaining quantity, added fills, a terminal status), and trade rows.
`write_changes(conn, changes)` applies them set-wise, in the caller's transaction: one COPY of the new
orders, one `UPDATE ... FROM unnest(...)` for the patches, one COPY of the trades, and the
`projections` watermark, so a projected batch is applied exactly once. Two ways to run it:

- asynchronously (the default, chosen by measurement, see `benchmarks/journal.py --readmodel`):
  a `Projector` task (the loop is `exchange.projection.JournalProjector`'s, shared with the price
  index) follows the journal on its own connection, woken by the sequencer's commits
  (`projector.attach(sequencer)`) and polling as a fallback. Acknowledgements never wait for the
  read model, and a burst is absorbed by larger projection batches. Read-your-writes where needed:
  `await projector.wait_for(result.seq)`. Only one projector should run; a second one notices the
  moved watermark (`FOR UPDATE`) and skips ahead instead of applying anything twice. Journal rows
  missing after its watermark (archived days) stop it, logged, with `exchange.store.JournalGap`.
- in the journal's transaction: `Sequencer(..., extra_writes=project_batch)`. Always consistent with
  the journal, but every acknowledgement then also pays for the read model's indexes. Never combine
  it with a running `Projector`.

Measured (2 shared cores, 100k commands of the matching mix): keeping orders and trades costs
PostgreSQL about 11 us of CPU per command (new orders by COPY ~100k rows/s, patches ~44k rows/s,
trades ~96k rows/s, all with their indexes) against 2.8 us for the journal alone, and this process
about 5.6 us (decode, fold). In the journal's transaction the writer's backend used 13.7 us per
command instead of 2.8 and durable commands/s fell about fourfold in back-to-back runs (87.8k ->
21.7k); with the projector the acks did not wait for it, and it was 0.07 s behind at the end.

Queries take a pool or a connection and return msgspec structs (JSON-ready): `get_order`,
`get_order_by_client_id`, `list_orders`, `list_fills`, `list_trades`, `projected_seq`. Lists are
newest first with an exclusive keyset `cursor` (the `next_cursor` of the previous page; None at the
end), `limit` at most `MAX_LIMIT`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Final, Generic, TypeVar

import asyncpg
import msgspec

from exchange.commands import Command, PlaceOrder
from exchange.core import MAX_CLIENT_ORDER_ID_LEN
from exchange.domain import ExpireReason, RejectReason
from exchange.events import (
    Event,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    Rejected,
    Trade,
)
from exchange.projection import JournalProjector
from exchange.sequencer import CommittedBatch

__all__ = [
    "MAX_LIMIT",
    "ORDER_STATUSES",
    "Changes",
    "FillView",
    "OrderView",
    "Page",
    "Projector",
    "TradeView",
    "fold",
    "get_order",
    "get_order_by_client_id",
    "list_fills",
    "list_orders",
    "list_trades",
    "project_batch",
    "projected_seq",
    "write_changes",
]


NEW, PARTIALLY_FILLED, FILLED = "NEW", "PARTIALLY_FILLED", "FILLED"
CANCELED, REJECTED, EXPIRED = "CANCELED", "REJECTED", "EXPIRED"
ORDER_STATUSES: Final = (NEW, PARTIALLY_FILLED, FILLED, CANCELED, REJECTED, EXPIRED)
MAX_LIMIT: Final = 1_000
PROJECTION: Final = "orders"

Queryable = asyncpg.Pool | asyncpg.Connection
T = TypeVar("T")


# -- views --------------------------------------------------------------------------------------------------


class OrderView(msgspec.Struct, frozen=True):
    """An order and its current state. `order_id` is None for a rejected order."""

    participant_id: int
    client_order_id: str
    order_id: int | None
    instrument: str
    side: int  # exchange.domain.Side: 1 buy, 2 sell
    order_type: int
    time_in_force: int
    price_fen: int
    quantity_heads: int
    filled_heads: int
    remaining_heads: int
    status: str
    reason: str | None
    lot_id: int
    expire_at_ns: int
    seq: int
    created_ts_ns: int
    updated_seq: int
    updated_ts_ns: int


class TradeView(msgspec.Struct, frozen=True):
    """A public trade: no participant is named."""

    trade_id: int
    instrument: str
    price_fen: int
    quantity_heads: int
    taker_side: int  # 1 buy, 2 sell, 0 auction uncross
    seq: int
    ts_ns: int


class FillView(msgspec.Struct, frozen=True):
    """One participant's side of a trade."""

    trade_id: int
    order_id: int
    instrument: str
    side: int
    price_fen: int
    quantity_heads: int
    liquidity: str  # "maker", "taker" or "auction"
    seq: int
    ts_ns: int


class Page(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    next_cursor: int | None


_ORDER_COLUMNS: Final = tuple(OrderView.__struct_fields__)
_TRADE_COLUMNS: Final = (
    "trade_id", "instrument", "price_fen", "quantity_heads", "buy_order_id", "sell_order_id", "buyer_id",
    "seller_id", "lot_id", "taker_side", "seq", "ts_ns",
)  # fmt: skip
# Positions in an order row (a list while it is being folded, in _ORDER_COLUMNS order).
_FILLED, _REMAINING, _STATUS, _REASON = 9, 10, 11, 12
_PRICE, _QUANTITY, _UPDATED_SEQ, _UPDATED_TS = 7, 8, 17, 18


# -- projection: fold events into changes -------------------------------------------------------------------


class _Patch:
    """What a batch did to an order placed in an earlier batch."""

    __slots__ = ("filled_delta", "price_fen", "quantity_heads", "reason", "remaining_heads", "seq", "status", "ts_ns")

    def __init__(self) -> None:
        self.filled_delta = 0
        self.remaining_heads: int | None = None
        self.price_fen: int | None = None
        self.quantity_heads: int | None = None
        self.status: str | None = None  # only terminal statuses; the others follow from the numbers
        self.reason: str | None = None
        self.seq = 0
        self.ts_ns = 0


class Changes:
    """A folded run of journal entries, ready for `write_changes`."""

    __slots__ = ("last_seq", "new_orders", "patches", "trades")

    def __init__(self) -> None:
        self.new_orders: dict[int | tuple[int, str], list] = {}  # order id (or key if rejected) -> row
        self.patches: dict[int, _Patch] = {}
        self.trades: list[tuple] = []
        self.last_seq = 0


def fold(entries: Iterable[tuple[int, Command, list[Event]]]) -> Changes:
    """The read-model changes of journal entries (seq, command, events), in seq order."""
    changes = Changes()
    for seq, command, events in entries:
        for event in events:
            kind = event.__class__
            if kind is OrderAccepted:
                changes.new_orders[event.order_id] = _accepted_row(seq, command, event)  # type: ignore[arg-type]
            elif kind is Trade:
                _fold_trade(changes, seq, event)  # type: ignore[arg-type]
            elif kind is OrderCancelled:
                _fold_end(changes, seq, event.ts_ns, event.order_id, CANCELED, None)  # type: ignore[union-attr]
            elif kind is OrderExpired:
                reason = ExpireReason(event.reason).name  # type: ignore[union-attr]
                _fold_end(changes, seq, event.ts_ns, event.order_id, EXPIRED, reason)  # type: ignore[union-attr]
            elif kind is OrderAmended:
                _fold_amend(changes, seq, event)  # type: ignore[arg-type]
            elif kind is Rejected and command.__class__ is PlaceOrder:
                _fold_rejected(changes, seq, command, event)  # type: ignore[arg-type]
        changes.last_seq = seq
    for row in changes.new_orders.values():
        if row[_STATUS] is None:
            row[_STATUS] = _live_status(row[_FILLED], row[_REMAINING])
    return changes


def _live_status(filled_heads: int, remaining_heads: int) -> str:
    if remaining_heads == 0:
        return FILLED
    return PARTIALLY_FILLED if filled_heads else NEW


def _accepted_row(seq: int, command: PlaceOrder, event: OrderAccepted) -> list:
    return [
        event.participant_id, event.client_order_id, event.order_id, event.instrument, int(event.side),
        int(command.order_type), int(command.time_in_force), event.price_fen, event.quantity_heads, 0,
        event.quantity_heads, None, None, event.lot_id, command.expire_at_ns, seq, event.ts_ns, seq, event.ts_ns,
    ]  # fmt: skip


def _fold_rejected(changes: Changes, seq: int, command: PlaceOrder, event: Rejected) -> None:
    cid = command.client_order_id
    if event.client_order_id != cid or not 0 < len(cid) <= MAX_CLIENT_ORDER_ID_LEN:
        return  # a malformed id is not an order anyone can look up
    changes.new_orders[(command.participant_id, cid)] = [
        command.participant_id, cid, None, command.instrument, int(command.side), int(command.order_type),
        int(command.time_in_force), command.price_fen, command.quantity_heads, 0, 0, REJECTED,
        RejectReason(event.reason).name, command.lot_id, command.expire_at_ns, seq, event.ts_ns, seq, event.ts_ns,
    ]  # fmt: skip


def _touch(changes: Changes, seq: int, ts_ns: int, order_id: int) -> list | _Patch:
    row = changes.new_orders.get(order_id)
    if row is not None:
        row[_UPDATED_SEQ], row[_UPDATED_TS] = seq, ts_ns
        return row
    patch = changes.patches.get(order_id)
    if patch is None:
        patch = changes.patches[order_id] = _Patch()
    patch.seq, patch.ts_ns = seq, ts_ns
    return patch


def _fold_fill(changes: Changes, seq: int, ts_ns: int, order_id: int, heads: int, remaining_heads: int) -> None:
    target = _touch(changes, seq, ts_ns, order_id)
    if isinstance(target, list):
        target[_FILLED] += heads
        target[_REMAINING] = remaining_heads
    else:
        target.filled_delta += heads
        target.remaining_heads = remaining_heads


def _fold_trade(changes: Changes, seq: int, trade: Trade) -> None:
    changes.trades.append((
        trade.trade_id, trade.instrument, trade.price_fen, trade.quantity_heads, trade.buy_order_id,
        trade.sell_order_id, trade.buyer_id, trade.seller_id, trade.lot_id, trade.taker_side, seq, trade.ts_ns,
    ))  # fmt: skip
    _fold_fill(changes, seq, trade.ts_ns, trade.buy_order_id, trade.quantity_heads, trade.buy_remaining_heads)
    _fold_fill(changes, seq, trade.ts_ns, trade.sell_order_id, trade.quantity_heads, trade.sell_remaining_heads)


def _fold_end(changes: Changes, seq: int, ts_ns: int, order_id: int, status: str, reason: str | None) -> None:
    target = _touch(changes, seq, ts_ns, order_id)
    if isinstance(target, list):
        target[_REMAINING], target[_STATUS], target[_REASON] = 0, status, reason
    else:
        target.remaining_heads, target.status, target.reason = 0, status, reason


def _fold_amend(changes: Changes, seq: int, event: OrderAmended) -> None:
    target = _touch(changes, seq, event.ts_ns, event.order_id)
    if isinstance(target, list):
        target[_PRICE], target[_QUANTITY], target[_REMAINING] = (
            event.price_fen, event.quantity_heads, event.remaining_heads,
        )  # fmt: skip
    else:
        target.price_fen, target.quantity_heads = event.price_fen, event.quantity_heads
        target.remaining_heads = event.remaining_heads


# -- projection: write changes --------------------------------------------------------------------------------

_PATCH_SQL: Final = """
UPDATE orders AS o SET
    filled_heads    = o.filled_heads + u.filled_delta,
    remaining_heads = coalesce(u.remaining_heads, o.remaining_heads),
    price_fen       = coalesce(u.price_fen, o.price_fen),
    quantity_heads  = coalesce(u.quantity_heads, o.quantity_heads),
    status          = coalesce(u.status, CASE
                          WHEN coalesce(u.remaining_heads, o.remaining_heads) = 0 THEN 'FILLED'
                          WHEN o.filled_heads + u.filled_delta > 0 THEN 'PARTIALLY_FILLED'
                          ELSE 'NEW' END),
    reason          = coalesce(u.reason, o.reason),
    updated_seq     = u.seq,
    updated_ts_ns   = u.ts_ns
FROM unnest($1::bigint[], $2::integer[], $3::integer[], $4::bigint[], $5::integer[], $6::text[], $7::text[],
            $8::bigint[], $9::bigint[])
     AS u(order_id, filled_delta, remaining_heads, price_fen, quantity_heads, status, reason, seq, ts_ns)
WHERE o.order_id = u.order_id
"""


async def write_changes(conn: asyncpg.Connection, changes: Changes) -> None:
    """Apply `changes` and move the watermark to `changes.last_seq`, in the caller's transaction.

    Raises RuntimeError if the watermark was not where these changes start (another projector got
    there first): the caller's transaction must then roll back.
    """
    if changes.new_orders:
        await conn.copy_records_to_table("orders", records=list(changes.new_orders.values()), columns=_ORDER_COLUMNS)
    if changes.patches:
        patches = changes.patches
        values = list(patches.values())
        await conn.execute(
            _PATCH_SQL, list(patches), [p.filled_delta for p in values], [p.remaining_heads for p in values],
            [p.price_fen for p in values], [p.quantity_heads for p in values], [p.status for p in values],
            [p.reason for p in values], [p.seq for p in values], [p.ts_ns for p in values],
        )  # fmt: skip
    if changes.trades:
        await conn.copy_records_to_table("trades", records=changes.trades, columns=_TRADE_COLUMNS)
    if changes.last_seq:
        await conn.execute("UPDATE projections SET seq = $2 WHERE name = $1", PROJECTION, changes.last_seq)


async def project_batch(conn: asyncpg.Connection, batch: CommittedBatch) -> None:
    """`extra_writes` for the sequencer: project a batch inside the journal's own transaction."""
    await write_changes(conn, fold(batch.entries()))


# -- projection: the asynchronous projector -----------------------------------------------------------------


class Projector(JournalProjector[Changes]):
    """Follows the journal and keeps the read models up to date, on its own connection (the loop is
    `exchange.projection.JournalProjector`'s)."""

    projection = PROJECTION
    who = "read-model projector"
    task_name = "readmodel-projector"

    def fold(self, entries: Iterable[tuple[int, Command, list[Event]]]) -> Changes:
        return fold(entries)

    async def write(self, conn: asyncpg.Connection, changes: Changes) -> None:
        await write_changes(conn, changes)


# -- queries --------------------------------------------------------------------------------------------------

_SELECT_ORDER: Final = f"SELECT {', '.join(_ORDER_COLUMNS)} FROM orders"


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be within 1..{MAX_LIMIT}")
    return limit


async def projected_seq(db: Queryable) -> int:
    """The journal seq the read models include."""
    return int(await db.fetchval("SELECT seq FROM projections WHERE name = $1", PROJECTION) or 0)


async def get_order(db: Queryable, order_id: int) -> OrderView | None:
    row = await db.fetchrow(f"{_SELECT_ORDER} WHERE order_id = $1", order_id)
    return None if row is None else OrderView(*row)


async def get_order_by_client_id(db: Queryable, participant_id: int, client_order_id: str) -> OrderView | None:
    """The way a client reconciles after an "unavailable" answer."""
    row = await db.fetchrow(
        f"{_SELECT_ORDER} WHERE participant_id = $1 AND client_order_id = $2", participant_id, client_order_id
    )
    return None if row is None else OrderView(*row)


async def list_orders(
    db: Queryable,
    participant_id: int,
    *,
    status: str | Collection[str] | None = None,
    instrument: str | None = None,
    cursor: int | None = None,
    limit: int = 100,
) -> Page[OrderView]:
    """A participant's orders, newest first; `status` one status or several; `cursor` a seq."""
    statuses = [status] if isinstance(status, str) else (list(status) if status is not None else None)
    if statuses is not None and not set(statuses) <= set(ORDER_STATUSES):
        raise ValueError(f"unknown status in {statuses}; expected some of {ORDER_STATUSES}")
    rows = await db.fetch(
        f"""{_SELECT_ORDER}
            WHERE participant_id = $1 AND ($2::text[] IS NULL OR status = ANY($2))
              AND ($3::text IS NULL OR instrument = $3) AND ($4::bigint IS NULL OR seq < $4)
            ORDER BY seq DESC LIMIT $5""",
        participant_id, statuses, instrument, cursor, _limit(limit),
    )  # fmt: skip
    items = [OrderView(*r) for r in rows]
    return Page(items, items[-1].seq if len(items) == limit else None)


async def list_fills(
    db: Queryable, participant_id: int, *, instrument: str | None = None, cursor: int | None = None, limit: int = 100
) -> Page[FillView]:
    """A participant's fills, newest first; `cursor` a trade id."""
    rows = await db.fetch(
        """SELECT trade_id, order_id, instrument, side, price_fen, quantity_heads,
                  CASE WHEN taker_side = 0 THEN 'auction' WHEN taker_side = side THEN 'taker' ELSE 'maker' END,
                  seq, ts_ns
           FROM (SELECT trade_id, buy_order_id AS order_id, instrument, 1 AS side, price_fen, quantity_heads,
                        taker_side, seq, ts_ns
                   FROM trades WHERE buyer_id = $1 AND ($3::bigint IS NULL OR trade_id < $3)
                 UNION ALL
                 SELECT trade_id, sell_order_id, instrument, 2, price_fen, quantity_heads, taker_side, seq, ts_ns
                   FROM trades WHERE seller_id = $1 AND ($3::bigint IS NULL OR trade_id < $3)) AS fills
           WHERE $2::text IS NULL OR instrument = $2
           ORDER BY trade_id DESC, side LIMIT $4""",
        participant_id, instrument, cursor, _limit(limit),
    )  # fmt: skip
    items = [FillView(*r) for r in rows]
    return Page(items, items[-1].trade_id if len(items) == limit else None)


async def list_trades(
    db: Queryable, instrument: str, *, cursor: int | None = None, limit: int = 100
) -> Page[TradeView]:
    """An instrument's public trades, newest first; `cursor` a trade id."""
    rows = await db.fetch(
        """SELECT trade_id, instrument, price_fen, quantity_heads, taker_side, seq, ts_ns FROM trades
           WHERE instrument = $1 AND ($2::bigint IS NULL OR trade_id < $2)
           ORDER BY trade_id DESC LIMIT $3""",
        instrument, cursor, _limit(limit),
    )  # fmt: skip
    items = [TradeView(*r) for r in rows]
    return Page(items, items[-1].trade_id if len(items) == limit else None)
