"""The live-hog price index, the way the Xinhua (Rongchang) live pig price index is published: daily, from
the day's trades (book and lot auctions), per product class, breed class and delivery region.

For each China Standard Time day and series (product class, breed class, delivery region = the
instrument's delivery point) it keeps heads traded, the sum of price x heads and the trade count, and
gives:

- `avg_price_fen`: the head-weighted average price, sum(price x heads) / heads, rounded half up to the
  fen (fen per kg live weight for finishing hogs, per head for piglets: `quote_unit`);
- `index_x100`: the index against the series' base day, base 1000, in hundredths: 100000 x avg /
  base avg from the exact sums, rounded half up (`index` is the same as a decimal string, e.g.
  "1023.45"); the base day is the series' first day with trades on or after the `index_base_day` of
  its first listing that names one (else its first day with trades); null before it;
- `heads` and `value_fen`: per head, price x heads; per kg, price x heads x the lot's declared average
  weight, rounded half up to the fen per trade (the delivered weight is known only at the weigh-in);
- `provisional`: true until the row is final (`Finality`): at the close of the day's session of every
  instrument of the series (exchange/calendar.py: the instant its `TradingDayClosed` is stamped), or at
  CST midnight when an instrument of the series has no session or none of them trades that day. A lot
  auction sale after the close (lot auctions do not follow the session) makes the day's row
  provisional again until midnight: it is the only trade that can still move it.

The arithmetic (value, average, index, their rounding) is `exchange.priceindex`'s, and the base day
rule is the same, so a day's rows here equal the PostgreSQL projection's (exchange/priceindex.py;
tests/test_index_projection.py compares them on one stream).

Memory holds what is not final, the history lives in PostgreSQL (issue 12). `PriceIndex` is pure and
folded by the gateway's read model from committed trades (so a start restores it from the read model's
snapshot and folds the journal after it, like everything else there). It holds the rows of today (from
`open_from`, the day of the latest clock tick: every row from that day on is held) and, per series, what
the next rows need: its first day's row and its base day's row (the sums the index divides by), and the
day its first listing named. A row of an earlier day, which no trade can move any more, leaves memory at
a clock tick (`PriceIndex.seal`) once the projection (`price_index_daily`, its watermark kept in
`PriceIndex.projected_seq` by gateway/priceindex.py) has passed its latest trade; until then it stays
held and answers, so a projection lagging behind (or stopped) loses nothing: like the read model's
orders, which leave only once `projected_seq` covers them. The rows held are at most those of the days
the projection has not passed, normally today's and yesterday's (tests/test_index_memory.py counts them
over 400 days).

The routes answer from both (`served_rows`): the rows held, read first, and the other rows of the days
before `open_from` from `price_index_daily`, with the index against the base day memory keeps: a row
dropped after memory was read had reached the projection before, so none falls between the two, and
the answers are those the index gave when it held every day (tests/test_index_memory.py compares every
route's JSON and CSV before and after the rows leave). One case needs PostgreSQL for the base: a listing
naming a base day that the series had already traded past, with rows on or after it already dropped
(`PriceIndex.unresolved`); the routes look it up before answering (`resolve_bases`) and the publisher
right after the batch, and the series' rows stay held until it is found. The channel is answered from
memory alone (today's rows).

Routes: `GET /v1/index?date=` (default today),
`GET /v1/index/history?from=&to=&product_class=&breed_class=&region=` and `.../history.csv`; the
WebSocket channel `index` sends the changed series of each batch with trades (provisional) and, with
the first batch stamped at or after a row's final instant (the close's own batch, or the tick that
passed it), that row again with `provisional: false`: a new value at each close. Candles stay as they
are.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Final

import asyncpg
import msgspec
from aiohttp import web

from exchange import priceindex
from exchange.calendar import NEVER, NS_PER_MIN, day_label, day_of_label, day_start_ns, trades_on
from exchange.domain import InstrumentSpec, ProductClass
from exchange.priceindex import DaySums, average_price_fen, index_x100, trade_value_fen
from exchange.settlement.rules import cst_day
from gateway.auth import PUBLIC
from gateway.clock import exchange_now_ns
from gateway.errors import ApiError
from gateway.routes import Call, RouteTable
from gateway.schemas import (
    BREED_CLASS,
    BREED_CLASS_NAME,
    PRODUCT_CLASS,
    PRODUCT_CLASS_NAME,
    QUOTE_UNIT,
    BreedClassName,
    ProductClassName,
)
from gateway.state import POOL

if TYPE_CHECKING:
    from exchange.sequencer import CommittedBatch
    from gateway.exchange_port import ExchangePort
    from gateway.readmodel import BatchDigest, ReadModel
    from gateway.ws import Hub

__all__ = ["DayCell", "Finality", "IndexRow", "PriceIndex", "attach", "resolve_bases", "routes", "served_rows", "wire"]

_log = logging.getLogger(__name__)
_EPOCH: Final = dt.date(1970, 1, 1)
SeriesKey = tuple[int, int, str]  # (product class, breed class, region)


class DayCell:
    """One (day, series) row's sums as trades fold into it."""

    __slots__ = ("day", "heads", "last_ns", "last_seq", "price_heads", "trades", "value_fen")

    def __init__(self, day: int) -> None:
        self.day = day
        self.heads = 0
        self.price_heads = 0  # sum of price x heads
        self.value_fen = 0
        self.trades = 0
        self.last_ns = 0  # the latest trade's instant
        self.last_seq = 0  # the journal seq of the latest trade (the projection holds the row from it on)


class IndexRow(msgspec.Struct, frozen=True):
    date: str
    product_class: ProductClassName
    breed_class: BreedClassName
    region: str
    quote_unit: str
    heads: int
    value_fen: int
    trades: int
    avg_price_fen: int
    index_x100: int | None  # None before the series' base day
    index: str | None
    base_date: str | None  # None while the series has no base day
    provisional: bool


def day_to_date(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=day)).isoformat()


def date_to_day(date: str) -> int:
    return (dt.date.fromisoformat(date) - _EPOCH).days


def series_of(spec: InstrumentSpec) -> SeriesKey:
    return (int(spec.product_class), int(spec.breed_class), spec.delivery_point)


class Finality:
    """When a (day, series) row turns final, by the calendar's rules, as of the instant ``now_ns``; and
    from which day a series' base day is sought (the first listing of the series naming one).

    ``specs``: every listed instrument, in listing order (a series' instruments are those with its
    class and region); ``holidays``: the exchange's non-trading days as yyyymmdd."""

    def __init__(self, specs: Iterable[InstrumentSpec], holidays: Iterable[int], now_ns: int) -> None:
        self.now_ns = now_ns
        self.today = cst_day(now_ns)
        self.holidays = frozenset(day_of_label(label) for label in holidays)
        self.series: dict[SeriesKey, list[InstrumentSpec]] = {}
        for spec in specs:
            self.series.setdefault(series_of(spec), []).append(spec)

    def final_ns(self, day: int, key: SeriesKey, last_trade_ns: int) -> int:
        """The instant the row stops moving: the latest close that day of the series' instruments (the
        end of the day if one has no session, none trades that day, or a trade came after the close)."""
        end = day_start_ns(day + 1)
        final = 0
        for spec in self.series.get(key, ()):
            session = spec.session
            if session is None:
                return end
            if trades_on(session, self.holidays, day):
                final = max(final, day_start_ns(day) + session.close_min * NS_PER_MIN)
        if final == 0 or last_trade_ns >= final:  # a sale after the close: only midnight ends the day
            return end
        return final

    def provisional(self, day: int, key: SeriesKey, last_trade_ns: int) -> bool:
        return self.now_ns < self.final_ns(day, key, last_trade_ns)

    def base_from(self, key: SeriesKey) -> int:
        """The day the series' base day is sought from: the first of its listings' ``index_base_day``
        (0: none named, the series' first day with trades)."""
        for spec in self.series.get(key, ()):
            if spec.index_base_day:
                return day_of_label(spec.index_base_day)
        return 0

    def at(self, now_ns: int) -> Finality:
        """The same instruments and days at another instant."""
        moved = Finality.__new__(Finality)  # (once per batch: copy.copy's generic protocol costs more)
        moved.__dict__.update(self.__dict__)
        moved.now_ns, moved.today = now_ns, cst_day(now_ns)
        return moved


class PriceIndex:
    """Daily sums per series for the rows still held (see the module docstring), each series' first day
    and base day, and the rows computed from them. The arithmetic is `exchange.priceindex`'s, so these
    rows equal the PostgreSQL projection's.

    Held (`days`): every row of the days from `open_from` on (today's: still moving), and the rows of
    earlier days the projection does not hold yet (their latest trade's seq after `projected_seq`).
    `seal` lets the others go. Kept per series whatever is dropped: its first day's row (`first`, the
    base when no day is named), the day named at listing (`named`, told by `name`) and the row of its
    base day (`named_base`), so the rows still moving are computed from memory alone, and a final
    row read back from PostgreSQL gets its index from the same base."""

    def __init__(self) -> None:
        self.days: dict[int, dict[SeriesKey, DayCell]] = {}  # day -> series -> its row, the rows held
        self.first: dict[SeriesKey, DayCell] = {}
        self.named: dict[SeriesKey, int] = {}  # series -> the index_base_day of its first listing naming one
        self.named_base: dict[SeriesKey, DayCell] = {}  # series -> its first day with trades on or after that
        # A day named after the series had traded past it, with rows on or after it already dropped: its
        # base day is in PostgreSQL, looked up by `gateway.index.resolve_bases`; its rows are not dropped
        # meanwhile (so the look-up and the rows held cover every day between them).
        self.unresolved: dict[SeriesKey, int] = {}
        self.dropped_through: dict[SeriesKey, int] = {}  # series -> the latest day of its rows dropped
        self.open_from = 0  # every row of this day and later is held
        self.projected_seq = 0  # how far the projection (`price_index_daily`) is: its owner keeps it

    def add(self, spec: InstrumentSpec, ts_ns: int, price_fen: int, heads: int,
            avg_weight_g: int, seq: int = 0) -> tuple[int, SeriesKey]:
        """Fold one trade (journal seq ``seq``); returns its (day, series)."""
        return self.add_to(series_of(spec), ts_ns, price_fen, heads, avg_weight_g, seq)

    def add_to(self, key: SeriesKey, ts_ns: int, price_fen: int, heads: int,
               avg_weight_g: int, seq: int = 0) -> tuple[int, SeriesKey]:
        """`add` for a trade of an instrument of series ``key`` (the read model keeps each instrument's)."""
        # Called for every trade: look-ups first, nothing allocated unless a day or series is new.
        day = cst_day(ts_ns)
        cells = self.days.get(day)
        if cells is None:
            cells = self.days[day] = {}
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = self._new_row(day, key)
        cell.heads += heads
        cell.price_heads += price_fen * heads
        cell.trades += 1
        if ts_ns > cell.last_ns:
            cell.last_ns = ts_ns
        if seq > cell.last_seq:
            cell.last_seq = seq
        cell.value_fen += trade_value_fen(key[0], price_fen, heads, avg_weight_g)
        return day, key

    def _new_row(self, day: int, key: SeriesKey) -> DayCell:
        cell = DayCell(day)
        first = self.first.get(key)
        if first is None or day < first.day:  # (trades come in time order: a new row is the newest)
            self.first[key] = cell
        named = self.named.get(key)
        if named is not None and key not in self.unresolved and day >= named:
            base = self.named_base.get(key)
            if base is None or day < base.day:
                self.named_base[key] = cell
        return cell

    def name(self, key: SeriesKey, named_day: int) -> None:
        """A listing of the series names ``named_day`` as the day its base is sought from; only the
        series' first listing naming one counts (`Finality.base_from`)."""
        if named_day == 0 or key in self.named:
            return
        self.named[key] = named_day
        first = self.first.get(key)
        if first is None:
            return  # no trades yet: the first on or after the day will be the base
        if first.day >= named_day:
            self.named_base[key] = first
        elif self.dropped_through.get(key, -1) >= named_day:
            self.unresolved[key] = named_day  # the base may be a day only PostgreSQL holds now
        else:
            self._found(key, named_day, None)

    def _found(self, key: SeriesKey, named_day: int, stored: DayCell | None) -> None:
        """The base of ``key``: the earliest of its rows held on or after ``named_day`` and ``stored``
        (the first such row PostgreSQL holds, if it was looked up)."""
        held = [cells[key] for day, cells in self.days.items() if day >= named_day and key in cells]
        if stored is not None:
            held.append(stored)  # a held row of the same day wins: it is at least as recent
        base = min(held, key=lambda cell: cell.day, default=None)
        if base is None:
            self.named_base.pop(key, None)
        else:
            self.named_base[key] = base

    def resolved(self, key: SeriesKey, named_day: int, stored: DaySums | None) -> None:
        """The answer of PostgreSQL for an `unresolved` series: its first stored day on or after the named
        day (``None``: none)."""
        if self.unresolved.get(key) != named_day:
            return
        del self.unresolved[key]
        self._found(key, named_day, None if stored is None else _stored(stored))

    def seal(self, today: int) -> dict[tuple[int, SeriesKey], DayCell]:
        """Exchange time has reached ``today`` (no trade can come for an earlier day): the rows of
        earlier days the projection holds (latest trade at or before `projected_seq`) leave memory.
        Returns them, for the publishers of the batch that sealed them."""
        if today > self.open_from:
            self.open_from = today
        dropped: dict[tuple[int, SeriesKey], DayCell] = {}
        projected = self.projected_seq
        for day in [d for d in self.days if d < today]:
            cells = self.days[day]
            for key in [k for k, c in cells.items() if c.last_seq <= projected and k not in self.unresolved]:
                dropped[(day, key)] = cells.pop(key)
                if day > self.dropped_through.get(key, -1):
                    self.dropped_through[key] = day
            if not cells:
                del self.days[day]
        return dropped

    def held_rows(self) -> int:
        """How many (day, series) rows memory holds."""
        return sum(len(cells) for cells in self.days.values())

    def base_day(self, key: SeriesKey, finality: Finality) -> DayCell | None:
        """The row of the series' base day: its first day with trades on or after the day named at
        listing (`finality.base_from`)."""
        base_from = finality.base_from(key)
        if base_from == 0:
            return self.first.get(key)
        if self.named.get(key) == base_from:
            return None if key in self.unresolved else self.named_base.get(key)
        # a day this index was not told of (a Finality of other listings): sought among the rows held
        return min((cells[key] for day, cells in self.days.items() if day >= base_from and key in cells),
                   key=lambda cell: cell.day, default=None)

    def row(self, day: int, key: SeriesKey, finality: Finality) -> IndexRow:
        """The row of a (day, series) memory holds."""
        cell = self.days[day][key]
        return self.row_of(cell, key, finality, finality.provisional(day, key, cell.last_ns))

    def row_of(self, cell: DayCell, key: SeriesKey, finality: Finality, provisional: bool) -> IndexRow:
        """The row of ``cell``'s sums (held, dropped or read back from PostgreSQL)."""
        day = cell.day
        base = self.base_day(key, finality)
        index = None
        if base is not None and day >= base.day:
            index = index_x100(cell.price_heads, cell.heads, base.price_heads, base.heads)
        product, breed, region = key
        return IndexRow(
            day_to_date(day), PRODUCT_CLASS_NAME[ProductClass(product)], BREED_CLASS_NAME[breed], region,
            QUOTE_UNIT[ProductClass(product)], cell.heads, cell.value_fen, cell.trades,
            average_price_fen(cell.price_heads, cell.heads), index,
            None if index is None else f"{index // 100}.{index % 100:02d}",
            None if base is None else day_to_date(base.day), provisional,
        )  # fmt: skip

    def rows(self, day: int, finality: Finality) -> list[IndexRow]:
        """The rows of ``day`` memory holds (all of them from `open_from` on)."""
        cells = self.days.get(day, {})
        return [self.row(day, key, finality) for key in sorted(cells)]

    def history(self, first: int, last: int, finality: Finality) -> list[IndexRow]:
        """The rows of ``first``..``last`` memory holds, oldest first."""
        return [row for day in sorted(d for d in self.days if first <= d <= last) for row in self.rows(day, finality)]

    def stored_row(self, stored: DaySums, finality: Finality) -> IndexRow:
        """A row read back from PostgreSQL (a day before `open_from`: final)."""
        cell = _stored(stored)
        return self.row_of(cell, stored.series, finality, finality.now_ns < day_start_ns(cell.day + 1))


def _stored(stored: DaySums) -> DayCell:
    cell = DayCell(day_of_label(stored.day))
    cell.trades, cell.heads = stored.trades, stored.heads
    cell.price_heads, cell.value_fen = stored.price_heads_fen, stored.value_fen
    return cell


# -- routes ---------------------------------------------------------------------------------------------

routes = RouteTable()
Date = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$", description="a day in China Standard Time")]
_MAX_DAYS: Final = 3_660


class IndexQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    date: Date | None = None


class HistoryQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    to: Date | None = None
    product_class: ProductClassName | None = None
    breed_class: BreedClassName | None = None
    region: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    # `from` is a Python keyword: the field is renamed
    from_: Date | None = msgspec.field(default=None, name="from")


class IndexDay(msgspec.Struct, frozen=True):
    date: str
    provisional: bool
    series: list[IndexRow]


def _day(date: str) -> int:
    try:
        return date_to_day(date)
    except ValueError:
        raise ApiError(422, "invalid", f"not a date: {date}") from None


def _read_model(app: web.Application) -> ReadModel:
    from gateway.exchange_port import EXCHANGE  # here: the exchange port imports the read model, which imports us

    return app[EXCHANGE].read_model


def finality(read_model: ReadModel, now_ns: int) -> Finality:
    """The read model's instruments and non-trading days at ``now_ns``."""
    return Finality((r.spec for r in read_model.instruments.values()), read_model.non_trading_days, now_ns)


async def resolve_bases(pool: asyncpg.Pool, index: PriceIndex) -> None:
    """Look up in PostgreSQL the base days memory no longer holds (`PriceIndex.unresolved`)."""
    for key, named_day in list(index.unresolved.items()):
        index.resolved(key, named_day, await priceindex.first_day_from(pool, key, day_label(named_day)))


async def served_rows(app: web.Application, first: int, last: int, final: Finality, *,
                      product_class: int | None = None, breed_class: int | None = None,
                      region: str | None = None) -> list[IndexRow]:
    """The rows of the days ``first``..``last``, oldest first, then by series: those memory holds, and
    the final ones it let go from `price_index_daily`. Memory is read before the query: a row it drops
    afterwards was in the projection before (`PriceIndex.seal`), so no row falls between the two."""
    index = _read_model(app).index
    pool = app[POOL]
    if index.unresolved:
        await resolve_bases(pool, index)
    rows = {(day, key): index.row(day, key, final) for day, cells in index.days.items() if first <= day <= last
            for key in cells
            if (product_class is None or key[0] == product_class) and (breed_class is None or key[1] == breed_class)
            and (region is None or key[2] == region)}
    stored_to = min(last, index.open_from - 1)  # every row from open_from on is held
    if first <= stored_to:
        for sums in await priceindex.day_sums(pool, day_label(first), day_label(stored_to),
                                              product_class=product_class, breed_class=breed_class, region=region):
            at = (day_of_label(sums.day), sums.series)
            if at not in rows:  # (a row held is as recent as the projection's, or more)
                rows[at] = index.stored_row(sums, final)
    return [rows[at] for at in sorted(rows)]


@routes.get("/v1/index", roles=PUBLIC, query=IndexQuery, response=IndexDay)
async def get_index(call: Call, query: IndexQuery) -> IndexDay:
    """The price index of one day (default: today), every series; each row is provisional until the
    close of its series' instruments that day (midnight for a series with no session), and the day is
    provisional while any row is (or, with no rows yet, until it ends)."""
    final = finality(_read_model(call.app), exchange_now_ns(call.app))
    day = final.today if query.date is None else _day(query.date)
    rows = await served_rows(call.app, day, day, final)
    return IndexDay(day_to_date(day), any(r.provisional for r in rows) if rows else day >= final.today, rows)


async def _history(call: Call, query: HistoryQuery) -> list[IndexRow]:
    final = finality(_read_model(call.app), exchange_now_ns(call.app))
    last = final.today if query.to is None else _day(query.to)
    first = last - 30 if query.from_ is None else _day(query.from_)
    if not 0 <= last - first <= _MAX_DAYS:
        raise ApiError(422, "invalid", f"from must be on or before to, at most {_MAX_DAYS} days")
    return await served_rows(
        call.app, first, last, final,
        product_class=None if query.product_class is None else int(PRODUCT_CLASS[query.product_class]),
        breed_class=None if query.breed_class is None else int(BREED_CLASS[query.breed_class]), region=query.region)


@routes.get("/v1/index/history", roles=PUBLIC, query=HistoryQuery, response=list[IndexRow])
async def index_history(call: Call, query: HistoryQuery) -> list[IndexRow]:
    """The index by day and series, oldest first (`from`..`to` inclusive; default the last 30 days)."""
    return await _history(call, query)


_CSV_COLUMNS: Final = IndexRow.__struct_fields__


@routes.get("/v1/index/history.csv", roles=PUBLIC, query=HistoryQuery, response=None, media_type="text/csv")
async def index_history_csv(call: Call, query: HistoryQuery) -> web.Response:
    """The index history as CSV (a header row, then one row per day and series)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(_CSV_COLUMNS)
    for row in await _history(call, query):
        writer.writerow([str(getattr(row, name)).lower() if isinstance(getattr(row, name), bool)
                         else getattr(row, name) for name in _CSV_COLUMNS])
    return web.Response(body=out.getvalue().encode(), content_type="text/csv", charset="utf-8")


# -- WebSocket ------------------------------------------------------------------------------------------


class IndexMessage(msgspec.Struct, frozen=True, tag="index", tag_field="type"):
    channel: str
    series: list[IndexRow]


_encode = msgspec.json.Encoder().encode


def wire(app: web.Application, hub: Hub) -> None:
    """The public `index` channel: today's values at subscription."""

    def snapshot(channel: str, principal: object) -> bytes:
        read_model = _read_model(app)
        final = finality(read_model, exchange_now_ns(app))
        return _encode(IndexMessage(channel, read_model.index.rows(final.today, final)))

    hub.register_channel_kind("index", snapshot=snapshot, bare=True)


async def _resolve(app: web.Application, index: PriceIndex) -> None:
    try:
        await resolve_bases(app[POOL], index)
    except (OSError, asyncpg.PostgresError):  # the next batch or request tries again
        _log.warning("price index: base day look-up failed", exc_info=True)


def attach(app: web.Application, port: ExchangePort, hub: Hub) -> None:
    """Publish the rows each batch's trades changed (provisional), and each row again, final, with the
    first batch stamped at or after its final instant (`Finality`): the batch of the close itself, as
    the calendar stamps `TradingDayClosed` with the close's instant. The time is the batch's, not the
    wall clock's, so what is published follows the journal (and the simulated clock exactly).

    Only rows not yet published final are remembered (today's and perhaps yesterday's), with the
    instant each turns final; a batch before the earliest of them and without trades costs nothing."""
    pending: dict[tuple[int, SeriesKey], int] = {}  # row -> the instant it turns final
    resolving: set[asyncio.Task[None]] = set()  # the look-up of base days running, if one is
    next_check = [NEVER]
    cached: list[Any] = [-1, set(), None]  # instruments listed, non-trading days, their Finality

    def finality_at(now_ns: int) -> Finality:
        read_model = port.read_model  # instruments are only ever added, and keep their spec
        if cached[0] != len(read_model.instruments) or cached[1] != read_model.non_trading_days:
            cached[:] = [len(read_model.instruments), set(read_model.non_trading_days), finality(read_model, 0)]
        return cached[2].at(now_ns)

    def publish(batch: CommittedBatch, digest: BatchDigest) -> None:
        changed = digest.index
        if not batch.commands:
            return
        now_ns = batch.commands[-1].ts_ns
        if not changed and now_ns < next_check[0]:
            return
        index = port.read_model.index
        if index.unresolved and not resolving:  # a base day only PostgreSQL holds now: look it up
            resolving.add(asyncio.create_task(_resolve(app, index)))
            next(iter(resolving)).add_done_callback(resolving.discard)
        final = finality_at(now_ns)
        due = {row for row, at in pending.items() if at <= now_ns}
        # With no subscriber no row is built: only when each turns final is kept (a later subscriber
        # gets the rows as they stand in its snapshot).
        listening = hub.subscriber_count("index") > 0
        rows: list[IndexRow] = []
        for day, key in sorted(changed | due):
            # a row due may have left memory in this very batch (sealed): the digest still has it
            cell = index.days.get(day, {}).get(key) or digest.index_sealed.get((day, key))
            if cell is None:  # (not expected: a row is due, at the latest, in the batch that seals it)
                pending.pop((day, key), None)
                continue
            if listening:
                rows.append(index.row_of(cell, key, final, final.provisional(day, key, cell.last_ns)))
            final_ns = final.final_ns(day, key, cell.last_ns)
            if now_ns < final_ns:  # provisional: final later (again: a listing meanwhile may have moved it)
                pending[(day, key)] = final_ns
            else:
                pending.pop((day, key), None)
        next_check[0] = min(pending.values(), default=NEVER)
        if rows:
            hub.publish("index", _encode(IndexMessage("index", rows)))

    # rows a restart found still moving are published final when they turn final
    read_model = port.read_model
    final = finality(read_model, exchange_now_ns(app))
    for day in (final.today - 1, final.today):
        for key, cell in read_model.index.days.get(day, {}).items():
            if final.provisional(day, key, cell.last_ns):
                pending[(day, key)] = final.final_ns(day, key, cell.last_ns)
    next_check[0] = min(pending.values(), default=NEVER)
    port.add_listener(publish)
