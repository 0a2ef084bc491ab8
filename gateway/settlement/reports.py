"""Balances, statements and the daily settlement report over HTTP (every participant): `GET /v1/balances`,
`GET /v1/statements`, `GET /v1/reports/settlement` (JSON) and `GET /v1/reports/settlement.csv`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import msgspec
from aiohttp import web

from exchange import history
from exchange.settlement import CHART, AccountCode, Clearing, Entry, PostingSide, TransferCode, pgstore
from exchange.settlement.clearing import HOUSE
from exchange.settlement.rules import cst_day
from exchange.settlement.views import (
    REPORT_COLUMNS,
    BalanceRow,
    SettlementReportRow,
    date_to_day,
    day_to_date,
    participant_balances,
    report_csv,
    visible_report,
)
from gateway.auth import ANY_ROLE
from gateway.errors import ApiError, Code
from gateway.exchange_port import EXCHANGE
from gateway.routes import Call, RouteTable
from gateway.schemas import Id, Limit, rejection
from gateway.settlement.common import (
    COMMIT_WAIT_S,
    CSV,
    NS_PER_MS,
    Cursor,
    Date,
    OwnerId,
    R,
    TimeMs,
    clearing_of,
    csv_response,
    is_operator,
    to_ms,
)

routes = RouteTable()

# -- balances, statements, reports ----------------------------------------------------------------------


class BalanceQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    participant_id: OwnerId | None = None  # operators: anyone's (0: the house accounts)


class BalancesView(msgspec.Struct, frozen=True):
    participant_id: int  # 0: the exchange's own (house) accounts
    accounts: list[BalanceRow]


class StatementQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    account_id: Id
    from_ms: TimeMs = 0
    until_ms: TimeMs = 9_000_000_000_000
    cursor: Cursor | None = None
    limit: Limit = 100


class StatementLine(msgspec.Struct, frozen=True):
    """One change of the account. `entry`: POSTED moves the balance, PENDING holds money, RELEASE ends a
    hold (posted or voided). The changes are in the account's own direction (a deposit into cash is +)."""

    seq: int  # the journal command that made it
    transfer_id: int
    entry: str
    side: str  # DEBIT or CREDIT
    amount_fen: int
    balance_change_fen: int
    held_change_fen: int
    code: str  # why the money moved (TransferCode)
    ref: int  # order, trade, payout, loan ... id, by code
    pending_id: int
    time_ms: int


class StatementPage(msgspec.Struct, frozen=True):
    """Oldest first; pass `next_cursor` back as `cursor` for the next page (null: no more)."""

    account_id: int
    kind: str
    lines: list[StatementLine]
    next_cursor: str | None


class ReportQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    date: Date | None = None  # default: today in China Standard Time


class SettlementReport(msgspec.Struct, frozen=True):
    """That day's rows you may see (operators: all), by trade id: the trades settled or rejected, the
    cooperative members' shares, the loans' repayments and interest (`kind`), as they were then."""

    date: str
    rows: list[SettlementReportRow]


def _house_balances(clearing: Clearing) -> list[BalanceRow]:
    rows = []
    for code in HOUSE:
        a = clearing.ledger.account(int(code))
        assert a is not None  # created with the clearing
        debit_normal = CHART[code].normal_balance == "debit"
        balance = a.debits_posted_fen - a.credits_posted_fen
        balance = balance if debit_normal else -balance
        held = a.debits_pending_fen
        rows.append(BalanceRow(a.account_id, AccountCode(code).name, 0, balance, held,
                               balance if debit_normal else balance - held))
    return rows


@routes.get("/v1/balances", roles=ANY_ROLE, query=BalanceQuery, response=BalancesView, errors=(404,))
async def get_balances(call: Call, query: BalanceQuery) -> BalancesView:
    """Your ledger accounts and balances (an operator: anyone's, or the house accounts with 0)."""
    principal, clearing = call.principal, clearing_of(call)
    who = principal.participant_id if query.participant_id is None else query.participant_id
    if who != principal.participant_id and not is_operator(principal):
        raise rejection(R.UNKNOWN_PARTICIPANT)
    if who == 0:
        return BalancesView(0, _house_balances(clearing))
    if who not in clearing.participants:
        raise rejection(R.UNKNOWN_PARTICIPANT)
    return BalancesView(who, participant_balances(clearing, who))


@routes.get("/v1/statements", roles=ANY_ROLE, query=StatementQuery, response=StatementPage, errors=(404,))
async def get_statement(call: Call, query: StatementQuery) -> StatementPage:
    """Every change of one of your accounts over a period, from the committed ledger, oldest first."""
    account = clearing_of(call).ledger.account(query.account_id)
    if account is None or not (is_operator(call.principal) or account.owner_id == call.principal.participant_id):
        raise ApiError(404, Code.NOT_FOUND, "no such account")
    after = 0 if query.cursor is None else int(query.cursor)  # a line's transfer_id * 4 + entry
    rows = await pgstore.statement(call.pool, query.account_id, query.from_ms * NS_PER_MS,
                                   query.until_ms * NS_PER_MS, (after // 4, after % 4), query.limit + 1)
    debit_normal = CHART[account.code].normal_balance == "debit"
    lines = [_statement_line(row, debit_normal) for row in rows[:query.limit]]
    more = len(rows) > query.limit
    cursor = str(lines[-1].transfer_id * 4 + Entry[lines[-1].entry]) if more else None
    return StatementPage(account.account_id, AccountCode(account.code).name, lines, cursor)


def _statement_line(row: Iterable[int], debit_normal: bool) -> StatementLine:
    seq, transfer_id, entry, side, amount, code, ref, pending_id, ts_ns = row
    debit = side == PostingSide.DEBIT
    balance_change = held_change = 0
    if entry == Entry.POSTED:
        balance_change = amount if debit == debit_normal else -amount
    elif debit:  # a pending debit holds money; its release frees it
        held_change = amount if entry == Entry.PENDING else -amount
    code_name = TransferCode(code).name if code in TransferCode._value2member_map_ else str(code)
    return StatementLine(seq, transfer_id, Entry(entry).name, PostingSide(side).name, amount, balance_change,
                         held_change, code_name, ref, pending_id, to_ms(ts_ns))


def _report_day(query: ReportQuery) -> int:
    if query.date is None:
        return cst_day(time.time_ns())  # the gateway may read the clock; the core never does
    try:
        return date_to_day(query.date)
    except ValueError:
        raise ApiError(422, Code.INVALID, f"no such date: {query.date}") from None


async def _report_rows(call: Call, day: int) -> list[SettlementReportRow]:
    """The day's rows from the settlement history in PostgreSQL, once it holds every command the core
    has applied (what the other settlement reads already show): an operator's whole, anyone else's those
    it may see (`views.visible_report`: the trades it is a party to or financed, its member shares and
    loans), without what is not its own."""
    shard = call.app[EXCHANGE].shard
    try:
        await shard.history.wait_for(shard.sequencer.applied_seq, COMMIT_WAIT_S)
    except TimeoutError:
        raise ApiError(503, Code.UNAVAILABLE, "the settlement history is behind: try again",
                       retry_after_s=1) from None
    viewer = None if is_operator(call.principal) else call.principal.participant_id
    entries = await history.day_entries(call.pool, day, viewer)
    return visible_report(entries, viewer, clearing_of(call).has_consented)


@routes.get("/v1/reports/settlement", roles=ANY_ROLE, query=ReportQuery, response=SettlementReport)
async def settlement_report(call: Call, query: ReportQuery) -> SettlementReport:
    """The daily settlement report: the trades settled or rejected that day, members' shares of them and
    loans' interest and repayments, that you may see; the facts as they were that day, never changed."""
    day = _report_day(query)
    return SettlementReport(day_to_date(day), await _report_rows(call, day))


@routes.get("/v1/reports/settlement.csv", roles=ANY_ROLE, query=ReportQuery, response=None, media_type=CSV)
async def settlement_report_csv(call: Call, query: ReportQuery) -> web.Response:
    """The daily settlement report as CSV (a header row, then one row per report row)."""
    day = _report_day(query)
    rows = await _report_rows(call, day)
    data = report_csv(rows) if rows else (",".join(REPORT_COLUMNS) + "\r\n").encode()
    return csv_response(data, f"settlement-{day_to_date(day)}.csv")


