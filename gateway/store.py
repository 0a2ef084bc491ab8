"""Participants and API keys in PostgreSQL (tables from `exchange/migrations/0003_gateway.sql`), and the
payout files as sent (`0010_payout_files.sql`: `store_payout_file`, `load_payout_file`).

Every write goes through one function here (`register_participant`, `issue_key`, `revoke_key`,
`ensure_operator_key`) so that registration can later be rerouted through the sequencer as a journaled
command without touching the handlers. Secrets and keys are generated here with `secrets`.
"""

from __future__ import annotations

import secrets

import asyncpg
import msgspec

from gateway.auth import KeyRecord, Role

__all__ = [
    "IssuedKey",
    "ensure_operator_key",
    "issue_key",
    "load_key",
    "load_payout_file",
    "new_key_pair",
    "register_participant",
    "revoke_key",
    "store_payout_file",
]


class IssuedKey(msgspec.Struct, frozen=True):
    """A freshly created key; the only moment its secret leaves the server."""

    participant_id: int
    role: Role
    api_key: str
    api_secret: str


def new_key_pair() -> tuple[str, str]:
    """A random API key (public identifier) and secret (256 bits)."""
    return "hk_" + secrets.token_hex(12), secrets.token_hex(32)


async def register_participant(pool: asyncpg.Pool, role: Role, name: str) -> IssuedKey:
    """Create a participant with its first API key, atomically."""
    api_key, api_secret = new_key_pair()
    async with pool.acquire() as conn, conn.transaction():
        participant_id = await conn.fetchval(
            "INSERT INTO participants (role, name) VALUES ($1, $2) RETURNING participant_id",
            role.value, name)
        await conn.execute(
            "INSERT INTO api_keys (api_key, participant_id, secret) VALUES ($1, $2, $3)",
            api_key, participant_id, api_secret)
    return IssuedKey(participant_id, role, api_key, api_secret)


async def issue_key(pool: asyncpg.Pool, participant_id: int) -> IssuedKey | None:
    """Another key for an existing participant; None if there is no such participant."""
    api_key, api_secret = new_key_pair()
    async with pool.acquire() as conn, conn.transaction():
        role = await conn.fetchval(
            "SELECT role FROM participants WHERE participant_id = $1", participant_id)
        if role is None:
            return None
        await conn.execute(
            "INSERT INTO api_keys (api_key, participant_id, secret) VALUES ($1, $2, $3)",
            api_key, participant_id, api_secret)
    return IssuedKey(participant_id, Role(role), api_key, api_secret)


async def revoke_key(pool: asyncpg.Pool, api_key: str) -> bool:
    """Mark a key revoked (idempotent); False if the key does not exist."""
    status = await pool.execute(
        "UPDATE api_keys SET revoked = true, revoked_at = coalesce(revoked_at, now()) WHERE api_key = $1",
        api_key)
    return status != "UPDATE 0"


async def load_key(pool: asyncpg.Pool, api_key: str) -> KeyRecord | None:
    row = await pool.fetchrow(
        "SELECT k.participant_id, p.role, k.secret, k.revoked"
        " FROM api_keys k JOIN participants p USING (participant_id) WHERE k.api_key = $1",
        api_key)
    if row is None:
        return None
    return KeyRecord(api_key, row["participant_id"], Role(row["role"]), row["secret"], row["revoked"])


async def ensure_operator_key(pool: asyncpg.Pool, api_key: str, api_secret: str) -> bool:
    """Create the bootstrap operator and its key unless the key exists; True if it was created.

    An advisory lock makes two gateways starting at once create it only once. An existing key is left
    as it is (even if revoked or with another secret): the database, not the environment, is the truth.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('hogx.ensure_operator_key'))")
        if await conn.fetchval("SELECT 1 FROM api_keys WHERE api_key = $1", api_key):
            return False
        participant_id = await conn.fetchval(
            "INSERT INTO participants (role, name) VALUES ('operator', 'operator') RETURNING participant_id")
        await conn.execute(
            "INSERT INTO api_keys (api_key, participant_id, secret) VALUES ($1, $2, $3)",
            api_key, participant_id, api_secret)
    return True


async def store_payout_file(pool: asyncpg.Pool, file_ref: str, sha256: str, content: bytes) -> None:
    """Keep a rendered payout file before the command that sends it is journaled (idempotent)."""
    await pool.execute("INSERT INTO payout_files (file_ref, sha256, content) VALUES ($1, $2, $3) "
                       "ON CONFLICT (file_ref, sha256) DO NOTHING", file_ref, sha256, content)


async def load_payout_file(pool: asyncpg.Pool, file_ref: str, sha256: str) -> bytes | None:
    """The bytes of a payout file as sent, by the digest the clearing recorded for it."""
    content: bytes | None = await pool.fetchval(
        "SELECT content FROM payout_files WHERE file_ref = $1 AND sha256 = $2", file_ref, sha256)
    return content
