"""Issue 11, item 1: a registration is one durable step with an idempotency reference.

`POST /v1/admin/participants` journals one `RegisterParticipant` carrying the profile, the
`registration_ref` and the first API key; the key's and the participant's rows commit in the same
transaction (gateway.store.RegistrationWriter). A repeat of the reference answers the same participant
and key (24 h), another profile under it is 409, and a failed commit leaves nothing. Real PostgreSQL,
the real server over sockets."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import asyncpg
import msgspec
import pytest

from exchange.commands import ParticipantRole, RegisterParticipant
from exchange.domain import RejectReason
from exchange.settlement.clearing import Clearing
from gateway import admin, store
from gateway.auth import Role
from gateway.exchange_port import EXCHANGE
from gateway.state import POOL
from gateway.testing import Exchange, Trader, ok, running_exchange
from tests.settlement_support import OPERATOR, world

R = RejectReason
_refs = itertools.count(1)


def _ref(prefix: str = "reg") -> str:
    return f"{prefix}-{next(_refs)}"


def _farmer(ref: str, name: str, **more: Any) -> dict[str, Any]:
    return {"role": "farmer", "name": name, "id_number_masked": "5002**********1234",
            "bank_account": "6217000011115555", "bank_code": "102", "branch_code": "102653000555",
            "registration_ref": ref, **more}


async def _rows(ex: Exchange, name: str) -> list[tuple[int, str, str]]:
    """(participant id, api key, secret) of every database participant named `name`."""
    rows = await ex.app[POOL].fetch("SELECT p.participant_id, k.api_key, k.secret FROM participants p "
                                    "JOIN api_keys k USING (participant_id) WHERE p.name = $1", name)
    named = await ex.app[POOL].fetchval("SELECT count(*) FROM participants WHERE name = $1", name)
    assert named == len(rows)  # never a participant without its key
    return [(r["participant_id"], r["api_key"], r["secret"]) for r in rows]


# -- the core --------------------------------------------------------------------------------------------


def _keyed(pid: int, ref: str, name: str = "孙九", key: str = "hk_000000000001") -> RegisterParticipant:
    return RegisterParticipant(OPERATOR, 0, pid, ParticipantRole.FARMER, name, "5002**********1234",
                               "6217000011115555", "", "102", "102653000555", ref, key, "s" * 64)


def test_the_core_registers_a_reference_once_and_answers_a_repeat_with_what_it_made() -> None:
    x = world()
    x.ok(_keyed(501, "R1"))
    done = x.clearing.registrations["R1"]
    assert (done.participant_id, done.api_key) == (501, "hk_000000000001")
    assert x.clearing.bank_codes[501] == ("102", "102653000555")
    x.ok(_keyed(502, "R1", key="hk_000000000002"))  # a repeat with another id and key: the first stands
    assert 502 not in x.clearing.participants and x.clearing.registrations["R1"] == done
    x.reject(_keyed(503, "R1", name="孙十"), R.DUPLICATE_REFERENCE)
    for bad in (_keyed(504, "R2", key="short"), msgspec.structs.replace(_keyed(504, "R2"), api_secret="x"),
                _keyed(501, "R2"), _keyed(504, "R" * 65)):
        x.reject(bad, R.INVALID_PARTICIPANT)
    assert 504 not in x.clearing.participants and "R2" not in x.clearing.registrations
    restored = Clearing.restore(x.clearing.snapshot())
    assert restored.registrations == x.clearing.registrations and restored.state_hash() == x.clearing.state_hash()


# -- over HTTP ------------------------------------------------------------------------------------------


async def test_a_repeated_registration_ref_returns_the_same_participant_and_key(ex: Exchange) -> None:
    ref = _ref()
    first = ok(await ex.operator.post("/v1/admin/participants", json=_farmer(ref, "周一")), 201)
    again = ok(await ex.operator.post("/v1/admin/participants", json=_farmer(ref, "周一")), 201)
    assert again == first
    assert await _rows(ex, "周一") == [(first["participant_id"], first["api_key"], first["api_secret"])]
    # the reference is kept for ever, once (the clearing forgets it after the retention window)
    assert await ex.app[POOL].fetchval("SELECT count(*) FROM settlement_refs WHERE kind = $1 AND ref = $2",
                                       store.REF_REGISTRATION, ref) == 1
    trader = Trader(ex.url, first["api_key"], first["api_secret"], session=ex.session)
    profile = ok(await trader.get("/v1/profile"))  # the key works, and the core has the whole profile
    assert (profile["participant_id"], profile["name"], profile["bank_account"], profile["branch_code"]) == (
        first["participant_id"], "周一", "****5555", "102653000555")

    other = await ex.operator.post("/v1/admin/participants", json=_farmer(ref, "周二"))
    assert (other.status, other.json()["code"]) == (409, "duplicate_reference")
    assert await _rows(ex, "周二") == []

    without = [ok(await ex.operator.post("/v1/admin/participants", json={"role": "buyer", "name": "吴三"}), 201)
               for _ in range(2)]  # no reference: two registrations, each whole
    assert len({w["participant_id"] for w in without}) == 2 and len(await _rows(ex, "吴三")) == 2


async def test_a_repeat_after_24_hours_is_refused_without_the_key(ex: Exchange, monkeypatch: Any) -> None:
    ref = _ref()
    first = ok(await ex.operator.post("/v1/admin/participants", json=_farmer(ref, "郑四")), 201)
    monkeypatch.setattr(admin, "REGISTRATION_REPLAY_S", 0)
    late = await ex.operator.post("/v1/admin/participants", json=_farmer(ref, "郑四"))
    assert (late.status, late.json()["code"]) == (409, "registration_expired")
    assert str(first["participant_id"]) in late.json()["message"] and first["api_secret"] not in late.body.decode()
    assert len(await _rows(ex, "郑四")) == 1


async def test_a_registration_whose_commit_fails_leaves_nothing_and_its_retry_makes_it_whole(
        _test_databases: Any) -> None:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn) as fresh:
            await _commit_fails_then_retry(fresh)
    finally:
        await _test_databases.drop(dsn)


async def _until(check: Any, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached")


async def _commit_fails_then_retry(ex: Exchange) -> None:
    sequencer, ref = ex.app[EXCHANGE].sequencer, _ref()
    blocker = await asyncpg.connect(sequencer.dsn)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE journal IN ACCESS EXCLUSIVE MODE")  # the writer's COPY waits
            pending = asyncio.create_task(ex.operator.post("/v1/admin/participants", json=_farmer(ref, "王五五")))
            await _until(lambda: ref in sequencer.core.clearing.registrations)  # applied, not durable
            made = sequencer.core.clearing.registrations[ref].participant_id
            killer = await asyncpg.connect(sequencer.dsn)
            await killer.execute("SELECT pg_terminate_backend($1)", sequencer.writer_backend_pid)
            await killer.close()
        reply = await pending
        assert (reply.status, reply.json()["code"]) == (503, "unavailable")
    finally:
        await blocker.close()
    await _until(lambda: sequencer.state.value == "running")
    # Nothing of it anywhere: not in the core, not in the tables.
    clearing = sequencer.core.clearing
    assert ref not in clearing.registrations and made not in clearing.participants
    assert await _rows(ex, "王五五") == []
    # The client retries with the same reference: the whole registration, once.
    first = ok(await ex.operator.post("/v1/admin/participants", json=_farmer(ref, "王五五")), 201)
    assert ok(await ex.operator.post("/v1/admin/participants", json=_farmer(ref, "王五五")), 201) == first
    assert await _rows(ex, "王五五") == [(first["participant_id"], first["api_key"], first["api_secret"])]
    assert clearing is sequencer.core.clearing and clearing.participants[first["participant_id"]].name == "王五五"
    trader = Trader(ex.url, first["api_key"], first["api_secret"], session=ex.session)
    assert ok(await trader.get("/v1/profile"))["bank_code"] == "102"


@pytest.mark.parametrize("role", [Role.BUYER])
async def test_a_registration_survives_a_restart_whole(_test_databases: Any, role: Role) -> None:
    dsn = await _test_databases.create(migrated=True)
    try:
        ref = _ref()
        async with running_exchange(dsn) as first_run:
            made = ok(await first_run.operator.post("/v1/admin/participants", json={
                "role": role.value, "name": "冯六", "registration_ref": ref}), 201)
        async with running_exchange(dsn) as second_run:
            again = ok(await second_run.operator.post("/v1/admin/participants", json={
                "role": role.value, "name": "冯六", "registration_ref": ref}), 201)
            assert again == made and len(await _rows(second_run, "冯六")) == 1
    finally:
        await _test_databases.drop(dsn)
