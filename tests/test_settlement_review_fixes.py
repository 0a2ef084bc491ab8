"""Review findings on settlement, each pinned by a test that failed before its fix.

1. Bank files: every number parsed from a file is bounded (a 25-digit payout id crashed the core when
   the clearing encoded it), csv module errors are bad files (422), and the clearing refuses ids out of
   the journal's integer range itself.
2. A withdrawn consent ends new holds on that financier's credit line (the buyer kept bidding on it),
   and the financier still sees and may reduce its own line and loans (it got 404).
3. A payout bank file is handed out only once the command marking its payouts sent is durable (a
   retried export and a download answered from the live core before the commit).
4. Nobody sees the other side's financing or poor-household status: not the counterparty, not the other
   side's financier (the buyer's financier saw the seller's subsidy and advance, the seller's financier
   who financed the buyer).
5. A weight discount at or above the trade price is never clamped to a payment of nothing: the weigh-in
   is refused, and `rules.band_clears_discounts` tells listing and reference-price validation whether a
   band allows such prices.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import msgspec
import pytest

from exchange.commands import (
    AmendOrder,
    BankConfirmation,
    ConfirmDeposit,
    FundsAccount,
    GrantAdvance,
    GrantCreditLine,
    ImportBankConfirmations,
    MarkPayoutsSent,
    ParticipantRole,
    RecordWeighIn,
    ReduceCreditLine,
    SetConsent,
)
from exchange.domain import RejectReason, Side
from exchange.events import Trade
from exchange.settlement import rules
from exchange.settlement.bankfiles import MAX_FILE_INT, parse_confirmations_csv, read_payout_file
from exchange.settlement.ledger import MAX_INT64, AccountCode
from exchange.settlement.rules import cst_day
from exchange.settlement.views import (
    BUYER_PRIVATE,
    SELLER_PRIVATE,
    SettlementReportRow,
    financier_portfolio,
    financier_view,
)
from gateway.auth import Role
from gateway.client import Reply
from gateway.config import GatewayConfig
from gateway.exchange_port import EXCHANGE
from gateway.settlement import MAX_CSV_CHARS, DepositImportRequest, parse_deposits_csv
from gateway.testing import LOT_CERT, Exchange, ok, running_exchange
from tests.factories import list_instrument, order
from tests.settlement_support import (
    BUYER,
    DAY_NS,
    FARMER,
    FINANCIER,
    OPERATOR,
    POOR_FARMER,
    accepted_order_id,
    dce_spec,
    piglet_spec,
    report,
    world,
)

R = RejectReason
_CONFIRMATIONS = "payout_id,attempt,status,bank_ref,reason\n"
_DEPOSITS = "deposit_ref,owner_id,account,amount_fen\n"


def _error(reply: Reply) -> tuple[int, str, str]:
    body = reply.json()
    return reply.status, body["code"], body["message"]


# -- 1. bank files and integer bounds -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ("9" * 25 + ",1,OK,B1,", "line 2: payout_id must be a whole number from 1 to 9007199254740991"),
        (f"{MAX_FILE_INT + 1},1,OK,B1,", "line 2: payout_id must be a whole number"),
        ("0,1,OK,B1,", "line 2: payout_id must be a whole number"),
        ("7," + "9" * 5000 + ",OK,B1,", "line 2: attempt must be a whole number"),
        ("\u0661,1,OK,B1,", "line 2: payout_id must be a whole number"),  # an Arabic-Indic one: not ASCII
        ("7,-1,OK,B1,", "line 2: attempt must be a whole number"),
    ],
)
def test_confirmation_numbers_out_of_range_are_a_bad_file(row: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_confirmations_csv((_CONFIRMATIONS + row + "\n").encode())


def test_the_largest_file_number_is_taken_exactly() -> None:
    [row] = parse_confirmations_csv(f"{_CONFIRMATIONS}{MAX_FILE_INT},{MAX_FILE_INT},OK,B1,\n".encode())
    assert (row.payout_id, row.attempt, row.ok) == (MAX_FILE_INT, MAX_FILE_INT, True)


def test_csv_module_errors_are_bad_files_not_crashes() -> None:
    """A field over the csv module's 131,072 characters raises `_csv.Error`, not `ValueError`."""
    big = "x" * 200_000
    with pytest.raises(ValueError, match="line 2: field larger than field limit"):
        parse_confirmations_csv(f"{_CONFIRMATIONS}1,1,OK,{big},\n".encode())
    with pytest.raises(ValueError, match="line 2: field larger than field limit"):
        parse_deposits_csv(f"{_DEPOSITS}{big},1,trading_cash,1\n")
    with pytest.raises(ValueError, match="line 2: amount_fen must be a whole number"):
        parse_deposits_csv(f"{_DEPOSITS}d1,1,trading_cash,{'9' * 5000}\n")
    with pytest.raises(ValueError, match="line 2: owner_id must be a whole number from 0"):
        parse_deposits_csv(f"{_DEPOSITS}d1,{'9' * 30},trading_cash,1\n")
    [deposit] = parse_deposits_csv(f"{_DEPOSITS}d1,0,poverty_subsidy_fund,5\n")
    assert (deposit.owner_id, deposit.amount_fen) == (0, 5)


@pytest.mark.parametrize("bad", [10**25, 2**64 + 5, MAX_INT64 + 1, 0, -1])
def test_clearing_refuses_ids_beyond_the_journal_range_before_encoding(bad: int) -> None:
    x = world()
    for command in (ImportBankConfirmations(OPERATOR, 0, "C1", (BankConfirmation(bad, 1, True, "B1"),)),
                    ImportBankConfirmations(OPERATOR, 0, "C2", (BankConfirmation(1, bad, False, "B1"),)),
                    MarkPayoutsSent(OPERATOR, 0, "F1", ((bad, 1),)),
                    MarkPayoutsSent(OPERATOR, 0, "F2", ((1, bad),))):
        rejected = x.reject(command, R.INVALID_AMOUNT)
        msgspec.msgpack.encode(rejected)  # what the journal stores of it encodes
    assert x.clearing.bank_imports == {} and x.clearing.sent_files == {}


def test_clearing_refuses_amounts_and_weights_beyond_int64() -> None:
    x = world()
    x.deposit(BUYER, 10**10)
    x.reject(ConfirmDeposit(OPERATOR, 0, "D-BIG", BUYER, FundsAccount.TRADING_CASH, MAX_INT64 + 1),
             R.INVALID_AMOUNT)  # was a ClearingInvariantError: the ledger refused the transfer
    trade = x.trade(BUYER, FARMER, 2800, 5)
    x.reject(RecordWeighIn(FARMER, 0, trade.trade_id, 5, 2**64 + 5, "CQ-1", True), R.INVALID_DELIVERY)
    x.reject(RecordWeighIn(FARMER, 0, trade.trade_id, 5, MAX_INT64 + 1, "CQ-1", True), R.INVALID_DELIVERY)
    assert x.clearing.deposits.keys() == {"BANK-1"}


async def test_bank_files_with_huge_numbers_are_422_and_the_exchange_carries_on(ex: Exchange) -> None:
    op = ex.operator
    status, code, message = _error(await op.post("/v1/payout-confirmations", json={
        "file_ref": "C-HUGE", "csv": f"{_CONFIRMATIONS}{'9' * 25},1,OK,B1,\n"}))
    assert (status, code) == (422, "invalid_bank_file") and "payout_id must be a whole number" in message
    status, code, message = _error(await op.post("/v1/deposit-imports", json={
        "csv": f"{_DEPOSITS}d-huge,1,trading_cash,{'9' * 25}\n"}))
    assert (status, code) == (422, "invalid_bank_file") and "amount_fen must be a whole number" in message
    assert ex.app[EXCHANGE].sequencer.recoveries == 0  # no batch failed
    buyer = await ex.register(Role.BUYER)
    assert ok(await buyer.get("/v1/balances"))["participant_id"] == buyer.participant_id


def test_a_file_is_at_most_as_long_as_a_request_body() -> None:
    """The text was documented as up to 1,000,000 characters, which no request body could carry."""
    assert GatewayConfig().max_body_bytes == MAX_CSV_CHARS
    msgspec.convert({"csv": "x" * MAX_CSV_CHARS}, DepositImportRequest)
    with pytest.raises(msgspec.ValidationError, match="length <= 65536"):
        msgspec.convert({"csv": "x" * (MAX_CSV_CHARS + 1)}, DepositImportRequest)


# -- 2. consent and credit lines ------------------------------------------------------------------------

HOLD_2800 = 392_000  # a head at 2800 fen/kg holds ceil(140 kg x 2800)


def _buyer_on_a_line() -> tuple[Any, int]:
    """BUYER without cash, FINANCIER's line of 10 heads' holds, a resting bid of 2 heads on it."""
    x = world()
    x.deposit(FINANCIER, 10**9, FundsAccount.FINANCIER_FUNDS)
    x.consent(BUYER, FINANCIER)
    x.ok(GrantCreditLine(FINANCIER, 0, BUYER, 10 * HOLD_2800, 500))
    bid = accepted_order_id(x.buy(BUYER, 2800, 2))
    return x, bid


def test_withdrawn_consent_ends_new_holds_on_the_line() -> None:
    x, bid = _buyer_on_a_line()
    line = x.clearing.credit_lines[(BUYER, FINANCIER)].account_id
    assert x.clearing.holds[bid].source_account_id == line
    x.ok(SetConsent(BUYER, 0, FINANCIER, False))
    x.reject(order(BUYER, Side.BUY, 2800, 1, cid="after"), R.INSUFFICIENT_FUNDS)  # was accepted on the line
    x.reject(AmendOrder(BUYER, 0, bid, 0, 3), R.INSUFFICIENT_FUNDS)  # no more on the line by amending
    x.ok(AmendOrder(BUYER, 0, bid, 2790, 0))  # holding less is fine
    # what it already holds still trades: the financier's money pays for it
    lot = x.lot(FARMER, 2)
    trades = x.of(Trade, x.sell(FARMER, 2790, 2, lot))
    assert [(t.quantity_heads, x.clearing.trades[t.trade_id].financier_id) for t in trades] == [(2, FINANCIER)]
    assert x.held(AccountCode.BUYER_CREDIT_LINE, BUYER, FINANCIER) == 0
    x.consent(BUYER, FINANCIER)  # consent again: the line covers bids again
    x.buy(BUYER, 2800, 1, cid="again")
    assert x.held(AccountCode.BUYER_CREDIT_LINE, BUYER, FINANCIER) == HOLD_2800


def test_financier_sees_and_reduces_its_line_after_consent_is_withdrawn() -> None:
    x, _ = _buyer_on_a_line()
    x.ok(SetConsent(BUYER, 0, FINANCIER, False))
    view = financier_view(x.clearing, FINANCIER, BUYER)
    assert view is not None and not view.consented
    assert (view.credit_line_available_fen, view.credit_line_held_fen, view.exposure_fen) == (
        8 * HOLD_2800, 2 * HOLD_2800, 2 * HOLD_2800)
    assert [v.participant_id for v in financier_portfolio(x.clearing, FINANCIER)] == [BUYER]
    x.ok(ReduceCreditLine(FINANCIER, 0, BUYER, 8 * HOLD_2800))
    view = financier_view(x.clearing, FINANCIER, BUYER)
    assert view is not None and (view.credit_line_available_fen, view.credit_line_reduced_fen) == (0, 8 * HOLD_2800)
    x.reject(GrantCreditLine(FINANCIER, 0, BUYER, 1, 500), R.NO_CONSENT)  # but no new credit


async def test_withdrawn_consent_over_http(ex: Exchange) -> None:
    await ex.list_instrument("RC-CONSENT")
    fin = await ex.register(Role.FINANCIER, "农商行")
    await ex.deposit(fin.participant_id, 10**9, "financier_funds")
    buyer = await ex.register(Role.BUYER, deposit_fen=0)
    stranger = await ex.register(Role.BUYER, deposit_fen=0)
    ok(await buyer.post("/v1/consents", json={"financier_id": fin.participant_id}))
    ok(await fin.post("/v1/credit-lines", json={"buyer_id": buyer.participant_id, "amount_fen": 50_000_000,
                                                 "rate_bps": 500}))
    bid = {"instrument": "RC-CONSENT", "side": "buy", "price_fen": 2800, "quantity_heads": 100}
    ok(await buyer.post("/v1/orders", json={"client_order_id": "b1", **bid}), 201)
    ok(await buyer.post("/v1/consents", json={"financier_id": fin.participant_id, "granted": False}))
    status, code, _ = _error(await buyer.post("/v1/orders", json={"client_order_id": "b2", **bid}))
    assert (status, code) == (422, "insufficient_funds")
    view = ok(await fin.post(f"/v1/credit-lines/{buyer.participant_id}/reduce", json={"amount_fen": 1_000_000}))
    assert (view["consented"], view["credit_line_held_fen"], view["credit_line_available_fen"],
            view["credit_line_reduced_fen"]) == (False, 100 * HOLD_2800, 50_000_000 - 100 * HOLD_2800 - 1_000_000,
                                                 1_000_000)
    portfolio = ok(await fin.get("/v1/financing/clients"))
    assert (portfolio["exposure_fen"], [c["participant_id"] for c in portfolio["clients"]]) == (
        100 * HOLD_2800, [buyer.participant_id])
    status, code, _ = _error(await fin.get(f"/v1/financing/clients/{stranger.participant_id}"))
    assert (status, code) == (404, "unknown_participant")


# -- 3. bank files only once durable --------------------------------------------------------------------


async def _pending_payout(ex: Exchange) -> int:
    """A settled trade of a farmer with a verified account and a payout run: one PENDING payout."""
    op = ex.operator
    await ex.list_instrument("RC-FILE", dispute_window_ms=0)
    buyer = await ex.register(Role.BUYER)
    farmer = await ex.register(Role.FARMER, "李四", id_number_masked="5002**********1234",
                               bank_account="6217000011112222")
    ok(await op.post(f"/v1/admin/participants/{farmer.participant_id}/bank-account/verify",
                      json={"bank_account": "6217000011112222"}))
    lot = await ex.register_lot(farmer, "RC-FILE", heads=10)
    order_body = {"instrument": "RC-FILE", "price_fen": 2800, "quantity_heads": 10}
    ok(await farmer.post("/v1/orders", json={"client_order_id": "s1", "side": "sell", "lot_id": lot, **order_body}),
        201)
    trade_id = ok(await buyer.post("/v1/orders", json={"client_order_id": "b1", "side": "buy", **order_body}),
                   201)["fills"][0]["trade_id"]
    ok(await farmer.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 10, "total_weight_g": 1_100_000, "quarantine_cert": LOT_CERT, "quarantine_checked": True}))
    for _ in range(200):
        if ok(await farmer.get(f"/v1/trades/{trade_id}/settlement"))["state"] == "SETTLED":
            break
        await asyncio.sleep(0.05)
    [payout] = ok(await op.post("/v1/payout-runs", json={"run_ref": "run1"}), 201)["payouts"]
    return int(payout["payout_id"])


def _file_rows(reply: Reply) -> list[tuple[str, str, str]]:
    return [(r["payout_id"], r["attempt"], r["reference"]) for r in read_payout_file(reply.body).details]


async def _until(check: Any, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached")


async def test_a_bank_file_is_handed_out_only_once_durable(_test_databases: Any) -> None:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.05) as fresh:
            await _bank_files_wait_for_their_commit(fresh)
    finally:
        await _test_databases.drop(dsn)


async def _bank_files_wait_for_their_commit(ex: Exchange) -> None:
    op, sequencer = ex.operator, ex.app[EXCHANGE].sequencer
    payout_id = await _pending_payout(ex)
    expected = [(str(payout_id), "1", f"HOGX-P{payout_id}-A1")]
    blocker = await asyncpg.connect(dsn := sequencer.dsn)
    try:
        # A slow commit: the file shows in the live core, but neither a retry nor a download answers yet.
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE journal IN ACCESS EXCLUSIVE MODE")  # the writer's COPY waits
            first = asyncio.create_task(op.post("/v1/payout-files", json={"file_ref": "F1"}))
            await _until(lambda: "F1" in sequencer.core.clearing.sent_files)
            retry = asyncio.create_task(op.post("/v1/payout-files", json={"file_ref": "F1"}))
            download = asyncio.create_task(op.get("/v1/payout-files/F1"))
            await asyncio.sleep(0.3)
            assert not (first.done() or retry.done() or download.done())  # retry and download answered at once
        assert _file_rows(await first) == _file_rows(await retry) == _file_rows(await download) == expected
        assert ((await first).status, (await retry).status, (await download).status) == (201, 201, 200)

        # A commit that fails: no file was handed out, and the payout goes out in the next file.
        ok(await op.post("/v1/payout-confirmations", json={
            "file_ref": "C1", "csv": f"{_CONFIRMATIONS}{payout_id},1,FAILED,B1,account frozen\n"}))
        ok(await op.post(f"/v1/payouts/{payout_id}/retry"))  # attempt 2, PENDING
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE journal IN ACCESS EXCLUSIVE MODE")
            first = asyncio.create_task(op.post("/v1/payout-files", json={"file_ref": "F2"}))
            await _until(lambda: "F2" in sequencer.core.clearing.sent_files)
            retry = asyncio.create_task(op.post("/v1/payout-files", json={"file_ref": "F2"}))
            download = asyncio.create_task(op.get("/v1/payout-files/F2"))
            await asyncio.sleep(0.3)
            assert not (first.done() or retry.done() or download.done())
            killer = await asyncpg.connect(dsn)
            await killer.execute("SELECT pg_terminate_backend($1)", sequencer.writer_backend_pid)
            await killer.close()
        assert ((await first).status, (await retry).status, (await download).status) == (503, 503, 404)
    finally:
        await blocker.close()
    await _until(lambda: sequencer.state.value == "running")
    assert (await op.get("/v1/payout-files/F2")).status == 404
    assert [(p["payout_id"], p["attempt"]) for p in ok(await op.get("/v1/payouts?state=PENDING"))["payouts"]] == [
        (payout_id, 2)]
    reply = await op.post("/v1/payout-files", json={"file_ref": "F3"})
    assert (reply.status, _file_rows(reply)) == (201, [(str(payout_id), "2", f"HOGX-P{payout_id}-A2")])


# -- 4. each side's financing and poverty only to that side ---------------------------------------------

F2 = 41  # the poor farmer's financier


def _financed_both_sides() -> tuple[Any, int, int]:
    """BUYER bids on FINANCIER's line (consenting to it only); POOR_FARMER took an advance from F2
    (consenting to it only); the trade settled: 5 heads, 560 kg at 2800 = 1,568,000, fee 0.5 % = 7,840
    paid by the subsidy fund, the advance of 500,000 repaid first."""
    x = world()
    x.register(F2, ParticipantRole.FINANCIER, "另一家银行")
    x.deposit(0, 10**8, FundsAccount.POVERTY_SUBSIDY_FUND)
    x.deposit(FINANCIER, 10**9, FundsAccount.FINANCIER_FUNDS)
    x.deposit(F2, 10**9, FundsAccount.FINANCIER_FUNDS)
    x.consent(BUYER, FINANCIER)
    x.consent(POOR_FARMER, F2)
    x.ok(GrantCreditLine(FINANCIER, 0, BUYER, 10**8, 500))
    trade = x.trade(BUYER, POOR_FARMER, 2800, 5)
    advance = [e.loan_id for e in x.ok(GrantAdvance(F2, 0, trade.trade_id, 500_000, 600)) if hasattr(e, "loan_id")]
    x.weigh_in(trade.trade_id, 5, 560_000)
    x.tick(3 * DAY_NS)
    return x, trade.trade_id, advance[0]


def _private(row: SettlementReportRow) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in BUYER_PRIVATE + SELLER_PRIVATE if name in row.__struct_fields__)


def test_report_rows_show_each_viewer_only_its_own_side() -> None:
    x, trade_id, advance_id = _financed_both_sides()
    day = cst_day(x.clearing.trades[trade_id].settled_at_ns)
    # poor household, the advance, fee 0 (waived), subsidy, forgone, interest, principal repaid, payable:
    # 1,568,000 - 500,000
    seller_side = (True, advance_id, 0, 7_840, 0, 0, 500_000, 1_068_000)
    hidden_seller = (None,) * len(seller_side)
    [full] = report(x, day, kind="TRADE")  # the operator's
    assert _private(full) == (FINANCIER, *seller_side)
    for viewer, expected in ((FINANCIER, (FINANCIER, *hidden_seller)), (BUYER, (FINANCIER, *hidden_seller)),
                             (F2, (None, *seller_side)), (POOR_FARMER, (None, *seller_side))):
        [row] = report(x, day, viewer, kind="TRADE")
        assert _private(row) == expected, viewer
        assert (row.amount_fen, row.refund_fen) == (1_568_000, full.refund_fen)  # the delivery is shared
    assert report(x, day, FARMER) == []


def test_a_financiers_trade_rows_hide_the_other_sides_repayments() -> None:
    x, trade_id, _ = _financed_both_sides()
    buyer_view = financier_view(x.clearing, FINANCIER, BUYER)
    seller_view = financier_view(x.clearing, F2, POOR_FARMER)
    assert buyer_view is not None and seller_view is not None
    assert [(t.trade_id, t.side, t.principal_repaid_fen, t.interest_paid_fen) for t in buyer_view.trades] == [
        (trade_id, "buy", None, None)]  # the seller's advance from F2: not FINANCIER's business
    assert [(t.trade_id, t.side, t.principal_repaid_fen, t.interest_paid_fen) for t in seller_view.trades] == [
        (trade_id, "sell", 500_000, 0)]


async def test_trade_views_over_http_show_each_viewer_only_its_own_side(ex: Exchange) -> None:
    op = ex.operator
    await ex.list_instrument("RC-SIDES", seller_fee_bps=50, dispute_window_ms=0)
    await ex.deposit(0, 10**8, "poverty_subsidy_fund")
    fin_a, fin_b = await ex.register(Role.FINANCIER, "甲银行"), await ex.register(Role.FINANCIER, "乙银行")
    for fin in (fin_a, fin_b):
        await ex.deposit(fin.participant_id, 10**9, "financier_funds")
    buyer = await ex.register(Role.BUYER, deposit_fen=0)
    farmer = await ex.register(Role.FARMER, "张三", id_number_masked="5002**********1234",
                               bank_account="6217000011110042", poor_registration_no="500226000042")
    ok(await op.post(f"/v1/admin/participants/{farmer.participant_id}/bank-account/verify",
                      json={"bank_account": "6217000011110042"}))
    ok(await op.post(f"/v1/admin/participants/{farmer.participant_id}/poor-household",
                      json={"registration_no": "500226000042"}))
    ok(await buyer.post("/v1/consents", json={"financier_id": fin_a.participant_id}))
    ok(await farmer.post("/v1/consents", json={"financier_id": fin_b.participant_id}))
    ok(await fin_a.post("/v1/credit-lines", json={"buyer_id": buyer.participant_id, "amount_fen": 10**8,
                                                   "rate_bps": 500}))
    lot = await ex.register_lot(farmer, "RC-SIDES", heads=5)
    body = {"instrument": "RC-SIDES", "price_fen": 2800, "quantity_heads": 5}
    ok(await farmer.post("/v1/orders", json={"client_order_id": "s", "side": "sell", "lot_id": lot, **body}), 201)
    trade_id = ok(await buyer.post("/v1/orders", json={"client_order_id": "b", "side": "buy", **body}),
                   201)["fills"][0]["trade_id"]
    loan_id = ok(await fin_b.post("/v1/advances", json={"trade_id": trade_id, "amount_fen": 500_000,
                                                         "rate_bps": 600}), 201)["loans"][0]["loan_id"]
    ok(await farmer.post(f"/v1/trades/{trade_id}/weigh-in", json={
        "heads_delivered": 5, "total_weight_g": 560_000, "quarantine_cert": LOT_CERT, "quarantine_checked": True}))
    for _ in range(200):
        if ok(await op.get(f"/v1/trades/{trade_id}/settlement"))["state"] == "SETTLED":
            break
        await asyncio.sleep(0.05)
    fields = ("funded_by_financier_id", "advance_loan_id", "fee_fen", "fee_subsidy_fen", "principal_repaid_fen",
              "payable_fen")
    seller_side = (loan_id, 0, 7_840, 500_000, 1_068_000)
    expected = {op: (fin_a.participant_id, *seller_side), buyer: (fin_a.participant_id, None, None, None, None, None),
                fin_a: (fin_a.participant_id, None, None, None, None, None), farmer: (None, *seller_side),
                fin_b: (None, *seller_side)}
    for viewer, seen in expected.items():
        view = ok(await viewer.get(f"/v1/trades/{trade_id}/settlement"))
        assert tuple(view[f] for f in fields) == seen, fields
        [listed] = [t for t in ok(await viewer.get("/v1/settlement/trades"))["trades"] if t["trade_id"] == trade_id]
        assert listed == view
    date = ok(await op.get("/v1/reports/settlement"))["date"]
    [row] = ok(await fin_a.get(f"/v1/reports/settlement?date={date}"))["rows"]
    assert (row["seller_poor_household"], row["fee_subsidy_fen"], row["funded_by_financier_id"]) == (
        None, None, fin_a.participant_id)
    row, repaid = ok(await fin_b.get(f"/v1/reports/settlement?date={date}"))["rows"]
    assert (row["seller_poor_household"], row["fee_subsidy_fen"], row["funded_by_financier_id"]) == (
        True, 7_840, None)
    # and the repayment of its advance at the settlement (the same day: no interest)
    assert (repaid["kind"], repaid["trade_id"], repaid["loan_id"], repaid["principal_repaid_fen"],
            repaid["interest_paid_fen"], repaid["paid_by"]) == ("LOAN_REPAYMENT", trade_id, loan_id, 500_000, 0,
                                                                "BORROWER")


# -- 5. no weight discount swallows the price -----------------------------------------------------------

UNBANDED = "RC-NOBAND"


def _unbanded_world() -> Any:
    """An unbanded finishing-hog instrument (any price on the tick) with the DCE discounts: 60 fen/kg off
    up to 10 kg over the 120 kg lot maximum."""
    x = world()
    x.ok(list_instrument(msgspec.structs.replace(dce_spec(UNBANDED), price_band_bps=0, reference_price_fen=0)))
    x.deposit(BUYER, 10**10)
    return x


def test_a_discount_that_takes_the_whole_price_refuses_the_weigh_in() -> None:
    x = _unbanded_world()
    trade = x.trade(BUYER, FARMER, 60, 10, instrument=UNBANDED)
    # 125 kg average: a substitute at 60 fen/kg off a price of 60 fen/kg (was: accepted, amount 0)
    x.reject(RecordWeighIn(FARMER, 0, trade.trade_id, 10, 1_250_000, "CQ-1", True), R.INVALID_DELIVERY)
    x.reject(RecordWeighIn(OPERATOR, 0, trade.trade_id, 10, 1_250_000, "CQ-1", True), R.INVALID_DELIVERY)
    assert x.clearing.trades[trade.trade_id].state.name == "OPEN"
    # in band it is priced as usual; and the way out of an unpriceable one is a non-delivery (all back)
    x.ok(RecordWeighIn(OPERATOR, 0, trade.trade_id, 0, 0, "CQ-1", True))
    assert (x.clearing.trades[trade.trade_id].amount_fen, x.clearing.trades[trade.trade_id].refund_fen) == (
        0, 10 * 8_400)
    priced = x.trade(BUYER, FARMER, 70, 10, instrument=UNBANDED)  # 10 fen/kg left after the discount
    x.weigh_in(priced.trade_id, 10, 1_250_000)
    t = x.clearing.trades[priced.trade_id]
    assert (t.grade.name, t.discount_fen_per_kg, t.amount_fen) == ("SUBSTITUTE", 60, 12_500)


def test_delivery_terms_never_clamp_and_say_when_a_delivery_cannot_be_priced() -> None:
    spec = dce_spec()
    assert rules.discount_leaves_price(spec, 61, 10, 1_250_000)
    assert not rules.discount_leaves_price(spec, 60, 10, 1_250_000)
    assert not rules.discount_leaves_price(spec, 40, 10, 950_000)  # underweight: 40 fen/kg off
    assert rules.discount_leaves_price(spec, 60, 10, 1_100_000)  # in band: no discount
    assert rules.discount_leaves_price(spec, 60, 0, 0)  # nothing delivered
    assert rules.discount_leaves_price(piglet_spec(), 1, 10, 1_250_000)  # per head: no discount
    assert rules.delivery_terms(spec, 61, 10**9, 10, 1_250_000).amount_fen == 1_250
    with pytest.raises(ValueError, match="a discount of 60 fen/kg leaves nothing of the price 60 fen/kg"):
        rules.delivery_terms(spec, 60, 10**9, 10, 1_250_000)


def test_a_band_whose_lowest_price_is_not_above_the_discount_is_flagged() -> None:
    spec = dce_spec()  # +-4 % band on a 10 fen tick, 60 fen/kg the largest discount
    assert rules.band_clears_discounts(spec, 2800)
    assert not rules.band_clears_discounts(spec, 60)  # 57.6 rounds inwards to 60: a price of 60 is allowed
    assert rules.band_clears_discounts(spec, 70)  # lowest 67.2 -> 70
    assert rules.band_clears_discounts(msgspec.structs.replace(spec, price_band_bps=0), 60)  # nothing known
    assert rules.band_clears_discounts(spec, 0)
    assert rules.band_clears_discounts(piglet_spec(), 100)
