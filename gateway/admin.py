"""Operator routes: register participants, issue and revoke API keys.

Storage calls go through `gateway.store` only. A registration is one journaled `RegisterParticipant`
that carries the new id (from the database's identity), the profile, its `registration_ref` and the
first API key and secret; the key's and the participant's rows are written in the transaction that
journals it (`store.RegistrationWriter`). So a crash, a failed commit or a 503 leaves either the whole
registration (the core's profile, the participant row, the key) or nothing, and the client retries
with the same `registration_ref`: a repeat with the same profile answers the same participant, key and
secret for `REGISTRATION_REPLAY_S` (24 h) after the registration, then 409 `registration_expired` (the
participant exists: issue it a new key); another profile under the reference is 409 `duplicate_reference`.
The clearing forgets a registration after the retention window (exchange/core.py, "Memory"); its
reference stays in `settlement_refs` (`store.REF_REGISTRATION`, written with the registration), so a
repeat after that is 409 `registration_expired` too, never a second participant.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Final

import msgspec

from exchange.settlement import pgstore
from gateway import participants, store
from gateway.auth import OPERATORS, KeyRecord, Role
from gateway.clock import exchange_now_ns
from gateway.errors import ApiError, Code
from gateway.exchange_port import EXCHANGE
from gateway.routes import Call, RouteTable
from gateway.settlement import clearing_of
from gateway.state import AUTH

__all__ = ["KeyPath", "KeyRevoked", "ParticipantPath", "RegisterParticipant", "routes"]

routes = RouteTable()
REGISTRATION_REPLAY_S: Final = 24 * 3600  # how long a repeated registration_ref answers the key again


RegistrationRef = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"\A[A-Za-z0-9_.:\-]+\Z",
                                              description="the registration's idempotency key")]


class RegisterParticipant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A participant's role and real name; for settlement also its masked ID number, bank account (to be
    verified) and, for a farmer, its poor-household registration number (to be verified)."""

    role: Role
    # No control characters: PostgreSQL text cannot hold NUL, and names end up in logs and on screens.
    name: participants.Name
    id_number_masked: participants.MaskedIdNumber = participants.NO_ID_NUMBER
    bank_account: participants.BankAccount = ""
    poor_registration_no: participants.PoorRegistrationNo = ""
    bank_code: participants.BankCode = ""  # the account's bank and branch, for the bank payout file
    branch_code: participants.BranchCode = ""
    # The idempotency key of the registration: send it again after a 503 or a timeout to get the same
    # participant and key (for 24 h). Optional, but without it a lost answer cannot be recovered.
    registration_ref: RegistrationRef | None = None


class ParticipantPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    participant_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class KeyPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    api_key: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"\A[A-Za-z0-9_\-]+\Z")]


class KeyRevoked(msgspec.Struct, frozen=True):
    api_key: str
    revoked: bool


@routes.post("/v1/admin/participants", roles=OPERATORS, body=RegisterParticipant,
             response=store.IssuedKey, status=201, errors=(409,))
async def register_participant(call: Call, body: RegisterParticipant) -> store.IssuedKey:
    """Register a participant with its role and profile, in one durable step; its API key and secret are
    returned. The same `registration_ref` again (after a 503 or a timeout) returns the same participant
    and key for 24 h; with another profile it is 409 `duplicate_reference`."""
    profile = participants.Profile(role=body.role, name=body.name, id_number_masked=body.id_number_masked,
                                   bank_account=body.bank_account, poor_registration_no=body.poor_registration_no,
                                   bank_code=body.bank_code, branch_code=body.branch_code)
    participants.check_profile(profile)
    ref = body.registration_ref or "auto:" + secrets.token_hex(16)
    if ref not in clearing_of(call).registrations:
        seq = await pgstore.used_reference(call.pool, store.REF_REGISTRATION, 0, ref)
        if seq is not None:  # made beyond the retention window: forgotten by the clearing, never made twice
            raise _expired(ref, f"journal entry {seq}")
    # A fresh id and key even for a repeat: the core answers a known reference with what it made.
    participant_id = await store.next_participant_id(call.pool)
    api_key, api_secret = store.new_key_pair()
    await participants.register(call.app[EXCHANGE], call.principal.participant_id, participant_id, profile,
                                registration_ref=ref, api_key=api_key, api_secret=api_secret)
    done = clearing_of(call).registrations.get(ref)  # durable: the command answered after it is
    if done is None:  # forgotten meanwhile (a retention window shorter than the command's way through)
        raise _expired(ref, "a registration")
    if exchange_now_ns(call.app) - done.ts_ns > REGISTRATION_REPLAY_S * 1_000_000_000:  # exchange time, as ts_ns
        raise _expired(ref, f"participant {done.participant_id}")
    secret = api_secret if done.api_key == api_key else await store.load_secret(call.pool, done.api_key)
    if secret is None:  # written in the same transaction as the registration: never missing
        raise RuntimeError(f"the key of registration {ref} is not in api_keys")
    issued = store.IssuedKey(done.participant_id, body.role, done.api_key, secret)
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


def _expired(ref: str, made: str) -> ApiError:
    return ApiError(409, "registration_expired", f"registration {ref} made {made} more than 24 h ago (or beyond "
                    "the retention window): its key is not shown again (issue a new key)")


def _remember(call: Call, issued: store.IssuedKey) -> None:
    call.app[AUTH].remember(KeyRecord(issued.api_key, issued.participant_id, issued.role,
                                      issued.api_secret, revoked=False))
