"""The simulated exchange clock, for tests and demos only (`HOGX_CLOCK=simulated`).

The exchange clock is the wall clock: the sequencer stamps each batch with it. With `HOGX_CLOCK=simulated`
it is a `SimulatedClock` instead, starting at `HOGX_CLOCK_START_MS` (default: the wall clock at start)
and standing still until an operator moves it forward with `POST /v1/admin/clock` (`{"advance_ms": n}`
or `{"to_ms": t}`; never backwards: 409 `clock_backwards`). Each move is followed by a clock tick, so
everything due by then happens before the answer: auctions close, dispute windows end and trades
settle, interest accrues at the midnights passed, GTD orders expire. A whole trading day, an auction's
close or a dispute window runs end to end through the API in seconds. `GET /v1/admin/clock` reads it.

Without the setting these routes are not installed (404), and nothing else changes. Request signing
keeps using the wall clock (a client signs with its own time). The periodic tick (`HOGX_CLOCK_TICK_S`)
still runs, stamped with the simulated time.
"""

from __future__ import annotations

import time
from typing import Annotated, Final

import msgspec
from aiohttp import web

from exchange.commands import ClockTick
from gateway.auth import OPERATORS
from gateway.errors import ApiError
from gateway.routes import Call, RouteTable

__all__ = ["CLOCK", "SimulatedClock", "exchange_now_ns", "routes"]

_NS_PER_MS: Final = 1_000_000
MAX_MS: Final = 9_000_000_000_000  # ms since the epoch that still fit int64 nanoseconds


class SimulatedClock:
    """A clock that moves only when told to, never backwards; called, it gives ns since the epoch."""

    def __init__(self, start_ns: int) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance_to(self, ts_ns: int) -> None:
        if ts_ns < self.now_ns:
            raise ValueError("the clock never goes backwards")
        self.now_ns = ts_ns


CLOCK: Final = web.AppKey("hogx_simulated_clock", SimulatedClock)


def exchange_now_ns(app: web.Application) -> int:
    """The exchange's time as the gateway sees it: the simulated clock's when there is one."""
    clock = app.get(CLOCK)
    return clock() if clock is not None else time.time_ns()


class ClockRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    advance_ms: Annotated[int, msgspec.Meta(ge=0, le=366 * 86_400_000)] | None = None
    to_ms: Annotated[int, msgspec.Meta(ge=1, le=MAX_MS)] | None = None


class ClockView(msgspec.Struct, frozen=True):
    now_ms: int
    simulated: bool


routes = RouteTable()  # installed only with HOGX_CLOCK=simulated (gateway/app.py)


@routes.get("/v1/admin/clock", roles=OPERATORS, response=ClockView)
async def get_clock(call: Call) -> ClockView:
    """The simulated exchange clock (only with HOGX_CLOCK=simulated; otherwise 404)."""
    return ClockView(call.app[CLOCK]() // _NS_PER_MS, True)


@routes.post("/v1/admin/clock", roles=OPERATORS, body=ClockRequest, response=ClockView, errors=(409,))
async def move_clock(call: Call, body: ClockRequest) -> ClockView:
    """Move the simulated exchange clock forward, then tick (only with HOGX_CLOCK=simulated; else 404).

    Send exactly one of `advance_ms` (from now) and `to_ms` (an absolute time). The tick that follows
    is journaled before the answer, so whatever fell due (auction closes, settlements, interest, GTD
    expiries) has happened. Errors: `clock_backwards` 409, `invalid` 422."""
    clock = call.app[CLOCK]
    if (body.advance_ms is None) == (body.to_ms is None):
        raise ApiError(422, "invalid", "send exactly one of advance_ms and to_ms")
    target = clock() + body.advance_ms * _NS_PER_MS if body.advance_ms is not None else body.to_ms * _NS_PER_MS
    if target > MAX_MS * _NS_PER_MS:
        raise ApiError(422, "invalid", "that is beyond the clock's range")
    try:
        clock.advance_to(target)
    except ValueError:
        raise ApiError(409, "clock_backwards", "the exchange clock never goes backwards") from None
    from gateway.exchange_port import EXCHANGE  # here: the exchange port imports this module

    await call.app[EXCHANGE].submit(ClockTick(call.principal.participant_id, 0))
    return ClockView(clock() // _NS_PER_MS, True)
