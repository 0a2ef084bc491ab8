"""Read-only views of the clearing: balances, financiers' views (own lending; the rest by consent), who
sees which side of a trade, and the daily settlement report's rows.

Pure functions: rows as msgspec structs, which the gateway serves as JSON, and ``report_csv`` for the
CSV download. Nothing here changes state. Balances and financiers' views read the ``Clearing`` (open
state). The report is history: ``report_entries`` makes its rows from a journaled command's events
alone (the facts as of settlement, carried on the events), ``exchange.history`` keeps them in
PostgreSQL, and ``visible_report`` picks and redacts what one viewer may see of a day's rows.
Statements (every posting of an account over a period) come from PostgreSQL too: ``pgstore.statement``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Final, NamedTuple, TypeVar

import msgspec

from exchange.events import (
    CooperativeSplitPaid,
    DeliveryGrade,
    DeliveryResolved,
    Event,
    InterestAccrued,
    LoanKind,
    LoanPayer,
    LoanRepaid,
    TradeFacts,
    TradeSettled,
)
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


def trade_sides(
    clearing: Clearing, viewer_id: int | None, trade: TradeRecord, archived_advance: Loan | None = None
) -> TradeSides:
    """The sides of ``trade`` whose private fields ``viewer_id`` may see (None: an operator, both): a
    party its own side; a financier the side it finances in this trade (the buyer's credit line, the
    seller's advance on it) while that side consents to it, and its own loan on it always (consent
    governs new financing and the client's other data, never the lender's sight of what it lent). Never
    the other side's: a counterparty or the other side's financier learns nothing of who finances whom
    or who is a poor household. A closed advance the clearing forgot (settlement_history) is
    ``archived_advance``: the caller reads it (``pgstore.archived_loans``) for a trade memory no longer holds."""
    if viewer_id is None:
        return ALL_SIDES
    advance = clearing.loans.get(trade.advance_loan_id) or archived_advance
    return sides_of(viewer_id, trade.buyer_id, trade.seller_id, trade.financier_id,
                    0 if advance is None else advance.financier_id, clearing.has_consented)


def sides_of(
    viewer_id: int, buyer_id: int, seller_id: int, line_financier_id: int, advance_financier_id: int,
    consented: Callable[[int, int], bool],
) -> TradeSides:
    """``trade_sides`` from a trade's parties and lenders (0: none), ``consented(participant, financier)``."""
    line_lender = line_financier_id != 0 and line_financier_id == viewer_id
    advance_lender = advance_financier_id != 0 and advance_financier_id == viewer_id
    buyer = viewer_id == buyer_id or (line_lender and consented(buyer_id, viewer_id))
    seller = viewer_id == seller_id or (advance_lender and consented(seller_id, viewer_id))
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


def financier_view(
    clearing: Clearing, financier_id: int, participant_id: int, archived: Sequence[Loan] = ()
) -> FinancierView | None:
    """The financier's view of one participant, or None when that participant neither consents to it
    nor has a credit line or loan from it (withdrawing consent does not hide what the financier lent).
    ``archived``: the closed loans the clearing forgot (``pgstore.archived_loans``), shown with memory's
    as if never forgotten (any of another pair is ignored)."""
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
    loans += [loan for loan in archived if loan.financier_id == financier_id and loan.borrower_id == participant_id
              and loan.loan_id not in clearing.loans]
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


def financier_portfolio(clearing: Clearing, financier_id: int, archived: Sequence[Loan] = ()) -> list[FinancierView]:
    """The views of every participant that consents to this financier or owes it (a credit line or a
    loan, ``archived`` ones included: see ``financier_view``), by participant id."""
    by_borrower: dict[int, list[Loan]] = {}
    for loan in archived:
        by_borrower.setdefault(loan.borrower_id, []).append(loan)
    views = (financier_view(clearing, financier_id, pid, by_borrower.get(pid, ()))
             for pid in sorted(clearing.participants))
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


class ReportKind(StrEnum):
    """What a row of the daily settlement report is about."""

    TRADE = "TRADE"  # a trade settled or rejected
    MEMBER_SHARE = "MEMBER_SHARE"  # a cooperative member's part of a settled trade
    LOAN_REPAYMENT = "LOAN_REPAYMENT"  # a loan's interest or principal paid (by the borrower or the subsidy fund)
    INTEREST_ACCRUAL = "INTEREST_ACCRUAL"  # interest a loan earned its financier (midnights since its last)


class SettlementReportRow(msgspec.Struct, frozen=True):
    """One row of the daily settlement report, stating the facts as they were when it happened (they
    are projected from the events of that moment and never change). Amounts in fen.

    ``TRADE`` rows: one per trade settled or rejected on the day. A side's private fields
    (``BUYER_PRIVATE``, ``SELLER_PRIVATE``) are None to a viewer that may not see that side.
    ``MEMBER_SHARE``: a cooperative member's part of a trade (``participant_id``: the member;
    ``share_fen``, with the fee waived for it), seen by the member and the cooperative; the trade's
    fields as in its ``TRADE`` row, the cooperative's private ones hidden from the member.
    ``LOAN_REPAYMENT`` (``interest_paid_fen``, ``principal_repaid_fen``, ``paid_by``) and
    ``INTEREST_ACCRUAL`` (``interest_accrued_fen``): a loan's, seen by its borrower (``participant_id``)
    and its financier (``financier_id``); ``trade_id`` is the settlement that repaid it, else 0."""

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
    kind: str = ReportKind.TRADE.value
    participant_id: int = 0  # MEMBER_SHARE: the member; loan rows: the borrower
    advance_loan_id: int | None = None  # TRADE: the seller's advance against the trade (its lender sees it)
    share_fen: int | None = None  # MEMBER_SHARE
    member_poor_household: bool | None = None  # MEMBER_SHARE: the member was a registered poor household
    financier_id: int = 0  # loan rows: the lender
    loan_id: int = 0  # loan rows
    paid_by: str = ""  # LOAN_REPAYMENT: BORROWER or SUBSIDY_FUND
    interest_accrued_fen: int = 0  # INTEREST_ACCRUAL
    # TRADE (and its MEMBER_SHARE rows), issue 11 deliveries; 0 in rows of journals written before them
    heads_refused: int = 0  # dead on arrival or refused at the scale: paid nothing, their hold refunded
    shrink_g: int = 0  # the unfasted shrink taken off total_weight_g before grading and pricing
    raised_fen: int = 0  # a seller's dispute resolved above the weigh-in: amount + refund = obligation + this


REPORT_COLUMNS = tuple(SettlementReportRow.__struct_fields__)


class ReportEntry(NamedTuple):
    """A report row as the history keeps it: where it came from (journal ``seq``, the event's position
    ``ord`` in the command's events), its CST ``day``, and who lent against the trade (for its sight)."""

    seq: int
    ord: int
    day: int
    advance_financier_id: int
    row: SettlementReportRow


_REPORTED: Final = frozenset({TradeSettled, DeliveryResolved, CooperativeSplitPaid, LoanRepaid, InterestAccrued})
_NO_FACTS: Final = TradeFacts("", 0, 0, 0, 0, 0, 0, 0, 0, 0, DeliveryGrade.IN_GRADE, 0, 0, 0, 0, False)


def report_entries(seq: int, events: Sequence[Event]) -> list[ReportEntry]:
    """The report rows of one journaled command's events (``seq``): pure, from the events alone, so the
    history can always be rebuilt from the journal. A settlement event without facts (journaled before
    they were carried) gives a row with the trade's figures as zeros."""
    for event in events:  # most commands (orders) report nothing: one set lookup per event for them
        if event.__class__ in _REPORTED:
            break
    else:
        return []
    entries: list[ReportEntry] = []
    trades: dict[int, SettlementReportRow] = {}  # this command's TRADE rows, for its member shares
    for ord_, event in enumerate(events):
        kind = event.__class__
        if kind is TradeSettled or (kind is DeliveryResolved and event.rejected):  # type: ignore[union-attr]
            facts = event.facts or _NO_FACTS  # type: ignore[union-attr]
            row = _trade_row_of(event, facts)  # type: ignore[arg-type]
            trades[row.trade_id] = row
            entries.append(ReportEntry(seq, ord_, cst_day(event.ts_ns), facts.advance_financier_id, row))
        elif kind is CooperativeSplitPaid:
            e: CooperativeSplitPaid = event  # type: ignore[assignment]
            trade = trades.get(e.trade_id)
            if trade is not None:
                row = msgspec.structs.replace(
                    trade, kind=ReportKind.MEMBER_SHARE.value, participant_id=e.member_id, share_fen=e.amount_fen,
                    member_poor_household=e.member_poor_household)
                entries.append(ReportEntry(seq, ord_, cst_day(e.ts_ns), 0, row))
        elif kind is LoanRepaid or kind is InterestAccrued:
            entries.append(ReportEntry(seq, ord_, cst_day(event.ts_ns), 0, _loan_row_of(event)))  # type: ignore
    return entries


def _trade_row_of(event: TradeSettled | DeliveryResolved, f: TradeFacts) -> SettlementReportRow:
    if isinstance(event, TradeSettled):
        state, money = TradeState.SETTLED.name, (
            event.amount_fen, f.refund_fen, event.fee_fen, event.fee_subsidy_fen, event.fee_forgone_fen,
            event.interest_paid_fen, event.principal_repaid_fen, event.payable_fen)
    else:  # a rejection: everything went back to the buyer
        state, money = TradeState.REJECTED.name, (0, event.refund_fen, 0, 0, 0, 0, 0, 0)
    return SettlementReportRow(
        day_to_date(cst_day(event.ts_ns)), event.trade_id, f.instrument, state, f.buyer_id,
        f.seller_id or (event.seller_id if isinstance(event, TradeSettled) else 0),
        f.seller_poor_household, f.heads, f.heads_delivered, f.total_weight_g, f.avg_weight_g,
        DeliveryGrade(f.grade).name, f.price_fen, f.discount_fen_per_kg, f.obligation_fen, *money,
        f.funded_by_financier_id, advance_loan_id=f.advance_loan_id, heads_refused=f.heads_refused,
        shrink_g=f.shrink_g, raised_fen=f.raised_fen,
    )  # fmt: skip


def _loan_row_of(e: LoanRepaid | InterestAccrued) -> SettlementReportRow:
    base = SettlementReportRow(
        day_to_date(cst_day(e.ts_ns)), 0, "", "", 0, 0, None, 0, 0, 0, 0, "", 0, 0, 0, 0, 0, None, None, None,
        None, None, None, None, participant_id=e.borrower_id, financier_id=e.financier_id, loan_id=e.loan_id,
    )  # fmt: skip
    if isinstance(e, InterestAccrued):
        return msgspec.structs.replace(base, kind=ReportKind.INTEREST_ACCRUAL.value,
                                       interest_accrued_fen=e.interest_fen)
    return msgspec.structs.replace(base, kind=ReportKind.LOAN_REPAYMENT.value, trade_id=e.trade_id,
                                   interest_paid_fen=e.interest_fen, principal_repaid_fen=e.principal_fen,
                                   paid_by=LoanPayer(e.payer).name)


Consented = Callable[[int, int], bool]  # (participant, financier): does the participant consent to it


def report_sides(entry: ReportEntry, viewer_id: int | None, consented: Consented) -> TradeSides | None:
    """What ``viewer_id`` (None: an operator) may see of a report row: None for nothing, else the sides
    whose private fields it sees (as ``trade_sides``: a party its own side, a lender what it lent and,
    with consent, the side it lent to)."""
    if viewer_id is None:
        return ALL_SIDES
    row = entry.row
    if row.kind in (ReportKind.LOAN_REPAYMENT, ReportKind.INTEREST_ACCRUAL):
        return ALL_SIDES if viewer_id in (row.participant_id, row.financier_id) else None
    if row.kind == ReportKind.MEMBER_SHARE:
        if viewer_id == row.seller_id:
            return TradeSides(False, True)
        return TradeSides(False, False) if viewer_id == row.participant_id else None
    sides = sides_of(viewer_id, row.buyer_id, row.seller_id, row.funded_by_financier_id or 0,
                     entry.advance_financier_id, consented)
    return sides if any(sides) else None


def visible_report(
    entries: Iterable[ReportEntry], viewer_id: int | None = None, consented: Consented = lambda p, f: False
) -> list[SettlementReportRow]:
    """The report rows ``viewer_id`` may see (None: an operator, every row in full), each redacted to what
    it may see of it, by trade id (rows of no trade first), a trade's own row before the rows it brought
    about (member shares, repayments), then in the order they happened."""
    rows = []
    for entry in sorted(entries, key=lambda e: (e.row.trade_id, e.row.kind != ReportKind.TRADE, e.seq, e.ord)):
        sides = report_sides(entry, viewer_id, consented)
        if sides is None:
            continue
        rows.append(redact(entry.row, sides))
    return rows


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
