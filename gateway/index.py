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
tests/test_index_projection.py compares them on one stream). These serve the routes and the channel:
`PriceIndex` is pure and folded by the gateway's read model from committed trades, so it is rebuilt
from the journal at start like everything else there; the projection keeps the history in PostgreSQL
for when it need not live in memory. Routes: `GET /v1/index?date=` (default today),
`GET /v1/index/history?from=&to=&product_class=&breed_class=&region=` and `.../history.csv`; the
WebSocket channel `index` sends the changed series of each batch with trades (provisional) and, with
the first batch stamped at or after a row's final instant (the close's own batch, or the tick that
passed it), that row again with `provisional: false`: a new value at each close. Candles stay as they
are.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import io
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec
from aiohttp import web

from exchange.calendar import NEVER, NS_PER_MIN, day_of_label, day_start_ns, trades_on
from exchange.domain import InstrumentSpec, ProductClass
from exchange.priceindex import average_price_fen, index_x100, trade_value_fen
from exchange.settlement.rules import cst_day
from gateway.auth import PUBLIC
from gateway.clock import exchange_now_ns
from gateway.errors import ApiError
from gateway.routes import Call, RouteTable
from gateway.schemas import BREED_CLASS_NAME, PRODUCT_CLASS_NAME, QUOTE_UNIT, BreedClassName, ProductClassName

if TYPE_CHECKING:
    from exchange.sequencer import CommittedBatch
    from gateway.exchange_port import ExchangePort
    from gateway.readmodel import BatchDigest, ReadModel
    from gateway.ws import Hub

__all__ = ["Finality", "IndexRow", "PriceIndex", "attach", "routes", "wire"]

_EPOCH: Final = dt.date(1970, 1, 1)
SeriesKey = tuple[int, int, str]  # (product class, breed class, region)


class _Day:
    __slots__ = ("heads", "last_ns", "price_heads", "trades", "value_fen")

    def __init__(self) -> None:
        self.heads = 0
        self.price_heads = 0  # sum of price x heads
        self.value_fen = 0
        self.trades = 0
        self.last_ns = 0  # the latest trade's instant


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
    """Daily sums per series; rows computed on demand (see the module docstring). The arithmetic is
    `exchange.priceindex`'s, so these rows equal the PostgreSQL projection's."""

    def __init__(self) -> None:
        self.days: dict[int, dict[SeriesKey, _Day]] = {}
        self.trade_days: dict[SeriesKey, list[int]] = {}  # series -> its days with trades, ascending

    def add(self, spec: InstrumentSpec, ts_ns: int, price_fen: int, heads: int,
            avg_weight_g: int) -> tuple[int, SeriesKey]:
        """Fold one trade; returns its (day, series)."""
        # Called for every trade: look-ups first, nothing allocated unless a day or series is new.
        day = cst_day(ts_ns)
        key = series_of(spec)
        days = self.trade_days.get(key)
        if days is None:
            days = self.trade_days[key] = []
        if not days or days[-1] < day:
            days.append(day)
        elif days[-1] != day and day not in days:  # (the common case, today's, never scans the list)
            # trades come in time order; this keeps the list sorted whatever happens
            bisect.insort(days, day)
        cells = self.days.get(day)
        if cells is None:
            cells = self.days[day] = {}
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = _Day()
        cell.heads += heads
        cell.price_heads += price_fen * heads
        cell.trades += 1
        if ts_ns > cell.last_ns:
            cell.last_ns = ts_ns
        cell.value_fen += trade_value_fen(key[0], price_fen, heads, avg_weight_g)
        return day, key

    def base_day(self, key: SeriesKey, finality: Finality) -> int | None:
        """The series' base day: its first day with trades on or after the day named at listing."""
        days = self.trade_days.get(key, [])
        i = bisect.bisect_left(days, finality.base_from(key))
        return days[i] if i < len(days) else None

    def row(self, day: int, key: SeriesKey, finality: Finality) -> IndexRow:
        cell = self.days[day][key]
        base_day = self.base_day(key, finality)
        index = None
        if base_day is not None and day >= base_day:
            base = self.days[base_day][key]
            index = index_x100(cell.price_heads, cell.heads, base.price_heads, base.heads)
        product, breed, region = key
        return IndexRow(
            day_to_date(day), PRODUCT_CLASS_NAME[ProductClass(product)], BREED_CLASS_NAME[breed], region,
            QUOTE_UNIT[ProductClass(product)], cell.heads, cell.value_fen, cell.trades,
            average_price_fen(cell.price_heads, cell.heads), index,
            None if index is None else f"{index // 100}.{index % 100:02d}",
            None if base_day is None else day_to_date(base_day), finality.provisional(day, key, cell.last_ns),
        )  # fmt: skip

    def rows(self, day: int, finality: Finality) -> list[IndexRow]:
        cells = self.days.get(day, {})
        return [self.row(day, key, finality) for key in sorted(cells)]

    def history(self, first: int, last: int, finality: Finality) -> list[IndexRow]:
        return [row for day in sorted(d for d in self.days if first <= d <= last) for row in self.rows(day, finality)]


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


@routes.get("/v1/index", roles=PUBLIC, query=IndexQuery, response=IndexDay)
async def get_index(call: Call, query: IndexQuery) -> IndexDay:
    """The price index of one day (default: today), every series; each row is provisional until the
    close of its series' instruments that day (midnight for a series with no session), and the day is
    provisional while any row is (or, with no rows yet, until it ends)."""
    read_model = _read_model(call.app)
    final = finality(read_model, exchange_now_ns(call.app))
    day = final.today if query.date is None else _day(query.date)
    rows = read_model.index.rows(day, final)
    return IndexDay(day_to_date(day), any(r.provisional for r in rows) if rows else day >= final.today, rows)


def _history(call: Call, query: HistoryQuery) -> list[IndexRow]:
    read_model = _read_model(call.app)
    final = finality(read_model, exchange_now_ns(call.app))
    last = final.today if query.to is None else _day(query.to)
    first = last - 30 if query.from_ is None else _day(query.from_)
    if not 0 <= last - first <= _MAX_DAYS:
        raise ApiError(422, "invalid", f"from must be on or before to, at most {_MAX_DAYS} days")
    return [row for row in read_model.index.history(first, last, final)
            if (query.product_class is None or row.product_class == query.product_class)
            and (query.breed_class is None or row.breed_class == query.breed_class)
            and (query.region is None or row.region == query.region)]


@routes.get("/v1/index/history", roles=PUBLIC, query=HistoryQuery, response=list[IndexRow])
async def index_history(call: Call, query: HistoryQuery) -> list[IndexRow]:
    """The index by day and series, oldest first (`from`..`to` inclusive; default the last 30 days)."""
    return _history(call, query)


_CSV_COLUMNS: Final = IndexRow.__struct_fields__


@routes.get("/v1/index/history.csv", roles=PUBLIC, query=HistoryQuery, response=None, media_type="text/csv")
async def index_history_csv(call: Call, query: HistoryQuery) -> web.Response:
    """The index history as CSV (a header row, then one row per day and series)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(_CSV_COLUMNS)
    for row in _history(call, query):
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


def attach(app: web.Application, port: ExchangePort, hub: Hub) -> None:
    """Publish the rows each batch's trades changed (provisional), and each row again, final, with the
    first batch stamped at or after its final instant (`Finality`): the batch of the close itself, as
    the calendar stamps `TradingDayClosed` with the close's instant. The time is the batch's, not the
    wall clock's, so what is published follows the journal (and the simulated clock exactly).

    Only rows not yet published final are remembered (today's and perhaps yesterday's), with the
    instant each turns final; a batch before the earliest of them and without trades costs nothing."""
    pending: dict[tuple[int, SeriesKey], int] = {}  # row -> the instant it turns final
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
        final = finality_at(now_ns)
        due = {row for row, at in pending.items() if at <= now_ns}
        # With no subscriber no row is built: only when each turns final is kept (a later subscriber
        # gets the rows as they stand in its snapshot).
        listening = hub.subscriber_count("index") > 0
        rows: list[IndexRow] = []
        for day, key in sorted(changed | due):
            if listening:
                rows.append(index.row(day, key, final))
            final_ns = final.final_ns(day, key, index.days[day][key].last_ns)
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
