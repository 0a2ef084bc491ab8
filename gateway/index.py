"""The live-hog price index, the way the Xinhua (Rongchang) live pig price index is published: daily, from
the day's trades (book and lot auctions), per product class, breed class and delivery region.

For each China Standard Time day and series (product class, breed class, delivery region = the
instrument's delivery point) it keeps heads traded, the sum of price x heads and the trade count, and
gives:

- `avg_price_fen`: the head-weighted average price, sum(price x heads) / heads, rounded half up to the
  fen (fen per kg live weight for finishing hogs, per head for piglets: `quote_unit`);
- `index_x100`: the index against the series' base day (its first day with trades), base 1000, in
  hundredths: 100000 x avg / base avg from the exact sums, rounded half up (`index` is the same as a
  decimal string, e.g. "1023.45");
- `heads` and `value_fen`: per head, price x heads; per kg, price x heads x the lot's declared average
  weight, rounded down to the fen (the delivered weight is known only at the weigh-in);
- `provisional`: true for the current day (by the exchange clock), whose values still move.

`PriceIndex` is pure and folded by the gateway's read model from committed trades, so it is rebuilt
from the journal at start like everything else there. Routes: `GET /v1/index?date=` (default today),
`GET /v1/index/history?from=&to=&product_class=&breed_class=&region=` and `.../history.csv`; the
WebSocket channel `index` sends the changed series of each batch with trades (provisional) and, at the
first trade of a new day, the previous day's final values. Candles stay as they are.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import TYPE_CHECKING, Annotated, Final

import msgspec
from aiohttp import web

from exchange.domain import InstrumentSpec, ProductClass
from exchange.settlement.rules import cst_day
from gateway.auth import PUBLIC
from gateway.clock import exchange_now_ns
from gateway.errors import ApiError
from gateway.routes import Call, RouteTable
from gateway.schemas import BREED_CLASS_NAME, PRODUCT_CLASS_NAME, QUOTE_UNIT, BreedClassName, ProductClassName

if TYPE_CHECKING:
    from gateway.exchange_port import ExchangePort
    from gateway.readmodel import BatchDigest
    from gateway.ws import Hub

__all__ = ["IndexRow", "PriceIndex", "attach", "routes", "wire"]

BASE: Final = 1000
_EPOCH: Final = dt.date(1970, 1, 1)
SeriesKey = tuple[int, int, str]  # (product class, breed class, region)


class _Day:
    __slots__ = ("heads", "price_heads", "trades", "value_fen")

    def __init__(self) -> None:
        self.heads = 0
        self.price_heads = 0  # sum of price x heads
        self.value_fen = 0
        self.trades = 0


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
    index_x100: int
    index: str
    base_date: str
    provisional: bool


def day_to_date(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=day)).isoformat()


def date_to_day(date: str) -> int:
    return (dt.date.fromisoformat(date) - _EPOCH).days


def _half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


class PriceIndex:
    """Daily sums per series; rows computed on demand (see the module docstring)."""

    def __init__(self) -> None:
        self.days: dict[int, dict[SeriesKey, _Day]] = {}
        self.base: dict[SeriesKey, int] = {}  # series -> its base day

    def add(self, spec: InstrumentSpec, ts_ns: int, price_fen: int, heads: int, avg_weight_g: int) -> tuple[int,
                                                                                                           SeriesKey]:
        """Fold one trade; returns its (day, series)."""
        day = cst_day(ts_ns)
        key = (int(spec.product_class), int(spec.breed_class), spec.delivery_point)
        self.base.setdefault(key, day)
        cell = self.days.setdefault(day, {}).setdefault(key, _Day())
        cell.heads += heads
        cell.price_heads += price_fen * heads
        cell.trades += 1
        if spec.product_class == ProductClass.PIGLET:
            cell.value_fen += price_fen * heads
        else:
            cell.value_fen += price_fen * heads * avg_weight_g // 1000
        return day, key

    def row(self, day: int, key: SeriesKey, today: int) -> IndexRow:
        cell = self.days[day][key]
        base_day = self.base[key]
        base = self.days[base_day][key]
        index_x100 = _half_up(BASE * 100 * cell.price_heads * base.heads, cell.heads * base.price_heads)
        product, breed, region = key
        return IndexRow(
            day_to_date(day), PRODUCT_CLASS_NAME[ProductClass(product)], BREED_CLASS_NAME[breed], region,
            QUOTE_UNIT[ProductClass(product)], cell.heads, cell.value_fen, cell.trades,
            _half_up(cell.price_heads, cell.heads), index_x100, f"{index_x100 // 100}.{index_x100 % 100:02d}",
            day_to_date(base_day), day >= today,
        )  # fmt: skip

    def rows(self, day: int, today: int) -> list[IndexRow]:
        cells = self.days.get(day, {})
        return [self.row(day, key, today) for key in sorted(cells)]

    def history(self, first: int, last: int, today: int) -> list[IndexRow]:
        return [row for day in sorted(d for d in self.days if first <= d <= last) for row in self.rows(day, today)]


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


def _index(call: Call) -> PriceIndex:
    from gateway.exchange_port import EXCHANGE  # here: the exchange port imports the read model, which imports us

    return call.app[EXCHANGE].read_model.index


@routes.get("/v1/index", roles=PUBLIC, query=IndexQuery, response=IndexDay)
async def get_index(call: Call, query: IndexQuery) -> IndexDay:
    """The price index of one day (default: today, provisional until the day ends), every series."""
    today = cst_day(exchange_now_ns(call.app))
    day = today if query.date is None else _day(query.date)
    return IndexDay(day_to_date(day), day >= today, _index(call).rows(day, today))


def _history(call: Call, query: HistoryQuery) -> list[IndexRow]:
    today = cst_day(exchange_now_ns(call.app))
    last = today if query.to is None else _day(query.to)
    first = last - 30 if query.from_ is None else _day(query.from_)
    if not 0 <= last - first <= _MAX_DAYS:
        raise ApiError(422, "invalid", f"from must be on or before to, at most {_MAX_DAYS} days")
    return [row for row in _index(call).history(first, last, today)
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
    """The public `index` channel: today's provisional values at subscription."""

    def snapshot(channel: str, principal: object) -> bytes:
        from gateway.exchange_port import EXCHANGE

        today = cst_day(exchange_now_ns(app))
        return _encode(IndexMessage(channel, app[EXCHANGE].read_model.index.rows(today, today)))

    hub.register_channel_kind("index", snapshot=snapshot, bare=True)


def attach(app: web.Application, port: ExchangePort, hub: Hub) -> None:
    """Publish the series each batch's trades changed; the first trades of a new day also publish the
    previous trading day's values, now final."""
    last_day: list[int] = []  # the latest day published

    def publish(_batch: object, digest: BatchDigest) -> None:
        changed = digest.index
        if not changed:
            return
        index = port.read_model.index
        today = cst_day(exchange_now_ns(app))
        rows: list[IndexRow] = []
        newest = max(day for day, _ in changed)
        if last_day and newest > last_day[0] and last_day[0] in index.days:
            rows.extend(index.rows(last_day[0], today))
        last_day[:] = [max([newest, *last_day])]
        rows.extend(index.row(day, key, today) for day, key in sorted(changed))
        if hub.subscriber_count("index"):
            hub.publish("index", _encode(IndexMessage("index", rows)))

    port.add_listener(publish)
