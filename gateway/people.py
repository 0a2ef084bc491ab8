"""People in the web app: invitations, password sign-in, cookie sessions with CSRF, lockout.

API keys stay for programs; a person signs in with a phone number and password and acts for one
participant with its role (a cooperative may have several clerks). A session is one more way to
authenticate a `Principal` (`SessionAuth.authenticate`, called by `gateway.routes` when a request has
the session cookie and no API key): every route, role check and rate limit is the same as for a signed
request. The principal's `api_key` is `person:<id>`, so each person has its own rate-limit bucket.

Rules:
- An operator creates a one-time invitation for a participant
  (`POST /v1/admin/participants/{id}/invitations`); it expires after `invitation_ttl_s` (72 h). The
  person opens `/#/invite/<token>` and sets phone, name and password (`POST /v1/invitations/accept`).
- Sign-in (`POST /v1/sessions`) is limited per address and per phone number (token buckets), and
  `max_failures` (5) wrong passwords in a row lock the person until an operator unlocks them
  (`POST /v1/admin/people/{id}/unlock`); a locked person is refused even with the right password.
  A wrong password, an unknown phone and a locked person's wrong password all get the same answer
  (401 `bad_credentials`) after the same scrypt work; only the right password of a locked person
  gets 423 `locked`, so the answers tell a stranger nothing about which phone numbers exist.
- A session is an opaque random id in the `hogx_session` cookie (HttpOnly, SameSite=Strict, Path=/,
  Secure when served over TLS), stored hashed, with an idle expiry (`idle_s`, 30 min) and an absolute
  one (`absolute_s`, 12 h); sign-out (`DELETE /v1/session`) and an operator revoking the person
  (`POST /v1/admin/people/{id}/revoke`) end it. Every state-changing request made with a session must
  carry its CSRF token in `X-CSRF-Token` (403 `csrf_failed` otherwise); SameSite=Strict is the second
  wall.
"""

from __future__ import annotations

import time
from typing import Annotated, Final

import msgspec
from aiohttp import web

from gateway import people_store as db
from gateway.auth import OPERATORS, PUBLIC, Role
from gateway.errors import ApiError, Code
from gateway.inputs import Text
from gateway.ratelimit import TokenBuckets
from gateway.routes import Call, RouteTable
from gateway.schemas import Id
from gateway.sessions import CSRF_HEADER, SESSION_COOKIE, SESSIONS, same_token

__all__ = ["routes"]

routes = RouteTable()


Phone = Annotated[str, msgspec.Meta(pattern=r"\A\+?[0-9]{6,15}\Z", description="digits, optional leading +")]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=128)]
DisplayName = Annotated[Text, msgspec.Meta(min_length=1, max_length=100)]
Token = Annotated[str, msgspec.Meta(min_length=16, max_length=128, pattern=r"\A[A-Za-z0-9_\-]+\Z")]


# -- request and response bodies ------------------------------------------------------------------------


class ParticipantPath(msgspec.Struct, forbid_unknown_fields=True):
    participant_id: Id


class PersonPath(msgspec.Struct, forbid_unknown_fields=True):
    person_id: Id


class InvitationView(msgspec.Struct, frozen=True):
    participant_id: int
    invitation_token: str
    path: str  # open it on the exchange's address: the token stays in the fragment, never in a log
    expires_at_ms: int


class AcceptInvitation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: Token
    phone: Phone
    display_name: DisplayName
    password: Password


class SignIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    phone: Phone
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class PersonView(msgspec.Struct, frozen=True):
    person_id: int
    participant_id: int
    role: Role
    phone: str
    display_name: str
    locked: bool
    revoked: bool


class SessionView(msgspec.Struct, frozen=True):
    person_id: int
    participant_id: int
    role: Role
    display_name: str
    csrf_token: str
    expires_at_ms: int


class ParticipantRow(msgspec.Struct, frozen=True):
    participant_id: int
    role: Role
    name: str


def _person_view(p: db.PersonRecord) -> PersonView:
    return PersonView(p.person_id, p.participant_id, p.role, p.phone, p.display_name, p.locked, p.revoked)


# -- routes ------------------------------------------------------------------------------------------------


@routes.get("/v1/admin/participants", roles=OPERATORS, response=list[ParticipantRow])
async def list_participants(call: Call) -> list[ParticipantRow]:
    """Every participant (newest first, at most 1,000): whom to verify, invite or look up."""
    rows = await call.pool.fetch("SELECT participant_id, role, name FROM participants"
                                 " ORDER BY participant_id DESC LIMIT 1000")
    return [ParticipantRow(r["participant_id"], Role(r["role"]), r["name"]) for r in rows]


@routes.post("/v1/admin/participants/{participant_id}/invitations", roles=OPERATORS, params=ParticipantPath,
             response=InvitationView, status=201, errors=(404,))
async def create_invitation(call: Call, params: ParticipantPath) -> InvitationView:
    """Create a one-time invitation for a person to sign in as this participant (expires)."""
    created = await db.create_invitation(call.pool, params.participant_id, call.principal.participant_id,
                                         call.app[SESSIONS].policy.invitation_ttl_s)
    if created is None:
        raise ApiError(404, Code.NOT_FOUND, f"no participant {params.participant_id}")
    token, expires_ms = created
    return InvitationView(params.participant_id, token, f"/#/invite/{token}", expires_ms)


@routes.get("/v1/admin/participants/{participant_id}/people", roles=OPERATORS, params=ParticipantPath,
            response=list[PersonView])
async def participant_people(call: Call, params: ParticipantPath) -> list[PersonView]:
    """The people who sign in for this participant."""
    return [_person_view(p) for p in await db.list_people(call.pool, params.participant_id)]


@routes.post("/v1/admin/people/{person_id}/unlock", roles=OPERATORS, params=PersonPath, status=204,
             errors=(404,))
async def unlock_person(call: Call, params: PersonPath) -> None:
    """Lift a sign-in lockout."""
    if not await db.unlock_person(call.pool, params.person_id):
        raise ApiError(404, Code.NOT_FOUND, f"no person {params.person_id}")


@routes.post("/v1/admin/people/{person_id}/revoke", roles=OPERATORS, params=PersonPath, status=204,
             errors=(404,))
async def revoke_person(call: Call, params: PersonPath) -> None:
    """Revoke a person: no more sign-ins, and every session of theirs ends now."""
    if not await db.revoke_person(call.pool, params.person_id):
        raise ApiError(404, Code.NOT_FOUND, f"no person {params.person_id}")
    call.app[SESSIONS].forget_person(params.person_id)


@routes.post("/v1/invitations/accept", roles=PUBLIC, body=AcceptInvitation, response=PersonView, status=201,
             errors=(404, 409, 410, 429))
async def accept_invitation(call: Call, body: AcceptInvitation) -> PersonView:
    """Use an invitation: set the person's phone number, name and password."""
    _take(call.app[SESSIONS].by_address, _address(call.request))
    salt, password_hash = await db.hash_password(body.password)
    try:
        person = await db.accept_invitation(call.pool, body.token, body.phone, body.display_name, salt,
                                            password_hash)
    except db.InvitationError as exc:
        status = {"unknown_invitation": 404, "phone_taken": 409}.get(exc.code, 410)
        raise ApiError(status, exc.code, _INVITATION_MESSAGES[exc.code]) from None
    return _person_view(person)


_INVITATION_MESSAGES: Final = {
    "unknown_invitation": "no such invitation",
    "invitation_used": "this invitation was already used",
    "invitation_expired": "this invitation has expired: ask the market for a new one",
    "phone_taken": "this phone number already signs in: use another, or sign in",
}


@routes.post("/v1/sessions", roles=PUBLIC, body=SignIn, response=SessionView, status=201, errors=(401, 423, 429))
async def sign_in(call: Call, body: SignIn) -> web.Response:
    """Sign in with phone number and password; sets the session cookie."""
    sessions = call.app[SESSIONS]
    _take(sessions.by_address, _address(call.request))
    _take(sessions.by_phone, body.phone)
    found = await db.person_by_phone(call.pool, body.phone)
    person, salt, expected = found if found is not None else (None, None, None)
    ok = await db.password_matches(body.password, salt, expected)
    if person is not None and not person.revoked and not person.locked:
        locked_now = await db.record_signin(call.pool, person.person_id, ok, sessions.policy.max_failures)
        person = msgspec.structs.replace(person, locked=locked_now)
    if not ok or person is None or person.revoked:
        # One answer for an unknown phone, a wrong password and a locked person who got it wrong, after
        # the same scrypt work: a stranger learns nothing about which phone numbers sign in here.
        raise ApiError(401, "bad_credentials", "wrong phone number or password")
    if person.locked:  # only someone who knows the password learns that the person is locked
        raise ApiError(423, "locked", "too many wrong passwords: ask the market's operator to unlock you")
    session_id, csrf = await db.create_session(call.pool, person.person_id, sessions.policy.absolute_s)
    view = SessionView(person.person_id, person.participant_id, person.role, person.display_name, csrf,
                       int(time.time() * 1000) + sessions.policy.absolute_s * 1000)
    response = call.json(view, status=201)
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Strict", path="/",
                        secure=call.request.secure, max_age=sessions.policy.absolute_s)
    return response


@routes.get("/v1/session", roles=PUBLIC, response=SessionView, errors=(401,))
async def current_session(call: Call) -> SessionView:
    """The signed-in person and the CSRF token for their state-changing requests."""
    session_id = call.request.cookies.get(SESSION_COOKIE, "")
    record = await call.app[SESSIONS].session(call.request, session_id) if session_id else None
    if record is None:
        raise ApiError(401, "session_expired", "not signed in")
    return SessionView(record.person_id, record.participant_id, record.role, record.display_name,
                       record.csrf_token, record.expires_at_ms)


@routes.delete("/v1/session", roles=PUBLIC, status=204)
async def sign_out(call: Call) -> web.Response:
    """Sign out: the session ends and the cookie is cleared (needs the CSRF token)."""
    session_id = call.request.cookies.get(SESSION_COOKIE, "")
    sessions = call.app[SESSIONS]
    record = await sessions.session(call.request, session_id) if session_id else None
    if record is not None:
        if not same_token(call.request.headers.get(CSRF_HEADER, ""), record.csrf_token):
            raise ApiError(403, "csrf_failed", f"sign-out needs the session's {CSRF_HEADER}")
        await sessions.end(call.request, session_id)
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


def _take(buckets: TokenBuckets, key: str) -> None:
    wait_s = buckets.take(key)
    if wait_s:
        raise ApiError(429, Code.RATE_LIMITED, "too many sign-in attempts, retry later",
                       retry_after_s=TokenBuckets.retry_after_s(wait_s))
