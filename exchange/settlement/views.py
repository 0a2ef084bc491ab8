"""Read-only views of the clearing: balances, financiers' views (own lending; the rest by consent), the daily
settlement report.

Pure functions of a ``Clearing``: rows as msgspec structs, which the gateway serves as JSON, and
``report_csv`` for the CSV download. Nothing here changes state. Statements (every posting of an
account over a period) come from PostgreSQL instead: ``pgstore.statement``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from typing import Final, NamedTuple, TypeVar

import msgspec

from exchange.events import LoanKind
from exchange.settlement.clearing import Clearing
from exchange.settlement.ledger import CHART, AccountCode
from exchange.settlement.model import Loan, TradeRecord, TradeState
from exchange.settlement.rules import cst_day

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_Row = TypeVar("_Row", bound=msgspec.Struct)

# Each side's private fields of a trade (in any row type that has them): the buyer's financing; the
# seller's fee (0 for a registered poor household; a cooperative's is less its poor members' waivers),
# poverty status, advances and what it was paid. A seller's dispute hold is the buyer's: when less than
# the limit, it tells what the buyer had available.
BUYER_PRIVATE: Final = ("funded_by_financier_id", "raise_held_fen")
SELLER_PRIVATE: Final = ("seller_poor_household", "advance_loan_id", "fee_fen", "fee_subsidy_fen",
                         "fee_forgone_fen", "interest_paid_fen", "principal_repaid_fen", "payable_fen")
# What a lender sees of a side it lent to without that side's consent: its own loan on the trade (the
# credit line that paid for it, the advance against it). How that loan is repaid is in its loan rows.
BUYER_LENDER: Final = ("funded_by_financier_id",)
SELLER_LENDER: Final = ("advance_loan_id",)


class TradeSides(NamedTuple):
    """Whose private fields of a trade a viewer may see: all of a side's (``buyer``, ``seller``), or only
    its own loan on a side it lent to (``buyer_lender``: its credit line paid for the trade;
    ``seller_lender``: it advanced the seller against the trade). Any of them lets the viewer see the
    trade at all."""

    buyer: bool
    seller: bool
    buyer_lender: bool = False
    seller_lender: bool = False


ALL_SIDES: Final = TradeSides(True, True)


def trade_sides(clearing: Clearing, viewer_id: int | None, trade: TradeRecord) -> TradeSides:
    """The sides of ``trade`` whose private fields ``viewer_id`` may see (None: an operator, both): a
    party its own side; a financier the side it finances in this trade (the buyer's credit line, the
    seller's advance on it) while that side consents to it, and its own loan on it always (consent
    governs new financing and the client's other data, never the lender's sight of what it lent). Never
    the other side's: a counterparty or the other side's financier learns nothing of who finances whom
    or who is a poor household."""
    if viewer_id is None:
        return ALL_SIDES
    line_lender = trade.financier_id == viewer_id
    advance = clearing.loans.get(trade.advance_loan_id)
    advance_lender = advance is not None and advance.financier_id == viewer_id
    buyer = viewer_id == trade.buyer_id or (line_lender and clearing.has_consented(trade.buyer_id, viewer_id))
    seller = viewer_id == trade.seller_id or (advance_lender and clearing.has_consented(trade.seller_id, viewer_id))
    return TradeSides(buyer, seller, line_lender, advance_lender)


def hidden_fields(sides: TradeSides) -> tuple[str, ...]:
    """The private fields a viewer with ``sides`` may not see."""
    hidden: tuple[str, ...] = ()
    if not sides.buyer:
        hidden += _without(BUYER_PRIVATE, BUYER_LENDER) if sides.buyer_lender else BUYER_PRIVATE
    if not sides.seller:
        hidden += _without(SELLER_PRIVATE, SELLER_LENDER) if sides.seller_lender else SELLER_PRIVATE
    return hidden


def _without(fields: tuple[str, ...], shown: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f for f in fields if f not in shown)


def redact(row: _Row, sides: TradeSides) -> _Row:
    """``row`` with the private fields of each side the viewer may not see set to None (whatever their
    value: a None that depended on it would tell)."""
    fields = row.__struct_fields__
    changes = {name: None for name in hidden_fields(sides) if name in fields}
    return msgspec.structs.replace(row, **changes) if changes else row


def day_to_date(day: int) -> str:
    """A CST day number as ``YYYY-MM-DD``."""
    return dt.date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


def date_to_day(date: str) -> int:
    """``YYYY-MM-DD`` (a calendar day in China Standard Time) as a day number."""
    return dt.date.fromisoformat(date).toordinal() - _EPOCH_ORDINAL


class BalanceRow(msgspec.Struct, frozen=True):
    account_id: int
    kind: str  # AccountCode name
    counterparty_id: int  # the financier of a credit line, the borrower of a loan account, else 0
    balance_fen: int  # posted, in the account's normal direction
    held_fen: int  # pending debits (order holds, payouts and withdrawals in flight)
    available_fen: int  # balance - held, for credit-normal accounts


def participant_balances(clearing: Clearing, participant_id: int) -> list[BalanceRow]:
    """Every ledger account the participant owns, by account id."""
    rows = []
    for (code, owner, user_data), account_id in sorted(clearing.accounts.items(), key=lambda kv: kv[1]):
        if owner != participant_id:
            continue
        a = clearing.ledger.account(account_id)
        assert a is not None
        debit_normal = CHART[code].normal_balance == "debit"
        balance = a.debits_posted_fen - a.credits_posted_fen
        if not debit_normal:
            balance = -balance
        held = a.debits_pending_fen
        rows.append(BalanceRow(account_id, AccountCode(code).name, user_data, balance, held,
                               balance if debit_normal else balance - held))
    return rows


class LoanRow(msgspec.Struct, frozen=True):
    loan_id: int
    kind: str
    borrower_id: int
    trade_id: int
    rate_bps: int
    lent_fen: int
    principal_outstanding_fen: int
    interest_due_fen: int
    principal_repaid_fen: int
    interest_accrued_fen: int
    interest_paid_fen: int
    interest_subsidised_fen: int
    principal_written_off_fen: int
    interest_written_off_fen: int


class FinancedTradeRow(msgspec.Struct, frozen=True):
    trade_id: int
    instrument: str
    side: str  # "buy": paid from the financier's credit line; "sell": the seller took an advance
    state: str
    heads: int
    price_fen: int
    obligation_fen: int
    amount_fen: int  # the final amount once weighed in (0 before)
    principal_repaid_fen: int | None  # the seller's advances repaid at settlement: None without its side
    interest_paid_fen: int | None
    settled_day: str  # "" until settled or rejected


class FinancierView(msgspec.Struct, frozen=True):
    """What a financier may see of one participant: its own credit line, loans and the trades they
    financed, always (they are the financier's own money). Without them the view exists only while the
    participant consents; consent is also what shows the financier the rest of a financed trade's
    settlement."""

    financier_id: int
    participant_id: int
    consented: bool  # False: consent withdrawn; the line takes no new holds, what it lent is still owed
    credit_line_available_fen: int
    credit_line_held_fen: int
    credit_line_granted_fen: int
    credit_line_reduced_fen: int
    exposure_fen: int  # principal + interest due + credit held for open bids + credit in escrow
    loans: list[LoanRow]
    trades: list[FinancedTradeRow]
    interest_earned_fen: int  # the financier's income from these loans: accrued, less what it wrote off
    interest_collected_fen: int  # of which received: paid by the borrower or by the subsidy fund


def financier_view(clearing: Clearing, financier_id: int, participant_id: int) -> FinancierView | None:
    """The financier's view of one participant, or None when that participant neither consents to it
    nor has a credit line or loan from it (withdrawing consent does not hide what the financier lent)."""
    consented = clearing.has_consented(participant_id, financier_id)
    line = clearing.credit_lines.get((participant_id, financier_id))
    available = held = granted = reduced = 0
    if line is not None:
        a = clearing.ledger.account(line.account_id)
        assert a is not None
        available = a.credits_posted_fen - a.debits_posted_fen - a.debits_pending_fen
        held, granted, reduced = a.debits_pending_fen, line.granted_fen, line.reduced_fen
    loans = [loan for loan in clearing.loans.values()
             if loan.financier_id == financier_id and loan.borrower_id == participant_id]
    if not consented and line is None and not loans:
        return None
    trades = _financed_trades(clearing, financier_id, participant_id, loans)
    in_escrow = sum(_unsettled_fen(t) for t in trades if t.side == "buy")
    exposure = sum(loan.principal_fen + loan.interest_due_fen for loan in loans) + held + in_escrow
    earned = sum(loan.interest_accrued_fen - loan.interest_written_off_fen for loan in loans)
    collected = sum(loan.interest_paid_fen + loan.interest_subsidised_fen for loan in loans)
    return FinancierView(financier_id, participant_id, consented, available, held, granted, reduced, exposure,
                         [loan_row(loan) for loan in sorted(loans, key=lambda x: x.loan_id)], trades, earned,
                         collected)


def financier_portfolio(clearing: Clearing, financier_id: int) -> list[FinancierView]:
    """The views of every participant that consents to this financier or owes it (a credit line or a
    loan), by participant id."""
    views = (financier_view(clearing, financier_id, pid) for pid in sorted(clearing.participants))
    return [v for v in views if v is not None]


def _unsettled_fen(row: FinancedTradeRow) -> int:
    if row.state == TradeState.OPEN.name:
        return row.obligation_fen
    if row.state in (TradeState.DELIVERED.name, TradeState.DISPUTED.name):
        return row.amount_fen
    return 0


def _financed_trades(
    clearing: Clearing, financier_id: int, participant_id: int, loans: Sequence[Loan]
) -> list[FinancedTradeRow]:
    advanced = {loan.trade_id: loan for loan in loans if loan.kind == LoanKind.ADVANCE}
    rows = []
    for trade in clearing.trades.values():
        if trade.buyer_id == participant_id and trade.financier_id == financier_id:
            rows.append(_trade_row(clearing, financier_id, trade, "buy"))
        elif trade.seller_id == participant_id and trade.trade_id in advanced:
            rows.append(_trade_row(clearing, financier_id, trade, "sell"))
    return sorted(rows, key=lambda r: (r.trade_id, r.side))


def _trade_row(clearing: Clearing, financier_id: int, t: TradeRecord, side: str) -> FinancedTradeRow:
    settled = day_to_date(cst_day(t.settled_at_ns)) if t.settled_at_ns else ""
    row = FinancedTradeRow(t.trade_id, t.instrument, side, t.state.name, t.heads, t.price_fen, t.obligation_fen,
                           t.amount_fen, t.principal_repaid_fen, t.interest_paid_fen, settled)
    return redact(row, trade_sides(clearing, financier_id, t))


def loan_row(loan: Loan) -> LoanRow:
    """A loan as its financier and its borrower see it."""
    return LoanRow(loan.loan_id, loan.kind.name, loan.borrower_id, loan.trade_id, loan.rate_bps, loan.lent_fen,
                   loan.principal_fen, loan.interest_due_fen, loan.principal_repaid_fen, loan.interest_accrued_fen,
                   loan.interest_paid_fen, loan.interest_subsidised_fen, loan.principal_written_off_fen,
                   loan.interest_written_off_fen)


class SettlementReportRow(msgspec.Struct, frozen=True):
    """One trade that settled (or was rejected) on the report's day. Amounts in fen. A side's private
    fields (``BUYER_PRIVATE``, ``SELLER_PRIVATE``) are None to a viewer that may not see that side."""

    date: str
    trade_id: int
    instrument: str
    state: str
    buyer_id: int
    seller_id: int
    seller_poor_household: bool | None
    heads_traded: int
    heads_delivered: int
    total_weight_g: int
    avg_weight_g: int
    grade: str
    price_fen: int
    discount_fen_per_kg: int
    obligation_fen: int
    amount_fen: int
    refund_fen: int
    fee_fen: int | None
    fee_subsidy_fen: int | None
    fee_forgone_fen: int | None
    interest_paid_fen: int | None
    principal_repaid_fen: int | None
    payable_fen: int | None
    funded_by_financier_id: int | None


REPORT_COLUMNS = tuple(SettlementReportRow.__struct_fields__)


def daily_settlement_report(
    clearing: Clearing, day: int, participant_id: int | None = None, forgotten: Sequence[TradeRecord] = ()
) -> list[SettlementReportRow]:
    """Trades settled or rejected on CST ``day``, by trade id. With ``participant_id`` what that
    participant may see: the trades it is a party to or finances (``trade_sides``), each with the other
    side's private fields redacted; without it every trade in full (an operator's report). ``forgotten``:
    the day's trades the clearing no longer holds (read from settlement_history)."""
    rows = []
    held = clearing.trades
    for t in [*held.values(), *(f for f in forgotten if f.trade_id not in held)]:
        if t.state not in (TradeState.SETTLED, TradeState.REJECTED) or cst_day(t.settled_at_ns) != day:
            continue
        sides = trade_sides(clearing, participant_id, t)
        if not any(sides):
            continue
        seller = clearing.participants.get(t.seller_id)
        rows.append(redact(SettlementReportRow(
            day_to_date(day), t.trade_id, t.instrument, t.state.name, t.buyer_id, t.seller_id,
            seller is not None and seller.poor_verified, t.heads, t.heads_delivered, t.total_weight_g,
            t.avg_weight_g, t.grade.name, t.price_fen, t.discount_fen_per_kg, t.obligation_fen, t.amount_fen,
            t.refund_fen, t.fee_fen, t.fee_subsidy_fen, t.fee_forgone_fen, t.interest_paid_fen,
            t.principal_repaid_fen, t.payable_fen, t.financier_id,
        ), sides))  # fmt: skip
    return sorted(rows, key=lambda r: r.trade_id)


def report_csv(rows: Sequence[msgspec.Struct]) -> bytes:
    """Rows of one struct type as CSV (UTF-8, header = field names, integers as they are)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if rows:
        fields = rows[0].__struct_fields__
        writer.writerow(fields)
        for row in rows:
            writer.writerow([_cell(getattr(row, f)) for f in fields])
    return out.getvalue().encode()


def _cell(value: object) -> object:
    """Text cells that a spreadsheet would run as a formula are quoted with a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
