"""Memory holds only what is open (issue 12): the core, the clearing and the ledger forget what has been
final for longer than the retention window (``ClockTick.retention_ns``), deterministically, and forget
nothing a retry inside the window needs; snapshots hold the same live state.

The oracle is the behaviour before forgetting existed: a stream whose window never elapses
(``KEEP_ALL_NS``), and the events and ledger rows of the pre-change code (commit 2b764a3) pinned as a
digest below."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest_asyncio

from benchmarks.ledger import MarketDay
from benchmarks.longrun import LongMarket
from exchange.commands import (
    BankConfirmation,
    CancelOrder,
    ClockTick,
    Command,
    ConfirmDeposit,
    ConfirmWithdrawal,
    FundsAccount,
    GrantAdvance,
    ImportBankConfirmations,
    MarkPayoutsSent,
    RepayLoan,
    RequestWithdrawal,
    RetryPayout,
    ReturnPayout,
    RunPayouts,
    UpdateParticipant,
)
from exchange.core import DEFAULT_RETENTION_NS, Core, new_exchange
from exchange.domain import RejectReason as R
from exchange.domain import Side
from exchange.events import (
    BankImportApplied,
    FundsDeposited,
    LoanRepaid,
    LotRegistered,
    OrderAccepted,
    PayoutChanged,
    PayoutRunCreated,
    PayoutState,
    Rejected,
    Trade,
    WithdrawalCompleted,
    WithdrawalRequested,
    encode_event,
)
from exchange.sequencer import Sequencer
from exchange.settlement import pgstore
from exchange.settlement.clearing import Clearing
from exchange.settlement.ledger import (
    CHART,
    LEDGER_CNY,
    Account,
    CreateAccountResult,
    CreateTransferResult,
    Ledger,
    Transfer,
    TransferCode,
    TransferFlags,
)
from exchange.settlement.ledger import AccountCode as AC
from exchange.settlement.model import ClearingSnapshot, FinalKind
from gateway.auth import Role
from gateway.exchange_port import EXCHANGE
from gateway.state import POOL
from gateway.testing import Exchange as GatewayExchange
from gateway.testing import running_exchange
from tests.factories import list_instrument, order
from tests.sequencer_harness import StepClock
from tests.settlement_support import BUYER, FARMER, FINANCIER, HOUR_NS, OPERATOR, Exchange, world
from tests.test_gateway_settlement import _buy, _cst_date, _farmer, _sell, _settled, _weigh_in
from tests.test_idempotent_refs import _advanced_farmer, _lot
from tests.test_ledger import T0_NS, fresh_ledger

T = CreateTransferResult
KEEP_ALL_NS = 100 * 365 * 24 * HOUR_NS  # a window no stream here reaches: the behaviour before forgetting
WINDOW_NS = HOUR_NS


def _clearing(core: Core) -> Clearing:
    assert core.clearing is not None
    return core.clearing


# -- the ledger ---------------------------------------------------------------------------------------


def _funded_ledger() -> Ledger:
    """test_ledger's fixture: buyer A (account 10) holds 1,000,000 fen from deposit 1, made at T0_NS."""
    ledger = fresh_ledger()
    ledger.drain_postings()
    return ledger


def test_ledger_forgets_final_transfers_and_refuses_their_ids() -> None:
    ledger = _funded_ledger()
    hold = Transfer(2, 10, 20, 300, TransferCode.ORDER_HOLD, 0, TransferFlags.PENDING)
    voided = Transfer(3, 10, 20, 200, TransferCode.ORDER_HOLD, 0, TransferFlags.PENDING)
    void = Transfer(4, 0, 0, 0, TransferCode.ORDER_RELEASE, 0, TransferFlags.VOID_PENDING, 3)
    assert ledger.create_transfers([hold, voided, void], T0_NS + 100) == [T.OK, T.OK, T.OK]
    assert ledger.held_counts() == (4, 1, 3)  # the deposit, the void and the voided hold are final
    # inside the window: everything is recognised
    assert ledger.forget(T0_NS) == 0
    assert ledger.create_transfers([Transfer(1, 1, 10, 1_000_000, TransferCode.DEPOSIT), void], T0_NS + 150) == [
        T.EXISTS, T.EXISTS]
    assert ledger.forget(T0_NS + 101) == 3  # the deposit (final at T0), the voided hold and its void (at +100)
    assert ledger.held_counts() == (1, 1, 0)  # only the open hold
    balances = ledger.accounts()
    # a retry from beyond the window is refused and changes nothing; a new (higher) id is applied
    deposit = Transfer(1, 1, 10, 1_000_000, TransferCode.DEPOSIT)
    assert ledger.create_transfers([deposit], T0_NS + 200) == [T.ID_FORGOTTEN]
    # a void names its pending transfer, which is looked up first: forgotten, it is not found
    assert ledger.create_transfers([void], T0_NS + 200) == [T.PENDING_TRANSFER_NOT_FOUND]
    assert ledger.accounts() == balances and ledger.drain_postings()[-1].transfer_id == 4
    assert ledger.create_transfers([Transfer(5, 1, 10, 7, TransferCode.DEPOSIT)], T0_NS + 200) == [T.OK]
    # the open hold is still there to post; its post of a forgotten pending transfer is not found
    post = Transfer(6, 0, 0, 0, TransferCode.TRADE, 0, TransferFlags.POST_PENDING, 2)
    assert ledger.create_transfers([post], T0_NS + 200) == [T.OK]
    assert ledger.create_transfers([Transfer(7, 0, 0, 0, 0, 0, TransferFlags.VOID_PENDING, 3)], T0_NS + 200) == [
        T.PENDING_TRANSFER_NOT_FOUND]
    ledger.validate()
    restored = Ledger.restore(ledger.snapshot(allow_undrained=True))
    assert restored.state_hash() == ledger.state_hash()
    assert restored.create_transfers([Transfer(1, 1, 10, 5, TransferCode.DEPOSIT)], T0_NS + 200) == [
        T.ID_FORGOTTEN]
    # the new deposit, the posted hold and its post
    assert restored.forget(T0_NS + 201) == ledger.forget(T0_NS + 201) == 3
    assert restored.state_hash() == ledger.state_hash() and restored.held_counts() == (0, 0, 0)


def test_ledger_rolls_back_the_final_queue_of_a_failed_chain() -> None:
    ledger = _funded_ledger()
    linked = Transfer(2, 10, 20, 100, TransferCode.TRADE, 0, TransferFlags.LINKED)
    too_much = Transfer(3, 10, 20, 10**9, TransferCode.TRADE)
    assert ledger.create_transfers([linked, too_much], T0_NS + 5)[1] == T.EXCEEDS_CREDITS
    assert ledger.held_counts() == (1, 0, 1)
    # the rolled-back member left nothing queued: the id is free, and only the deposit is forgotten
    assert ledger.forget(T0_NS + 10) == 1
    assert ledger.create_transfers([msgspec.structs.replace(linked, flags=0)], T0_NS + 10) == [T.OK]


def test_a_ledger_snapshot_of_an_earlier_version_restores_to_its_hash_and_forgets_later() -> None:
    ledger = _funded_ledger()
    ledger.drain_postings()
    ledger.drain_new_accounts()
    # what an earlier version wrote: the five fields, without the final queue and forgotten id
    fields = msgspec.msgpack.decode(ledger.snapshot())
    assert len(fields) == 7
    legacy = msgspec.msgpack.encode(fields[:5])
    restored = Ledger.restore(legacy)
    assert restored.snapshot() == legacy  # as the old code hashed it: nothing final listed, nothing forgotten
    assert restored.forget(T0_NS) == 0  # the deposit counts as final from the restored ledger's time
    assert restored.forget(T0_NS + 1) == 1 and restored.held_counts() == (0, 0, 0)


# -- the exchange: a market day, counted against what is open ----------------------------------------


def _market_day(transfers: int, seed: int = 7) -> MarketDay:
    day = MarketDay(seed)
    day.generate(transfers)
    return day


def _close_the_day(day: MarketDay) -> None:
    """Settle every trade, pay every payable and have the bank confirm every payout."""
    day.add(ClockTick(0, 0))
    day.refs += 1
    events = day.add(RunPayouts(OPERATOR, 0, f"close{day.refs}"))
    pairs = tuple((e.payout_id, e.attempt) for e in events if isinstance(e, PayoutChanged))
    if pairs:
        day.add(MarkPayoutsSent(OPERATOR, 0, f"close-file{day.refs}", pairs))
        rows = tuple(BankConfirmation(pid, attempt, True, f"bank{pid}") for pid, attempt in pairs)
        day.add(ImportBankConfirmations(OPERATOR, 0, f"close-conf{day.refs}", rows))


def _open_counts(core: Core) -> dict[str, int]:
    """What is open, counted from the state itself."""
    clearing = _clearing(core)
    live_lots = sum(1 for lot in core.lots.values() if lot.reserved_heads or lot.sold_heads < lot.heads)
    return {
        "resting_orders": len(core.orders),
        "live_lots": live_lots,
        "holds": len(clearing.holds),
        "open_pending": clearing.ledger.held_counts()[1],
        "unsettled_trades": sum(1 for t in clearing.trades.values() if t.state.name not in ("SETTLED", "REJECTED")),
        "open_payouts": sum(1 for p in clearing.payouts.values() if p.state.name not in ("CONFIRMED", "RETURNED")),
        # loans owing something, and a credit line's loan (its line's next draw opens it again)
        "loans": len({k for k, loan in clearing.loans.items() if loan.is_open}
                     | {line.loan_id for line in clearing.credit_lines.values()}),
    }


def _forgotten_day(transfers: int) -> tuple[MarketDay, dict[str, int], int]:
    """A closed market day, then a tick a default window later: (the day, what was held before that tick,
    the snapshot's size before it)."""
    day = _market_day(transfers)
    _close_the_day(day)
    held_before = _clearing(day.core).held_counts()
    snapshot_before = len(day.core.snapshot())
    day.ts_ns += DEFAULT_RETENTION_NS
    day.add(ClockTick(0, 0))  # the default window has passed since everything of the day became final
    return day, held_before, snapshot_before


def test_after_the_window_the_exchange_holds_only_what_is_open() -> None:
    day, held_before, snapshot_before = _forgotten_day(4_000)
    core = day.core
    clearing = _clearing(core)
    assert held_before["trades"] > 100  # the clearing's final records: all of history, inside the window
    # the ledger's final transfers go at every tick: it held only the closing payouts' (a pending transfer and
    # its post each, final since the day's last tick)
    assert 0 < held_before["transfers"] <= 2 * held_before["payouts"]
    held = clearing.held_counts()
    open_now = _open_counts(core)
    assert open_now["unsettled_trades"] == open_now["open_payouts"] == 0
    # no final trade, payout, deposit, run, file, import or transfer is left; what is held is what is open
    assert held == {"trades": 0, "payouts": 0, "deposits": 0, "withdrawals": 0, "repayments": 0, "runs": 0,
                    "sent_files": 0, "bank_imports": 0, "registrations": 0, "file_digests": 0, "final_queued": 0,
                    "loans": open_now["loans"], "transfers": open_now["open_pending"], "parked_accounts": 0}
    assert clearing.ledger.held_counts() == (open_now["holds"], open_now["holds"], 0)  # a hold per resting buy
    assert sum(len(ids) for ids in core.client_order_ids.values()) == open_now["resting_orders"]
    assert len(core.lots) == len(core.lot_records) == len(clearing.lots) == open_now["live_lots"]
    assert len(core.id_times) - core.id_head == open_now["resting_orders"]
    assert len(core.lot_times) == open_now["live_lots"]
    clearing.ledger.validate()
    snapshot = core.snapshot()
    assert len(snapshot) * 2 < snapshot_before  # the clearing's final records were more than half of it
    restored = Core.from_snapshot(snapshot)
    assert restored.state_hash() == core.state_hash()


def test_the_snapshot_follows_the_open_state_not_the_history() -> None:
    """Twice the history, about the same open state (accounts, participants, nothing resting): about the same size."""
    short, _, short_before = _forgotten_day(6_000)
    long, _, long_before = _forgotten_day(12_000)
    assert long_before > 1.5 * short_before  # before forgetting: linear in history
    # after it: accounts (created on a participant's first trade: 802 -> 862 here) and participants
    assert len(long.core.snapshot()) < 1.1 * len(short.core.snapshot())


# -- idempotency inside and after the window, across restarts ---------------------------------------------


def _tick(x: Exchange, advance_ns: int) -> None:
    x.advance(advance_ns)
    x.ok(ClockTick(0, 0, WINDOW_NS))


def _restart(x: Exchange) -> None:
    before = x.core.state_hash()
    x.restore_from_snapshot()
    assert x.core.state_hash() == before


def test_a_client_order_id_is_known_inside_the_window_and_free_after_it() -> None:
    x = world()
    x.deposit(BUYER, 10_000_000)
    placed = x.buy(BUYER, 2700, 5, cid="c-1")
    [accepted] = x.of(OrderAccepted, placed)
    x.ok(CancelOrder(BUYER, 0, accepted.order_id))
    resting = x.buy(BUYER, 2700, 5, cid="c-rests")
    _tick(x, WINDOW_NS - 1)
    _restart(x)
    x.reject(order(BUYER, Side.BUY, 2700, 5, cid="c-1"), R.DUPLICATE_CLIENT_ORDER_ID)
    _tick(x, 2)  # the window has passed since c-1 was accepted
    _restart(x)
    [again] = x.of(OrderAccepted, x.buy(BUYER, 2700, 5, cid="c-1"))
    assert again.order_id > accepted.order_id  # a new order, as Binance treats an id no longer open
    # a resting order keeps its id, however old
    assert x.of(OrderAccepted, resting)[0].order_id in x.core.orders
    _tick(x, 3 * WINDOW_NS)
    _restart(x)
    x.reject(order(BUYER, Side.BUY, 2700, 5, cid="c-rests"), R.DUPLICATE_CLIENT_ORDER_ID)


def test_a_lot_ref_is_known_until_the_lot_is_sold_and_the_window_passed() -> None:
    x = world()
    x.deposit(BUYER, 10_000_000)
    [first] = x.of(LotRegistered, x.ok(_lot(FARMER, "lot-A", heads=5)))
    [unsold] = x.of(LotRegistered, x.ok(_lot(FARMER, "lot-B", heads=5)))
    x.sell(FARMER, 2800, 5, first.lot.lot_id)
    [trade] = x.of(Trade, x.buy(BUYER, 2800, 5))
    _tick(x, WINDOW_NS - 1)
    _restart(x)
    assert x.ok(_lot(FARMER, "lot-A", heads=5)) == [LotRegistered(0, x.ts_ns, first.lot)]
    x.reject(_lot(FARMER, "lot-A", heads=6), R.DUPLICATE_REFERENCE)
    _tick(x, 2)
    _restart(x)
    # sold out, but its trade is open: the lot is kept (the clearing needs its declared weight)
    assert x.ok(_lot(FARMER, "lot-A", heads=5)) == [LotRegistered(0, x.ts_ns, first.lot)]
    x.weigh_in(trade.trade_id, 5, 550_000)
    _tick(x, 72 * HOUR_NS)  # settles the trade (its dispute window is 48 h)
    assert x.ok(_lot(FARMER, "lot-A", heads=5)) == [LotRegistered(0, x.ts_ns, first.lot)]
    _tick(x, WINDOW_NS + 1)
    _restart(x)
    # sold out and final for the window: forgotten (the gateway refuses the reference: settlement_refs)
    assert first.lot.lot_id not in x.core.lots and (FARMER, "lot-A") not in x.core.lot_refs
    x.reject(order(FARMER, Side.SELL, 2800, 1, lot_id=first.lot.lot_id), R.LOT_NOT_FOUND)
    # a lot with heads left is live, however old
    assert x.ok(_lot(FARMER, "lot-B", heads=5)) == [LotRegistered(0, x.ts_ns, unsold.lot)]


def test_deposit_and_withdrawal_references_inside_and_after_the_window() -> None:
    x = world()
    [deposited] = x.of(FundsDeposited, x.ok(ConfirmDeposit(OPERATOR, 0, "BANK-1", BUYER, FundsAccount.TRADING_CASH,
                                                           500_000)))
    [requested] = x.of(WithdrawalRequested, x.ok(RequestWithdrawal(BUYER, 0, "W-1", FundsAccount.TRADING_CASH,
                                                                   100_000)))
    [paid] = x.of(WithdrawalCompleted, x.ok(ConfirmWithdrawal(OPERATOR, 0, BUYER, "W-1", True, "B-9")))
    _tick(x, WINDOW_NS - 1)
    # the tick forgot every final transfer (none is open): the clearing's records answer the retries below
    assert x.clearing.ledger.held_counts() == (0, 0, 0) and x.clearing.held_counts()["final_queued"] == 2
    _restart(x)
    before = x.core.state_hash()
    # retries inside the window: the original answers, nothing changes
    again = x.ok(ConfirmDeposit(OPERATOR, 0, "BANK-1", BUYER, FundsAccount.TRADING_CASH, 500_000))
    assert x.of(FundsDeposited, again) == [deposited]
    x.reject(ConfirmDeposit(OPERATOR, 0, "BANK-1", BUYER, FundsAccount.TRADING_CASH, 1), R.DUPLICATE_REFERENCE)
    assert x.of(WithdrawalRequested, x.ok(RequestWithdrawal(BUYER, 0, "W-1", FundsAccount.TRADING_CASH,
                                                            100_000))) == [requested]
    assert x.of(WithdrawalCompleted, x.ok(ConfirmWithdrawal(OPERATOR, 0, BUYER, "W-1", True, "B-9"))) == [
        msgspec.structs.replace(paid, ts_ns=x.ts_ns)]  # the answer of a retried confirmation is stamped anew
    assert x.core.state_hash() == before
    _tick(x, 2)
    _restart(x)
    clearing = x.clearing
    assert "BANK-1" not in clearing.deposits and (BUYER, "W-1") not in clearing.withdrawals
    # after the window the clearing no longer knows them: a confirmation of the withdrawal is unknown
    # (the gateway refuses a deposit or withdrawal reference ever used: settlement_refs, forever)
    x.reject(ConfirmWithdrawal(OPERATOR, 0, BUYER, "W-1", True, "B-9"), R.UNKNOWN_REFERENCE)


def test_repayment_run_file_and_import_references_inside_and_after_the_window() -> None:
    x = _advanced_farmer()
    [repaid] = x.of(LoanRepaid, x.ok(RepayLoan(FARMER, 0, 40, 500_000, "repay-1")))
    _tick(x, 72 * HOUR_NS)  # settles the trade (its dispute window is 48 h); the window of the repayment passes
    run = x.ok(RunPayouts(OPERATOR, 0, "run-1"))
    [created] = x.of(PayoutRunCreated, run)
    pairs = tuple((e.payout_id, e.attempt) for e in x.of(PayoutChanged, run))
    assert pairs
    x.ok(MarkPayoutsSent(OPERATOR, 0, "file-1", pairs))
    rows = tuple(BankConfirmation(pid, attempt, True, f"bank{pid}") for pid, attempt in pairs)
    [imported] = x.of(BankImportApplied, x.ok(ImportBankConfirmations(OPERATOR, 0, "conf-1", rows)))
    _tick(x, WINDOW_NS - 1)
    # that tick forgot the payouts' transfers (a pending transfer and its post each): the payout, run, file
    # and import records, inside their window, answer the retries below, before and after a restart
    assert x.clearing.ledger.held_counts() == (0, 0, 0) and len(x.clearing.payouts) == len(pairs)
    sent_again = x.of(PayoutChanged, x.ok(MarkPayoutsSent(OPERATOR, 0, "file-1", pairs)))
    assert [(e.payout_id, e.state, e.bank_ref) for e in sent_again] == [
        (pid, PayoutState.CONFIRMED, f"bank{pid}") for pid, _ in pairs]
    assert x.of(BankImportApplied, x.ok(ImportBankConfirmations(OPERATOR, 0, "conf-1", rows))) == [
        msgspec.structs.replace(imported, ts_ns=x.ts_ns)]
    _restart(x)
    assert x.of(PayoutChanged, x.ok(MarkPayoutsSent(OPERATOR, 0, "file-1", pairs))) == [
        msgspec.structs.replace(e, ts_ns=x.ts_ns) for e in sent_again]
    assert x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "run-1"))) == [
        msgspec.structs.replace(created, ts_ns=created.ts_ns)]
    x.reject(MarkPayoutsSent(OPERATOR, 0, "file-1", ((pairs[0][0], pairs[0][1] + 1),)), R.DUPLICATE_REFERENCE)
    before = x.core.state_hash()
    x.ok(ImportBankConfirmations(OPERATOR, 0, "conf-1", rows))
    assert x.core.state_hash() == before
    _tick(x, 2)
    _restart(x)
    clearing = x.clearing
    assert not clearing.runs and not clearing.sent_files and not clearing.bank_imports and not clearing.payouts
    assert (FARMER, "repay-1") not in clearing.repayments and repaid.principal_fen == 500_000
    # after the window: a run reference is free (it pays only what is payable: nothing), a bank file or
    # import naming forgotten payouts changes nothing
    [empty] = x.of(PayoutRunCreated, x.ok(RunPayouts(OPERATOR, 0, "run-1")))
    assert empty.run_id > created.run_id and empty.payout_ids == ()
    x.reject(MarkPayoutsSent(OPERATOR, 0, "file-1", pairs), R.UNKNOWN_REFERENCE)
    before = x.core.state_hash()
    events = x.ok(ImportBankConfirmations(OPERATOR, 0, "conf-1", rows))
    assert not x.of(PayoutChanged, events) and not x.of(Rejected, events)


# -- differential: the same events and ledger rows as before ---------------------------------------------

# The events and ledger rows of MarketDay(11).generate(3_000) as the code before forgetting gives them,
# computed with _DIGEST_SCRIPT on main (2b764a3, where the work began, gave 0b742a43...; fc109b7, before
# forgetting, 4721accd...; then two deliberate changes of events: the delivery facts that settlement
# events carry (d2ca2a0) and, with them, the payout's bank codes (edcf0a3): 9645e170... at 2b98814). A
# change that deliberately alters events or ledger rows re-pins it; forgetting never may.
PINNED_DIGEST = "9645e17056f48a6361035827231938360f858836a1edc0e404eeddd1a92fc9b3"
_DIGEST_SCRIPT = """
import hashlib, msgspec
from benchmarks.ledger import MarketDay
from exchange.core import new_exchange
from exchange.events import encode_event
day = MarketDay(11)
commands = day.generate(3_000)
core = new_exchange()
digest = hashlib.blake2b(digest_size=32)
for command in commands:
    for event in core.apply(command):
        digest.update(encode_event(event))
    for accounts, postings in core.clearing.take_command_rows(1):
        digest.update(msgspec.msgpack.encode([list(accounts), list(postings)]))
print(digest.hexdigest())
"""


def _digest(commands: list[Command], retention_ns: int) -> tuple[str, Core]:
    core = new_exchange()
    clearing = _clearing(core)
    digest = hashlib.blake2b(digest_size=32)
    for command in commands:
        if isinstance(command, ClockTick):
            command = msgspec.structs.replace(command, retention_ns=retention_ns)
        for event in core.apply(command):
            digest.update(encode_event(event))
        for accounts, postings in clearing.take_command_rows(1):
            digest.update(msgspec.msgpack.encode([list(accounts), list(postings)]))
    return digest.hexdigest(), core


def test_the_same_stream_gives_the_same_events_and_ledger_rows_whatever_the_window() -> None:
    """MarketDay's clock moves 1 µs a command: a 2 ms window forgets all but the last ~2,000 commands'
    final records as the day goes, and no command of the stream needs them. The oracle is the window
    that never elapses (KEEP_ALL_NS), and the code before forgetting (PINNED_DIGEST)."""
    commands = MarketDay(11).generate(3_000)
    keep_all, _ = _digest(commands, KEEP_ALL_NS)
    default, _ = _digest(commands, 0)
    short, core = _digest(commands, 2_000_000)
    assert short == default == keep_all
    assert _clearing(core).held_counts()["transfers"] < 3_000
    assert keep_all == PINNED_DIGEST, "events or ledger rows changed: see PINNED_DIGEST"


def test_snapshot_and_replay_of_a_forgetting_stream_give_the_live_hash() -> None:
    """Recovery as the sequencer does it (a snapshot, then the tail replayed) while the window elapses:
    the same events and the live state hash, from a snapshot taken at any point."""
    commands = [msgspec.structs.replace(c, retention_ns=200_000) if isinstance(c, ClockTick) else c
                for c in MarketDay(12).generate(2_000)]
    live = new_exchange()
    live_events = [live.apply(c) for c in commands]
    made = _clearing(live).counters.next_transfer_id - 1
    assert _clearing(live).held_counts()["transfers"] < made * 3 // 4  # it forgot as it went
    for cut in (len(commands) // 3, 2 * len(commands) // 3):
        core = new_exchange()
        for command in commands[:cut]:
            core.apply(command)
        _clearing(core).discard_command_rows()
        restored = Core.from_snapshot(core.snapshot())
        assert restored.state_hash() == core.state_hash()
        assert [restored.apply(c) for c in commands[cut:]] == live_events[cut:]
        assert restored.state_hash() == live.state_hash()


# -- over HTTP, with PostgreSQL: a reference that must never take effect twice ------------------------------


@pytest_asyncio.fixture
async def short_memory(_test_databases: Any) -> AsyncIterator[GatewayExchange]:
    """The gateway with a one-second retention window and a clock that ticks every 50 ms."""
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.05, retention_s=1) as exchange:
            yield exchange
    finally:
        await _test_databases.drop(dsn)


async def _until_forgotten(check: Any) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "the retention window never passed"
        await asyncio.sleep(0.05)


async def test_a_reference_beyond_the_window_is_refused_for_ever_and_an_order_id_is_free(
    short_memory: GatewayExchange,
) -> None:
    ex = short_memory
    buyer = await ex.register(Role.BUYER, "买家", bank_account="6217000099990002", deposit_fen=0)
    op = ex.operator
    assert (await op.post(f"/v1/admin/participants/{buyer.participant_id}/bank-account/verify",
                          json={"bank_account": "6217000099990002"})).status == 200
    deposit = {"deposit_ref": "ICBC-20260101-1", "owner_id": buyer.participant_id, "account": "trading_cash",
               "amount_fen": 5_000_000}
    first = await op.post("/v1/deposits", json=deposit)
    assert first.status == 201
    assert (await op.post("/v1/deposits", json=deposit)).json() == first.json()  # a retry inside the window
    withdrawal = {"withdrawal_ref": "wd-1", "account": "trading_cash", "amount_fen": 1_000_000}
    assert (await buyer.post("/v1/withdrawals", json=withdrawal)).status == 201
    assert (await op.post("/v1/withdrawals/confirmations", json={
        "owner_id": buyer.participant_id, "withdrawal_ref": "wd-1", "ok": True, "bank_ref": "B-1"})).status == 200
    listed = [(buyer, "/v1/withdrawals"), (op, "/v1/withdrawals?state=PAID"), (op, "/v1/withdrawals?state=PENDING")]
    withdrawals = [(await who.get(path)).json() for who, path in listed]
    assert [w["withdrawal_ref"] for w in withdrawals[0]["withdrawals"]] == ["wd-1"]
    sequencer = ex.app[EXCHANGE].sequencer
    clearing = sequencer.core.clearing
    await _until_forgotten(lambda: "ICBC-20260101-1" not in sequencer.core.clearing.deposits
                           and (buyer.participant_id, "wd-1") not in sequencer.core.clearing.withdrawals)
    assert clearing is not None
    async with ex.app[POOL].acquire() as conn:
        assert await pgstore.used_reference(conn, pgstore.REF_DEPOSIT, 0, "ICBC-20260101-1") is not None
        assert await pgstore.used_reference(conn, pgstore.REF_WITHDRAWAL, buyer.participant_id, "wd-1") is not None
    # forgotten, the paid withdrawal is listed as before, from settlement_history
    await asyncio.sleep(0.3)  # the tick that forgot it is committed by now
    assert [(await who.get(path)).json() for who, path in listed] == withdrawals
    # beyond the window: refused, nothing moves (a new reference is a new deposit)
    for reply in (await op.post("/v1/deposits", json=deposit), await buyer.post("/v1/withdrawals", json=withdrawal)):
        assert (reply.status, reply.json()["code"]) == (409, "reference_expired")
    balances = (await buyer.get("/v1/balances")).json()
    cash = next(row for row in balances["accounts"] if row["kind"] == "BUYER_CASH")
    assert cash["balance_fen"] == 4_000_000
    assert (await op.post("/v1/deposits", json={**deposit, "deposit_ref": "ICBC-20260101-2"})).status == 201
    # a client order id beyond the window, its order no longer open, places a new order
    symbol = "T-MEM-1"
    await ex.list_instrument(symbol)
    order = {"client_order_id": "mem-1", "instrument": symbol, "side": "buy", "price_fen": 2700,
             "quantity_heads": 1}
    placed = (await buyer.post("/v1/orders", json=order)).json()
    assert (await buyer.post("/v1/orders", json=order)).json()["order_id"] == placed["order_id"]  # a retry
    assert (await buyer.request("DELETE", f"/v1/orders/{placed['order_id']}")).status == 200
    await _until_forgotten(lambda: (buyer.participant_id, "mem-1") not in sequencer._client_orders)
    again = await buyer.post("/v1/orders", json=order)
    assert again.status in (200, 201) and again.json()["order_id"] != placed["order_id"]


async def test_the_api_answers_the_same_about_a_trade_and_payout_once_memory_forgot_them(
    short_memory: GatewayExchange,
) -> None:
    """Settled, paid and confirmed, then forgotten: the trade's settlement, the payout, both lists and the
    bank file read back from settlement_history exactly as they read from memory."""
    ex = short_memory
    op = ex.operator
    symbol = "T-MEM-2"
    await ex.list_instrument(symbol, overweight_limit_g=10_000, overweight_discount_fen_per_kg=60,
                             dispute_window_ms=200)
    buyer = await ex.register(Role.BUYER, "买家")
    farmer = await _farmer(ex, "李四", "6217000011113333")
    await _sell(ex, farmer, symbol, 5)
    report = await _buy(buyer, symbol, 5)
    trade_id = report["fills"][0]["trade_id"]
    await _weigh_in(farmer, trade_id, 5, 560_000)
    settled = await _settled(farmer, trade_id)
    run = (await op.post("/v1/payout-runs", json={"run_ref": "run-mem"})).json()
    [payout_id] = [p["payout_id"] for p in run["payouts"] if p["payee_id"] == farmer.participant_id]
    exported = await op.post("/v1/payout-files", json={"file_ref": "file-mem"})
    file_rows, file_digest = exported.body, exported.headers["X-Hogx-SHA256"]
    confirmations = f"payout_id,attempt,status,bank_ref,reason\n{payout_id},1,OK,ICBC-9,\n"
    imported = await op.post("/v1/payout-confirmations", json={"file_ref": "conf-mem", "csv": confirmations})
    assert imported.status == 200
    reads = {
        "trade": (farmer, f"/v1/trades/{trade_id}/settlement"),
        "trades": (farmer, "/v1/settlement/trades"),
        "trades_by_buyer": (buyer, "/v1/settlement/trades?state=SETTLED"),
        "payout": (farmer, f"/v1/payouts/{payout_id}"),
        "payouts": (op, "/v1/payouts?state=CONFIRMED"),
        "report": (op, f"/v1/reports/settlement?date={_cst_date(settled['settled_ms'])}"),
        "farmers_report": (farmer, f"/v1/reports/settlement?date={_cst_date(settled['settled_ms'])}"),
    }
    seen = {name: (await client.get(path)).json() for name, (client, path) in reads.items()}
    assert seen["trade"] == settled | {"state": "SETTLED"} and seen["payout"]["state"] == "CONFIRMED"
    assert [t["trade_id"] for t in seen["trades"]["trades"]] == [trade_id]
    assert [row["trade_id"] for row in seen["farmers_report"]["rows"]] == [trade_id]
    sequencer = ex.app[EXCHANGE].sequencer

    def forgotten() -> bool:
        clearing = sequencer.core.clearing
        return (trade_id not in clearing.trades and payout_id not in clearing.payouts and not clearing.sent_files
                and not clearing.file_digests)

    await _until_forgotten(forgotten)
    await asyncio.sleep(0.3)  # the tick that forgot them is committed by now
    assert {name: (await client.get(path)).json() for name, (client, path) in reads.items()} == seen
    again = await op.get("/v1/payout-files/file-mem")  # the bytes sent, by the digest archived with the file
    assert (again.body, again.headers["X-Hogx-SHA256"]) == (file_rows, file_digest)
    assert (await buyer.get(f"/v1/payouts/{payout_id}")).status == 404  # still only the payee's
    assert (await farmer.get("/v1/settlement/trades?state=OPEN")).json()["trades"] == []


def test_a_settled_trade_is_kept_while_its_money_waits_for_the_payee() -> None:
    x = world()
    x.deposit(BUYER, 10_000_000)
    trade = x.trade(BUYER, FARMER, 2800, 5)
    x.weigh_in(trade.trade_id, 5, 550_000)
    _tick(x, 72 * HOUR_NS)  # settled: the proceeds wait in the farmer's payable
    assert x.clearing.trades[trade.trade_id].state.name == "SETTLED"
    _tick(x, 3 * WINDOW_NS)
    _restart(x)
    assert trade.trade_id in x.clearing.trades  # how long the farmer has waited is read from it
    run = x.ok(RunPayouts(OPERATOR, 0, "run-1"))
    pairs = tuple((e.payout_id, e.attempt) for e in x.of(PayoutChanged, run))
    _tick(x, 3 * WINDOW_NS)
    assert trade.trade_id in x.clearing.trades  # in a payout not yet final
    x.ok(MarkPayoutsSent(OPERATOR, 0, "file-1", pairs))
    x.ok(ImportBankConfirmations(OPERATOR, 0, "conf-1", tuple(
        BankConfirmation(pid, attempt, True, f"bank{pid}") for pid, attempt in pairs)))
    _tick(x, WINDOW_NS - 1)
    assert trade.trade_id in x.clearing.trades
    _tick(x, WINDOW_NS + 1)
    _restart(x)
    assert trade.trade_id not in x.clearing.trades and not x.clearing.payouts


# -- the sequencer's idempotency index: ages kept across restarts -----------------------------------------


async def test_the_idempotency_index_keeps_its_ages_across_restarts_and_forgets_after_the_window(
    fresh_database_url: Any,
) -> None:
    """Restarted more often than the window (as a daily deploy does with the default 24 h), the index
    still forgets: each id keeps when it was indexed through snapshots and replayed tails alike. Before,
    ids indexed before a restart counted from the restart, so the index (and every snapshot's copy)
    grew with history."""
    dsn = await fresh_database_url()
    clock = StepClock(step_ns=1_000)
    window_ns = 10**9
    buyer = 10

    async def session(submit: Any, *, snapshot: bool, advance_ns: int = 0) -> Sequencer:
        clock.now_ns += advance_ns
        sequencer = Sequencer(dsn, core_type=Core, clock_ns=clock, snapshot_every=2, retention_ns=window_ns)
        await sequencer.start()
        try:
            await submit(sequencer)
            await sequencer.submit(ClockTick(0, 0, window_ns))
        finally:
            await sequencer.stop(snapshot=snapshot)
        return sequencer

    async def first(s: Sequencer) -> None:
        await s.submit(list_instrument())
        cancelled = await s.submit(order(buyer, Side.BUY, 2700, 5, cid="gone-1"))
        await s.submit(CancelOrder(buyer, 0, cancelled.events[0].order_id))  # type: ignore[union-attr]
        await s.submit(order(buyer, Side.BUY, 2700, 5, cid="rests"))
        await s.submit(order(buyer, Side.BUY, 2701, 5, cid="rejected"))  # off the tick: rejected, indexed

    async def nothing(_: Sequencer) -> None:
        return None

    old = {(buyer, "gone-1"), (buyer, "rests"), (buyer, "rejected")}
    live = await session(first, snapshot=False)  # the next start replays a tail after a snapshot
    assert set(live._client_orders) == old
    inside = await session(nothing, snapshot=True, advance_ns=window_ns // 2)
    assert set(inside._client_orders) == old
    times = list(inside._client_order_times)

    async def retry(s: Sequencer) -> None:  # inside the window, after two restarts: the original answer
        assert list(s._client_order_times) == times
        assert (await s.submit(order(buyer, Side.BUY, 2700, 5, cid="gone-1"))).replay

    await session(retry, snapshot=False)
    after = await session(nothing, snapshot=False, advance_ns=window_ns // 2 + 10**6)
    assert set(after._client_orders) == {(buyer, "rests")}  # a resting order keeps its id
    assert len(after._client_order_keys) == len(after._client_order_times) == 1

    async def again(s: Sequencer) -> None:  # recovered from snapshot + tail as the live writer left it
        assert set(s._client_orders) == {(buyer, "rests")}
        assert not (await s.submit(order(buyer, Side.BUY, 2700, 5, cid="gone-1"))).replay  # a new order

    await session(again, snapshot=True)


async def test_the_gateway_forgets_closed_orders_and_old_fills_and_answers_them_from_postgresql(
    short_memory: GatewayExchange,
) -> None:
    """Orders filled and cancelled and their fills, once the window passed and the PostgreSQL projection
    holds them, leave the read model; every order and fill answer reads the same as from memory, page by
    page, and what memory holds is what is open."""
    ex = short_memory
    symbol = "T-MEM-3"
    await ex.list_instrument(symbol)
    buyer = await ex.register(Role.BUYER, "买家")
    farmer = await ex.register(Role.FARMER, "农户")
    lot_id = await ex.register_lot(farmer, symbol, 100)

    def body(cid: str, side: str, price: int, heads: int, **extra: Any) -> dict[str, Any]:
        return {"client_order_id": cid, "instrument": symbol, "side": side, "price_fen": price,
                "quantity_heads": heads, **extra}

    for i in range(3):  # three sells filled by three buys: six closed orders, six fills a side
        assert (await farmer.post("/v1/orders", json=body(f"s{i}", "sell", 2800, 5, lot_id=lot_id))).status == 201
        assert (await buyer.post("/v1/orders", json=body(f"b{i}", "buy", 2800, 5))).status == 201
    cancelled = (await buyer.post("/v1/orders", json=body("gone", "buy", 2700, 2))).json()
    assert (await buyer.request("DELETE", f"/v1/orders/{cancelled['order_id']}")).status == 200
    partly = (await farmer.post("/v1/orders", json=body("rests", "sell", 2850, 10, lot_id=lot_id))).json()
    assert (await buyer.post("/v1/orders", json=body("b-part", "buy", 2850, 4))).status == 201
    order_ids = [o["order_id"] for trader in (buyer, farmer) for o in (await trader.get("/v1/orders")).json()["orders"]]
    assert len(order_ids) == 9

    async def answers() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for name, trader in (("buyer", buyer), ("farmer", farmer)):
            for path in ("/v1/orders", "/v1/fills", "/v1/orders?status=FILLED", f"/v1/orders?instrument={symbol}"):
                seen[f"{name} {path}"] = (await trader.get(path)).json()
            for path in ("/v1/orders", "/v1/fills"):  # page by page, one a page
                pages, cursor = [], None
                while True:
                    reply = (await trader.get(f"{path}?limit=1" + (f"&cursor={cursor}" if cursor else ""))).json()
                    pages.append(reply)
                    cursor = reply["next_cursor"]
                    if cursor is None:
                        break
                seen[f"{name} {path} pages"] = pages
        for order_id in order_ids:
            trader = buyer if any(o["order_id"] == order_id for o in seen["buyer /v1/orders"]["orders"]) else farmer
            seen[f"order {order_id}"] = (await trader.get(f"/v1/orders/{order_id}")).json()
            seen[f"cancel {order_id}"] = (await trader.request("DELETE", f"/v1/orders/{order_id}")).json() \
                if order_id != partly["order_id"] else None
        seen["unknown"] = (await buyer.get(f"/v1/orders/{partly['order_id']}")).status  # another's: 404
        return seen

    before = await answers()
    assert before["cancel " + str(cancelled["order_id"])]["code"] == "order_not_open"
    read_model = ex.app[EXCHANGE].read_model
    await _until_forgotten(lambda: len(read_model.orders) == 1 and not read_model.fills_by_participant)
    # what memory holds is what is open: the partly filled sell, with its own fill
    assert [rec.order_id for rec in read_model.orders.values()] == [partly["order_id"]]
    assert read_model.forgotten_orders and read_model.forgotten_fills
    assert await answers() == before


async def test_a_registration_is_forgotten_after_the_window_and_its_reference_refused_for_ever(
    short_memory: GatewayExchange,
) -> None:
    """Inside the window a repeated registration_ref answers the same participant and key; after it the
    clearing no longer holds the registration, and a repeat is 409 registration_expired from the
    reference's settlement_refs row: never a second participant."""
    ex = short_memory
    op = ex.operator
    body = {"role": "farmer", "name": "周五", "id_number_masked": "5001**********123X",
            "bank_account": "6217000011116666", "registration_ref": "reg-mem-1"}
    first = await op.post("/v1/admin/participants", json=body)
    assert first.status == 201
    assert (await op.post("/v1/admin/participants", json=body)).json() == first.json()
    sequencer = ex.app[EXCHANGE].sequencer
    await _until_forgotten(lambda: "reg-mem-1" not in sequencer.core.clearing.registrations)
    late = await op.post("/v1/admin/participants", json=body)
    assert (late.status, late.json()["code"]) == (409, "registration_expired")
    async with ex.app[POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM participants WHERE name = '周五'") == 1
        assert await pgstore.used_reference(conn, 5, 0, "reg-mem-1") is not None
    assert (await op.post("/v1/admin/participants", json={**body, "registration_ref": "reg-mem-2"})).status == 201
    assert list(sequencer.core.clearing.registrations) == ["reg-mem-2"]  # only what is inside the window


# -- loans: a closed advance leaves memory a window after its trade ---------------------------------------


def test_closed_advances_leave_memory_and_snapshots_after_the_window() -> None:
    """A long-run market day advances a tenth of many trades, each repaid at its trade's settlement: the
    clearing then holds only open loans, and the snapshot no closed one. Events and ledger rows are the
    same whatever the window (the oracle: one that never elapses)."""
    market = LongMarket(7)
    setup = market.commands[:]
    commands, _ = market.day(0, 3_000)
    clearing = _clearing(market.core)
    closed = sorted(k for k, loan in clearing.loans.items() if not loan.is_open)
    assert len(closed) > 20 and clearing.held_counts()["loans"] == len(clearing.loans)
    archived: list[int] = []
    for _ in range(3):  # a window for the trades (their payouts confirmed), one more for their advances
        market.ts_ns += DEFAULT_RETENTION_NS
        tick = ClockTick(0, market.ts_ns)
        market.core.apply(tick)  # (MarketDay.add discards what the tick archived, as its writer takes it)
        archived += [r.loan_id for kind, r in clearing.take_archived(tick.ts_ns) if kind == FinalKind.LOAN]
        clearing.discard_command_rows()
    # held: what is owed, and an advance whose trade is held (its proceeds still wait in a payable)
    held = sorted(k for k, loan in clearing.loans.items() if loan.is_open or loan.trade_id in clearing.trades)
    assert sorted(clearing.loans) == held and clearing.held_counts()["loans"] == len(held)
    assert len(held) < len(closed) // 10
    assert sorted(archived) == sorted(set(closed) - set(held))  # each forgotten once, for settlement_history
    assert sum(len(ids) for ids in clearing._loans_by_borrower.values()) == len(held)
    restored = Core.from_snapshot(market.core.snapshot())
    assert sorted(_clearing(restored).loans) == held and restored.state_hash() == market.core.state_hash()
    stream = [*setup, *commands]
    assert _digest(stream, 2_000_000)[0] == _digest(stream, KEEP_ALL_NS)[0]


async def test_the_api_answers_the_same_about_loans_once_memory_forgot_them(short_memory: GatewayExchange) -> None:
    """An advance repaid at its trade's settlement, the trade paid out and forgotten, then the closed loan
    forgotten too: the financier's views, the borrower's loans, the trade as its lender sees it, a
    write-off (409 loan_closed; another financier's 404) and a repayment answer as they did before."""
    ex = short_memory
    op = ex.operator
    symbol = "T-MEM-LOAN"
    await ex.list_instrument(symbol, dispute_window_ms=200)
    fin = await ex.register(Role.FINANCIER, "荣昌农商行")
    other_fin = await ex.register(Role.FINANCIER, "别的银行")
    await ex.deposit(fin.participant_id, 10_000_000, "financier_funds")
    buyer = await ex.register(Role.BUYER, "买家")
    farmer = await _farmer(ex, "王五", "6217000011117777")
    assert (await farmer.post("/v1/consents", json={"financier_id": fin.participant_id})).status == 200
    await _sell(ex, farmer, symbol, 2)
    trade_id = (await _buy(buyer, symbol, 2))["fills"][0]["trade_id"]
    advanced = await fin.post("/v1/advances", json={"trade_id": trade_id, "amount_fen": 100_000, "rate_bps": 600})
    assert advanced.status == 201
    [loan_id] = [loan["loan_id"] for loan in advanced.json()["loans"]]
    await _weigh_in(farmer, trade_id, 2, 220_000)
    settled = await _settled(farmer, trade_id)
    assert settled["principal_repaid_fen"] == 100_000
    run = (await op.post("/v1/payout-runs", json={"run_ref": "run-loan"})).json()
    [payout_id] = [p["payout_id"] for p in run["payouts"] if p["payee_id"] == farmer.participant_id]
    assert (await op.post("/v1/payout-files", json={"file_ref": "file-loan"})).status in (200, 201)
    confirmations = f"payout_id,attempt,status,bank_ref,reason\n{payout_id},1,OK,ICBC-L,\n"
    assert (await op.post("/v1/payout-confirmations", json={"file_ref": "conf-loan", "csv": confirmations})
            ).status == 200
    sequencer = ex.app[EXCHANGE].sequencer

    async def answers() -> dict[str, Any]:
        got: dict[str, Any] = {}
        for name, client, path in (("portfolio", fin, "/v1/financing/clients"),
                                   ("client", fin, f"/v1/financing/clients/{farmer.participant_id}"),
                                   ("loans", farmer, "/v1/loans"),
                                   ("lender_trade", fin, f"/v1/trades/{trade_id}/settlement"),
                                   ("report", fin, f"/v1/reports/settlement?date={_cst_date(settled['settled_ms'])}")):
            reply = await client.get(path)
            got[name] = (reply.status, reply.json())
        for name, client, path, body in (
                ("write_off", fin, f"/v1/loans/{loan_id}/write-off", {"reason": "x"}),
                ("others_write_off", other_fin, f"/v1/loans/{loan_id}/write-off", {"reason": "x"}),
                ("repay", farmer, "/v1/repayments", {"financier_id": fin.participant_id, "amount_fen": 1})):
            reply = await client.post(path, json=body)
            got[name] = (reply.status, reply.json()["code"])
        return got

    # the trade leaves memory first (its payout is final); its closed advance a window later
    await _until_forgotten(lambda: trade_id not in sequencer.core.clearing.trades)
    await asyncio.sleep(0.2)  # the tick that forgot the trade is committed by now
    before = await answers()
    assert loan_id in sequencer.core.clearing.loans, "the loan was forgotten before it could be read from memory"
    assert before["write_off"] == (409, "loan_closed") and before["others_write_off"] == (404, "unknown_loan")
    assert [loan["loan_id"] for loan in before["loans"][1]["loans"]] == [loan_id]
    assert before["client"][1]["interest_collected_fen"] == before["loans"][1]["loans"][0]["interest_paid_fen"]
    assert before["lender_trade"][0] == 200 and before["lender_trade"][1]["advance_loan_id"] == loan_id
    await _until_forgotten(lambda: loan_id not in sequencer.core.clearing.loans)
    await asyncio.sleep(0.3)  # the tick that forgot the loan is committed by now
    assert await answers() == before
    async with ex.app[POOL].acquire() as conn:
        assert len(await pgstore.archived_loans(conn, fin.participant_id, farmer.participant_id)) == 1


# -- accounts: a repaid borrower's loan accounts are parked ------------------------------------------------


def _loan_account_ids(clearing: Clearing, financier: int, borrower: int) -> list[int]:
    return [clearing.accounts[(code, financier, borrower)] for code in (AC.LOANS_RECEIVABLE, AC.LOANS_FUNDED)]


def test_a_repaid_borrowers_loan_accounts_are_parked_and_come_back_with_its_next_loan() -> None:
    """The loan accounts of a financier and a borrower owing it nothing are parked: out of what transfers look
    up and listed compactly in snapshots, still read as accounts (balances, statements, the database's
    reconciliation); the next advance unparks them with their counters. Same events and rows as without."""
    x = _advanced_farmer()  # FARMER owes FINANCIER 2,000,000 fen, interest-free
    ledger = x.clearing.ledger
    ids = _loan_account_ids(x.clearing, FINANCIER, FARMER)
    x.ok(RepayLoan(FARMER, 0, FINANCIER, 500_000, "part"))
    assert not ledger.parked  # still owed: nothing parked
    all_before = ledger.accounts()
    x.ok(RepayLoan(FARMER, 0, FINANCIER, 1_500_000, "rest"))
    assert sorted(ledger.parked) == ids and x.clearing.held_counts()["parked_accounts"] == 2
    assert all(ledger.available_fen(i) == 0 for i in ids)
    assert x.balance(AC.LOANS_RECEIVABLE, FINANCIER, FARMER) == 0
    parked = [ledger.account(i) for i in ids]
    assert all(a is not None and a.debits_posted_fen == a.credits_posted_fen == 2_000_000 for a in parked)
    assert [a.account_id for a in ledger.accounts()] == [a.account_id for a in all_before]  # still accounts
    ledger.validate()
    snapshot = x.core.snapshot()
    _restart(x)  # the parked accounts survive a snapshot: same hash, still parked, counters intact
    assert sorted(x.clearing.ledger.parked) == ids and x.clearing.ledger.accounts() == ledger.accounts()
    # the next advance to the same borrower unparks them, counters intact, and lends on them
    trade = x.trade(BUYER, FARMER, 2800, 10)
    x.ok(GrantAdvance(FINANCIER, 0, trade.trade_id, 300_000, 0))
    ledger = x.clearing.ledger
    assert not ledger.parked and x.balance(AC.LOANS_RECEIVABLE, FINANCIER, FARMER) == 300_000
    assert [ledger.account(i).debits_posted_fen for i in ids] == [2_300_000, 2_000_000]  # type: ignore[union-attr]
    assert Core.from_snapshot(snapshot).snapshot() == snapshot  # restores to the same bytes
    # the same stream without restarts: the same events, rows and state (live == replay)
    replay = new_exchange()
    events = [e for c in x.commands for e in replay.apply(c)]
    assert events == x.events and replay.state_hash() == x.core.state_hash()


def test_a_snapshot_leaves_out_the_keys_of_parked_accounts_and_one_listing_them_restores_to_its_hash() -> None:
    """The clearing's key of a parked account (kind, owner, counterparty -> id) is the ledger's parked record's:
    a snapshot leaves it out and a restore derives it. An earlier version's snapshot, which listed it,
    restores to its hash; the key stays listed until its account is unparked, and is left out once parked
    again."""
    x = _advanced_farmer()
    x.ok(RepayLoan(FARMER, 0, FINANCIER, 2_000_000, "all"))
    clearing = x.clearing
    ids = _loan_account_ids(clearing, FINANCIER, FARMER)
    assert sorted(clearing.ledger.parked) == ids
    accounts_at = ClearingSnapshot.__struct_fields__.index("accounts")
    fields = msgspec.msgpack.decode(clearing.snapshot())
    listed = [key[3] for key in fields[accounts_at]]
    assert listed and not set(listed) & set(ids)  # left out
    restored = Clearing.restore(clearing.snapshot())
    assert list(restored.accounts.items()) == list(clearing.accounts.items())  # the same keys, in the same order
    assert restored.snapshot() == clearing.snapshot()
    # what an earlier version wrote: every account's key listed
    fields[accounts_at] = sorted(([*k, v] for k, v in clearing.accounts.items()), key=lambda key: key[3])
    legacy = msgspec.msgpack.encode(fields)
    old = Clearing.restore(legacy)
    assert old.snapshot() == legacy and list(old.accounts.items()) == list(clearing.accounts.items())
    core_fields = msgspec.msgpack.decode(x.core.snapshot())
    core_fields[5] = legacy
    old_core = msgspec.msgpack.encode(core_fields)
    x.core = Core.from_snapshot(old_core)
    assert x.core.snapshot() == old_core
    # lent to again (unparked), repaid again (parked again): no longer listed
    trade = x.trade(BUYER, FARMER, 2800, 10)
    x.ok(GrantAdvance(FINANCIER, 0, trade.trade_id, 300_000, 0))
    assert not x.clearing.ledger.parked
    x.ok(RepayLoan(FARMER, 0, FINANCIER, 300_000, "again"))
    assert sorted(x.clearing.ledger.parked) == ids
    fields = msgspec.msgpack.decode(x.clearing.snapshot())
    assert not {key[3] for key in fields[accounts_at]} & set(ids)
    _restart(x)
    # the same stream without restarts: the same events and state (live == replay)
    replay = new_exchange()
    events = [e for c in x.commands for e in replay.apply(c)]
    assert events == x.events and replay.state_hash() == x.core.state_hash()


def test_a_ledger_snapshot_lists_parked_accounts_compactly_and_one_without_them_as_before() -> None:
    ledger = _funded_ledger()
    ledger.drain_new_accounts()
    before = ledger.snapshot()
    assert not ledger.park(10)  # it holds money: not parked
    assert ledger.snapshot() == before
    # an empty account is parked: an array of 8 ints in the snapshot, where it was a map of 11 fields
    receivable = Account(30, AC.LOANS_RECEIVABLE, 5, user_data=7, flags=CHART[AC.LOANS_RECEIVABLE].limit_flags)
    assert ledger.create_accounts([receivable], T0_NS + 1) == [CreateAccountResult.OK]
    assert not ledger.park(30)  # created since the rows were last drained: not yet
    ledger.drain_new_accounts()
    with_it = ledger.snapshot()
    assert ledger.park(30) and not ledger.park(30)
    parked = ledger.snapshot()
    assert len(parked) < len(with_it) - 40
    fields = msgspec.msgpack.decode(parked)
    flags = CHART[AC.LOANS_RECEIVABLE].limit_flags
    assert len(fields) == 8 and fields[-1] == [[30, AC.LOANS_RECEIVABLE, 5, LEDGER_CNY, flags, 7, T0_NS + 1, 0]]
    restored = Ledger.restore(parked)
    assert restored.snapshot() == parked and restored.accounts() == ledger.accounts()
    # parked, it takes no transfer; unparked, it does, as it was
    lend = Transfer(50, 30, 10, 5, TransferCode.ADVANCE)
    assert restored.create_transfers([lend], T0_NS + 2) == [T.DEBIT_ACCOUNT_NOT_FOUND]
    restored.unpark(30)
    assert restored.account(30) == ledger.account(30)
    assert restored.create_transfers([lend], T0_NS + 2) == [T.OK]
    restored.validate()


def test_a_long_run_holds_full_loan_accounts_only_for_pairs_with_an_open_loan() -> None:
    """Two long-run market days (advances on many trades, repaid at their settlement): the loan accounts of
    a financier and a borrower are held as accounts while a loan between them is open, parked otherwise;
    a restart keeps them so."""
    market = LongMarket(7)
    market.day(0, 3_000)
    market.day(1, 3_000)
    clearing = _clearing(market.core)
    ledger = clearing.ledger
    open_pairs = {(loan.financier_id, loan.borrower_id) for loan in clearing.loans.values() if loan.is_open}
    loan_accounts = {account_id: (owner, counterparty) for (code, owner, counterparty), account_id
                     in clearing.accounts.items() if code in (AC.LOANS_RECEIVABLE, AC.LOANS_FUNDED)}
    held = {pair for account_id, pair in loan_accounts.items() if account_id not in ledger.parked}
    assert held == open_pairs and len(ledger.parked) == len(loan_accounts) - 2 * len(open_pairs) > 100
    assert all(ledger.account(i) is not None for i in loan_accounts)  # parked or not, still accounts
    ledger.validate()
    restored = Core.from_snapshot(market.core.snapshot())
    assert restored.state_hash() == market.core.state_hash()
    assert _clearing(restored).ledger.parked.keys() == ledger.parked.keys()


# -- payouts packed in snapshots ------------------------------------------------------------------------


def _payout_night(day: MarketDay) -> list[PayoutChanged]:
    """Settle the day and pay it: one payout failed then retried (pending again), one failed then returned,
    one whose payee changed bank account since, the others confirmed. The payouts' last events."""
    day.add(ClockTick(0, 0))
    events = day.add(RunPayouts(OPERATOR, 0, "night-run"))
    pairs = tuple((e.payout_id, e.attempt) for e in events if isinstance(e, PayoutChanged))
    assert len(pairs) > 3
    day.add(MarkPayoutsSent(OPERATOR, 0, "night-file", pairs))
    (retried, _), (returned, _), (moved, _) = pairs[:3]
    rows = tuple(BankConfirmation(pid, attempt, pid not in (retried, returned), f"bank{pid}",
                                  "" if pid not in (retried, returned) else "account closed")
                 for pid, attempt in pairs)  # fmt: skip
    last = {e.payout_id: e for e in day.add(ImportBankConfirmations(OPERATOR, 0, "night-conf", rows))
            if isinstance(e, PayoutChanged)}  # fmt: skip
    last.update((e.payout_id, e) for e in day.add(RetryPayout(OPERATOR, 0, retried)) if isinstance(e, PayoutChanged))
    last.update((e.payout_id, e) for e in day.add(ReturnPayout(OPERATOR, 0, returned))
                if isinstance(e, PayoutChanged))  # fmt: skip
    payee = _clearing(day.core).payouts[moved].payee_id
    who = _clearing(day.core).participants[payee]
    day.add(UpdateParticipant(OPERATOR, 0, payee, who.name, "6222020200099998888", "102", "102100100001"))
    return [last[pid] for pid, _ in pairs]


def test_a_snapshot_packs_the_payouts_and_restores_them_whole() -> None:
    """A snapshot lists payouts packed (about half the bytes of the listed form): a restart holds every payout
    as it was, its snapshot is the same bytes, and retries of the night's commands answer alike before and
    after it, inside the window."""
    day = _market_day(1_500)
    last = _payout_night(day)
    clearing = _clearing(day.core)
    payouts = dict(clearing.payouts)
    states = {p.state for p in payouts.values()}
    assert {PayoutState.CONFIRMED, PayoutState.RETURNED, PayoutState.PENDING} <= states
    snap = clearing.snapshot()
    fields = msgspec.msgpack.decode(snap)
    listed_at = ClearingSnapshot.__struct_fields__.index("payouts")
    packed_at = ClearingSnapshot.__struct_fields__.index("packed_payouts")
    assert fields[listed_at] == [] and len(fields) > packed_at
    files, rows = fields[packed_at]
    assert "" in files and "night-file" in files and len(rows) == len(payouts)
    packed = len(msgspec.msgpack.encode(fields[packed_at]))
    listed = len(msgspec.msgpack.encode([payouts[k] for k in sorted(payouts)]))
    assert packed < 0.6 * listed
    # and the final queue: 5 bytes an entry, where a listed one takes 14
    final_at = ClearingSnapshot.__struct_fields__.index("final")
    entries = clearing.final[clearing._final_head:]
    assert fields[final_at] == [] and len(entries) > 100
    packed_final = fields[ClearingSnapshot.__struct_fields__.index("packed_final")]
    assert len(msgspec.msgpack.encode(packed_final)) < 0.5 * len(msgspec.msgpack.encode(entries))
    restored = Clearing.restore(snap)
    assert restored.payouts == payouts and list(restored.payouts) == sorted(payouts)
    assert restored.final == entries
    assert restored.snapshot() == snap
    # the moved payee's payouts keep the account they were made for (packed whole), as restored
    assert any(p.bank_account != restored.participants[p.payee_id].bank_account for p in restored.payouts.values())
    # retries inside the window, after a restart: the same answers
    core = Core.from_snapshot(day.core.snapshot())
    assert core.state_hash() == day.core.state_hash()
    pairs = tuple((e.payout_id, 1) for e in last)
    for c in (day.core, core):
        sent = [e for e in c.apply(MarkPayoutsSent(OPERATOR, day.ts_ns + 1, "night-file", pairs))
                if isinstance(e, PayoutChanged)]  # fmt: skip
        assert sent == [msgspec.structs.replace(e, ts_ns=day.ts_ns + 1) for e in last]
    assert core.state_hash() == day.core.state_hash()


def test_a_snapshot_listing_payouts_whole_restores_to_its_hash_and_packs_only_new_payouts() -> None:
    """An earlier version's snapshot (payouts and final queue listed whole, nothing packed) restores to its
    hash; the payouts and final records after it are packed, those it listed stay listed until forgotten."""
    day = _market_day(1_500)
    _close_the_day(day)
    clearing = _clearing(day.core)
    fields = msgspec.msgpack.decode(clearing.snapshot())
    names = ClearingSnapshot.__struct_fields__
    listed_at, final_at, packed_at = names.index("payouts"), names.index("final"), names.index("packed_payouts")
    assert fields[listed_at] == [] and fields[final_at] == [] and fields[packed_at] and len(fields) == len(names)
    # what an earlier version wrote: every payout and final entry listed, nothing packed
    old = list(fields[:packed_at])
    old[listed_at] = msgspec.msgpack.decode(msgspec.msgpack.encode([clearing.payouts[k]
                                                                    for k in sorted(clearing.payouts)]))
    legacy_final = clearing.final[clearing._final_head:]
    old[final_at] = msgspec.msgpack.decode(msgspec.msgpack.encode(legacy_final))
    legacy = msgspec.msgpack.encode(old)
    restored = Clearing.restore(legacy)
    assert restored.snapshot() == legacy and restored.payouts == clearing.payouts
    # the whole core's snapshot with that clearing: the exchange restarts from it, as it was written
    core_fields = msgspec.msgpack.decode(day.core.snapshot())
    assert core_fields[5] == clearing.snapshot()
    core_fields[5] = legacy
    old_core = msgspec.msgpack.encode(core_fields)
    day.core = Core.from_snapshot(old_core)
    assert day.core.snapshot() == old_core
    restored = _clearing(day.core)
    listed = set(restored.payouts)
    day.generate(day.transfers + 1_000)  # more trading, and a night: new payouts
    _close_the_day(day)
    new = set(restored.payouts) - listed
    assert new
    fields = msgspec.msgpack.decode(restored.snapshot())
    assert {p[0] for p in fields[listed_at]} == listed and len(fields[packed_at][1]) == len(new)
    assert msgspec.msgpack.encode(fields[final_at]) == msgspec.msgpack.encode(legacy_final)  # none forgotten yet
    assert len(fields[names.index("packed_final")]) == 3 * (len(restored.final) - restored._final_head
                                                             - len(fields[final_at]))  # fmt: skip
    again = Clearing.restore(restored.snapshot())
    assert again.snapshot() == restored.snapshot() and again.payouts == restored.payouts
    assert again.final == restored.final[restored._final_head:]
    # a window later the listed ones are forgotten: what is left is packed
    day.ts_ns += DEFAULT_RETENTION_NS
    day.add(ClockTick(0, 0))
    fields = msgspec.msgpack.decode(restored.snapshot())
    assert fields[listed_at] == [] and fields[final_at:final_at + 1] in ([], [[]])  # (left out if all are empty)
    assert Clearing.restore(restored.snapshot()).snapshot() == restored.snapshot()
