"""The trading day: each instrument's session in China Standard Time and the exchange's non-trading days.

An instrument listed with a ``TradingSession`` (exchange/domain.py) runs a calendar; one without keeps
its state until an operator changes it, as before. Time comes only from commands (their ``ts_ns``,
clock ticks included): before a command takes effect, every session transition whose instant it has
reached happens, in time order (instruments in listing order at the same instant), its events stamped
with the transition's own instant. On a trading day (a weekday of the session's ``weekdays`` that no
operator declared non-trading) the phases are:

- before ``pre_open_min``: ``CLOSED`` (orders rejected MARKET_CLOSED; cancels work);
- pre-open: the market is in its call auction (``AUCTION``): orders collect, nothing matches;
- at ``open_min`` the opening call auction uncrosses by itself (exchange/matching/auction.py, exactly
  as the operator's Uncross) and continuous trading starts;
- an optional break (lunch) is ``CLOSED``; continuous trading resumes after it (a book left crossed by
  an operator's call auction is uncrossed first);
- at ``close_min`` the close: resting DAY orders expire (``END_OF_DAY``), GTC and GTD orders stay; the
  next day's band reference becomes the day's head-weighted average price rounded half up to a whole
  tick (unchanged when nothing traded, or when the rounded average would leave no tradable band above
  the weight discounts: ``rules.band_clears_discounts``); ``TradingDayClosed`` reports the day's heads
  and average (rounded half up to the fen); the market is ``CLOSED`` until the next pre-open. An
  operator may still set the reference at any time (``SetReferencePrice``).

The day's trades are every ``Trade`` event of the instrument (book, call auction or lot auction)
between one close and the next.

Halts. An operator halts a market in any state but HALTED (with a reason) and resumes it to the state
it was halted from, or to where the calendar has moved meanwhile: a transition during a halt changes
only what the market resumes to, except the close, whose DAY expiry and reference happen on time. A
market halted in pre-open and resumed after the open runs its opening uncross at the resume.

Non-trading days (``SetNonTradingDay``) are exchange-wide and may only be set for days after today
(CST), so no session changes under a running day; past ones are forgotten at the next close.

Plain Python (not compiled): the compiled core calls it only when a transition is due, when a trade of
a calendar instrument happened, and for its own commands.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from exchange.commands import SetNonTradingDay
from exchange.domain import ExpireReason, InstrumentSpec, RejectReason, TimeInForce, TradingSession, TradingState
from exchange.events import NonTradingDaySet, ReferencePriceSet, Trade, TradingDayClosed
from exchange.matching.book import level_of
from exchange.settlement import rules

if TYPE_CHECKING:
    from exchange.core import Core, Market

NS_PER_MIN: Final = 60 * 1_000_000_000
NS_PER_DAY: Final = 1_440 * NS_PER_MIN
CST_OFFSET_NS: Final = 8 * 60 * NS_PER_MIN  # China Standard Time is UTC+8, all year
NEVER: Final = 2**63 - 1
# ``core.calendar_due_ns`` when nothing is due: the largest short int of the compiled core (62 bits), past
# any real time stamp (year 2116), so the check every command makes is one native compare. A command at or
# after it calls ``advance``, which finds nothing due: only wasted work, never a wrong transition.
DUE_NEVER: Final = 2**62 - 1
_EPOCH_ORDINAL: Final = datetime.date(1970, 1, 1).toordinal()
_LOOKAHEAD_DAYS: Final = 800  # a session finds its next trading day within this many days, or never trades

# the calendar's phases, as named in TradingStateChanged.reason
PRE_OPEN: Final = "pre_open"
OPEN: Final = "open"
BREAK: Final = "break"
CLOSE: Final = "close"
_STATE_OF: Final = {
    PRE_OPEN: TradingState.AUCTION, OPEN: TradingState.CONTINUOUS, BREAK: TradingState.CLOSED,
    CLOSE: TradingState.CLOSED,
}  # fmt: skip
_CONTINUOUS: Final = int(TradingState.CONTINUOUS)
_AUCTION: Final = int(TradingState.AUCTION)
_HALTED: Final = int(TradingState.HALTED)
_CLOSED: Final = int(TradingState.CLOSED)
_DAY: Final = int(TimeInForce.DAY)


# -- dates --------------------------------------------------------------------------------------------------


def cst_day(ts_ns: int) -> int:
    """Days since 1970-01-01 of the China Standard Time date at ``ts_ns``."""
    return (ts_ns + CST_OFFSET_NS) // NS_PER_DAY


def day_start_ns(day: int) -> int:
    """The instant CST midnight starts day number ``day``."""
    return day * NS_PER_DAY - CST_OFFSET_NS


def day_label(day: int) -> int:
    """yyyymmdd of day number ``day``."""
    d = datetime.date.fromordinal(_EPOCH_ORDINAL + day)
    return d.year * 10_000 + d.month * 100 + d.day


def day_of_label(label: int) -> int:
    """The day number of yyyymmdd ``label``; ValueError if it is no date."""
    d = datetime.date(label // 10_000, label // 100 % 100, label % 100)
    return d.toordinal() - _EPOCH_ORDINAL


def is_day_label(label: int) -> bool:
    try:
        day_of_label(label)
    except (ValueError, OverflowError):
        return False
    return 1970_01_01 <= label <= 9999_12_31


def weekday(day: int) -> int:
    """0 Monday .. 6 Sunday (1970-01-01 was a Thursday)."""
    return (day + 3) % 7


# -- sessions -----------------------------------------------------------------------------------------------


def session_is_valid(session: TradingSession | None) -> bool:
    if session is None:
        return True
    s = session
    no_break = s.break_from_min == 0 and s.break_to_min == 0
    return (
        0 <= s.pre_open_min <= s.open_min < s.close_min <= 1_440
        and (no_break or s.open_min < s.break_from_min < s.break_to_min < s.close_min)
        and 0 < s.weekdays < 128
    )


def spec_is_valid(spec: InstrumentSpec) -> bool:
    """The calendar's terms of a listing: a consistent session and a real base day (or 0)."""
    return session_is_valid(spec.session) and (spec.index_base_day == 0 or is_day_label(spec.index_base_day))


def _day_transitions(session: TradingSession, day: int) -> list[tuple[int, str]]:
    start = day_start_ns(day)
    minutes = [(session.pre_open_min, PRE_OPEN), (session.open_min, OPEN)]
    if session.break_to_min:
        minutes += [(session.break_from_min, BREAK), (session.break_to_min, OPEN)]
    minutes.append((session.close_min, CLOSE))
    return [(start + m * NS_PER_MIN, phase) for m, phase in minutes]


def trades_on(session: TradingSession, holidays: set[int] | frozenset[int], day: int) -> bool:
    return bool(session.weekdays >> weekday(day) & 1) and day not in holidays


def phase_at(session: TradingSession, holidays: set[int] | frozenset[int], ts_ns: int) -> str:
    """The phase in force at ``ts_ns``: that of the last transition at or before it (CLOSE if none today)."""
    day = cst_day(ts_ns)
    phase = CLOSE
    if trades_on(session, holidays, day):
        for at_ns, name in _day_transitions(session, day):
            if at_ns <= ts_ns:
                phase = name
    return phase


def next_transition(session: TradingSession, holidays: set[int] | frozenset[int], ts_ns: int) -> tuple[int, str]:
    """The first transition strictly after ``ts_ns``: (instant, phase); (NEVER, CLOSE) if none."""
    first = cst_day(ts_ns)
    for day in range(first, first + _LOOKAHEAD_DAYS):
        if trades_on(session, holidays, day):
            for at_ns, name in _day_transitions(session, day):
                if at_ns > ts_ns:
                    return (at_ns, name)
    return (NEVER, CLOSE)


# -- the calendar of one shard ------------------------------------------------------------------------------


class SessionRecord(msgspec.Struct, array_like=True):
    """One calendar instrument's place in its day; also its snapshot form."""

    instrument: str
    phase: str
    next_ns: int
    next_phase: str
    open_pending: bool = False  # halted in pre-open and the open passed: uncross at the resume
    day_heads: int = 0  # the trades since the last close
    day_value_fen: int = 0  # sum of price x heads (fen per kg x heads for finishing hogs)


class CalendarRecord(msgspec.Struct, array_like=True):
    holidays: list[int]
    sessions: list[SessionRecord]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CalendarRecord)


class TradingCalendar:
    """The sessions of one core's calendar instruments; ``core.calendar_due_ns`` is the next transition."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.holidays: set[int] = set()  # day numbers
        self.sessions: dict[str, SessionRecord] = {}  # in listing order
        self._counted = 0  # events already counted by ``advance`` in the current command

    def handlers(self) -> dict[type, Callable[[Any, list], None]]:
        return {SetNonTradingDay: self._set_non_trading_day}

    # -- time -------------------------------------------------------------------------------------------

    def _reschedule(self) -> None:
        core = self.core
        core.calendar_due_ns = min(min((s.next_ns for s in self.sessions.values()), default=NEVER), DUE_NEVER)
        core.has_sessions = bool(self.sessions)

    def advance(self, ts_ns: int, events: list) -> None:
        """Every transition due by ``ts_ns``, in time order; their trades count for their own day."""
        if not self.sessions:
            return  # a time stamp past DUE_NEVER: nothing is ever due (and count_trades is not called)
        while True:
            due: SessionRecord | None = None
            for record in self.sessions.values():
                if record.next_ns <= ts_ns and (due is None or record.next_ns < due.next_ns):
                    due = record
            if due is None:
                break
            mark = len(events)
            self._transition(due, events)
            self.count_trades(events, mark)
        self._reschedule()
        self._counted = len(events)

    def count_trades(self, events: list, start: int = -1) -> None:
        """Add the trades of calendar instruments among ``events[start:]`` to their day (by default the
        events after those ``advance`` counted in this command)."""
        begin = self._counted if start < 0 else start
        if start < 0:
            self._counted = 0
        sessions = self.sessions
        for i in range(begin, len(events)):
            event = events[i]
            if type(event) is Trade:
                record = sessions.get(event.instrument)
                if record is not None:
                    record.day_heads += event.quantity_heads
                    record.day_value_fen += event.price_fen * event.quantity_heads

    def _transition(self, record: SessionRecord, events: list) -> None:
        at_ns, phase = record.next_ns, record.next_phase
        market = self.core.markets[record.instrument]
        session = market.spec.session
        assert session is not None
        record.phase = phase
        record.next_ns, record.next_phase = next_transition(session, self.holidays, at_ns)
        if phase == CLOSE:
            self._close(market, record, at_ns, events)
        elif market.state == _HALTED:
            if phase == OPEN and market.resume_state == _AUCTION:
                record.open_pending = True  # the opening uncross waits for the resume
            else:
                market.resume_state = int(_STATE_OF[phase])
        elif phase == PRE_OPEN:
            if market.state != _AUCTION:
                self.core._set_state(market, _AUCTION, at_ns, events, PRE_OPEN)
        elif phase == OPEN:
            self._to_continuous(market, at_ns, events, opening=market.state == _AUCTION)
        elif market.state != _CLOSED:  # the break
            self.core._set_state(market, _CLOSED, at_ns, events, BREAK)

    def _to_continuous(self, market: Market, ts_ns: int, events: list, *, opening: bool) -> None:
        """Continuous trading; an opening call auction (or a book an operator's auction left crossed)
        uncrosses first."""
        book = market.book
        bid, ask = book.bids.best_key, book.asks.best_key
        if opening or (bid is not None and ask is not None and -bid >= ask):
            market.state = _AUCTION  # the uncross runs from the auction state
            self.core._run_uncross(market, ts_ns, events, OPEN)
        elif market.state != _CONTINUOUS:
            self.core._set_state(market, _CONTINUOUS, ts_ns, events, OPEN)

    def _close(self, market: Market, record: SessionRecord, at_ns: int, events: list) -> None:
        self._expire_day_orders(market, at_ns, events)
        heads, value = record.day_heads, record.day_value_fen
        average = (2 * value + heads) // (2 * heads) if heads else 0  # half up to the fen
        if heads:
            tick = market.spec.tick_fen
            reference = (2 * value + tick * heads) // (2 * tick * heads) * tick  # half up to the tick
            if reference > 0 and rules.band_clears_discounts(market.spec, reference):
                market.set_reference(reference)
                events.append(ReferencePriceSet(market.book.next_seq(), at_ns, record.instrument, reference))
        day = cst_day(at_ns)
        events.append(TradingDayClosed(
            market.book.next_seq(), at_ns, record.instrument, day_label(day), heads, average,
            market.reference_price_fen,
        ))  # fmt: skip
        record.day_heads = record.day_value_fen = 0
        record.open_pending = False
        self.holidays = {d for d in self.holidays if d > day}
        if market.state == _HALTED:
            market.resume_state = _CLOSED
        elif market.state != _CLOSED:
            self.core._set_state(market, _CLOSED, at_ns, events, CLOSE)

    def _expire_day_orders(self, market: Market, ts_ns: int, events: list) -> None:
        book = market.book
        for book_side in (book.bids, book.asks):
            for order in [o for o in book_side.iter_orders() if o.time_in_force == _DAY]:
                level = level_of(order)  # before remove() unlinks the order from it
                book.remove(order)
                book.retire(order, ExpireReason.END_OF_DAY, ts_ns, events)
                book.level_size_changed(book_side, level, ts_ns, events)
                book_side.drop_level_if_empty(level)

    # -- listing, halts, non-trading days ---------------------------------------------------------------------

    def on_listed(self, market: Market, ts_ns: int, events: list) -> None:
        """A calendar instrument was listed: it starts in the phase the calendar is in."""
        session = market.spec.session
        assert session is not None
        phase = phase_at(session, self.holidays, ts_ns)
        next_ns, next_phase = next_transition(session, self.holidays, ts_ns)
        self.sessions[market.spec.symbol] = SessionRecord(market.spec.symbol, phase, next_ns, next_phase)
        state = int(_STATE_OF[phase])
        market.resume_state = state
        if market.state != state:
            self.core._set_state(market, state, ts_ns, events, phase)
        self._reschedule()

    def resume(self, market: Market, ts_ns: int, events: list) -> None:
        record = self.sessions[market.spec.symbol]
        pending, record.open_pending = record.open_pending, False
        if pending and market.resume_state == _AUCTION:
            self._to_continuous(market, ts_ns, events, opening=True)
        elif market.resume_state == _CONTINUOUS:
            self._to_continuous(market, ts_ns, events, opening=False)
        else:
            self.core._set_state(market, market.resume_state, ts_ns, events, record.phase)

    def _set_non_trading_day(self, cmd: SetNonTradingDay, events: list) -> None:
        if not is_day_label(cmd.day) or day_of_label(cmd.day) <= cst_day(cmd.ts_ns):
            self.core._reject(cmd, RejectReason.INVALID_CALENDAR_DAY, events)
            return
        day = day_of_label(cmd.day)
        if cmd.closed:
            self.holidays.add(day)
        else:
            self.holidays.discard(day)
        for record in self.sessions.values():  # only days after today change: the phase in force stays
            session = self.core.markets[record.instrument].spec.session
            assert session is not None
            record.next_ns, record.next_phase = next_transition(session, self.holidays, cmd.ts_ns)
        self._reschedule()
        events.append(NonTradingDaySet(0, cmd.ts_ns, cmd.day, cmd.closed))

    def non_trading_days(self) -> list[int]:
        return sorted(day_label(d) for d in self.holidays)

    # -- snapshot -----------------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Empty when no calendar was ever used, so snapshots without one keep their bytes."""
        if not self.sessions and not self.holidays:
            return b""
        return _encoder.encode(CalendarRecord(sorted(self.holidays), list(self.sessions.values())))

    def restore(self, data: bytes) -> None:
        if not data:
            return
        record = _decoder.decode(data)
        self.holidays = set(record.holidays)
        self.sessions = {s.instrument: s for s in record.sessions}
        self._reschedule()
