"""People, invitations and web sessions in PostgreSQL (migration 0018), and the secrets they rest on.

- Passwords: `hashlib.scrypt` (memory-hard, standard library) with a random 16-byte salt per person,
  n=2**14, r=8, p=1 (16 MiB, tens of ms): slow enough to make a stolen table expensive to crack,
  fast enough to run in a worker thread per sign-in. The parameters are part of the stored hash's
  meaning: change them only with a migration that re-hashes on next sign-in.
- Invitation tokens and session ids are 256-bit random strings given to the person once; only their
  SHA-256 is stored, so the tables alone let nobody sign in.

Every function takes a pool and does one thing in one transaction; the policy (what fails when, what
is rate limited) lives in `gateway.people`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets

import asyncpg
import msgspec

from gateway.auth import Role

__all__ = [
    "InvitationError",
    "PersonRecord",
    "SessionRecord",
    "accept_invitation",
    "create_invitation",
    "create_session",
    "end_session",
    "ensure_person",
    "hash_password",
    "list_people",
    "load_session",
    "new_secret",
    "password_matches",
    "person_by_phone",
    "record_signin",
    "revoke_person",
    "secret_hash",
    "touch_session",
    "unlock_person",
]

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _HASH_BYTES = 2**14, 8, 1, 32
# A fixed salt for the dummy hash computed when the phone is unknown, so that answer takes as long.
_DUMMY_SALT = b"hogx-no-person!!"


class InvitationError(Exception):
    """The invitation cannot be used: `code` says why (unknown, expired, used, phone_taken)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class PersonRecord(msgspec.Struct, frozen=True):
    person_id: int
    participant_id: int
    role: Role
    phone: str
    display_name: str
    failed_signins: int
    locked: bool
    revoked: bool


class SessionRecord(msgspec.Struct, frozen=True):
    person_id: int
    participant_id: int
    role: Role
    display_name: str
    csrf_token: str
    expires_at_ms: int  # absolute expiry
    last_seen_ms: int


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                          maxmem=64 * 1024 * 1024, dklen=_HASH_BYTES)


async def hash_password(password: str) -> tuple[bytes, bytes]:
    """(salt, hash) for a new password, computed off the event loop (the sequencer shares it)."""
    salt = secrets.token_bytes(16)
    return salt, await asyncio.to_thread(_scrypt, password, salt)


async def password_matches(password: str, salt: bytes | None, expected: bytes | None) -> bool:
    """Constant-time check; with no person (salt None) a dummy hash is computed all the same."""
    got = await asyncio.to_thread(_scrypt, password, salt if salt is not None else _DUMMY_SALT)
    return expected is not None and hmac.compare_digest(got, expected)


_PERSON_COLUMNS = ("p.person_id, p.participant_id, t.role, p.phone, p.display_name, p.failed_signins,"
                   " p.locked, p.revoked")


def _person(row: asyncpg.Record) -> PersonRecord:
    return PersonRecord(row["person_id"], row["participant_id"], Role(row["role"]), row["phone"],
                        row["display_name"], row["failed_signins"], row["locked"], row["revoked"])


async def create_invitation(pool: asyncpg.Pool, participant_id: int, created_by: int,
                            ttl_s: int) -> tuple[str, int] | None:
    """A new invitation token and its expiry (epoch ms); None when the participant does not exist."""
    token = new_secret()
    expires_ms = await pool.fetchval(
        "INSERT INTO invitations (token_hash, participant_id, created_by, expires_at)"
        " SELECT $1, participant_id, $3, now() + make_interval(secs => $4)"
        " FROM participants WHERE participant_id = $2"
        " RETURNING (extract(epoch FROM expires_at) * 1000)::bigint",
        secret_hash(token), participant_id, created_by, ttl_s)
    return None if expires_ms is None else (token, expires_ms)


async def accept_invitation(pool: asyncpg.Pool, token: str, phone: str, display_name: str,
                            salt: bytes, password_hash: bytes) -> PersonRecord:
    """Create the invited person, using the invitation up; `InvitationError` when it cannot be used."""
    async with pool.acquire() as conn, conn.transaction():
        invitation = await conn.fetchrow(
            "SELECT participant_id, expires_at < now() AS expired, used_by FROM invitations"
            " WHERE token_hash = $1 FOR UPDATE", secret_hash(token))
        if invitation is None:
            raise InvitationError("unknown_invitation")
        if invitation["used_by"] is not None:
            raise InvitationError("invitation_used")
        if invitation["expired"]:
            raise InvitationError("invitation_expired")
        # ON CONFLICT, not a look first: two invitations accepted at once with one phone must not race
        # into a unique violation (a 500).
        person_id = await conn.fetchval(
            "INSERT INTO people (participant_id, phone, display_name, password_salt, password_hash)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (phone) DO NOTHING RETURNING person_id",
            invitation["participant_id"], phone, display_name, salt, password_hash)
        if person_id is None:
            raise InvitationError("phone_taken")
        await conn.execute("UPDATE invitations SET used_by = $1 WHERE token_hash = $2",
                           person_id, secret_hash(token))
        row = await conn.fetchrow(f"SELECT {_PERSON_COLUMNS} FROM people p JOIN participants t"
                                  " USING (participant_id) WHERE p.person_id = $1", person_id)
    return _person(row)


async def ensure_person(pool: asyncpg.Pool, participant_id: int, phone: str, display_name: str,
                        salt: bytes, password_hash: bytes) -> bool:
    """Create a person unless the phone number already signs in; True if created (the demo market)."""
    status = await pool.execute(
        "INSERT INTO people (participant_id, phone, display_name, password_salt, password_hash)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (phone) DO NOTHING",
        participant_id, phone, display_name, salt, password_hash)
    return status != "INSERT 0 0"


async def person_by_phone(pool: asyncpg.Pool, phone: str) -> tuple[PersonRecord, bytes, bytes] | None:
    row = await pool.fetchrow(
        f"SELECT {_PERSON_COLUMNS}, p.password_salt, p.password_hash FROM people p"
        " JOIN participants t USING (participant_id) WHERE p.phone = $1", phone)
    return None if row is None else (_person(row), row["password_salt"], row["password_hash"])


async def record_signin(pool: asyncpg.Pool, person_id: int, ok: bool, max_failures: int) -> bool:
    """Count a failed sign-in (locking at `max_failures` in a row) or clear the count; True if locked."""
    if ok:
        await pool.execute("UPDATE people SET failed_signins = 0 WHERE person_id = $1", person_id)
        return False
    return bool(await pool.fetchval(
        "UPDATE people SET failed_signins = failed_signins + 1,"
        " locked = locked OR failed_signins + 1 >= $2 WHERE person_id = $1 RETURNING locked",
        person_id, max_failures))


async def list_people(pool: asyncpg.Pool, participant_id: int | None = None) -> list[PersonRecord]:
    rows = await pool.fetch(
        f"SELECT {_PERSON_COLUMNS} FROM people p JOIN participants t USING (participant_id)"
        " WHERE $1::bigint IS NULL OR p.participant_id = $1 ORDER BY p.person_id", participant_id)
    return [_person(row) for row in rows]


async def unlock_person(pool: asyncpg.Pool, person_id: int) -> bool:
    status = await pool.execute(
        "UPDATE people SET locked = false, failed_signins = 0 WHERE person_id = $1", person_id)
    return status != "UPDATE 0"


async def revoke_person(pool: asyncpg.Pool, person_id: int) -> bool:
    """The person may not sign in again, and every session of theirs ends now."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.execute("UPDATE people SET revoked = true WHERE person_id = $1", person_id)
        await conn.execute("UPDATE web_sessions SET ended_at = now() WHERE person_id = $1 AND ended_at IS NULL",
                           person_id)
    return status != "UPDATE 0"


async def create_session(pool: asyncpg.Pool, person_id: int, absolute_s: int) -> tuple[str, str]:
    """(session id, CSRF token) of a new session."""
    session_id, csrf_token = new_secret(), new_secret()
    await pool.execute(
        "INSERT INTO web_sessions (session_hash, person_id, csrf_token, expires_at)"
        " VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        secret_hash(session_id), person_id, csrf_token, absolute_s)
    return session_id, csrf_token


async def load_session(pool: asyncpg.Pool, session_id: str) -> SessionRecord | None:
    """The live session (not ended, not past its absolute expiry, its person not revoked), or None."""
    row = await pool.fetchrow(
        "SELECT s.person_id, p.participant_id, t.role, p.display_name, s.csrf_token,"
        " (extract(epoch FROM s.expires_at) * 1000)::bigint AS expires_ms,"
        " (extract(epoch FROM s.last_seen_at) * 1000)::bigint AS seen_ms"
        " FROM web_sessions s JOIN people p USING (person_id) JOIN participants t USING (participant_id)"
        " WHERE s.session_hash = $1 AND s.ended_at IS NULL AND s.expires_at > now() AND NOT p.revoked",
        secret_hash(session_id))
    if row is None:
        return None
    return SessionRecord(row["person_id"], row["participant_id"], Role(row["role"]), row["display_name"],
                         row["csrf_token"], row["expires_ms"], row["seen_ms"])


async def touch_session(pool: asyncpg.Pool, session_id: str) -> None:
    await pool.execute("UPDATE web_sessions SET last_seen_at = now() WHERE session_hash = $1",
                       secret_hash(session_id))


async def end_session(pool: asyncpg.Pool, session_id: str) -> None:
    await pool.execute("UPDATE web_sessions SET ended_at = now() WHERE session_hash = $1 AND ended_at IS NULL",
                       secret_hash(session_id))
