"""What every settlement route module shares: the live clearing, submitting a command, references that
took effect beyond the retention window, records read back from history, the bounded request scalars,
the API's names of accounts and states, and the roles that borrow and own money.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Annotated, Final, TypeVar

import msgspec
from aiohttp import web

from exchange.commands import (
    Command,
    FundsAccount,
)
from exchange.domain import RejectReason
from exchange.events import Event, Rejected
from exchange.settlement import Clearing, pgstore
from gateway.auth import BUYERS, FINANCIERS, SELLERS, Principal, Role
from gateway.errors import ApiError, Code
from gateway.exchange_port import EXCHANGE
from gateway.inputs import Text
from gateway.routes import Call
from gateway.schemas import rejection

R = RejectReason
_R = TypeVar("_R")  # a record of the clearing read back from history
_V = TypeVar("_V")
SHA256_HEADER: Final = "X-Hogx-SHA256"  # the hex SHA-256 of a payout file's bytes
BORROWERS: Final = SELLERS | BUYERS  # the roles that trade, consent, borrow and repay
OWNERS: Final = BORROWERS | FINANCIERS  # the roles that hold cash of their own
NS_PER_MS: Final = 1_000_000
CSV: Final = "text/csv"
MAX_IMPORT_ROWS: Final = 10_000
COMMIT_WAIT_S: Final = 10.0  # how long a read waits for the batch it saw to commit before a 503
COMMIT_POLL_S: Final = 0.002

# -- bounded request scalars ----------------------------------------------------------------------------

AmountFen = Annotated[int, msgspec.Meta(ge=1, le=10**14, description="integer fen, positive")]
AmountOrZeroFen = Annotated[int, msgspec.Meta(ge=0, le=10**14, description="integer fen")]
RateBps = Annotated[int, msgspec.Meta(ge=0, le=10_000, description="yearly interest in basis points")]
Bps = Annotated[int, msgspec.Meta(ge=0, le=10_000, description="basis points (10,000 = 100 %)")]
OwnerId = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1, description="participant id; 0 for the subsidy fund")]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"\A[A-Za-z0-9_.:\-]+\Z",
                                  description="a client-chosen reference: the idempotency key")]
BankRef = Annotated[Text, msgspec.Meta(max_length=64)]
Reason = Annotated[Text, msgspec.Meta(min_length=1, max_length=500)]
# A file travels in one request body, so it can be no longer than the body limit (HOGX_MAX_BODY_BYTES,
# 64 KiB by default); a bigger file is imported in parts (each deposit row is idempotent by itself).
MAX_CSV_CHARS: Final = 64 * 1024  # = GatewayConfig's default max_body_bytes (a test keeps them equal)
CsvText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CSV_CHARS,
                                      description="the file's text (UTF-8), at most the request body limit")]
Date = Annotated[str, msgspec.Meta(pattern=r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z",
                                   description="a calendar day in China Standard Time, YYYY-MM-DD")]
TimeMs = Annotated[int, msgspec.Meta(ge=0, le=9_000_000_000_000, description="milliseconds since the epoch")]
Cursor = Annotated[str, msgspec.Meta(min_length=1, max_length=19, pattern=r"\A[0-9]+\Z")]


class FundsAccountName(StrEnum):
    TRADING_CASH = "trading_cash"  # a trader's cash for bids
    FINANCIER_FUNDS = "financier_funds"  # a financier's money to lend
    POVERTY_SUBSIDY_FUND = "poverty_subsidy_fund"  # the exchange's fund (owner 0)


class WithdrawableAccount(StrEnum):
    TRADING_CASH = "trading_cash"
    FINANCIER_FUNDS = "financier_funds"


FUNDS: Final = {name: FundsAccount[name.name] for name in FundsAccountName}
FUNDS_NAME: Final = {account: FundsAccountName[account.name] for account in FundsAccount}


class TradeStateName(StrEnum):
    OPEN = "OPEN"  # obligation in escrow, waiting for the weigh-in
    DELIVERED = "DELIVERED"  # weighed in; the dispute window is open
    DISPUTED = "DISPUTED"  # waiting for an operator
    SETTLED = "SETTLED"
    REJECTED = "REJECTED"  # the buyer rejected an out-of-grade delivery


class PayoutStateName(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    CONFIRMED = "CONFIRMED"
    FAILED = "FAILED"
    RETURNED = "RETURNED"


class WithdrawalStateName(StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    FAILED = "FAILED"


# -- rejections -----------------------------------------------------------------------------------------





def clearing_of(call: Call) -> Clearing:
    """The live clearing (looked up each time: the sequencer replaces its core when it recovers)."""
    clearing = call.app[EXCHANGE].sequencer.core.clearing
    if clearing is None:
        raise ApiError(503, Code.UNAVAILABLE, "settlement is not enabled on this exchange's journal")
    return clearing


async def refuse_expired_reference(call: Call, kind: int, owner_id: int, ref: str, held: bool) -> None:
    """409 `reference_expired` for a reference the core no longer holds (its retention window has passed)
    that took effect before: a deposit's bank reference, a withdrawal, repayment or client lot reference
    takes effect once, for ever (`settlement_refs`, migration 0014). A reference the core holds is left to
    it: a retry gets the original answer."""
    if held or not ref:
        return
    seq = await pgstore.used_reference(call.pool, kind, owner_id, ref)
    if seq is not None:
        raise ApiError(409, "reference_expired",
                       f"reference {ref!r} was used by journal entry {seq}, beyond the retention window: "
                       "it is not applied again; use a new reference for a new request")


async def submit(call: Call, command: Command) -> list[Event]:
    """Sequence one settlement command; its events once durable, or its rejection raised."""
    result = await call.app[EXCHANGE].submit(command)
    for event in result.events:
        if event.__class__ is Rejected:
            raise rejection(event.reason)
    return result.events


def to_ms(ts_ns: int) -> int:
    return ts_ns // NS_PER_MS


def masked(bank_account: str) -> str:
    return "****" + bank_account[-4:] if bank_account else ""


def is_operator(principal: Principal) -> bool:
    return principal.role == Role.OPERATOR


def csv_response(data: bytes, filename: str) -> web.Response:
    return web.Response(body=data, content_type=CSV, charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# -- history: what the clearing forgot -------------------------------------------------------------------
# The clearing holds a settled trade, a final payout or a bank file for its retention window only
# (exchange/core.py "Memory"); then its record is in `settlement_history` (pgstore, migration 0014),
# written with the clock tick that forgot it. Reads look in memory first, then there. A financier sees
# a forgotten trade it financed only through its parties' reports (history is kept by party).


async def archived_record(call: Call, kind: int, record_type: type[_R], item_id: int, ref: str = "") -> _R | None:
    data = await pgstore.archived_record(call.pool, kind, item_id, ref)
    return None if data is None else msgspec.msgpack.decode(data, type=record_type)


async def archived_page(call: Call, kind: int, record_type: type[_R], before: int | None, state: int | None,
                         limit: int) -> list[_R]:
    """Forgotten records of the caller (an operator: all), newest first, below `before`, in `state`."""
    party = None if is_operator(call.principal) else call.principal.participant_id
    rows = await pgstore.archived_page(call.pool, kind, before, party, state, limit)
    return [msgspec.msgpack.decode(data, type=record_type) for data in rows]


def newest_held(held: Mapping[int, _V], before: int | None, wanted: Callable[[_V], bool],
                limit: int) -> list[tuple[int, _V]]:
    """The held records below `before` that `wanted` keeps, newest first: `limit` + 1 at most (the
    one over says a next page exists), to merge with history by `newest`."""
    page: list[tuple[int, _V]] = []
    for item_id in sorted(held, reverse=True):
        if before is not None and item_id >= before:
            continue
        item = held[item_id]
        if wanted(item):
            page.append((item_id, item))
            if len(page) > limit:
                break
    return page


def newest(memory: list[tuple[int, _V]], archived: list[tuple[int, _V]], limit: int) -> tuple[list[_V], bool]:
    """The `limit` newest of both (by id, an id once), and whether there are more."""
    merged: dict[int, _V] = dict(archived)
    merged.update(memory)
    ids = sorted(merged, reverse=True)
    return [merged[i] for i in ids[:limit]], len(ids) > limit

