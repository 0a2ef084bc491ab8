"""Participants in the exchange core: the settlement profile that goes with every gateway registration.

The gateway's database (`gateway.store`) assigns participant ids and holds API keys; the core's
clearing must know the same participants (role, real name, masked ID number, bank account, poor-household
registration) before it takes their bids, lots, deposits or payouts. Both are kept in step here:

- `register(port, sender_id, participant_id, profile, registration_ref=..., api_key=..., api_secret=...)`:
  the journaled `RegisterParticipant`, answered once it is durable. An API registration
  (`gateway.admin`) carries its reference and first key, and the participant's and key's rows commit
  with the command (`gateway.store.RegistrationWriter`): one durable step, nothing half-done.
- `sync_from_database(pool, port)`: at start-up, every database participant the core does not know
  (the bootstrap operator created from the environment, the demo's participants, a registration made
  before registrations were one step) is registered from participant 0, the system, which the clearing
  accepts for operator commands.

Routes: `GET /v1/profile` and `PATCH /v1/profile` (your name and bank account; a changed account or name must
be verified again before the next payout), `GET /v1/consents` and `POST /v1/consents` (a trader lets a
financier finance it and see its exposures, or withdraws that: no new credit, no new holds on the financier's
line, and the financier sees only its own lines and loans: it may still reduce a line, and loans are still
repaid), and for operators `GET /v1/admin/participants/{id}/profile`, `POST .../bank-account/verify`, `POST
.../poor-household` (verify or revoke a registered poor household) and
`POST /v1/admin/cooperatives/{id}/members` (members and their shares in basis points).

The clearing refuses full ID numbers: `id_number_masked` must contain `*` and at most 8 digits
(`PROFILE_RULES`). A participant registered without one gets `NO_ID_NUMBER` ("*"), which says "none
on file" rather than inventing one.
"""

from __future__ import annotations

import logging
from typing import Annotated, Final

import asyncpg
import msgspec

from exchange.commands import (
    ParticipantRole,
    RegisterParticipant,
    SetConsent,
    SetCooperativeMembers,
    UpdateParticipant,
    VerifyBankAccount,
    VerifyPoorHousehold,
)
from exchange.domain import RejectReason
from exchange.events import Rejected
from exchange.settlement.clearing import SYSTEM_ID
from exchange.settlement.model import Participant
from gateway.auth import ANY_ROLE, OPERATORS, Role
from gateway.errors import ApiError, Code
from gateway.exchange_port import ExchangePort
from gateway.inputs import Text
from gateway.routes import Call, RouteTable
from gateway.schemas import Id, rejection
from gateway.settlement import BORROWERS, clearing_of, submit

__all__ = [
    "CORE_ROLE",
    "NO_ID_NUMBER",
    "PROFILE_RULES",
    "BankAccount",
    "MaskedIdNumber",
    "PoorRegistrationNo",
    "Profile",
    "check_profile",
    "register",
    "routes",
    "sync_from_database",
]

_log = logging.getLogger(__name__)
routes = RouteTable()

CORE_ROLE: Final = {role: ParticipantRole[role.name] for role in Role}
NO_ID_NUMBER: Final = "*"
MAX_NAME_CHARS: Final = 100  # the clearing's limit on names
PROFILE_RULES: Final = "id_number_masked needs a '*' and at most 8 digits; a poor-household number only for farmers"

MaskedIdNumber = Annotated[str, msgspec.Meta(
    min_length=1, max_length=32, pattern=r"\A[0-9Xx*]*\*[0-9Xx*]*\Z",
    description="an ID number with the middle masked by '*' (e.g. 5002**********1234); never a full one")]
BankAccount = Annotated[str, msgspec.Meta(
    max_length=64, pattern=r"\A[0-9A-Za-z \-]*\Z", description="the bank account payouts go to (verified by an "
                                                              "operator before any money is sent)")]
BankCode = Annotated[str, msgspec.Meta(
    max_length=3, pattern=r"\A([0-9]{3})?\Z", description="the account's bank: 3 digits (CNAPS 行别代码, e.g. 102); "
                                                         "empty: not given")]
BranchCode = Annotated[str, msgspec.Meta(
    max_length=12, pattern=r"\A([0-9]{12})?\Z", description="the account's branch: 12 digits (CNAPS 联行号), "
                                                           "starting with the bank code; empty: not given")]
PoorRegistrationNo = Annotated[str, msgspec.Meta(
    max_length=32, pattern=r"\A[0-9A-Za-z\-]*\Z", description="registered poor household number (建档立卡)")]


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    """What the clearing records about a participant at registration."""

    role: Role
    name: str
    id_number_masked: str = NO_ID_NUMBER
    bank_account: str = ""
    poor_registration_no: str = ""
    bank_code: str = ""
    branch_code: str = ""


def check_profile(profile: Profile) -> None:
    """Refuse (422 `invalid_participant`) what the clearing would refuse, before anything is written."""
    digits = sum(ch.isdigit() for ch in profile.id_number_masked)
    if not profile.name.strip() or len(profile.name) > MAX_NAME_CHARS:
        raise ApiError(422, "invalid_participant", f"name must be 1-{MAX_NAME_CHARS} characters, not blank")
    if "*" not in profile.id_number_masked or digits > 8:
        raise ApiError(422, "invalid_participant", PROFILE_RULES)
    if profile.poor_registration_no and profile.role != Role.FARMER:
        raise ApiError(422, "invalid_participant", "only a farmer can be a registered poor household")
    check_bank_codes(profile.bank_code, profile.branch_code)


def check_bank_codes(bank_code: str, branch_code: str) -> None:
    """Refuse (422 `invalid_participant`) a branch code without its bank code or of another bank."""
    if branch_code and branch_code[:3] != bank_code:
        raise ApiError(422, "invalid_participant", "branch_code must start with bank_code (both given)")


def _command(sender_id: int, participant_id: int, profile: Profile, registration_ref: str = "", api_key: str = "",
             api_secret: str = "") -> RegisterParticipant:
    return RegisterParticipant(sender_id, 0, participant_id, CORE_ROLE[profile.role], profile.name,
                               profile.id_number_masked, profile.bank_account.strip(),
                               profile.poor_registration_no.strip(), profile.bank_code, profile.branch_code,
                               registration_ref, api_key, api_secret)


async def register(port: ExchangePort, sender_id: int, participant_id: int, profile: Profile, *,
                   registration_ref: str = "", api_key: str = "", api_secret: str = "") -> None:
    """Register a participant in the core; returns once it is durable. With `registration_ref` (the API's
    registrations) the command also carries the first key, whose rows commit with it; without, the
    participant is one the database already has (the demo's, the start-up sync)."""
    result = await port.submit(_command(sender_id, participant_id, profile, registration_ref, api_key, api_secret))
    for event in result.events:
        if event.__class__ is Rejected:
            if registration_ref:  # nothing was written: the client may correct the request or retry it
                raise rejection(event.reason)
            # check_profile ran first, so this is a disagreement with the core (e.g. the sender is not an
            # operator there yet); the start-up sync registers the participant from the database.
            raise ApiError(503, Code.UNAVAILABLE, f"participant {participant_id} was created but the exchange "
                           f"refused its profile ({event.reason.name.lower()}); it is registered on restart",
                           retry_after_s=1)


async def sync_from_database(pool: asyncpg.Pool, port: ExchangePort) -> int:
    """Register every database participant the core does not know, as the system; returns how many."""
    clearing = port.sequencer.core.clearing
    if clearing is None:
        return 0
    rows = await pool.fetch("SELECT participant_id, role, name FROM participants ORDER BY participant_id")
    missing = [r for r in rows if r["participant_id"] not in clearing.participants]
    for row in missing:
        # Registered before the core kept profiles: the name is all the database has (cut to the core's limit).
        name = row["name"].strip()[:MAX_NAME_CHARS] or f"participant {row['participant_id']}"
        profile = Profile(role=Role(row["role"]), name=name)
        result = await port.submit(_command(SYSTEM_ID, row["participant_id"], profile))
        rejected = [e for e in result.events if e.__class__ is Rejected]
        if rejected:
            _log.error("participant %d could not be registered in the core: %s", row["participant_id"],
                       rejected[0].reason.name)
    if missing:
        _log.info("registered %d participants from the database in the exchange core", len(missing))
    return len(missing)


# -- routes ---------------------------------------------------------------------------------------------

Name = Annotated[Text, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]


class ProfileView(msgspec.Struct, frozen=True):
    """A participant's settlement profile. The bank account is shown masked (last four digits)."""

    participant_id: int
    role: Role
    name: str
    id_number_masked: str
    bank_account: str
    bank_code: str  # empty: not given
    branch_code: str
    bank_verified: bool
    poor_registration_no: str
    poor_household_verified: bool  # a verified registered poor household: fee waived, paid first
    member_ids: list[int]  # a cooperative's members ...
    shares_bps: list[int]  # ... and their shares of its net proceeds
    consents: list[int]  # financiers it consented to


class ProfileUpdate(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Your name and the bank account payouts go to (with its bank and branch codes, which the bank file
    carries; left out, they are cleared); a changed account, code or name must be verified again."""

    name: Name
    bank_account: BankAccount
    bank_code: BankCode = ""
    branch_code: BranchCode = ""


class ParticipantPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    participant_id: Id


class BankVerification(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The account the operator checked; it must be the participant's current one."""

    bank_account: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"\A[0-9A-Za-z \-]+\Z")]


class PoorHouseholdVerification(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Verify a farmer as a registered poor household (or revoke it with `verified: false`)."""

    registration_no: PoorRegistrationNo = ""
    verified: bool = True


class Member(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    farmer_id: Id
    share_bps: Annotated[int, msgspec.Meta(ge=1, le=10_000)]


class CooperativeMembers(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A cooperative's member farmers and their shares of its net proceeds (sum at most 10,000 bps; the
    cooperative keeps the rest and every odd fen). Replaces the previous list."""

    members: Annotated[list[Member], msgspec.Meta(max_length=1000)]


class ConsentRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Let a financier finance you and see your exposures and financed trades, or withdraw that: your bids
    then hold no more on its credit line, and it sees only its own lines and loans to you."""

    financier_id: Id
    granted: bool = True


class ConsentView(msgspec.Struct, frozen=True):
    participant_id: int
    financier_ids: list[int]


def _masked(bank_account: str) -> str:
    return "****" + bank_account[-4:] if bank_account else ""


def _profile_view(call: Call, who: Participant) -> ProfileView:
    bank_code, branch_code = clearing_of(call).bank_codes.get(who.participant_id, ("", ""))
    return ProfileView(who.participant_id, Role[who.role.name], who.name, who.id_number_masked,
                       _masked(who.bank_account), bank_code, branch_code, who.bank_verified, who.poor_registration_no,
                       who.poor_verified, list(who.member_ids), list(who.shares_bps), list(who.consents))


def _participant(call: Call, participant_id: int) -> Participant:
    who = clearing_of(call).participants.get(participant_id)
    if who is None:
        raise rejection(RejectReason.UNKNOWN_PARTICIPANT)
    return who


@routes.get("/v1/profile", roles=ANY_ROLE, response=ProfileView, errors=(404,))
async def get_profile(call: Call) -> ProfileView:
    """Your settlement profile: bank account and its verification, poor-household status, consents."""
    return _profile_view(call, _participant(call, call.principal.participant_id))


@routes.patch("/v1/profile", roles=ANY_ROLE, body=ProfileUpdate, response=ProfileView, errors=(404,))
async def update_profile(call: Call, body: ProfileUpdate) -> ProfileView:
    """Change your name or bank account (either change waits for an operator's verification again)."""
    me = call.principal.participant_id
    check_bank_codes(body.bank_code, body.branch_code)
    await submit(call, UpdateParticipant(me, 0, me, body.name, body.bank_account, body.bank_code, body.branch_code))
    return _profile_view(call, _participant(call, me))


@routes.get("/v1/admin/participants/{participant_id}/profile", roles=OPERATORS, params=ParticipantPath,
            response=ProfileView)
async def get_participant_profile(call: Call, params: ParticipantPath) -> ProfileView:
    """A participant's settlement profile."""
    return _profile_view(call, _participant(call, params.participant_id))


@routes.post("/v1/admin/participants/{participant_id}/bank-account/verify", roles=OPERATORS,
             params=ParticipantPath, body=BankVerification, response=ProfileView)
async def verify_bank_account(call: Call, params: ParticipantPath, body: BankVerification) -> ProfileView:
    """Verify the participant's current bank account: payouts and withdrawals may go there."""
    await submit(call, VerifyBankAccount(call.principal.participant_id, 0, params.participant_id,
                                         body.bank_account))
    return _profile_view(call, _participant(call, params.participant_id))


@routes.post("/v1/admin/participants/{participant_id}/poor-household", roles=OPERATORS, params=ParticipantPath,
             body=PoorHouseholdVerification, response=ProfileView)
async def verify_poor_household(call: Call, params: ParticipantPath, body: PoorHouseholdVerification) -> ProfileView:
    """Verify (or revoke) a farmer as a registered poor household: fee waived, interest subsidised,
    paid first and the same day."""
    await submit(call, VerifyPoorHousehold(call.principal.participant_id, 0, params.participant_id,
                                           body.registration_no, body.verified))
    return _profile_view(call, _participant(call, params.participant_id))


@routes.post("/v1/admin/cooperatives/{participant_id}/members", roles=OPERATORS, params=ParticipantPath,
             body=CooperativeMembers, response=ProfileView)
async def set_cooperative_members(call: Call, params: ParticipantPath, body: CooperativeMembers) -> ProfileView:
    """Set a cooperative's member farmers and their shares of its net proceeds."""
    await submit(call, SetCooperativeMembers(call.principal.participant_id, 0, params.participant_id,
                                             tuple(m.farmer_id for m in body.members),
                                             tuple(m.share_bps for m in body.members)))
    return _profile_view(call, _participant(call, params.participant_id))


@routes.get("/v1/consents", roles=BORROWERS, response=ConsentView, errors=(404,))
async def get_consents(call: Call) -> ConsentView:
    """The financiers you consented to."""
    me = _participant(call, call.principal.participant_id)
    return ConsentView(me.participant_id, list(me.consents))


@routes.post("/v1/consents", roles=BORROWERS, body=ConsentRequest, response=ConsentView, errors=(404,))
async def set_consent(call: Call, body: ConsentRequest) -> ConsentView:
    """Grant or withdraw a financier's consent to finance you and read your financing (withdrawn: no new
    holds on its credit line; what it already lent stays visible to it and owed)."""
    me = call.principal.participant_id
    await submit(call, SetConsent(me, 0, body.financier_id, body.granted))
    return ConsentView(me, list(_participant(call, me).consents))
