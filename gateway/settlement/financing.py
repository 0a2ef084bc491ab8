"""Financing over HTTP: credit lines, advances, a financier's clients (`/v1/financing/clients`), loan
write-offs (financier), repayments and `GET /v1/loans` (the borrower).

A closed advance leaves the clearing's memory after the retention window (Clearing.forget) for
`settlement_history` (kind 11, `pgstore.archived_loans`): every list of loans here merges those with
memory's, so it reads as if nothing had been forgotten, and a write-off naming one answers what it
answered before (409 `loan_closed` to its financier, 404 to anyone else) from there.
"""

from __future__ import annotations

import msgspec

from exchange.commands import (
    GrantAdvance,
    GrantCreditLine,
    ReduceCreditLine,
    RepayLoan,
    WriteOffLoan,
)
from exchange.settlement import pgstore
from exchange.settlement.model import Loan
from exchange.settlement.views import (
    FinancierView,
    LoanRow,
    financier_portfolio,
    financier_view,
    loan_row,
)
from gateway.auth import FINANCIERS
from gateway.errors import ApiError
from gateway.routes import Call, RouteTable
from gateway.schemas import Id, reject_code, rejection
from gateway.settlement.common import (
    BORROWERS,
    AmountFen,
    R,
    RateBps,
    Reason,
    Ref,
    clearing_of,
    refuse_expired_reference,
    submit,
)

routes = RouteTable()

# -- financing ------------------------------------------------------------------------------------------


class CreditLineRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Earmark `amount_fen` more of your funds for a consenting buyer's bids, at a yearly rate."""

    buyer_id: Id
    amount_fen: AmountFen
    rate_bps: RateBps


class BuyerPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    buyer_id: Id


class ReduceRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    amount_fen: AmountFen


class AdvanceRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Advance a consenting seller part of a matched trade's estimated value (up to the policy share),
    paid to its payable at once and repaid first, with interest, when the trade settles."""

    trade_id: Id
    amount_fen: AmountFen
    rate_bps: RateBps


class RepaymentRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Repay a financier (interest first), from your cash (credit lines) or payable (advances)."""

    financier_id: Id
    amount_fen: AmountFen
    repayment_ref: Ref | None = None  # a retry with the same ref repays nothing twice


class ClientPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    participant_id: Id


class LoanPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    loan_id: Id


class WriteOffRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Why the claim is given up (a default, a court order, a settlement with the borrower ...)."""

    reason: Reason


class FinancierPortfolio(msgspec.Struct, frozen=True):
    """Everything a financier may see: one view per participant that consents to it or owes it."""

    financier_id: int
    exposure_fen: int
    clients: list[FinancierView]
    interest_earned_fen: int  # over every client: the financier's interest income, and what it collected
    interest_collected_fen: int


class LoanPage(msgspec.Struct, frozen=True):
    loans: list[LoanRow]


async def archived_loans(call: Call, financier_id: int | None, borrower_id: int | None) -> list[Loan]:
    """The closed loans the clearing forgot, of this financier and/or borrower, by loan id."""
    rows = await pgstore.archived_loans(call.pool, financier_id, borrower_id)
    return [msgspec.msgpack.decode(data, type=Loan) for data in rows]


async def _client_view(call: Call, participant_id: int) -> FinancierView:
    """The calling financier's view of a client; a participant that neither consents to it nor has a
    line or loan from it does not exist for it."""
    financier = call.principal.participant_id
    archived = await archived_loans(call, financier, participant_id)
    view = financier_view(clearing_of(call), financier, participant_id, archived)
    if view is None:
        raise rejection(R.UNKNOWN_PARTICIPANT)
    return view


@routes.post("/v1/credit-lines", roles=FINANCIERS, body=CreditLineRequest, response=FinancierView,
             errors=(404,))
async def grant_credit_line(call: Call, body: CreditLineRequest) -> FinancierView:
    """Grant (or raise) a consenting buyer's credit line; its bids may then hold against it."""
    await _client_view(call, body.buyer_id)
    await submit(call, GrantCreditLine(call.principal.participant_id, 0, body.buyer_id, body.amount_fen,
                                       body.rate_bps))
    return await _client_view(call, body.buyer_id)


@routes.post("/v1/credit-lines/{buyer_id}/reduce", roles=FINANCIERS, params=BuyerPath, body=ReduceRequest,
             response=FinancierView, errors=(404,))
async def reduce_credit_line(call: Call, params: BuyerPath, body: ReduceRequest) -> FinancierView:
    """Return undrawn credit of a buyer's line to your funds (also after the buyer withdrew consent)."""
    await _client_view(call, params.buyer_id)
    await submit(call, ReduceCreditLine(call.principal.participant_id, 0, params.buyer_id, body.amount_fen))
    return await _client_view(call, params.buyer_id)


@routes.post("/v1/advances", roles=FINANCIERS, body=AdvanceRequest, response=FinancierView, status=201,
             errors=(404, 409))
async def grant_advance(call: Call, body: AdvanceRequest) -> FinancierView:
    """Advance money to a consenting seller against one of its matched trades."""
    clearing, financier = clearing_of(call), call.principal.participant_id
    trade = clearing.trades.get(body.trade_id)
    if trade is None or not clearing.has_consented(trade.seller_id, financier):
        raise rejection(R.UNKNOWN_TRADE)
    await submit(call, GrantAdvance(financier, 0, body.trade_id, body.amount_fen, body.rate_bps))
    return await _client_view(call, trade.seller_id)


@routes.get("/v1/financing/clients", roles=FINANCIERS, response=FinancierPortfolio)
async def list_clients(call: Call) -> FinancierPortfolio:
    """Exposures, loans, repayments and financed trades of every participant that consents to you or owes
    you (`consented` false: consent withdrawn, its line takes no new holds)."""
    financier = call.principal.participant_id
    views = financier_portfolio(clearing_of(call), financier, await archived_loans(call, financier, None))
    return FinancierPortfolio(financier, sum(v.exposure_fen for v in views), views,
                              sum(v.interest_earned_fen for v in views), sum(v.interest_collected_fen for v in views))


@routes.get("/v1/financing/clients/{participant_id}", roles=FINANCIERS, params=ClientPath,
            response=FinancierView)
async def get_client(call: Call, params: ClientPath) -> FinancierView:
    """One client's exposure, loans, repayments and financed trades."""
    return await _client_view(call, params.participant_id)


@routes.post("/v1/loans/{loan_id}/write-off", roles=FINANCIERS, params=LoanPath, body=WriteOffRequest,
             response=LoanRow, errors=(404, 409))
async def write_off_loan(call: Call, params: LoanPath, body: WriteOffRequest) -> LoanRow:
    """Give up what is still owed on one of your loans: its principal and the interest accrued through
    today. The loan stops accruing; a credit line stays as it is (reduce it to stop new holds). A loan
    with nothing owed: 409 `loan_closed`; another financier's loan: 404 like a missing one."""
    clearing, financier = clearing_of(call), call.principal.participant_id
    loan = clearing.loans.get(params.loan_id)
    if loan is None:
        raise await _not_held(call, params.loan_id)
    if loan.financier_id != financier:
        raise rejection(R.UNKNOWN_LOAN)
    try:
        await submit(call, WriteOffLoan(financier, 0, params.loan_id, body.reason))
    except ApiError as error:  # forgotten between the look and the command (closed, so nothing happened)
        if error.code != reject_code(R.UNKNOWN_LOAN) or params.loan_id in clearing_of(call).loans:
            raise
        raise await _not_held(call, params.loan_id) from None
    return loan_row(clearing_of(call).loans[params.loan_id])


async def _not_held(call: Call, loan_id: int) -> ApiError:
    """What a write-off of a loan memory does not hold answers: a closed loan the clearing forgot is
    still the caller's closed loan (409 `loan_closed`, as before it was forgotten); else 404."""
    data = await pgstore.archived_record(call.pool, pgstore.HISTORY_LOAN, loan_id)
    if data is not None and msgspec.msgpack.decode(data, type=Loan).financier_id == call.principal.participant_id:
        return rejection(R.LOAN_CLOSED)
    return rejection(R.UNKNOWN_LOAN)


async def _own_loans(call: Call, borrower_id: int, financier_id: int | None = None) -> LoanPage:
    """The borrower's loans (of one financier, or all), forgotten ones with memory's, by loan id."""
    clearing = clearing_of(call)
    held = [loan for loan in clearing.loans.values()
            if loan.borrower_id == borrower_id and financier_id in (None, loan.financier_id)]
    archived = [loan for loan in await archived_loans(call, financier_id, borrower_id)
                if loan.loan_id not in clearing.loans]
    return LoanPage([loan_row(loan) for loan in sorted(held + archived, key=lambda x: x.loan_id)])


@routes.post("/v1/repayments", roles=BORROWERS, body=RepaymentRequest, response=LoanPage, errors=(409,))
async def repay(call: Call, body: RepaymentRequest) -> LoanPage:
    """Repay a financier; the answer is your loans from it after the repayment. With `repayment_ref` a
    retry repays nothing twice (same ref, other content: 409)."""
    borrower = call.principal.participant_id
    await refuse_expired_reference(call, pgstore.REF_REPAYMENT, borrower, body.repayment_ref or "",
                                   (borrower, body.repayment_ref) in clearing_of(call).repayments)
    await submit(call, RepayLoan(borrower, 0, body.financier_id, body.amount_fen, body.repayment_ref or ""))
    return await _own_loans(call, borrower, body.financier_id)


@routes.get("/v1/loans", roles=BORROWERS, response=LoanPage)
async def list_loans(call: Call) -> LoanPage:
    """Your loans: advances against your trades and what your credit-funded trades drew."""
    return await _own_loans(call, call.principal.participant_id)


