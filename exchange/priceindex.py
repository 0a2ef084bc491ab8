"""The live-hog price index, published the way the Xinhua (Rongchang) live pig price index is: daily, per
series (product class, breed class, delivery region = the instrument's delivery point), from the day's
trades. Owns the `price_index_*` tables (migration 0019) and the queries on them.

What it computes, for each China Standard Time day and series with trades, from every ``Trade`` event
whatever made it (continuous book, call auction, lot auction):

- ``heads``, ``trades`` and ``value_fen``: the value of a trade is price x heads for piglets (fen per
  head) and price x heads x the lot's declared average weight / 1000 for finishing hogs (fen per kg live
  weight: the delivered weight is known only at the weigh-in), rounded half up to the fen per trade;
- ``average_price_fen``: the head-weighted average price sum(price x heads) / sum(heads), rounded half
  up to the fen (in the series' quote unit);
- ``index_x100``: the index against the series' base day, base 1000, held as an integer in hundredths
  of a point: 100,000 x (sum(price x heads) / heads) / (base sum(price x heads) / base heads), computed
  from the exact sums (not the rounded averages) and rounded half up; ``None`` before the base day.
  The base day is the first day with trades on or after the ``index_base_day`` named by the series'
  first listing that names one, else the series' first day with trades. The base day's index is
  1000.00 exactly.

Why a projection and not the core: the index is history (one row per day and series, forever), and
memory holds only what is open (DESIGN.md, issue 12); the core has no use for it. The projection
follows the committed journal, so it is exactly as deterministic as the journal: the rows are a
function of the events, rebuilt by resetting the watermark. It runs on the loop the read models'
projector runs on too (`exchange.projection.JournalProjector`), on its own connection, with its own
watermark (`projections` row ``price_index``) updated in the same transaction as its rows, so each
batch counts exactly once; acknowledgements never wait for it. Journal rows missing after its
watermark (archived days) stop it, logged, with `exchange.store.JournalGap` instead of being skipped.
The band reference the core needs (the day's average) the core keeps itself (exchange/calendar.py).
The gateway serves the index's final days from these tables (`day_sums`, `first_day_from`; gateway/index.py)
and holds in memory only the rows still moving.

All arithmetic is on Python integers; the sums are bigint in PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

import asyncpg
import msgspec

from exchange.calendar import cst_day, day_label
from exchange.commands import Command
from exchange.domain import BreedClass, ProductClass
from exchange.events import Event, InstrumentListed, LotRegistered, Trade, TradingDayClosed
from exchange.projection import JournalProjector

__all__ = [
    "PROJECTION",
    "DayChanges",
    "DaySums",
    "IndexProjector",
    "IndexRow",
    "Series",
    "average_price_fen",
    "day_sums",
    "first_day_from",
    "fold",
    "index_history",
    "index_on",
    "index_x100",
    "trade_value_fen",
    "write_changes",
]

_log = logging.getLogger(__name__)
PROJECTION: Final = "price_index"
GRAMS_PER_KG: Final = 1_000
Series = tuple[int, int, str]  # (product class, breed class, region)


# -- the arithmetic ---------------------------------------------------------------------------------------


def _half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up (both non-negative, denominator positive)."""
    return (2 * numerator + denominator) // (2 * denominator)


def trade_value_fen(product_class: int, price_fen: int, heads: int, avg_weight_g: int) -> int:
    if product_class == ProductClass.FINISHING_HOG:
        return _half_up(price_fen * heads * avg_weight_g, GRAMS_PER_KG)
    return price_fen * heads


def average_price_fen(price_heads_fen: int, heads: int) -> int:
    return _half_up(price_heads_fen, heads)


def index_x100(price_heads_fen: int, heads: int, base_price_heads_fen: int, base_heads: int) -> int:
    """100,000 x (ph / h) / (base ph / base h), rounded half up: the index in hundredths of a point."""
    return _half_up(100_000 * price_heads_fen * base_heads, heads * base_price_heads_fen)


# -- projection: fold ---------------------------------------------------------------------------------------


class DayChanges:
    """What a run of journal entries adds: listings, lots, per (day, series) sums, and the closes seen."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.instruments: dict[str, Series] = {}
        self.base_days: dict[Series, int] = {}
        self.lots: dict[int, int] = {}  # lot id -> declared average weight
        self.trades: list[Trade] = []
        self.closes: list[tuple[int, str]] = []  # (yyyymmdd, instrument) of each TradingDayClosed
        self.sums: dict[tuple[int, Series], list[int]] = {}  # -> [trades, heads, price x heads, value]


def fold(entries: Iterable[tuple[int, Command, list[Event]]]) -> DayChanges:
    """The events that matter to the index, in journal order (trades are priced in `resolve`)."""
    changes = DayChanges()
    for seq, _command, events in entries:
        changes.last_seq = seq
        for event in events:
            kind = type(event)
            if kind is Trade:
                changes.trades.append(event)  # type: ignore[arg-type]
            elif kind is LotRegistered and event.seq:  # a retry (seq 0) registers nothing
                lot = event.lot  # type: ignore[union-attr]
                changes.lots[lot.lot_id] = lot.avg_weight_g
            elif kind is InstrumentListed:
                spec = event.spec  # type: ignore[union-attr]
                series = (int(spec.product_class), int(spec.breed_class), spec.delivery_point)
                changes.instruments[spec.symbol] = series
                if spec.index_base_day and series not in changes.base_days:
                    changes.base_days[series] = spec.index_base_day
            elif kind is TradingDayClosed:
                changes.closes.append((event.day, event.instrument))  # type: ignore[union-attr]
    return changes


async def resolve(conn: asyncpg.Connection, changes: DayChanges) -> None:
    """Price the folded trades into per-day sums, looking up instruments and lots not in this run."""
    instruments = dict(changes.instruments)
    lots = dict(changes.lots)
    missing_symbols = {t.instrument for t in changes.trades} - instruments.keys()
    if missing_symbols:
        rows = await conn.fetch("SELECT instrument, product_class, breed_class, region FROM price_index_instruments"
                                " WHERE instrument = ANY($1::text[])", list(missing_symbols))
        instruments.update({r[0]: (r[1], r[2], r[3]) for r in rows})
    missing_lots = {t.lot_id for t in changes.trades} - lots.keys()
    if missing_lots:
        rows = await conn.fetch("SELECT lot_id, avg_weight_g FROM price_index_lots WHERE lot_id = ANY($1::bigint[])",
                                list(missing_lots))
        lots.update({r[0]: r[1] for r in rows})
    labels: dict[int, int] = {}  # CST day -> yyyymmdd: a page's trades fall on a day or two
    for trade in changes.trades:
        series = instruments.get(trade.instrument)
        if series is None:
            _log.error("price index: trade %d of unknown instrument %r left out", trade.trade_id, trade.instrument)
            continue
        day = cst_day(trade.ts_ns)
        label = labels.get(day)
        if label is None:
            label = labels[day] = day_label(day)
        key = (label, series)
        sums = changes.sums.get(key)
        if sums is None:
            sums = changes.sums[key] = [0, 0, 0, 0]
        heads, price = trade.quantity_heads, trade.price_fen
        sums[0] += 1
        sums[1] += heads
        sums[2] += price * heads
        sums[3] += trade_value_fen(series[0], price, heads, lots.get(trade.lot_id, 0))


async def write_changes(conn: asyncpg.Connection, changes: DayChanges) -> None:
    """Apply ``changes`` (resolved) and move the watermark, in the caller's transaction."""
    if changes.instruments:
        await conn.executemany(
            "INSERT INTO price_index_instruments VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            [(symbol, *series) for symbol, series in changes.instruments.items()],
        )
        await conn.executemany(
            "INSERT INTO price_index_series VALUES ($1, $2, $3, $4) ON CONFLICT (product_class, breed_class, region)"
            " DO UPDATE SET base_day = EXCLUDED.base_day WHERE price_index_series.base_day = 0",
            [(*series, changes.base_days.get(series, 0)) for series in set(changes.instruments.values())],
        )
    if changes.lots:
        await conn.executemany("INSERT INTO price_index_lots VALUES ($1, $2) ON CONFLICT DO NOTHING",
                               list(changes.lots.items()))
    if changes.sums:
        await conn.executemany(
            "INSERT INTO price_index_daily AS d VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (product_class, breed_class, region, day) DO UPDATE SET trades = d.trades + EXCLUDED.trades,"
            " heads = d.heads + EXCLUDED.heads, price_heads_fen = d.price_heads_fen + EXCLUDED.price_heads_fen,"
            " value_fen = d.value_fen + EXCLUDED.value_fen",
            [(day, *series, *sums) for (day, series), sums in changes.sums.items()],
        )
    if changes.last_seq:
        await conn.execute("UPDATE projections SET seq = $2 WHERE name = $1", PROJECTION, changes.last_seq)


# -- the projector ----------------------------------------------------------------------------------------

Listener = Callable[[DayChanges], None]


class IndexProjector(JournalProjector[DayChanges]):
    """Follows the journal and keeps the index tables up to date, on its own connection (the loop is
    `exchange.projection.JournalProjector`'s); after each step it calls its listeners with what changed."""

    projection = PROJECTION
    who = "price index projector"
    task_name = "price-index-projector"

    def __init__(self, dsn: str, *, page_rows: int = 20_000, poll_interval_s: float = 0.5) -> None:
        super().__init__(dsn, page_rows=page_rows, poll_interval_s=poll_interval_s)
        self.listeners: list[Listener] = []

    def fold(self, entries: Iterable[tuple[int, Command, list[Event]]]) -> DayChanges:
        return fold(entries)

    async def write(self, conn: asyncpg.Connection, changes: DayChanges) -> None:
        await resolve(conn, changes)
        await write_changes(conn, changes)

    def written(self, changes: DayChanges) -> None:
        for listener in self.listeners:
            try:
                listener(changes)
            except Exception:  # a publisher's failure must not stop the projection
                _log.exception("price index listener failed")


# -- queries -------------------------------------------------------------------------------------------------


class IndexRow(msgspec.Struct, frozen=True):
    """One day of one series. ``index_x100`` is None before the series' base day."""

    day: int  # yyyymmdd, China Standard Time
    product_class: ProductClass
    breed_class: BreedClass
    region: str
    trades: int
    heads: int
    value_fen: int
    average_price_fen: int
    index_x100: int | None
    base_day: int  # 0: the series has no base day yet


_SELECT_DAYS: Final = """
WITH days AS (
    SELECT d.*, s.base_day AS named_base
    FROM price_index_daily d
    JOIN price_index_series s USING (product_class, breed_class, region)
    WHERE d.day BETWEEN $1 AND $2
      AND ($3::smallint IS NULL OR d.product_class = $3)
      AND ($4::smallint IS NULL OR d.breed_class = $4)
      AND ($5::text IS NULL OR d.region = $5)
)
SELECT days.day, days.product_class, days.breed_class, days.region, days.trades, days.heads,
       days.price_heads_fen, days.value_fen, base.day, base.heads, base.price_heads_fen
FROM days
LEFT JOIN LATERAL (
    SELECT b.day, b.heads, b.price_heads_fen FROM price_index_daily b
    WHERE (b.product_class, b.breed_class, b.region) = (days.product_class, days.breed_class, days.region)
      AND b.day >= days.named_base
    ORDER BY b.day LIMIT 1
) base ON true
ORDER BY days.day, days.product_class, days.breed_class, days.region
"""


def _row(r: Any) -> IndexRow:
    day, pc, bc, region, trades, heads, price_heads, value, base_day, base_heads, base_price_heads = r
    index = None
    if base_day is not None and day >= base_day:
        index = index_x100(price_heads, heads, base_price_heads, base_heads)
    return IndexRow(day, ProductClass(pc), BreedClass(bc), region, trades, heads, value,
                    average_price_fen(price_heads, heads), index, base_day or 0)


async def index_history(db: asyncpg.Connection | asyncpg.Pool, from_day: int, to_day: int, *,
                        product_class: int | None = None, breed_class: int | None = None,
                        region: str | None = None) -> list[IndexRow]:
    """Every series' rows for the days ``from_day``..``to_day`` (yyyymmdd, inclusive), oldest first."""
    rows = await db.fetch(_SELECT_DAYS, from_day, to_day, product_class, breed_class, region)
    return [_row(r) for r in rows]


async def index_on(db: asyncpg.Connection | asyncpg.Pool, day: int) -> list[IndexRow]:
    return await index_history(db, day, day)


class DaySums(msgspec.Struct, frozen=True, array_like=True):
    """One day of one series as stored: the sums the index is computed from (`gateway.index` serves
    its final days from these)."""

    day: int  # yyyymmdd, China Standard Time
    series: Series
    trades: int
    heads: int
    price_heads_fen: int
    value_fen: int


_SUMS_OF: Final = ("SELECT day, product_class, breed_class, region, trades, heads, price_heads_fen, value_fen"
                   " FROM price_index_daily")  # the columns `_sums` reads
_SELECT_SUMS: Final = _SUMS_OF + """
WHERE day BETWEEN $1 AND $2
  AND ($3::smallint IS NULL OR product_class = $3)
  AND ($4::smallint IS NULL OR breed_class = $4)
  AND ($5::text IS NULL OR region = $5)
"""


def _sums(r: Any) -> DaySums:
    return DaySums(r[0], (r[1], r[2], r[3]), r[4], r[5], r[6], r[7])


async def day_sums(db: asyncpg.Connection | asyncpg.Pool, from_day: int, to_day: int, *,
                   product_class: int | None = None, breed_class: int | None = None,
                   region: str | None = None) -> list[DaySums]:
    """The stored rows of the days ``from_day``..``to_day`` (yyyymmdd, inclusive), in no set order."""
    rows = await db.fetch(_SELECT_SUMS, from_day, to_day, product_class, breed_class, region)
    return [_sums(r) for r in rows]


async def first_day_from(db: asyncpg.Connection | asyncpg.Pool, series: Series, day: int) -> DaySums | None:
    """The series' first stored day with trades on or after ``day`` (yyyymmdd): a base day's sums."""
    row = await db.fetchrow(
        _SUMS_OF + " WHERE (product_class, breed_class, region) = ($1, $2, $3) AND day >= $4"
        " ORDER BY day LIMIT 1", *series, day)
    return None if row is None else _sums(row)


async def projected_seq(db: asyncpg.Connection | asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT seq FROM projections WHERE name = $1", PROJECTION) or 0)
