"""The live-hog price index over HTTP and WebSocket (public; computed by `exchange.priceindex`).

Routes: `GET /v1/index?date=YYYY-MM-DD` (default: today, China Standard Time) and `GET /v1/index.csv`;
`GET /v1/index/history?from=&to=&product_class=&breed_class=&region=` (at most 366 days) and
`GET /v1/index/history.csv`. Each row is one day of one series (product class, breed class, delivery
region): trades, heads, value in fen, the head-weighted average price in fen (per kg for finishing
hogs, per head for piglets: `quote_unit`), and the index against the series' base day (base 1000) as
`index_x100` (hundredths of a point, an integer) and `index` (the same as a decimal string). A day is
`provisional` until it has passed (CST): its figures still move with each trade. The rounding rules
are `exchange.priceindex`'s.

The answers are read from PostgreSQL once the index projection has caught up with the last commit
(waiting up to 2 s; after that the answer is what is projected so far).

WebSocket channel `index` (public, no snapshot: read `GET /v1/index` after subscribing): after each
projected run of commits with trades, a `{"type": "index", "provisional": true, ...}` message with the
rows that changed; at each instrument's close (its trading session, exchange/calendar.py) the rows of
its series for that day with `"provisional": false`, whatever later instruments of the series still do.

Errors: 422 `invalid_date` (not YYYY-MM-DD), 422 `invalid_date_range` (`from` after `to`, or more than
366 days), 422 `invalid` (an unknown class name).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import io
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Final

import msgspec
from aiohttp import web

from exchange import priceindex
from exchange.calendar import CST_OFFSET_NS, NS_PER_DAY
from gateway.auth import PUBLIC
from gateway.errors import ApiError
from gateway.exchange_port import EXCHANGE
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
from gateway.state import CONFIG, HUB, POOL

__all__ = ["PROJECTOR", "context", "routes"]

_log = logging.getLogger(__name__)
routes = RouteTable()
PROJECTOR: Final = web.AppKey("hogx_price_index", priceindex.IndexProjector)
MAX_DAYS: Final = 366
_CSV: Final = "text/csv"
_FRESH_WAIT_S: Final = 2.0
_DateText = Annotated[str, msgspec.Meta(max_length=20, description="YYYY-MM-DD, China Standard Time")]


class IndexQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    date: _DateText | None = None


class HistoryQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    from_date: _DateText = msgspec.field(name="from")
    to_date: _DateText = msgspec.field(name="to")
    product_class: ProductClassName | None = None
    breed_class: BreedClassName | None = None
    region: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class IndexView(msgspec.Struct, frozen=True):
    date: str
    product_class: ProductClassName
    breed_class: BreedClassName
    region: str  # the delivery point
    quote_unit: str  # fen_per_kg or fen_per_head
    trades: int
    heads: int
    value_fen: int
    average_price_fen: int  # head-weighted, half up to the fen
    index_x100: int | None  # base day = 100000; None before the base day
    index: str | None  # index_x100 as a decimal, e.g. "1018.17"
    base_date: str | None
    provisional: bool


class IndexPage(msgspec.Struct, frozen=True):
    date: str
    provisional: bool
    series: list[IndexView]


class HistoryPage(msgspec.Struct, frozen=True):
    from_date: str = msgspec.field(name="from")
    to_date: str = msgspec.field(name="to")
    series: list[IndexView] = []


class IndexMessage(msgspec.Struct, frozen=True, tag="index", tag_field="type"):
    channel: str
    provisional: bool
    series: list[IndexView]


# -- conversions ---------------------------------------------------------------------------------------------


def _today() -> int:
    date = datetime.datetime.fromtimestamp((time.time_ns() + CST_OFFSET_NS) // NS_PER_DAY * 86_400, datetime.UTC)
    return date.year * 10_000 + date.month * 100 + date.day


def _label(text: str) -> int:
    try:
        date = datetime.date.fromisoformat(text)
    except ValueError:
        raise ApiError(422, "invalid_date", f"{text[:20]!r} is not a date (YYYY-MM-DD)") from None
    return date.year * 10_000 + date.month * 100 + date.day


def _date(label: int) -> str:
    return f"{label // 10_000:04d}-{label // 100 % 100:02d}-{label % 100:02d}"


def _points(index_x100: int | None) -> str | None:
    return None if index_x100 is None else f"{index_x100 // 100}.{index_x100 % 100:02d}"


def _view(row: priceindex.IndexRow, today: int, final: bool = False) -> IndexView:
    return IndexView(
        _date(row.day), PRODUCT_CLASS_NAME[row.product_class], BREED_CLASS_NAME[row.breed_class], row.region,
        QUOTE_UNIT[row.product_class], row.trades, row.heads, row.value_fen, row.average_price_fen, row.index_x100,
        _points(row.index_x100), _date(row.base_day) if row.base_day else None, not final and row.day >= today,
    )  # fmt: skip


_CSV_COLUMNS: Final = tuple(IndexView.__struct_fields__)


def _csv(views: list[IndexView]) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for view in views:
        writer.writerow(["" if v is None else str(v).lower() if isinstance(v, bool) else v
                         for v in msgspec.structs.astuple(view)])
    return web.Response(text=out.getvalue(), content_type=_CSV)


async def _fresh(call: Call) -> None:
    """Wait until the projection includes the last commit (bounded)."""
    projector = call.app[PROJECTOR]
    with contextlib.suppress(TimeoutError):
        await projector.wait_for(call.app[EXCHANGE].sequencer.committed_seq, _FRESH_WAIT_S)


async def _page(call: Call, query: IndexQuery) -> IndexPage:
    day = _today() if query.date is None else _label(query.date)
    await _fresh(call)
    today = _today()
    rows = await priceindex.index_on(call.pool, day)
    return IndexPage(_date(day), day >= today, [_view(r, today) for r in rows])


async def _history(call: Call, query: HistoryQuery) -> HistoryPage:
    first, last = _label(query.from_date), _label(query.to_date)
    span = (datetime.date.fromisoformat(query.to_date) - datetime.date.fromisoformat(query.from_date)).days
    if not 0 <= span < MAX_DAYS:
        raise ApiError(422, "invalid_date_range", f"`from` must be at most {MAX_DAYS} days before `to`, not after it")
    await _fresh(call)
    today = _today()
    rows = await priceindex.index_history(
        call.pool, first, last,
        product_class=None if query.product_class is None else int(PRODUCT_CLASS[query.product_class]),
        breed_class=None if query.breed_class is None else int(BREED_CLASS[query.breed_class]),
        region=query.region,
    )  # fmt: skip
    return HistoryPage(query.from_date, query.to_date, [_view(r, today) for r in rows])


# -- routes -------------------------------------------------------------------------------------------------


@routes.get("/v1/index", roles=PUBLIC, query=IndexQuery, response=IndexPage)
async def get_index(call: Call, query: IndexQuery) -> IndexPage:
    """The live-hog price index of one day (default today, CST): every series with trades.

    Errors: 422 `invalid_date`."""
    return await _page(call, query)


@routes.get("/v1/index.csv", roles=PUBLIC, query=IndexQuery, response=None, media_type=_CSV)
async def get_index_csv(call: Call, query: IndexQuery) -> web.Response:
    """The price index of one day as CSV (the columns of `IndexView`).

    Errors: 422 `invalid_date`."""
    return _csv((await _page(call, query)).series)


@routes.get("/v1/index/history", roles=PUBLIC, query=HistoryQuery, response=HistoryPage)
async def get_index_history(call: Call, query: HistoryQuery) -> HistoryPage:
    """The price index from `from` to `to` (inclusive, at most 366 days), oldest first, optionally of one
    product class, breed class or region.

    Errors: 422 `invalid_date`, `invalid_date_range`, `invalid` (unknown class)."""
    return await _history(call, query)


@routes.get("/v1/index/history.csv", roles=PUBLIC, query=HistoryQuery, response=None, media_type=_CSV)
async def get_index_history_csv(call: Call, query: HistoryQuery) -> web.Response:
    """The price index history as CSV (the columns of `IndexView`).

    Errors: 422 `invalid_date`, `invalid_date_range`, `invalid` (unknown class)."""
    return _csv((await _history(call, query)).series)


# -- the projector and the `index` channel ------------------------------------------------------------------------


async def context(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: the index projector follows the journal while the app runs and feeds `index`."""
    config = app[CONFIG]
    assert config.database_url is not None
    projector = priceindex.IndexProjector(config.database_url)
    app[PROJECTOR] = projector
    hub = app[HUB]
    pending: set[asyncio.Task[None]] = set()

    def on_changes(changes: priceindex.DayChanges) -> None:
        if (changes.sums or changes.closes) and hub.subscriber_count("index"):
            task = asyncio.create_task(_publish(app, changes))
            pending.add(task)
            task.add_done_callback(pending.discard)

    projector.listeners.append(on_changes)
    projector.attach(app[EXCHANGE].sequencer)
    await projector.start()
    try:
        yield
    finally:
        await projector.stop()
        for task in list(pending):
            task.cancel()


async def _publish(app: web.Application, changes: priceindex.DayChanges) -> None:
    """The changed rows (provisional), then each closed instrument's series for its day (final)."""
    try:
        hub, db, today = app[HUB], app[POOL], _today()
        if changes.sums:
            days = sorted({day for day, _ in changes.sums})
            rows = await priceindex.index_history(db, days[0], days[-1])
            changed = [r for r in rows if (r.day, (int(r.product_class), int(r.breed_class), r.region)) in changes.sums]
            hub.publish("index", msgspec.json.encode(IndexMessage("index", True, [_view(r, today) for r in changed])))
        for day, instrument in changes.closes:
            series = await db.fetchrow("SELECT product_class, breed_class, region FROM price_index_instruments"
                                       " WHERE instrument = $1", instrument)
            if series is None:
                continue
            rows = await priceindex.index_history(db, day, day, product_class=series[0], breed_class=series[1],
                                                  region=series[2])
            if rows:
                hub.publish("index", msgspec.json.encode(
                    IndexMessage("index", False, [_view(r, today, final=True) for r in rows])))
    except Exception:  # the channel is best effort: a failed publish must never reach the projector
        _log.exception("price index: publishing the index channel failed")

