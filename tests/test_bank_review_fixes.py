"""Review fixes of the bank payout file: a payout keeps the bank and branch codes of the account it was
made to; a profile update leaving the codes out keeps them; the payer must be configured for a real
market; a file sent before storage is not served as the original; archive files are private."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from benchmarks.matching import exchange_setup_commands
from exchange import store
from exchange.commands import (
    BankConfirmation,
    ImportBankConfirmations,
    MarkPayoutsSent,
    RetryPayout,
    RunPayouts,
    UpdateParticipant,
    VerifyBankAccount,
)
from exchange.core import new_exchange
from exchange.events import PayoutRunCreated
from exchange.sequencer import Sequencer
from exchange.settlement.bankfiles import Payer, bank_file_csv, payouts_to_send, read_payout_file
from exchange.settlement.clearing import SYSTEM_ID
from gateway.auth import Role
from gateway.config import DEMO_PAYER, ConfigError, GatewayConfig
from gateway.exchange_port import EXCHANGE
from gateway.settlement import SHA256_HEADER
from gateway.state import POOL
from gateway.testing import Exchange, ok, running_exchange
from tests.conftest import FreshDatabase
from tests.settlement_support import BUYER, FARMER, HOUR_NS, OPERATOR, world
from tests.test_bank_files import _pending_payout
from tests.test_journal_partitions import DAY, START_NS, Clock, _submit


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.05) as exchange:
            await exchange.list_instrument("RC-BF", dispute_window_ms=0)  # _pending_payout's
            yield exchange
    finally:
        await _test_databases.drop(dsn)


WINDOW_NS = 48 * HOUR_NS  # the dispute window of settlement_support's instruments
PAYER = Payer(name="重庆荣昌生猪交易市场", account="3100000000000000001", bank_code="102",
              branch_code="102653000019")


def _file_detail(x: object) -> dict[str, str]:
    clearing = x.clearing  # type: ignore[attr-defined]
    content = bank_file_csv(clearing, payouts_to_send(clearing), file_ref="F", value_day=20_458, payer=PAYER)
    [detail] = read_payout_file(content).details
    return detail


def test_a_pending_payout_goes_out_with_the_codes_of_the_account_it_was_made_to() -> None:
    x = world()
    old_account = x.clearing.participants[FARMER].bank_account
    x.ok(UpdateParticipant(FARMER, 0, FARMER, "李四", old_account, "102", "102653000123"))
    x.ok(VerifyBankAccount(OPERATOR, 0, FARMER, old_account))
    x.deposit(BUYER, 10_000_000)
    trade = x.trade(BUYER, FARMER, 2800, 10)
    x.weigh_in(trade.trade_id, 10, 1_150_000)
    x.tick(WINDOW_NS)
    (payout_id,) = x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "R1")))[0].payout_ids
    # After the run the payee moves to another bank: the pending payout still goes to the old account,
    # so it must carry the old account's codes, not the new profile's.
    x.ok(UpdateParticipant(FARMER, 0, FARMER, "李四", "6228480000000001", "103", "103653000001"))
    detail = _file_detail(x)
    assert (detail["payee_account"], detail["payee_bank_code"], detail["payee_branch_code"]) == (
        old_account, "102", "102653000123")
    x.restore_from_snapshot()  # the codes are state: they survive a snapshot
    assert (_file_detail(x)["payee_bank_code"], _file_detail(x)["payee_branch_code"]) == ("102", "102653000123")

    # A retry goes to the (verified) current account, with its codes.
    x.ok(MarkPayoutsSent(OPERATOR, 0, "F1", ((payout_id, 1),)))
    x.ok(ImportBankConfirmations(OPERATOR, 0, "C1", (BankConfirmation(payout_id, 1, False, "B1", "closed"),)))
    x.ok(VerifyBankAccount(OPERATOR, 0, FARMER, "6228480000000001"))
    x.ok(RetryPayout(OPERATOR, 0, payout_id))
    detail = _file_detail(x)
    assert (detail["attempt"], detail["payee_account"], detail["payee_bank_code"], detail["payee_branch_code"]) == (
        "2", "6228480000000001", "103", "103653000001")


async def test_a_profile_update_without_the_codes_keeps_them_and_the_verification(ex: Exchange) -> None:
    account = "6217000011115555"
    farmer = await ex.register(Role.FARMER, "孙九", bank_account=account, bank_code="102",
                               branch_code="102653000123")
    ok(await ex.operator.post(f"/v1/admin/participants/{farmer.participant_id}/bank-account/verify",
                               json={"bank_account": account}))
    # An old client knows only name and account: the codes stay, and nothing changed needs verifying.
    view = ok(await farmer.request("PATCH", "/v1/profile", json={"name": "孙九", "bank_account": account}))
    assert (view["bank_code"], view["branch_code"], view["bank_verified"]) == ("102", "102653000123", True)
    view = ok(await farmer.request("PATCH", "/v1/profile", json={"name": "孙九", "bank_account": account,
                                                                  "bank_code": None, "branch_code": None}))
    assert (view["bank_code"], view["branch_code"], view["bank_verified"]) == ("102", "102653000123", True)
    # One code given, the other kept: checked together.
    reply = await farmer.request("PATCH", "/v1/profile", json={"name": "孙九", "bank_account": account,
                                                               "bank_code": "103"})
    assert (reply.status, reply.json()["code"]) == (422, "invalid_participant")
    view = ok(await farmer.request("PATCH", "/v1/profile", json={"name": "孙九", "bank_account": account,
                                                                  "branch_code": ""}))
    assert (view["bank_code"], view["branch_code"], view["bank_verified"]) == ("102", "", False)
    # An explicit "" clears.
    view = ok(await farmer.request("PATCH", "/v1/profile", json={"name": "孙九", "bank_account": account,
                                                                  "bank_code": ""}))
    assert (view["bank_code"], view["branch_code"]) == ("", "")


async def test_a_file_sent_before_storage_is_rendered_again_without_a_digest(ex: Exchange) -> None:
    _, payout_id = await _pending_payout(ex, "周十", "6217000011116666")
    # What a gateway older than stored files journaled: the payouts sent, no digest.
    await ex.app[EXCHANGE].submit(MarkPayoutsSent(SYSTEM_ID, 0, "OLD-1", ((payout_id, 1),)))
    for reply in (await ex.operator.get("/v1/payout-files/OLD-1"),
                  await ex.operator.post("/v1/payout-files", json={"file_ref": "OLD-1"})):
        assert reply.status in (200, 201), (reply.status, reply.body)
        assert SHA256_HEADER not in reply.headers  # not the bytes that were sent
        [detail] = read_payout_file(reply.body).details
        assert (detail["payout_id"], detail["payee_account"]) == (str(payout_id), "6217000011116666")


def test_a_real_market_has_no_payer_unless_configured_and_the_demo_has_its_own() -> None:
    assert GatewayConfig().payer() is None
    assert GatewayConfig(demo=True).payer() == DEMO_PAYER
    configured = {"HOGX_PAYER_NAME": "荣昌交易所", "HOGX_PAYER_ACCOUNT": "31000001", "HOGX_PAYER_BANK_CODE": "103",
                  "HOGX_PAYER_BRANCH_CODE": "103653000001"}
    for demo in (False, True):
        assert GatewayConfig.from_env(configured, demo=demo).payer() == ("荣昌交易所", "31000001", "103",
                                                                         "103653000001")
    with pytest.raises(ConfigError, match="all four, or none"):
        GatewayConfig.from_env({"HOGX_PAYER_ACCOUNT": "31000001"})


async def test_no_payout_file_without_a_configured_payer(_test_databases: Any) -> None:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.05, payer_name="", payer_account="", payer_bank_code="",
                                    payer_branch_code="") as bare:
            await bare.list_instrument("RC-BF", dispute_window_ms=0)
            _, payout_id = await _pending_payout(bare, "吴一", "6217000011117777")
            reply = await bare.operator.post("/v1/payout-files", json={"file_ref": "NO-PAYER"})
            assert (reply.status, reply.json()["code"]) == (422, "payer_not_configured")
            payout = ok(await bare.operator.get(f"/v1/payouts/{payout_id}"))
            assert payout["state"] == "PENDING"  # nothing marked sent, nothing stored
            assert await bare.app[POOL].fetchval("SELECT count(*) FROM payout_files") == 0
    finally:
        await _test_databases.drop(dsn)


async def test_journal_archive_files_are_the_owners_alone(fresh_database_url: FreshDatabase, tmp_path: Path) -> None:
    dsn = await fresh_database_url()
    clock = Clock()
    for day in (0, 1):  # day 0's partition, then a snapshot (the clean stop) on day 1
        clock.now_ns = max(clock.now_ns, START_NS + day * DAY + 3_600 * 10**9)
        sequencer = Sequencer(dsn, core_type=new_exchange, clock_ns=clock, snapshot_every=10**9)
        await sequencer.start()
        await _submit(sequencer, exchange_setup_commands()[:5] if day == 0 else exchange_setup_commands()[5:6])
        await sequencer.stop()
    directory = tmp_path / "archive"
    # a stale part an interrupted run left readable, and a umask that would leave new files readable
    directory.mkdir()
    (directory / "journal_20260101.copy.part").write_bytes(b"stale")
    (directory / "journal_20260101.copy.part").chmod(0o644)
    umask = os.umask(0o022)
    conn = await asyncpg.connect(dsn)
    try:
        # as if the projections had folded the journal (only the files' modes matter here)
        await conn.execute("UPDATE projections SET seq = (SELECT max(seq) FROM journal)")
        archived = await store.archive_journal(conn, START_NS + DAY, directory)
    finally:
        await conn.close()
        os.umask(umask)
    assert [a.name for a in archived] == ["journal_20260101"]
    files = sorted(p.name for p in directory.iterdir())
    assert files == ["journal_20260101.copy", "journal_20260101.json"]
    assert [stat.S_IMODE((directory / f).stat().st_mode) for f in files] == [0o600, 0o600]
