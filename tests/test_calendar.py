"""The trading day by example (exchange/calendar.py): pre-open, the opening uncross, continuous trading,
the close with DAY expiry and the next reference; halts through the phases; non-trading days.

The instrument trades the default session (pre-open 08:50, open 09:00, close 15:00 CST, Monday to
Friday), reference 2800 fen/kg, band ±4 %, tick 10. Monday 2026-12-07 is the first day. Sellers are
11-13, buyers 21-23. Every price and fill is computed by hand in the comments.
"""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
import pytest

from exchange.calendar import CST_OFFSET_NS, cst_day, day_label, day_of_label, next_transition, phase_at
from exchange.commands import ClockTick, Halt, Resume, SetNonTradingDay
from exchange.core import Core
from exchange.domain import (
    ExpireReason,
    InstrumentSpec,
    OrderType,
    RejectReason,
    TimeInForce,
    TradingSession,
    TradingState,
)
from exchange.events import (
    AuctionUncrossed,
    Event,
    NonTradingDaySet,
    OrderExpired,
    ReferencePriceSet,
    Trade,
    TradingDayClosed,
    TradingStateChanged,
)
from tests.factories import OPERATOR, hog_spec, list_instrument, order
from tests.scenarios import BUY, SELL, Scenario

S1, S2, S3 = 11, 12, 13
B1, B2, B3 = 21, 22, 23
R = RejectReason
AUCTION, CONTINUOUS = TradingState.AUCTION, TradingState.CONTINUOUS
HALTED, CLOSED = TradingState.HALTED, TradingState.CLOSED
DAY, GTC = TimeInForce.DAY, TimeInForce.GTC
MONDAY = 2026_12_07


def at(day: int, hhmm: str) -> int:
    """The instant of ``hhmm`` China Standard Time on yyyymmdd ``day``."""
    hours, minutes = map(int, hhmm.split(":"))
    date = datetime.datetime(day // 10_000, day // 100 % 100, day % 100, hours, minutes, tzinfo=datetime.UTC)
    return int(date.timestamp()) * 1_000_000_000 - CST_OFFSET_NS


def day_spec(session: TradingSession | None = None, **kwargs: object) -> InstrumentSpec:
    return msgspec.structs.replace(hog_spec(**kwargs), session=session or TradingSession())  # type: ignore[arg-type]


class Day(Scenario):
    """A Scenario whose instrument runs a session, listed at ``listed_at`` (Monday 08:00 by default)."""

    def __init__(self, spec: InstrumentSpec | None = None, listed_at: int | None = None) -> None:
        self.core = Core()
        self.now_ns = listed_at or at(MONDAY, "08:00")
        self.listing = self.submit(list_instrument(spec or day_spec()), self.now_ns)

    def state(self) -> TradingState:
        return TradingState(self.core.markets["RC-LH-WSY"].state)

    def halt(self, reason: str = "") -> list[Event]:
        return self.submit(Halt(OPERATOR, 0, "RC-LH-WSY", reason))

    def resume(self) -> list[Event]:
        return self.submit(Resume(OPERATOR, 0, "RC-LH-WSY"))


def of(kind: type, events: list[Event]) -> list:
    return [e for e in events if type(e) is kind]


def states(events: list[Event]) -> list[tuple[TradingState, str]]:
    return [(e.state, e.reason) for e in of(TradingStateChanged, events)]


# -- dates ---------------------------------------------------------------------------------------------------


def test_days_and_phases_in_china_standard_time() -> None:
    assert day_label(cst_day(at(MONDAY, "00:00"))) == MONDAY
    assert day_label(cst_day(at(MONDAY, "00:00") - 1)) == 2026_12_06  # 15:59:59.999 UTC on the 6th
    assert day_of_label(MONDAY) == cst_day(at(MONDAY, "12:00"))
    session = TradingSession(break_from_min=11 * 60 + 30, break_to_min=13 * 60 + 30)
    assert [phase_at(session, set(), at(MONDAY, t)) for t in ("08:49", "08:50", "09:00", "11:30", "13:30", "15:00")] \
        == ["close", "pre_open", "open", "break", "open", "close"]
    assert phase_at(session, set(), at(2026_12_12, "10:00")) == "close"  # a Saturday
    # after Friday's close the next transition is Monday's pre-open
    assert next_transition(session, set(), at(2026_12_11, "15:00")) == (at(2026_12_14, "08:50"), "pre_open")


# -- a whole day -----------------------------------------------------------------------------------------------


def test_a_trading_day_pre_open_opening_uncross_continuous_and_close_with_day_expiry() -> None:
    s = Day()
    assert states(s.listing) == [(CLOSED, "close")]
    lot1, lot2, lot3 = s.lot(S1, 100), s.lot(S2, 100), s.lot(S3, 100)
    s.reject(order(B1, BUY, 2850, 5, tif=DAY), R.MARKET_CLOSED, at(MONDAY, "08:10"))

    assert states(s.tick(at(MONDAY, "08:50"))) == [(AUCTION, "pre_open")]
    b1 = s.rest(B1, BUY, 2850, 5, tif=DAY)
    b2 = s.rest(B2, BUY, 2820, 3, tif=GTC)
    s1 = s.rest(S1, SELL, 2800, 6, tif=DAY, lot_id=lot1)  # crosses both bids, and only rests
    s2 = s.rest(S2, SELL, 2830, 5, tif=GTC, lot_id=lot2)

    # At 2800 and 2820: 8 heads bid at or above, 6 offered at or below -> 6 executable, imbalance 2;
    # at 2830 and 2850 only 5. Tie between 2800 and 2820: 2800 is nearest the reference 2800.
    opening = s.tick(at(MONDAY, "09:00"))
    assert [(t.buy_order_id, t.sell_order_id, t.price_fen, t.quantity_heads) for t in of(Trade, opening)] \
        == [(b1, s1, 2800, 5), (b2, s1, 2800, 1)]
    assert [(u.price_fen, u.quantity_heads) for u in of(AuctionUncrossed, opening)] == [(2800, 6)]
    assert states(opening) == [(CONTINUOUS, "open")]
    assert all(e.ts_ns == at(MONDAY, "09:00") for e in opening)  # stamped with the open, not the tick
    assert s.depth() == ([(2820, 2)], [(2830, 5)])

    # continuous: a DAY buy takes 2 of S2's 5 at 2830; two DAY orders rest
    [taken] = of(Trade, s.submit(order(B3, BUY, 2830, 2, tif=DAY), at(MONDAY, "10:00")))
    assert (taken.sell_order_id, taken.price_fen, taken.quantity_heads) == (s2, 2830, 2)
    b3 = s.rest(B3, BUY, 2810, 2, tif=DAY)
    s3 = s.rest(S3, SELL, 2850, 2, tif=DAY, lot_id=lot3)

    # the close: DAY orders expire, GTC stay. Day: 5 + 1 at 2800, 2 at 2830 = 8 heads, 22,460 fen x heads:
    # average 2807.5 -> 2808 fen (half up); reference 280.75 ticks -> 281 ticks = 2810 (half up).
    close = s.tick(at(MONDAY, "15:00"))
    assert [(e.order_id, e.expired_heads, e.reason) for e in of(OrderExpired, close)] \
        == [(b3, 2, ExpireReason.END_OF_DAY), (s3, 2, ExpireReason.END_OF_DAY)]
    assert [e.price_fen for e in of(ReferencePriceSet, close)] == [2810]
    [closed] = of(TradingDayClosed, close)
    assert (closed.day, closed.heads, closed.average_price_fen, closed.reference_price_fen) \
        == (MONDAY, 8, 2808, 2810)
    assert states(close) == [(CLOSED, "close")]
    assert s.depth() == ([(2820, 2)], [(2830, 3)])
    market = s.core.markets["RC-LH-WSY"]
    # ±4 % of 2810: [2697.6, 2922.4] rounded inwards to the tick
    assert (market.reference_price_fen, market.band_low_fen, market.band_high_fen) == (2810, 2700, 2920)

    s.reject(order(B1, BUY, 2820, 1, tif=GTC), R.MARKET_CLOSED, at(MONDAY, "16:00"))
    assert states(s.tick(at(2026_12_08, "08:50"))) == [(AUCTION, "pre_open")]  # Tuesday
    s.reject(order(B1, BUY, 2690, 1), R.PRICE_OUTSIDE_BAND)


def test_nothing_traded_keeps_the_reference_and_the_operator_may_still_set_it() -> None:
    s = Day()
    close = s.tick(at(MONDAY, "15:00"))
    assert of(ReferencePriceSet, close) == []
    [closed] = of(TradingDayClosed, close)
    assert (closed.heads, closed.average_price_fen, closed.reference_price_fen) == (0, 0, 2800)
    assert [e.price_fen for e in of(ReferencePriceSet, s.set_reference(2900))] == [2900]
    assert s.core.markets["RC-LH-WSY"].reference_price_fen == 2900


def test_a_day_order_needs_a_session_and_a_market_order_cannot_be_day() -> None:
    plain = Scenario()
    plain.reject(order(B1, BUY, 2800, 1, tif=DAY), R.INVALID_EXPIRY)
    s = Day()
    s.tick(at(MONDAY, "09:00"))
    s.reject(order(B1, BUY, 0, 1, tif=DAY, order_type=OrderType.MARKET), R.INVALID_ORDER)


def test_a_lunch_break_closes_and_reopens_without_expiring_day_orders() -> None:
    s = Day(day_spec(TradingSession(break_from_min=11 * 60 + 30, break_to_min=13 * 60 + 30)))
    s.tick(at(MONDAY, "09:00"))
    s.rest(B1, BUY, 2800, 5, tif=DAY)
    lunch = s.tick(at(MONDAY, "11:30"))
    assert states(lunch) == [(CLOSED, "break")] and of(OrderExpired, lunch) == []
    s.reject(order(B2, BUY, 2800, 1), R.MARKET_CLOSED)
    assert states(s.tick(at(MONDAY, "13:30"))) == [(CONTINUOUS, "open")]
    assert s.depth() == ([(2800, 5)], [])


# -- halts ------------------------------------------------------------------------------------------------------


def test_a_halt_in_pre_open_resumes_to_pre_open_and_after_the_open_runs_the_opening_uncross() -> None:
    s = Day()
    lot1 = s.lot(S1, 100)
    s.tick(at(MONDAY, "08:50"))
    halted = s.halt("quarantine alert in the region")
    assert states(halted) == [(HALTED, "quarantine alert in the region")]
    s.reject(order(B1, BUY, 2800, 1), R.MARKET_HALTED)
    assert states(s.resume()) == [(AUCTION, "pre_open")]
    b1 = s.rest(B1, BUY, 2810, 4)
    s1 = s.rest(S1, SELL, 2790, 4, lot_id=lot1)
    s.halt("again")
    # the open passes during the halt: no uncross, nothing trades
    assert s.tick(at(MONDAY, "09:00")) == [] and s.state() == HALTED
    resumed = s.submit(Resume(OPERATOR, 0, "RC-LH-WSY"), at(MONDAY, "09:30"))
    # 4 heads cross at both 2790 and 2810 (imbalance 0 at both); 2790 and 2810 are 10 from the reference
    # 2800 alike: the lower price wins
    assert [(t.buy_order_id, t.sell_order_id, t.price_fen, t.quantity_heads) for t in of(Trade, resumed)] \
        == [(b1, s1, 2790, 4)]
    assert states(resumed) == [(CONTINUOUS, "open")]


def test_a_halt_in_continuous_resumes_to_continuous_and_one_across_the_close_to_closed() -> None:
    s = Day()
    s.tick(at(MONDAY, "09:00"))
    s.halt("fire drill")
    assert states(s.resume()) == [(CONTINUOUS, "open")]
    b1 = s.rest(B1, BUY, 2800, 5, tif=DAY)
    s.halt("power cut")
    close = s.tick(at(MONDAY, "15:00"))  # the close happens on time under the halt: DAY orders expire
    assert [(e.order_id, e.reason) for e in of(OrderExpired, close)] == [(b1, ExpireReason.END_OF_DAY)]
    assert states(close) == [] and s.state() == HALTED
    assert states(s.resume()) == [(CLOSED, "close")]
    # halted overnight from CLOSED, resumed after the next open: straight to continuous
    s.halt("overnight")
    s.tick(at(2026_12_08, "09:00"))
    assert states(s.submit(Resume(OPERATOR, 0, "RC-LH-WSY"), at(2026_12_08, "09:05"))) == [(CONTINUOUS, "open")]


def test_a_halt_during_the_break_resumes_to_the_break() -> None:
    s = Day(day_spec(TradingSession(break_from_min=11 * 60 + 30, break_to_min=13 * 60 + 30)))
    s.tick(at(MONDAY, "11:40"))
    s.halt()
    assert states(s.resume()) == [(CLOSED, "break")]


# -- non-trading days --------------------------------------------------------------------------------------------


def test_a_non_trading_day_skips_the_session_and_only_future_days_can_be_set() -> None:
    s = Day()
    tuesday, wednesday = 2026_12_08, 2026_12_09
    s.reject(SetNonTradingDay(OPERATOR, 0, MONDAY), R.INVALID_CALENDAR_DAY)  # today
    s.reject(SetNonTradingDay(OPERATOR, 0, 2026_02_30), R.INVALID_CALENDAR_DAY)
    assert of(NonTradingDaySet, s.submit(SetNonTradingDay(OPERATOR, 0, tuesday))) == [
        NonTradingDaySet(0, s.now_ns, tuesday, True)
    ]
    assert s.core.calendar.non_trading_days() == [tuesday]
    s.tick(at(MONDAY, "15:00"))
    assert s.tick(at(tuesday, "09:00")) == [] and s.state() == CLOSED
    s.reject(order(B1, BUY, 2800, 1), R.MARKET_CLOSED)
    assert states(s.tick(at(wednesday, "08:50"))) == [(AUCTION, "pre_open")]
    # a day set and removed again trades as usual; the weekend never does
    s.submit(SetNonTradingDay(OPERATOR, 0, 2026_12_10))
    s.submit(SetNonTradingDay(OPERATOR, 0, 2026_12_10, closed=False))
    s.tick(at(wednesday, "15:00"))
    assert states(s.tick(at(2026_12_10, "08:50"))) == [(AUCTION, "pre_open")]
    s.tick(at(2026_12_11, "15:00"))  # Thursday's close, Friday's whole day, Friday's close
    assert s.tick(at(2026_12_12, "09:00")) == [] and s.state() == CLOSED
    assert states(s.tick(at(2026_12_14, "08:50"))) == [(AUCTION, "pre_open")]


# -- listing and determinism ------------------------------------------------------------------------------------


def test_an_instrument_listed_during_the_session_starts_in_its_phase() -> None:
    assert Day(listed_at=at(MONDAY, "10:00")).state() == CONTINUOUS
    assert Day(listed_at=at(MONDAY, "08:55")).state() == AUCTION


@pytest.mark.parametrize("session", [
    TradingSession(open_min=8 * 60, pre_open_min=9 * 60),  # pre-open after the open
    TradingSession(break_from_min=16 * 60, break_to_min=17 * 60),  # break outside the session
    TradingSession(weekdays=0),
    TradingSession(close_min=1_441),
])
def test_an_inconsistent_session_is_refused(session: TradingSession) -> None:
    core = Core()
    [rejected] = core.apply(list_instrument(day_spec(session), at(MONDAY, "08:00")))
    assert rejected.reason == R.INVALID_INSTRUMENT  # type: ignore[union-attr]


def test_a_snapshot_mid_day_restores_the_calendar_and_replays_the_same() -> None:
    s = Day()
    lot1 = s.lot(S1, 100)
    s.tick(at(MONDAY, "08:50"))
    s.rest(B1, BUY, 2850, 5, tif=DAY)
    s.rest(S1, SELL, 2800, 3, lot_id=lot1, tif=DAY)
    s.submit(SetNonTradingDay(OPERATOR, 0, 2026_12_08))
    restored = Core.from_snapshot(s.core.snapshot())
    assert restored.state_hash() == s.core.state_hash()
    buy = order(B2, BUY, 2800, 1, ts_ns=at(MONDAY, "08:59"))
    assert s.core.apply(buy) == restored.apply(buy)
    assert s.core.apply(ClockTick(0, at(MONDAY, "15:00"))) == restored.apply(ClockTick(0, at(MONDAY, "15:00")))
    assert s.core.state_hash() == restored.state_hash()
    assert restored.calendar.non_trading_days() == [2026_12_08]


def test_replaying_the_journal_of_a_day_gives_the_same_events_and_state_hash() -> None:
    s = Day(day_spec(TradingSession(break_from_min=11 * 60 + 30, break_to_min=13 * 60 + 30)))
    journal: list = []
    original_submit = s.submit

    def recording(command: Any, at_ns: int | None = None) -> list[Event]:
        events = original_submit(command, at_ns)
        journal.append((msgspec.structs.replace(command, ts_ns=s.now_ns), events))
        return events

    s.submit = recording  # type: ignore[method-assign]
    lot1 = s.lot(S1, 100)
    s.tick(at(MONDAY, "08:50"))
    s.rest(B1, BUY, 2850, 5, tif=DAY)
    s.rest(S1, SELL, 2800, 8, lot_id=lot1, tif=DAY)
    s.halt("check")
    s.tick(at(MONDAY, "09:10"))
    s.resume()
    s.submit(SetNonTradingDay(OPERATOR, 0, 2026_12_08))
    s.submit(order(B2, BUY, 2800, 2, tif=DAY), at(MONDAY, "12:00"))  # in the break: refused
    s.tick(at(2026_12_09, "10:00"))  # Monday's close, Tuesday skipped, Wednesday's open
    replayed = Core()
    assert [replayed.apply(list_instrument(day_spec(TradingSession(break_from_min=690, break_to_min=810)),
                                           at(MONDAY, "08:00")))] == [s.listing]
    for command, events in journal:
        assert replayed.apply(command) == events
    assert replayed.state_hash() == s.core.state_hash()


def test_the_core_checks_the_calendar_by_one_short_int_compare() -> None:
    """Without a calendar instrument nothing is ever due, at a value the compiled core compares natively
    (a short int: below 2**62); with one, the next transition is due and trades are counted."""
    core = Core()
    assert core.calendar_due_ns == 2**62 - 1 and core.has_sessions is False
    core.apply(list_instrument(hog_spec()))  # no session
    assert core.calendar_due_ns == 2**62 - 1 and core.has_sessions is False
    day = Day()
    assert day.core.has_sessions is True
    assert day.core.calendar_due_ns == at(MONDAY, "08:50")  # the pre-open
    day.submit(ClockTick(OPERATOR, 0), at(MONDAY, "08:55"))
    assert day.core.calendar_due_ns == at(MONDAY, "09:00")  # the open
