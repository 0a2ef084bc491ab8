"""Operator settings over HTTP: `POST /v1/admin/fee-schedule`, `POST /v1/admin/financing-policy` (`GET`:
every participant, a rule of the market).
"""

from __future__ import annotations

import msgspec

from exchange.commands import (
    SetFeeSchedule,
    SetFinancingPolicy,
)
from gateway.auth import ANY_ROLE, OPERATORS
from gateway.routes import Call, RouteTable
from gateway.schemas import Symbol
from gateway.settlement.common import (
    Bps,
    clearing_of,
    submit,
)

routes = RouteTable()

# -- operator settings ----------------------------------------------------------------------------------


class FeeScheduleRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The seller fee of an instrument in basis points of the final amount (at most 1,000)."""

    instrument: Symbol
    seller_fee_bps: Bps


class FeeScheduleView(msgspec.Struct, frozen=True):
    instrument: str
    seller_fee_bps: int


class FinancingPolicyRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An advance may be at most this share of a trade's estimated value."""

    advance_max_bps: Bps


class FinancingPolicyView(msgspec.Struct, frozen=True):
    advance_max_bps: int


@routes.post("/v1/admin/fee-schedule", roles=OPERATORS, body=FeeScheduleRequest, response=FeeScheduleView)
async def set_fee_schedule(call: Call, body: FeeScheduleRequest) -> FeeScheduleView:
    """Set an instrument's seller fee (waived for registered poor farmers: the subsidy fund pays it)."""
    await submit(call, SetFeeSchedule(call.principal.participant_id, 0, body.instrument, body.seller_fee_bps))
    return FeeScheduleView(body.instrument, clearing_of(call).fee_bps[body.instrument])


@routes.post("/v1/admin/financing-policy", roles=OPERATORS, body=FinancingPolicyRequest,
             response=FinancingPolicyView)
async def set_financing_policy(call: Call, body: FinancingPolicyRequest) -> FinancingPolicyView:
    """Set the largest share of a trade's estimated value a financier may advance."""
    await submit(call, SetFinancingPolicy(call.principal.participant_id, 0, body.advance_max_bps))
    return FinancingPolicyView(clearing_of(call).counters.advance_max_bps)


@routes.get("/v1/admin/financing-policy", roles=ANY_ROLE, response=FinancingPolicyView)
async def get_financing_policy(call: Call) -> FinancingPolicyView:
    """The financing policy in force: a rule of the market, readable by every participant (financiers
    grant advances within it, sellers ask for them), set by operators."""
    return FinancingPolicyView(clearing_of(call).counters.advance_max_bps)

