"""Read models (orders, trades, fills) projected from the journal, queried as the gateway will.

Both ways of projecting are exercised: the asynchronous `Projector` and `project_batch` inside the
journal's transaction; they must produce the same rows, and the rows must agree with the core.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange import readmodel, store
from exchange.commands import AmendOrder, CancelOrder, ClockTick
from exchange.core import Core
from exchange.domain import Side, TimeInForce
from exchange.events import OrderAccepted
from exchange.readmodel import OrderView, Page, Projector, fold, project_batch
from exchange.sequencer import Result, Sequencer
from tests.factories import OPERATOR, SYMBOL, hog_spec, list_instrument, order, register_lot
from tests.sequencer_harness import (
    SELLERS,
    StepClock,
    action_strategy,
    build_commands,
    journal,
)

from .conftest import FreshDatabase

# "projector": attached to the sequencer, folding its committed batches from memory; "journal": the same
# projector not attached, reading every row back from the journal; "in-transaction": `project_batch`.
MODES = ["projector", "journal", "in-transaction"]


@pytest_asyncio.fixture
async def dsn(fresh_database_url: FreshDatabase) -> str:
    return await fresh_database_url()


class Exchange:
    """A sequencer with its read model, projected one way or the other."""

    def __init__(self, dsn: str, mode: str, clock: Any = None, **options: Any) -> None:
        extra = project_batch if mode == "in-transaction" else None
        self.sequencer = Sequencer(dsn, core_type=Core, clock_ns=clock or StepClock(), extra_writes=extra, **options)
        self.projector = Projector(dsn, poll_interval_s=0.05) if mode in ("projector", "journal") else None
        self.mode = mode
        self.pool: asyncpg.Pool | None = None
        self.dsn = dsn

    async def __aenter__(self) -> Exchange:
        await self.sequencer.start()
        if self.projector is not None:
            if self.mode == "projector":
                self.projector.attach(self.sequencer)
            await self.projector.start()
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.sequencer.stop()
        if self.projector is not None:
            await self.projector.stop()
        assert self.pool is not None
        await self.pool.close()

    async def submit(self, command: Any) -> Result:
        return await self.sequencer.submit(command)

    async def synced(self) -> asyncpg.Pool:
        """The pool, once the read model includes everything committed so far."""
        if self.projector is not None:
            await self.projector.wait_for(self.sequencer.committed_seq)
        assert self.pool is not None
        return self.pool


def _order_id(result: Result) -> int:
    return next(e.order_id for e in result.events if isinstance(e, OrderAccepted))


def _state(view: OrderView | None) -> tuple[str, int, int, int, str | None]:
    assert view is not None
    return (view.status, view.quantity_heads, view.filled_heads, view.remaining_heads, view.reason)


@pytest.mark.parametrize("mode", MODES)
async def test_every_order_status_with_exact_quantities(dsn: str, mode: str) -> None:
    clock = StepClock()
    async with Exchange(dsn, mode, clock) as exchange:
        await exchange.submit(list_instrument())
        lot_id = (await exchange.submit(register_lot(20))).events[0].lot.lot_id  # type: ignore[union-attr]
        resting = _order_id(await exchange.submit(order(10, Side.BUY, 2800, 5, cid="resting")))
        partial = _order_id(await exchange.submit(order(11, Side.BUY, 2790, 6, cid="partial")))
        taker = _order_id(await exchange.submit(order(20, Side.SELL, 2790, 7, cid="taker", lot_id=lot_id)))
        cancelled = _order_id(await exchange.submit(order(12, Side.BUY, 2700, 4, cid="cancelled")))
        await exchange.submit(CancelOrder(12, 0, cancelled))
        amended = _order_id(await exchange.submit(order(12, Side.BUY, 2710, 4, cid="amended")))
        await exchange.submit(AmendOrder(12, 0, amended, 2720, 9))
        await exchange.submit(order(13, Side.SELL, 2800, 3, cid="no-lot"))  # rejected: no lot
        ioc = _order_id(await exchange.submit(
            order(20, Side.SELL, 2700, 9, cid="ioc", lot_id=lot_id, tif=TimeInForce.IOC)
        ))  # takes the 4 left of "partial" and 5 of the amended 9
        gtd = await exchange.submit(  # the clock steps 1 ms per batch: expires at the second tick
            order(10, Side.BUY, 2700, 2, cid="gtd", tif=TimeInForce.GTD, expire_at_ns=clock.now_ns + 2_500_000)
        )
        await exchange.submit(ClockTick(OPERATOR, 0))
        await exchange.submit(ClockTick(OPERATOR, 0))  # the clock passes the GTD order's expiry
        pool = await exchange.synced()
        amended_view = await readmodel.get_order(pool, amended)
        assert _state(amended_view) == ("PARTIALLY_FILLED", 9, 5, 4, None)
        assert amended_view is not None and amended_view.price_fen == 2720
        # amended again in a later batch, without a fill: still partially filled
        await exchange.submit(AmendOrder(12, 0, amended, 0, 8))
        pool = await exchange.synced()

        assert _state(await readmodel.get_order(pool, resting)) == ("FILLED", 5, 5, 0, None)
        assert _state(await readmodel.get_order(pool, partial)) == ("FILLED", 6, 6, 0, None)
        assert _state(await readmodel.get_order(pool, cancelled)) == ("CANCELED", 4, 0, 0, None)
        assert _state(await readmodel.get_order(pool, amended)) == ("PARTIALLY_FILLED", 8, 5, 3, None)
        assert _state(await readmodel.get_order_by_client_id(pool, 13, "no-lot")) == (
            "REJECTED", 3, 0, 0, "LOT_NOT_FOUND",
        )  # fmt: skip
        assert _state(await readmodel.get_order_by_client_id(pool, 20, "taker")) == ("FILLED", 7, 7, 0, None)
        assert _state(await readmodel.get_order_by_client_id(pool, 20, "ioc")) == ("FILLED", 9, 9, 0, None)
        assert _state(await readmodel.get_order(pool, _order_id(gtd))) == ("EXPIRED", 2, 0, 0, "GTD")
        assert await readmodel.get_order(pool, 999) is None
        assert await readmodel.projected_seq(pool) == exchange.sequencer.committed_seq

        trades = await readmodel.list_trades(pool, SYMBOL)
        assert [(t.price_fen, t.quantity_heads, t.taker_side) for t in reversed(trades.items)] == [
            (2800, 5, 2), (2790, 2, 2), (2790, 4, 2), (2720, 5, 2),
        ]  # fmt: skip
        fills = await readmodel.list_fills(pool, 20)
        assert [(f.order_id, f.side, f.quantity_heads, f.liquidity) for f in reversed(fills.items)] == [
            (taker, 2, 5, "taker"), (taker, 2, 2, "taker"), (ioc, 2, 4, "taker"), (ioc, 2, 5, "taker"),
        ]  # fmt: skip
        buyer_fills = await readmodel.list_fills(pool, 11)
        assert [(f.order_id, f.side, f.price_fen, f.liquidity) for f in buyer_fills.items] == [
            (partial, 1, 2790, "maker"), (partial, 1, 2790, "maker"),
        ]  # fmt: skip


async def test_lists_filter_and_page_with_keyset_cursors(dsn: str) -> None:
    async with Exchange(dsn, "in-transaction") as exchange:
        await exchange.submit(list_instrument())
        await exchange.submit(list_instrument(hog_spec(symbol="RC-OTHER")))
        for i in range(7):
            await exchange.submit(order(10, Side.BUY, 2800 - 10 * i, 1, cid=f"a{i}"))
            await exchange.submit(order(10, Side.BUY, 2800 - 10 * i, 1, cid=f"b{i}", instrument="RC-OTHER"))
        await exchange.submit(order(10, Side.BUY, 10, 1, cid="bad-price"))  # on the tick, far outside the band
        await exchange.submit(order(11, Side.BUY, 2800, 1, cid="someone-else"))
        pool = await exchange.synced()

        pages: list[Page[OrderView]] = []
        cursor = None
        while True:
            page = await readmodel.list_orders(pool, 10, instrument=SYMBOL, status="NEW", cursor=cursor, limit=3)
            pages.append(page)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert [[o.client_order_id for o in p.items] for p in pages] == [["a6", "a5", "a4"], ["a3", "a2", "a1"], ["a0"]]
        rejected = await readmodel.list_orders(pool, 10, status=["REJECTED"])
        assert [(o.client_order_id, o.order_id, o.reason) for o in rejected.items] == [
            ("bad-price", None, "PRICE_OUTSIDE_BAND")
        ]
        everything = await readmodel.list_orders(pool, 10, limit=100)
        assert len(everything.items) == 15 and everything.next_cursor is None
        with pytest.raises(ValueError):
            await readmodel.list_orders(pool, 10, status="OPEN")
        with pytest.raises(ValueError):
            await readmodel.list_trades(pool, SYMBOL, limit=0)


async def test_the_projector_rests_between_rounds_unless_someone_waits(dsn: str) -> None:
    """A steady flow of commits is projected in few rounds (not one per commit), and `wait_for` is
    never kept waiting by the rest."""
    async with Exchange(dsn, "none") as exchange:
        projector = Projector(dsn, poll_interval_s=0.05, min_round_gap_s=600.0)
        projector.attach(exchange.sequencer)
        await projector.start()
        try:
            await exchange.submit(list_instrument())
            listed_seq = exchange.sequencer.committed_seq
            async with asyncio.timeout(10):
                while projector.projected_seq < listed_seq:  # a round of its own, no one waiting
                    await asyncio.sleep(0.01)
            for i in range(3):
                await exchange.submit(order(10, Side.BUY, 2800, 2, cid=f"rest{i}"))
            await asyncio.sleep(0.3)
            assert projector.projected_seq == listed_seq  # resting: the orders wait for the next round
            await projector.wait_for(exchange.sequencer.committed_seq, timeout_s=10)  # cut short
        finally:
            await projector.stop()
        assert exchange.pool is not None
        assert await exchange.pool.fetchval("SELECT count(*) FROM orders") == 3


async def test_the_projector_catches_up_after_a_pause_and_never_applies_twice(dsn: str) -> None:
    async with Exchange(dsn, "none") as exchange:
        await exchange.submit(list_instrument())
        lot_id = (await exchange.submit(register_lot(20))).events[0].lot.lot_id  # type: ignore[union-attr]
        for i in range(30):
            await exchange.submit(order(10, Side.BUY, 2800, 2, cid=f"o{i}"))
        await exchange.submit(order(20, Side.SELL, 2800, 60, cid="sweep", lot_id=lot_id))
        first, second = Projector(dsn, page_rows=7), Projector(dsn, page_rows=5)
        await asyncio.gather(first.start(), second.start())
        try:
            await asyncio.gather(first.wait_for(33), second.wait_for(33))
        finally:
            await asyncio.gather(first.stop(), second.stop())
        assert exchange.pool is not None
        counts = await exchange.pool.fetchrow(
            "SELECT (SELECT count(*) FROM orders) AS orders, (SELECT count(*) FROM trades) AS trades, "
            "(SELECT sum(filled_heads) FROM orders) AS filled"
        )
        assert (counts["orders"], counts["trades"], counts["filled"]) == (31, 30, 120)


# -- the read model agrees with the core and with a one-shot fold ------------------------------------------


async def _check_against_core(dsn: str, actions: list[tuple[Any, ...]], groups: list[int]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE journal, snapshots, orders, trades")
        await conn.execute("UPDATE projections SET seq = 0")
        sequencer = Sequencer(dsn, core_type=Core, clock_ns=StepClock(step_ns=3_000_000), extra_writes=project_batch)
        await sequencer.start()
        await sequencer.submit(list_instrument())
        lots = {s: (await sequencer.submit(register_lot(s))).events[0].lot.lot_id for s in SELLERS}  # type: ignore[union-attr]
        commands = build_commands(actions, lots)
        position = 0
        for size in itertools.cycle(groups):  # batches of varying size: patches cross batch borders
            if position >= len(commands):
                break
            await asyncio.gather(*sequencer.submit_many(commands[position : position + size]), return_exceptions=True)
            position += size
        core = sequencer.core
        await sequencer.stop(snapshot=False)

        views = {(v.participant_id, v.client_order_id): v for v in await _all_orders(conn)}
        # Folding the whole journal at once gives every order as a new row: the incremental
        # projection (new rows, then patches batch by batch) must end in exactly the same rows.
        whole = fold((r.seq, r.command, r.events or []) for r in await journal(conn))
        expected = {(row[0], row[1]): OrderView(*row) for row in whole.new_orders.values()}
        assert views == expected
        for view in views.values():
            assert view.filled_heads + view.remaining_heads <= view.quantity_heads
            resting = core.orders.get(view.order_id) if view.order_id is not None else None
            if resting is not None:
                assert view.status == ("PARTIALLY_FILLED" if resting.filled_heads else "NEW")
                assert (view.remaining_heads, view.filled_heads, view.price_fen, view.quantity_heads) == (
                    resting.remaining_heads, resting.filled_heads, resting.price_fen, resting.quantity_heads,
                )  # fmt: skip
            else:
                assert view.status in ("FILLED", "CANCELED", "EXPIRED", "REJECTED") and view.remaining_heads == 0
            if view.status == "FILLED":
                assert view.filled_heads == view.quantity_heads
        traded = await conn.fetchval("SELECT coalesce(sum(quantity_heads), 0) FROM trades")
        assert sum(v.filled_heads for v in views.values()) == 2 * traded
    finally:
        await conn.close()


async def _all_orders(conn: asyncpg.Connection) -> list[OrderView]:
    columns = ", ".join(OrderView.__struct_fields__)
    return [OrderView(*r) for r in await conn.fetch(f"SELECT {columns} FROM orders")]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(actions=st.lists(action_strategy(), min_size=5, max_size=60),
       groups=st.lists(st.integers(1, 9), min_size=1, max_size=5))
async def test_the_read_model_agrees_with_the_core(
    dsn: str, actions: list[tuple[Any, ...]], groups: list[int]
) -> None:
    await _check_against_core(dsn, actions, groups)


async def _trade_some(exchange: Exchange, count: int) -> None:
    await exchange.submit(list_instrument())
    lot_id = (await exchange.submit(register_lot(20))).events[0].lot.lot_id  # type: ignore[union-attr]
    for i in range(count):
        side = Side.BUY if i % 3 else Side.SELL
        await exchange.submit(
            order(10 if side == Side.BUY else 20, side, 2800 + 10 * (i % 4 - 2), 1 + i % 5, cid=f"o{i}",
                  lot_id=lot_id if side == Side.SELL else 0)
        )  # fmt: skip


async def _projected_rows(pool: asyncpg.Pool) -> tuple[list[OrderView], list[tuple[Any, ...]]]:
    orders = sorted(await _all_orders_pool(pool), key=lambda v: v.seq)
    return orders, [tuple(r) for r in await pool.fetch("SELECT * FROM trades ORDER BY trade_id")]


async def test_every_projection_mode_writes_the_same_rows(fresh_database_url: FreshDatabase) -> None:
    rows: list[Any] = []
    for mode in MODES:
        dsn = await fresh_database_url()
        async with Exchange(dsn, mode, StepClock()) as exchange:
            await _trade_some(exchange, 20)
            rows.append(await _projected_rows(await exchange.synced()))
            committed = exchange.sequencer.committed_seq
            if exchange.projector is not None:  # each row folded once, from where the mode says
                folded = (exchange.projector.rows_from_memory, exchange.projector.rows_from_journal)
                assert folded == ((committed, 0) if mode == "projector" else (0, committed))
    assert rows[0] == rows[1] == rows[2]
    assert len(rows[0][1]) > 0


async def test_a_projector_that_falls_behind_memory_reads_the_hole_from_the_journal(
    fresh_database_url: FreshDatabase,
) -> None:
    """Past `max_fed_rows` the oldest fed batches are dropped: the projector reads those rows back from
    the journal, then goes on from memory, and the rows are the same as a journal-only projection's."""
    expected_dsn, dsn = await fresh_database_url(), await fresh_database_url()
    async with Exchange(expected_dsn, "journal", StepClock()) as exchange:
        await _trade_some(exchange, 30)
        expected = await _projected_rows(await exchange.synced())
    async with Exchange(dsn, "none", StepClock()) as exchange:
        projector = Projector(dsn, poll_interval_s=0.05, min_round_gap_s=0.3, max_fed_rows=4)
        projector.attach(exchange.sequencer)
        await projector.start()
        try:
            await _trade_some(exchange, 30)  # one batch per command: the fed batches overflow while it rests
            await projector.wait_for(exchange.sequencer.committed_seq, timeout_s=10)
            assert exchange.pool is not None
            assert await _projected_rows(exchange.pool) == expected
            assert projector.rows_from_memory > 0 and projector.rows_from_journal > 0
            assert projector.rows_from_memory + projector.rows_from_journal == exchange.sequencer.committed_seq
        finally:
            await projector.stop()


async def _all_orders_pool(pool: asyncpg.Pool) -> list[OrderView]:
    async with pool.acquire() as conn:
        return await _all_orders(conn)



class _Done(Exception):
    pass


async def test_a_journal_follower_reconnects_when_its_backend_is_terminated(fresh_database_url: FreshDatabase) -> None:
    """The loop the projector and the settlement history share (`store.follow_reconnecting`)."""
    dsn = await fresh_database_url()
    pids: list[int] = []

    async def follow(conn: asyncpg.Connection) -> None:
        pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
        if len(pids) == 2:
            raise _Done  # anything but a lost connection ends the loop
        killer = await asyncpg.connect(dsn)
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", pids[-1])
        finally:
            await killer.close()
        await conn.fetchval("SELECT 1")  # the backend is gone: the loop connects again

    with pytest.raises(_Done):
        await asyncio.wait_for(store.follow_reconnecting(dsn, follow, "test follower", logging.getLogger("t")), 30)
    assert len(pids) == 2 and pids[0] != pids[1]
