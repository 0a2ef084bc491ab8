"""The trading calendar over HTTP: the exchange's non-trading days (`/v1/admin/calendar`), and the
conversions between the API's session and dates (HH:MM and YYYY-MM-DD, China Standard Time) and the
core's (`exchange.domain.TradingSession`, yyyymmdd integers).

The rules of the trading day are the core's (exchange/calendar.py). A non-trading day applies to every
instrument with a session and may only be set or removed for a day after today (CST): anything else is
a 422 `invalid_calendar_day`. The list is read from the read model (committed state).
"""

from __future__ import annotations

import datetime
from typing import Annotated

import msgspec

from exchange.commands import SetNonTradingDay
from exchange.domain import TradingSession
from exchange.events import Rejected
from gateway.auth import OPERATORS
from gateway.errors import ApiError
from gateway.exchange_port import EXCHANGE
from gateway.routes import Call, RouteTable
from gateway.schemas import IsoDate, SessionRequest, rejection

__all__ = ["date_label", "label_date", "routes", "session_of", "session_view"]

routes = RouteTable()


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def session_of(body: SessionRequest) -> TradingSession:
    """The core's session of a listing's; its consistency (pre-open <= open < close, a break inside) is
    checked by the core, which refuses the listing as `invalid_instrument`."""
    if (body.break_from is None) != (body.break_to is None):
        raise ApiError(422, "invalid_instrument", "a break needs both break_from and break_to")
    mask = 0
    for day in body.weekdays:
        mask |= 1 << (day - 1)
    return TradingSession(
        _minutes(body.pre_open), _minutes(body.open), _minutes(body.close),
        _minutes(body.break_from) if body.break_from else 0, _minutes(body.break_to) if body.break_to else 0, mask,
    )  # fmt: skip


def session_view(session: TradingSession | None) -> SessionRequest | None:
    if session is None:
        return None
    has_break = bool(session.break_to_min)
    return SessionRequest(
        pre_open=_hhmm(session.pre_open_min), open=_hhmm(session.open_min), close=_hhmm(session.close_min),
        break_from=_hhmm(session.break_from_min) if has_break else None,
        break_to=_hhmm(session.break_to_min) if has_break else None,
        weekdays=[d + 1 for d in range(7) if session.weekdays >> d & 1],
    )


def date_label(text: str, code: str = "invalid_calendar_day") -> int:
    """yyyymmdd of a YYYY-MM-DD date; 422 `code` if it is no date."""
    try:
        date = datetime.date.fromisoformat(text)
    except ValueError:
        raise ApiError(422, code, f"{text[:20]!r} is not a date (YYYY-MM-DD)") from None
    return date.year * 10_000 + date.month * 100 + date.day


def label_date(label: int) -> str:
    return f"{label // 10_000:04d}-{label // 100 % 100:02d}-{label % 100:02d}"


# -- routes ---------------------------------------------------------------------------------------------


class NonTradingDayRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    date: IsoDate


class DatePath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    date: Annotated[str, msgspec.Meta(max_length=20)]


class CalendarView(msgspec.Struct, frozen=True):
    """The exchange's non-trading days (China Standard Time), oldest first."""

    non_trading_days: list[str]


def _view(call: Call) -> CalendarView:
    days = call.app[EXCHANGE].read_model.non_trading_days
    return CalendarView([label_date(d) for d in sorted(days)])


async def _submit(call: Call, day: int, closed: bool) -> CalendarView:
    result = await call.app[EXCHANGE].submit(SetNonTradingDay(call.principal.participant_id, 0, day, closed))
    for event in result.events:
        if event.__class__ is Rejected:
            raise rejection(event.reason)
    return _view(call)


@routes.get("/v1/admin/calendar", roles=OPERATORS, response=CalendarView)
async def list_non_trading_days(call: Call) -> CalendarView:
    """The non-trading days every instrument with a session skips."""
    return _view(call)


@routes.post("/v1/admin/calendar", roles=OPERATORS, body=NonTradingDayRequest, response=CalendarView, status=201)
async def add_non_trading_day(call: Call, body: NonTradingDayRequest) -> CalendarView:
    """Declare a day after today (China Standard Time) a non-trading day.

    Errors: 422 `invalid_calendar_day` (not a date, today or earlier)."""
    return await _submit(call, date_label(body.date), True)


@routes.delete("/v1/admin/calendar/{date}", roles=OPERATORS, params=DatePath, response=CalendarView)
async def remove_non_trading_day(call: Call, params: DatePath) -> CalendarView:
    """Make a day after today a trading day again (its weekday permitting).

    Errors: 422 `invalid_calendar_day` (not a date, today or earlier)."""
    return await _submit(call, date_label(params.date), False)
