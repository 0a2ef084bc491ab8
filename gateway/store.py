"""Participants and API keys in PostgreSQL (tables from `exchange/migrations/0003_gateway.sql`), and the
payout files as sent (`0010_payout_files.sql`: `store_payout_file`, `load_payout_file`).

A registration through the API is one journaled command (`RegisterParticipant` with its
`registration_ref`, first API key and secret): `RegistrationWriter`, the sequencer's `extra_writes`,
writes the participant's and the key's rows in the transaction that journals the command (with the
batch's ledger rows), so a crash or a failed commit leaves the whole registration or nothing, in the
core and in these tables alike. The id comes from the participants table's identity
(`next_participant_id`) before the command, so it never collides with ids the database assigns.
`register_participant` (the demo's bootstrap participants), `issue_key`, `revoke_key` and
`ensure_operator_key` write directly. Secrets and keys are generated here with `secrets`.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable
from typing import Any, Final

import asyncpg
import msgspec

from exchange.commands import RegisterParticipant
from exchange.settlement.pgstore import LedgerWriter
from gateway.auth import KeyRecord, Role

__all__ = [
    "IssuedKey",
    "RegistrationWriter",
    "ensure_operator_key",
    "issue_key",
    "load_key",
    "load_payout_file",
    "load_secret",
    "new_key_pair",
    "next_participant_id",
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


async def next_participant_id(pool: asyncpg.Pool) -> int:
    """A new participant id from the participants table's identity (never reused, gaps allowed)."""
    participant_id: int = await pool.fetchval(
        "SELECT nextval(pg_get_serial_sequence('participants', 'participant_id'))")
    return participant_id


async def load_secret(pool: asyncpg.Pool, api_key: str) -> str | None:
    secret: str | None = await pool.fetchval("SELECT secret FROM api_keys WHERE api_key = $1", api_key)
    return secret


REF_REGISTRATION: Final = 5  # a settlement_refs kind (migration 0021): a registration_ref, owner 0

_Registrations = tuple[list[tuple[int, str, str]], list[tuple[str, int, str]], list[tuple[int, int, str, int, int]]]


class RegistrationWriter(LedgerWriter):
    """The sequencer's `extra_writes`: the batch's ledger rows (`LedgerWriter`), then the participant and
    API key rows of every registration the batch made (`RegisterParticipant` with a key, that the
    clearing recorded under its reference with that key: not a rejected one, nor a repeat) and its
    reference's `settlement_refs` row (kind `REF_REGISTRATION`: the clearing forgets a registration
    after the retention window, this row does not), all in the transaction that journals the batch."""

    def __init__(self) -> None:
        super().__init__()
        self._registrations: _Registrations | None = None

    def __call__(self, conn: asyncpg.Connection, batch: object) -> Awaitable[None]:
        # taken now, synchronously, by the _write that LedgerWriter.__call__ calls
        self._registrations = self._registration_rows(batch)
        return super().__call__(conn, batch)

    def _registration_rows(self, batch: object) -> _Registrations | None:
        commands = batch.commands  # type: ignore[attr-defined]
        if RegisterParticipant not in map(type, commands):  # (C speed: no bytecode per command)
            return None
        clearing = self._sequencer.core.clearing  # type: ignore[union-attr]
        participants, keys, refs = [], [], []
        for seq, command in enumerate(commands, batch.first_seq):  # type: ignore[attr-defined]
            if command.__class__ is RegisterParticipant and command.api_key:
                done = clearing.registrations.get(command.registration_ref)
                if done is not None and done.api_key == command.api_key:
                    who = clearing.participants[command.subject_id]
                    participants.append((command.subject_id, who.role.name.lower(), who.name))
                    keys.append((command.api_key, command.subject_id, command.api_secret))
                    refs.append((REF_REGISTRATION, 0, command.registration_ref, seq, command.ts_ns))
        return (participants, keys, refs) if participants else None

    def _write(self, conn: asyncpg.Connection, accounts: list[tuple[int, ...]], postings: bytes,  # type: ignore[override]
               rows: int, *more: Any) -> Awaitable[None]:
        """`more`: what else LedgerWriter writes (references, history), passed on as it is."""
        registrations, self._registrations = self._registrations, None
        return self._write_all(conn, accounts, postings, rows, registrations, more)

    async def _write_all(self, conn: asyncpg.Connection, accounts: list[tuple[int, ...]], postings: bytes, rows: int,
                         registrations: _Registrations | None,
                         more: tuple[Any, ...] = ()) -> None:
        await LedgerWriter._write(self, conn, accounts, postings, rows, *more)
        if registrations is not None:
            participants, keys, refs = registrations
            await conn.executemany("INSERT INTO participants (participant_id, role, name) VALUES ($1, $2, $3)",
                                   participants)
            await conn.executemany("INSERT INTO api_keys (api_key, participant_id, secret) VALUES ($1, $2, $3)",
                                   keys)
            await conn.executemany("INSERT INTO settlement_refs (kind, owner_id, ref, seq, ts_ns) "
                                   "VALUES ($1, $2, $3, $4, $5)", refs)
