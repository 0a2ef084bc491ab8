"""The sequencer against a real PostgreSQL: results, Busy, idempotency, snapshots, replay equivalence.

Every test works in its own freshly migrated database. Crash and connection-loss behaviour is in
`test_recovery.py` and `test_kill9.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.commands import ClockTick, ConfirmDeposit, FundsAccount, PlaceOrder, decode_command
from exchange.core import Core
from exchange.domain import RejectReason, Side, TimeInForce
from exchange.events import OrderAccepted, OrderExpired, Rejected, Trade
from exchange.sequencer import (
    Busy,
    CommittedBatch,
    IdempotencyConflict,
    InvalidCommand,
    Result,
    Sequencer,
    State,
    Unavailable,
    decode_events,
)
from tests.factories import OPERATOR, SYMBOL, list_instrument, order, register_lot
from tests.sequencer_harness import (
    SELLERS,
    START_NS,
    StepClock,
    action_strategy,
    build_commands,
    client_ids,
    journal,
    replay_hash,
)

from .conftest import FreshDatabase


@pytest_asyncio.fixture
async def dsn(fresh_database_url: FreshDatabase) -> str:
    return await fresh_database_url()


@contextlib.asynccontextmanager
async def running(dsn: str, **options: Any) -> AsyncIterator[Sequencer]:
    options.setdefault("clock_ns", StepClock())
    sequencer = Sequencer(dsn, core_type=Core, **options)
    await sequencer.start()
    try:
        yield sequencer
    finally:
        await sequencer.stop()


async def setup_market(sequencer: Sequencer) -> int:
    """The instrument and one lot of seller 20; returns the lot id."""
    await sequencer.submit(list_instrument())
    result = await sequencer.submit(register_lot(20))
    return result.events[0].lot.lot_id  # type: ignore[union-attr]


# -- results ----------------------------------------------------------------------------------------------


async def test_results_are_stamped_journaled_and_equal_the_cores_answer(dsn: str) -> None:
    clock = StepClock()
    async with running(dsn, clock_ns=clock) as sequencer:
        lot_id = await setup_market(sequencer)
        buy = await sequencer.submit(order(10, Side.BUY, 2800, 5, cid="b1"))
        sell = await sequencer.submit(order(20, Side.SELL, 2790, 3, cid="s1", lot_id=lot_id))
        assert [buy.seq, sell.seq] == [3, 4]
        assert not buy.replay and not sell.replay
        trade = next(e for e in sell.events if isinstance(e, Trade))
        assert (trade.price_fen, trade.quantity_heads, trade.buy_remaining_heads) == (2800, 3, 2)
        assert sequencer.committed_seq == 4
    conn = await asyncpg.connect(dsn)
    try:
        rows = await journal(conn)
    finally:
        await conn.close()
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert [r.ts_ns for r in rows] == [START_NS + 1_000_000 * i for i in range(1, 5)]  # one clock read per batch
    assert all(r.command.ts_ns == r.ts_ns for r in rows)
    reference = Core()
    for row in rows:
        assert reference.apply(row.command) == row.events
    assert rows[2].events == buy.events and rows[3].events == sell.events


async def test_the_default_core_is_the_exchange_with_settlement_also_after_a_restart(dsn: str) -> None:
    # The other tests pass core_type=Core (the bare matching engine) to test the sequencer itself.
    first = Sequencer(dsn, clock_ns=StepClock())
    await first.start()
    assert first.core.clearing is not None
    await first.submit(list_instrument())
    refused = await first.submit(order(10, Side.BUY, 2800, 5, cid="b1"))  # participant 10 is not registered
    assert [(e.__class__, e.reason) for e in refused.events] == [(Rejected, RejectReason.UNKNOWN_PARTICIPANT)]
    await first.stop()  # snapshots the state at seq 2
    second = Sequencer(dsn, clock_ns=StepClock())
    recovery = await second.start()
    try:
        assert (recovery.snapshot_seq, second.core.clearing is not None) == (2, True)
        assert second.core.state_hash() == first.core.state_hash()
        again = await second.submit(order(10, Side.BUY, 2800, 5, cid="b1"))  # the retry gets the first answer
        assert (again.seq, again.replay, again.events) == (2, True, refused.events)
    finally:
        await second.stop()

async def test_the_default_sequencer_commits_the_ledger_rows_with_their_batch(dsn: str) -> None:
    # no extra_writes given: a core with clearing must still write its ledger rows in the batch
    sequencer = Sequencer(dsn, clock_ns=StepClock())
    await sequencer.start()
    try:
        deposit = ConfirmDeposit(0, 0, deposit_ref="D-1", owner_id=0,
                                 account=FundsAccount.POVERTY_SUBSIDY_FUND, amount_fen=12_345)
        result = await sequencer.submit(deposit)
        assert [e.__class__.__name__ for e in result.events] == ["FundsDeposited"]
    finally:
        await sequencer.stop()
    conn = await asyncpg.connect(dsn)
    try:
        amounts = await conn.fetch("SELECT * FROM ledger_balances")
        assert amounts, "the deposit's ledger rows were not written"
    finally:
        await conn.close()


async def test_a_command_that_cannot_be_journaled_is_refused_alone(dsn: str) -> None:
    async with running(dsn) as sequencer:
        lot_id = await setup_market(sequencer)
        orders = [sequencer.submit_nowait(order(20, Side.SELL, 2800, 1, cid=f"s{i}", lot_id=lot_id)) for i in range(5)]
        too_big = ConfirmDeposit(0, 0, deposit_ref="D-2", owner_id=1, account=FundsAccount.TRADING_CASH,
                                 amount_fen=2**70)
        with pytest.raises(InvalidCommand):
            sequencer.submit_nowait(too_big)
        results = await asyncio.gather(*orders)  # the others are journaled as usual
        assert all(isinstance(r.events[0], OrderAccepted) for r in results)


async def test_time_never_goes_backwards(dsn: str) -> None:
    readings = iter([START_NS + 50, START_NS + 10, START_NS + 10, START_NS + 70])
    async with running(dsn, clock_ns=lambda: next(readings)) as sequencer:
        stamps = [(await sequencer.submit(ClockTick(OPERATOR, 0))).ts_ns for _ in range(4)]
    assert stamps == [START_NS + 50, START_NS + 50, START_NS + 50, START_NS + 70]


async def test_submit_is_unavailable_before_start_and_after_stop(dsn: str) -> None:
    sequencer = Sequencer(dsn, core_type=Core)
    with pytest.raises(Unavailable) as refused:
        await sequencer.submit(ClockTick(OPERATOR, 0))
    assert refused.value.code == "unavailable"
    await sequencer.start()
    assert (await sequencer.submit(ClockTick(OPERATOR, 0))).seq == 1
    await sequencer.stop()
    assert sequencer.state is State.STOPPED
    with pytest.raises(Unavailable):
        sequencer.submit_nowait(ClockTick(OPERATOR, 0))


# -- Busy -------------------------------------------------------------------------------------------------


async def test_a_full_queue_answers_busy_at_once_and_enqueues_nothing(dsn: str) -> None:
    async with running(dsn, queue_size=3) as sequencer:
        await setup_market(sequencer)
        # No await between these calls: the writer cannot drain the queue meanwhile.
        accepted = [sequencer.submit_nowait(order(10, Side.BUY, 2800, 1, cid=f"q{i}")) for i in range(3)]
        with pytest.raises(Busy) as busy:
            sequencer.submit_nowait(order(10, Side.BUY, 2800, 1, cid="overflow"))
        assert busy.value.code == "busy"
        assert 0 < busy.value.retry_after_s <= 5
        with pytest.raises(Busy):
            sequencer.submit_many([order(11, Side.BUY, 2800, 1, cid="m1"), order(11, Side.BUY, 2800, 1, cid="m2")])
        assert sequencer.queue_depth == 3
        results = await asyncio.gather(*accepted)
        assert [r.seq for r in results] == [3, 4, 5]
        # Room again: the refused ones can now go in, all of a submit_many or none.
        more = await asyncio.gather(*sequencer.submit_many([order(11, Side.BUY, 2800, 1, cid=f"m{i}") for i in (1, 2)]))
        assert [r.seq for r in more] == [6, 7]
    conn = await asyncpg.connect(dsn)
    try:
        ids = [cid for _, cid in client_ids(await journal(conn))]
    finally:
        await conn.close()
    assert ids == ["q0", "q1", "q2", "m1", "m2"]


async def test_a_future_its_caller_cancelled_leaves_the_others_of_its_batch_their_results(dsn: str) -> None:
    async with running(dsn) as sequencer:
        await setup_market(sequencer)
        futures = sequencer.submit_many([order(10, Side.BUY, 2800 - 10 * i, 1, cid=f"c{i}") for i in range(4)])
        futures[1].cancel()  # the caller went away: its command is journaled all the same
        results = [await futures[i] for i in (0, 2, 3)]
        assert [r.seq for r in results] == [3, 5, 6]
        assert futures[1].cancelled()
        # the futures resolved before and after the cancelled one carry their own answers
        assert all(next(e for e in r.events if isinstance(e, OrderAccepted)).price_fen == 2800 - 10 * i
                   for r, i in zip(results, (0, 2, 3), strict=True))
    conn = await asyncpg.connect(dsn)
    try:
        assert [cid for _, cid in client_ids(await journal(conn))] == ["c0", "c1", "c2", "c3"]
    finally:
        await conn.close()


# -- idempotency ------------------------------------------------------------------------------------------


async def test_retries_in_the_same_batch_share_the_original_answer(dsn: str) -> None:
    async with running(dsn) as sequencer:
        await setup_market(sequencer)
        first = order(10, Side.BUY, 2800, 4, cid="dup")
        same = msgspec.structs.replace(first, ts_ns=12345)  # the caller's ts_ns does not count
        other = msgspec.structs.replace(first, price_fen=2790)
        futures = sequencer.submit_many([first, same, other])
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
    original, replayed, conflict = outcomes
    assert isinstance(original, Result) and isinstance(replayed, Result)
    assert (replayed.seq, replayed.ts_ns, replayed.events, replayed.replay) == (
        original.seq, original.ts_ns, original.events, True,
    )
    assert isinstance(conflict, IdempotencyConflict)
    assert (conflict.code, conflict.seq, conflict.client_order_id) == ("idempotency_conflict", original.seq, "dup")
    conn = await asyncpg.connect(dsn)
    try:
        assert client_ids(await journal(conn)) == [(10, "dup")]
    finally:
        await conn.close()


@pytest.mark.parametrize("snapshot_on_stop", [True, False], ids=["index-from-snapshot", "index-from-replay"])
async def test_a_retry_after_restart_returns_the_original_answer(dsn: str, snapshot_on_stop: bool) -> None:
    sequencer = Sequencer(dsn, core_type=Core, clock_ns=StepClock())
    await sequencer.start()
    await setup_market(sequencer)
    placed = await sequencer.submit(order(10, Side.BUY, 2800, 4, cid="keep"))
    rejected = await sequencer.submit(order(10, Side.BUY, 9990, 4, cid="far"))  # outside the ±4 % band
    assert rejected.events == [Rejected(0, rejected.ts_ns, 10, RejectReason.PRICE_OUTSIDE_BAND, "far", 0, SYMBOL)]
    await sequencer.stop(snapshot=snapshot_on_stop)

    async with running(dsn) as restarted:
        assert restarted.last_recovery is not None
        assert restarted.last_recovery.snapshot_seq == (4 if snapshot_on_stop else 0)
        again = await restarted.submit(order(10, Side.BUY, 2800, 4, cid="keep"))
        assert again == Result(placed.seq, placed.ts_ns, placed.events, replay=True)
        again_rejected = await restarted.submit(order(10, Side.BUY, 9990, 4, cid="far"))
        assert again_rejected == Result(rejected.seq, rejected.ts_ns, rejected.events, replay=True)
        with pytest.raises(IdempotencyConflict) as conflict:
            await restarted.submit(order(10, Side.BUY, 2800, 5, cid="keep"))
        assert conflict.value.seq == placed.seq
        other_participant = await restarted.submit(order(11, Side.BUY, 2800, 4, cid="keep"))
        assert not other_participant.replay and other_participant.seq == 5


async def test_malformed_client_ids_are_rejected_every_time_not_replayed(dsn: str) -> None:
    async with running(dsn) as sequencer:
        await setup_market(sequencer)
        first = await sequencer.submit(order(10, Side.BUY, 2800, 1, cid="x" * 37))
        second = await sequencer.submit(order(10, Side.BUY, 2800, 1, cid="x" * 37))
    assert (first.seq, second.seq) == (3, 4)
    assert not second.replay
    assert [type(e) for e in first.events + second.events] == [Rejected, Rejected]
    assert first.events[0].reason == RejectReason.INVALID_ORDER  # type: ignore[union-attr]


# -- snapshots, subscribers, time -------------------------------------------------------------------------


async def test_snapshots_every_n_commands_record_the_replayed_hash(dsn: str) -> None:
    async with running(dsn, snapshot_every=5) as sequencer:
        await setup_market(sequencer)
        for i in range(10):  # one command per batch: snapshots land exactly on 5 and 10
            await sequencer.submit(order(10 + i % 2, Side.BUY, 2800 - 10 * (i % 3), 2, cid=f"o{i}"))
        live_hash = sequencer.core.state_hash()
    conn = await asyncpg.connect(dsn)
    try:
        snapshots = await conn.fetch("SELECT seq, state_hash FROM snapshots ORDER BY seq")
        assert [s["seq"] for s in snapshots] == [5, 10, 12]  # 12: taken by the clean stop
        for snapshot in snapshots:
            assert snapshot["state_hash"] == await replay_hash(conn, use_snapshot=False, until_seq=snapshot["seq"])
        assert snapshots[-1]["state_hash"] == live_hash
    finally:
        await conn.close()


async def test_subscribers_see_every_committed_batch_in_order(dsn: str) -> None:
    seen: list[CommittedBatch] = []
    async with running(dsn, max_batch=4) as sequencer:
        unsubscribe = sequencer.subscribe(seen.append)
        feed = sequencer.feed()
        first_from_feed = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0)
        await setup_market(sequencer)
        results = await asyncio.gather(
            *sequencer.submit_many([order(10, Side.BUY, 2800, 1, cid=f"f{i}") for i in range(10)])
        )
        assert (await first_from_feed).first_seq == 1
        await feed.aclose()
        unsubscribe()
        await sequencer.submit(order(10, Side.BUY, 2800, 1, cid="after"))
    entries = [entry for batch in seen for entry in batch.entries()]
    assert [seq for seq, _, _ in entries] == list(range(1, 13))
    assert max(len(batch) for batch in seen) <= 4
    by_seq = {seq: events for seq, _, events in entries}
    assert all(by_seq[r.seq] == r.events for r in results)


async def test_a_clock_tick_expires_gtd_orders_without_traffic(dsn: str) -> None:
    now = [START_NS]
    expired: list[OrderExpired] = []
    async with running(dsn, clock_ns=lambda: now[0], tick_interval_s=0.01) as sequencer:
        sequencer.subscribe(
            lambda batch: expired.extend(e for _, _, events in batch.entries() for e in events
                                         if isinstance(e, OrderExpired))
        )
        await setup_market(sequencer)
        placed = await sequencer.submit(
            order(10, Side.BUY, 2800, 3, cid="gtd", tif=TimeInForce.GTD, expire_at_ns=START_NS + 1_000)
        )
        order_id = next(e.order_id for e in placed.events if isinstance(e, OrderAccepted))
        now[0] = START_NS + 1_000
        for _ in range(500):
            if expired:
                break
            await asyncio.sleep(0.01)
    assert [(e.order_id, e.expired_heads) for e in expired] == [(order_id, 3)]


# -- replay equivalence -----------------------------------------------------------------------------------

async def _check_replay_equivalence(
    dsn: str, actions: list[tuple[Any, ...]], groups: list[int], max_batch: int, snapshot_every: int
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE journal, snapshots")
        clock = StepClock(step_ns=3_000_000)  # GTD expiries (1-60 ms out) fall inside the run
        sequencer = Sequencer(dsn, core_type=Core, clock_ns=clock, max_batch=max_batch, snapshot_every=snapshot_every)
        await sequencer.start()
        await sequencer.submit(list_instrument())
        lots = {}
        for seller in SELLERS:
            lots[seller] = (await sequencer.submit(register_lot(seller))).events[0].lot.lot_id  # type: ignore[union-attr]
        commands = build_commands(actions, lots)
        outcomes: list[Result | BaseException] = []
        position = 0
        for size in itertools.cycle(groups):  # groups of varying size make batches of varying size
            if position >= len(commands):
                break
            group = commands[position : position + size]
            position += size
            outcomes += await asyncio.gather(*sequencer.submit_many(group), return_exceptions=True)
        live_hash = sequencer.core.state_hash()
        await sequencer.stop(snapshot=False)  # the latest snapshot stays behind the end: a real tail

        assert all(isinstance(o, Result | IdempotencyConflict) for o in outcomes), outcomes
        first_answer: dict[tuple[int, str], Result] = {}
        for command, outcome in zip(commands, outcomes, strict=True):
            if isinstance(command, PlaceOrder) and isinstance(outcome, Result):
                key = (command.participant_id, command.client_order_id)
                if outcome.replay:
                    assert msgspec.structs.replace(first_answer[key], replay=True) == outcome
                else:
                    assert key not in first_answer
                    first_answer[key] = outcome
        rows = await journal(conn)
        assert len(client_ids(rows)) == len(set(client_ids(rows)))
        fresh = Core()  # every journaled command replays to exactly the events it was answered with
        for row in rows:
            assert fresh.apply(row.command) == row.events, f"seq {row.seq}"
        assert fresh.state_hash() == live_hash
        assert await replay_hash(conn, use_snapshot=False) == live_hash
        assert await replay_hash(conn, use_snapshot=True) == live_hash
        for snapshot in await conn.fetch("SELECT seq, state_hash FROM snapshots ORDER BY seq DESC LIMIT 2"):
            assert snapshot["state_hash"] == await replay_hash(conn, use_snapshot=False, until_seq=snapshot["seq"])
    finally:
        await conn.close()


_REPLAY_ARGS = {
    "actions": st.lists(action_strategy(), min_size=5, max_size=60),
    "groups": st.lists(st.integers(1, 9), min_size=1, max_size=5),
    "max_batch": st.sampled_from([1, 3, 64]),
    "snapshot_every": st.sampled_from([1, 4, 9, 1_000]),
}
_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=20, deadline=None, suppress_health_check=_HEALTH)
@given(**_REPLAY_ARGS)
async def test_live_state_equals_replay_from_zero_and_from_snapshot_plus_tail(
    dsn: str, actions: list[tuple[Any, ...]], groups: list[int], max_batch: int, snapshot_every: int
) -> None:
    await _check_replay_equivalence(dsn, actions, groups, max_batch, snapshot_every)


@pytest.mark.soak
@settings(max_examples=400, deadline=None, suppress_health_check=_HEALTH)
@given(**_REPLAY_ARGS | {"actions": st.lists(action_strategy(), min_size=5, max_size=200)})
async def test_live_state_equals_replay_soak(
    dsn: str, actions: list[tuple[Any, ...]], groups: list[int], max_batch: int, snapshot_every: int
) -> None:
    await _check_replay_equivalence(dsn, actions, groups, max_batch, snapshot_every)


async def test_journal_commands_decode_to_what_was_submitted(dsn: str) -> None:
    async with running(dsn) as sequencer:
        await setup_market(sequencer)
        sent = order(10, Side.BUY, 2800, 2, cid="plain")
        result = await sequencer.submit(sent)
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT ts_ns, command, events FROM journal WHERE seq = $1", result.seq)
    finally:
        await conn.close()
    assert decode_command(row["command"]) == msgspec.structs.replace(sent, ts_ns=row["ts_ns"])
    assert decode_events(row["events"]) == result.events


async def test_settled_depth_never_shows_an_uncommitted_batch(dsn: str) -> None:
    release = asyncio.Event()
    paused = asyncio.Event()

    async def extra_writes(conn: asyncpg.Connection, batch: CommittedBatch) -> None:
        if any(getattr(c, "client_order_id", "") == "slow" for c in batch.commands):
            paused.set()
            await release.wait()

    # max_batch 8: with a commit in flight the writer absorbs as soon as one command (8 // 8) waits
    async with running(dsn, extra_writes=extra_writes, max_batch=8) as sequencer:
        await setup_market(sequencer)
        assert sequencer.settled_depth(SYMBOL) == (2, [], [])  # the listing and the lot: two book events
        slow = sequencer.submit_nowait(order(10, Side.BUY, 2800, 3, cid="slow"))
        await paused.wait()
        behind = sequencer.submit_nowait(order(11, Side.BUY, 2790, 2, cid="behind"))
        while sequencer.applied_seq == sequencer.committed_seq + 1:  # until "behind" is applied too
            await asyncio.sleep(0.001)
        assert (sequencer.committed_seq, sequencer.applied_seq) == (2, 4)
        assert sequencer.settled_depth(SYMBOL) is None
        release.set()
        await asyncio.gather(slow, behind)
        assert sequencer.settled_depth(SYMBOL) == sequencer.core.depth(SYMBOL)
        assert sequencer.settled_depth(SYMBOL)[1] == [(2800, 3), (2790, 2)]  # type: ignore[index]
