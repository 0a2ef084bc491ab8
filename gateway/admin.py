"""Operator routes: register participants, issue and revoke API keys.

Storage calls go through `gateway.store` only. A registration is written to the database (which
assigns the participant id and keeps the key) and then, with that id, journaled as the core's
`RegisterParticipant` (`gateway.participants`), so settlement knows the participant before it trades.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from gateway import participants, store
from gateway.auth import OPERATORS, KeyRecord, Role
from gateway.errors import ApiError, Code
from gateway.exchange_port import EXCHANGE
from gateway.routes import Call, RouteTable
from gateway.state import AUTH

__all__ = ["KeyPath", "KeyRevoked", "ParticipantPath", "RegisterParticipant", "routes"]

routes = RouteTable()


class RegisterParticipant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A participant's role and real name; for settlement also its masked ID number, bank account (to be
    verified) and, for a farmer, its poor-household registration number (to be verified)."""

    role: Role
    # No control characters: PostgreSQL text cannot hold NUL, and names end up in logs and on screens.
    name: participants.Name
    id_number_masked: participants.MaskedIdNumber = participants.NO_ID_NUMBER
    bank_account: participants.BankAccount = ""
    poor_registration_no: participants.PoorRegistrationNo = ""


class ParticipantPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    participant_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class KeyPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    api_key: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]


class KeyRevoked(msgspec.Struct, frozen=True):
    api_key: str
    revoked: bool


@routes.post("/v1/admin/participants", roles=OPERATORS, body=RegisterParticipant,
             response=store.IssuedKey, status=201)
async def register_participant(call: Call, body: RegisterParticipant) -> store.IssuedKey:
    """Register a participant with its role; its API key and secret are returned this once."""
    profile = participants.Profile(role=body.role, name=body.name, id_number_masked=body.id_number_masked,
                                   bank_account=body.bank_account, poor_registration_no=body.poor_registration_no)
    participants.check_profile(profile)
    issued = await store.register_participant(call.pool, body.role, body.name)
    await participants.register(call.app[EXCHANGE], call.principal.participant_id, issued.participant_id, profile)
    _remember(call, issued)
    return issued


@routes.post("/v1/admin/participants/{participant_id}/keys", roles=OPERATORS, params=ParticipantPath,
             response=store.IssuedKey, status=201)
async def issue_key(call: Call, params: ParticipantPath) -> store.IssuedKey:
    """Issue another API key for a participant; the secret is returned this once."""
    issued = await store.issue_key(call.pool, params.participant_id)
    if issued is None:
        raise ApiError(404, Code.NOT_FOUND, f"no participant {params.participant_id}")
    _remember(call, issued)
    return issued


@routes.post("/v1/admin/keys/{api_key}/revoke", roles=OPERATORS, params=KeyPath, response=KeyRevoked)
async def revoke_key(call: Call, params: KeyPath) -> KeyRevoked:
    """Revoke an API key; requests signed with it fail with `revoked_key` from now on, and its
    WebSockets are closed with 4003 "key revoked"."""
    if not await store.revoke_key(call.pool, params.api_key):
        raise ApiError(404, Code.NOT_FOUND, "no such API key")
    call.app[AUTH].revoke(params.api_key)
    # Other gateways' sockets with this key close at their next message once their key cache expires.
    call.hub.close_key(params.api_key)
    return KeyRevoked(params.api_key, True)


def _remember(call: Call, issued: store.IssuedKey) -> None:
    call.app[AUTH].remember(KeyRecord(issued.api_key, issued.participant_id, issued.role,
                                      issued.api_secret, revoked=False))
