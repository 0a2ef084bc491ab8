"""Deliveries and disputes over HTTP: `POST /v1/trades/{trade_id}/weigh-in`, `.../dispute`, `.../rejection`,
`.../resolution`, `GET /v1/trades/{trade_id}/settlement`, `GET /v1/settlement/trades`, and who may see a
trade (its parties, an operator, a financier that financed it).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from exchange.commands import (
    Command,
    OpenDispute,
    RecordWeighIn,
    RejectDelivery,
    ResolveDispute,
)
from exchange.settlement import Clearing, pgstore
from exchange.settlement.model import Loan, TradeRecord, TradeState
from exchange.settlement.views import (
    ALL_SIDES,
    TradeSides,
    redact,
    trade_sides,
)
from gateway.auth import ANY_ROLE, BUYERS, OPERATORS, SELLERS, Principal, Role
from gateway.inputs import Text
from gateway.routes import Call, RouteTable
from gateway.schemas import Id, Limit, rejection
from gateway.settlement.common import (
    BORROWERS,
    AmountOrZeroFen,
    Cursor,
    R,
    Reason,
    TradeStateName,
    archived_page,
    archived_record,
    clearing_of,
    is_operator,
    newest,
    newest_held,
    submit,
    to_ms,
)

routes = RouteTable()

# -- deliveries and disputes ----------------------------------------------------------------------------


class TradePath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    trade_id: Id


class WeighInRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What was delivered against a trade: the heads delivered and their total live weight in grams, the
    heads dead on arrival or refused at the scale (`heads_refused`: paid nothing, their hold returned to
    the buyer; delivered + refused at most the heads traded), whether the pigs came unfasted (the
    instrument's `shrink_bps` of the live weight is deducted before grading and pricing), and the animal
    quarantine certificate checked against the load: on an instrument whose `quarantine_region` checks
    certificates it must be the lot's (`quarantine_cert_mismatch`) and of the region's shape
    (`invalid_quarantine_cert`). Opens the dispute window."""

    heads_delivered: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
    total_weight_g: Annotated[int, msgspec.Meta(ge=0, le=10**12, description="live weight of the heads delivered")]
    quarantine_cert: Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]
    quarantine_checked: bool
    heads_refused: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    unfasted: bool = False


class DisputeRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A party disputes the weigh-in. A seller's dispute (the scale under-read) holds what a raise may
    cost the buyer: 5 % of the amount (`raise_held_fen`), as far as the buyer's cash (or the credit line
    that funded the trade) has it; the dispute opens all the same, with what could be held."""

    reason: Reason


class ResolutionRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The disputed trade settles at `amount_fen`: 0 .. the weigh-in amount (the rest returns to the buyer),
    or for a seller's dispute up to the amount plus `raise_held_fen` (the raise is paid from the hold,
    the rest of the hold released). Above that: 422 `invalid_amount`."""

    amount_fen: AmountOrZeroFen


class TradeSettlementView(msgspec.Struct, frozen=True):
    """A trade's way from obligation to payout. Amounts in fen, weights in grams, times in ms.

    A side's private fields are null to whoever may not see that side (`views.trade_sides`): the
    buyer's financier to the seller and the seller's financier; the seller's fee, subsidy, advance,
    repayments and payable to the buyer and the buyer's financier."""

    trade_id: int
    instrument: str
    state: TradeStateName
    buyer_id: int
    seller_id: int
    heads: int
    price_fen: int
    obligation_fen: int  # escrowed at the fill
    funded_by_financier_id: int | None  # 0: the buyer's cash
    advance_loan_id: int | None
    traded_ms: int
    heads_delivered: int
    total_weight_g: int
    avg_weight_g: int
    grade: str  # IN_GRADE, SUBSTITUTE or OUT_OF_GRADE
    discount_fen_per_kg: int
    quarantine_cert: str
    delivered_ms: int
    dispute_until_ms: int
    disputed_by: int
    dispute_reason: str
    amount_fen: int  # the final amount
    refund_fen: int  # returned to the buyer
    fee_fen: int | None
    fee_subsidy_fen: int | None  # a registered poor farmer's fee, paid by the subsidy fund
    fee_forgone_fen: int | None
    interest_paid_fen: int | None
    principal_repaid_fen: int | None
    payable_fen: int | None  # what went to the seller's payable (and its cooperative's members)
    settled_ms: int
    heads_refused: int  # dead on arrival or refused at the scale: paid nothing
    shrink_g: int  # deducted from the live weight of unfasted pigs
    raise_held_fen: int | None  # a seller's dispute: held from the buyer, the most a resolution may raise
    # (buyer-private: it tells what the buyer had available)
    raised_fen: int  # the resolution's raise (amount + refund = obligation + raised)


# gateway.schemas has a TradeQuery too, so the OpenAPI document names this one by its module: still the
# module it was defined in before the settlement routes were split, so the document stays the same (made
# with defstruct: its field types are objects, not annotations resolved in the module it names)
TradeQuery = msgspec.defstruct(
    "TradeQuery", [("state", TradeStateName | None, None), ("cursor", Cursor | None, None), ("limit", Limit, 100)],
    module="gateway.settlement", kw_only=True, frozen=True, forbid_unknown_fields=True,
)


class TradeSettlementPage(msgspec.Struct, frozen=True):
    """Newest first; pass `next_cursor` back as `cursor` for the next page (null: no more)."""

    trades: list[TradeSettlementView]
    next_cursor: str | None


def _trade_view(t: TradeRecord, sides: TradeSides) -> TradeSettlementView:
    return redact(TradeSettlementView(
        t.trade_id, t.instrument, TradeStateName[t.state.name], t.buyer_id, t.seller_id, t.heads, t.price_fen,
        t.obligation_fen, t.financier_id, t.advance_loan_id, to_ms(t.traded_at_ns), t.heads_delivered,
        t.total_weight_g, t.avg_weight_g, t.grade.name, t.discount_fen_per_kg, t.quarantine_cert,
        to_ms(t.delivered_at_ns), to_ms(t.dispute_until_ns), t.disputed_by, t.dispute_reason, t.amount_fen,
        t.refund_fen, t.fee_fen, t.fee_subsidy_fen, t.fee_forgone_fen, t.interest_paid_fen,
        t.principal_repaid_fen, t.payable_fen, to_ms(t.settled_at_ns), t.heads_refused, t.shrink_g,
        t.raise_held_fen, t.raised_fen,
    ), sides)  # fmt: skip


def finances(clearing: Clearing, financier_id: int, trade: TradeRecord, advance: Loan | None = None) -> bool:
    """Whether the financier financed the trade (it then sees the trade: with the private fields of a side
    that consents to it, else its own loan on it only; see `views.trade_sides`). `advance`: the trade's
    advance if the clearing forgot it (`_forgotten_advance`)."""
    return any(trade_sides(clearing, financier_id, trade, advance))


def _sides(clearing: Clearing, principal: Principal, trade: TradeRecord, advance: Loan | None = None) -> TradeSides:
    if is_operator(principal):
        return ALL_SIDES
    return trade_sides(clearing, principal.participant_id, trade, advance)


def _may_see(clearing: Clearing, principal: Principal, trade: TradeRecord, advance: Loan | None = None) -> bool:
    pid = principal.participant_id
    if is_operator(principal) or pid in (trade.buyer_id, trade.seller_id):
        return True
    return principal.role == Role.FINANCIER and finances(clearing, pid, trade, advance)


async def _forgotten_advance(call: Call, trade: TradeRecord) -> Loan | None:
    """The trade's advance from settlement_history if the clearing forgot it (closed, and kept no longer
    than its trade), so its lender sees the trade as before; None if memory holds it or there is none."""
    loan_id = trade.advance_loan_id
    if not loan_id or loan_id in clearing_of(call).loans or call.principal.role != Role.FINANCIER:
        return None
    return await archived_record(call, pgstore.HISTORY_LOAN, Loan, loan_id)



async def _visible_trade(call: Call, trade_id: int) -> TradeRecord:
    """The trade if the caller may see it; anyone else's is `unknown_trade`, like a missing one."""
    return (await _visible_trade_and_advance(call, trade_id))[0]


async def _visible_trade_and_advance(call: Call, trade_id: int) -> tuple[TradeRecord, Loan | None]:
    """`_visible_trade`, and its advance if the clearing forgot it (`_forgotten_advance`)."""
    clearing = clearing_of(call)
    trade = clearing.trades.get(trade_id)
    advance = None
    if trade is None:
        trade = await archived_record(call, pgstore.HISTORY_TRADE, TradeRecord, trade_id)
        if trade is not None:
            advance = await _forgotten_advance(call, trade)
    if trade is None or not _may_see(clearing, call.principal, trade, advance):
        raise rejection(R.UNKNOWN_TRADE)
    return trade, advance


async def _party_trade(call: Call, trade_id: int) -> TradeRecord:
    """The trade if the caller is a party to it or an operator (financiers act on trades elsewhere)."""
    trade = await _visible_trade(call, trade_id)
    if not is_operator(call.principal) and call.principal.participant_id not in (trade.buyer_id, trade.seller_id):
        raise rejection(R.UNKNOWN_TRADE)
    return trade


async def _trade_command(call: Call, trade_id: int, command: Command) -> TradeSettlementView:
    await _party_trade(call, trade_id)
    await submit(call, command)
    clearing = clearing_of(call)
    trade = clearing.trades[trade_id]
    return _trade_view(trade, _sides(clearing, call.principal, trade))


@routes.post("/v1/trades/{trade_id}/weigh-in", roles=SELLERS | OPERATORS, params=TradePath, body=WeighInRequest,
             response=TradeSettlementView, errors=(404, 409))
async def record_weigh_in(call: Call, params: TradePath, body: WeighInRequest) -> TradeSettlementView:
    """Record the weigh-in of a delivery (the seller or an operator); fixes the final amount."""
    command = RecordWeighIn(call.principal.participant_id, 0, params.trade_id, body.heads_delivered,
                            body.total_weight_g, body.quarantine_cert, body.quarantine_checked,
                            body.heads_refused, body.unfasted)
    return await _trade_command(call, params.trade_id, command)


@routes.post("/v1/trades/{trade_id}/dispute", roles=BORROWERS, params=TradePath, body=DisputeRequest,
             response=TradeSettlementView, errors=(404, 409))
async def open_dispute(call: Call, params: TradePath, body: DisputeRequest) -> TradeSettlementView:
    """Dispute a delivery inside its dispute window (a party); the trade waits for an operator. The
    seller's dispute holds up to 5 % of the amount from the buyer (`raise_held_fen`)."""
    command = OpenDispute(call.principal.participant_id, 0, params.trade_id, body.reason)
    return await _trade_command(call, params.trade_id, command)


@routes.post("/v1/trades/{trade_id}/rejection", roles=BUYERS, params=TradePath, response=TradeSettlementView,
             errors=(404, 409))
async def reject_delivery(call: Call, params: TradePath) -> TradeSettlementView:
    """Reject an out-of-grade delivery inside the dispute window (the buyer): everything is refunded."""
    command = RejectDelivery(call.principal.participant_id, 0, params.trade_id)
    return await _trade_command(call, params.trade_id, command)


@routes.post("/v1/trades/{trade_id}/resolution", roles=OPERATORS, params=TradePath, body=ResolutionRequest,
             response=TradeSettlementView, errors=(404, 409))
async def resolve_dispute(call: Call, params: TradePath, body: ResolutionRequest) -> TradeSettlementView:
    """Resolve a dispute: the trade settles at once at the amount decided (a seller's dispute may raise it
    by at most `raise_held_fen`)."""
    command = ResolveDispute(call.principal.participant_id, 0, params.trade_id, body.amount_fen)
    return await _trade_command(call, params.trade_id, command)


@routes.get("/v1/trades/{trade_id}/settlement", roles=ANY_ROLE, params=TradePath, response=TradeSettlementView)
async def get_trade_settlement(call: Call, params: TradePath) -> TradeSettlementView:
    """A trade's delivery and settlement (its parties, its consented financier, operators)."""
    trade, advance = await _visible_trade_and_advance(call, params.trade_id)
    return _trade_view(trade, _sides(clearing_of(call), call.principal, trade, advance))


@routes.get("/v1/settlement/trades", roles=ANY_ROLE, query=TradeQuery, response=TradeSettlementPage)
async def list_trade_settlements(call: Call, query: TradeQuery) -> TradeSettlementPage:
    """The settlement of the trades you may see, newest first (at most 1000 a page)."""
    clearing, principal = clearing_of(call), call.principal
    before = None if query.cursor is None else int(query.cursor)
    state = None if query.state is None else TradeState[query.state.name]
    memory = newest_held(clearing.trades, before, lambda t: (state is None or t.state == state)
                         and _may_see(clearing, principal, t), query.limit)
    archived: list[tuple[int, TradeRecord]] = []
    if state in (None, TradeState.SETTLED, TradeState.REJECTED):
        found = await archived_page(call, pgstore.HISTORY_TRADE, TradeRecord, before, state, query.limit + 1)
        archived = [(t.trade_id, t) for t in found if _may_see(clearing, principal, t)]
    trades, more = newest(memory, archived, query.limit)
    page = [_trade_view(t, _sides(clearing, principal, t)) for t in trades]
    return TradeSettlementPage(page, str(page[-1].trade_id) if more else None)


