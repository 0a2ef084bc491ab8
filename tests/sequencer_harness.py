"""Shared pieces of the sequencer tests, and the subprocess the kill -9 test SIGKILLs.

As a program (`python -m tests.sequencer_harness`, DSN in `HOGX_TEST_DSN`): start a sequencer on the
database (recovering whatever is there), print `RECOVERED <seq> <state hash>`, make sure the market and
the sellers' lots exist, then submit a steady stream of orders from concurrent tasks forever and print
`ACK <client order id> <seq>` for each one only after its acknowledgement, flushed at once. The
parent kills it with SIGKILL at a random moment.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import msgspec
from hypothesis import strategies as st

from exchange.commands import (
    AmendOrder,
    CancelOrder,
    ClockTick,
    Command,
    Halt,
    PlaceOrder,
    Resume,
    SetReferencePrice,
    StartAuction,
    Uncross,
    decode_command,
)
from exchange.core import Core
from exchange.domain import OrderType, Side, TimeInForce
from exchange.events import Event, LotRegistered
from exchange.sequencer import Sequencer, SequencerError, decode_events, recover
from tests.factories import OPERATOR, SYMBOL, list_instrument, order, register_lot

DSN_ENV = "HOGX_TEST_DSN"
ROUND_ENV = "HOGX_TEST_ROUND"
SELLERS = (20, 21, 22)
BUYERS = (10, 11, 12)
START_NS = 1_800_000_000_000_000_000


class StepClock:
    """A deterministic exchange clock: every reading is `step_ns` later than the one before."""

    def __init__(self, start_ns: int = START_NS, step_ns: int = 1_000_000) -> None:
        self.now_ns = start_ns
        self.step_ns = step_ns

    def __call__(self) -> int:
        self.now_ns += self.step_ns
        return self.now_ns


async def eventually(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail after `timeout_s` (never sleep a fixed time and hope)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class JournalRow:
    __slots__ = ("command", "events", "seq", "ts_ns")

    def __init__(self, seq: int, ts_ns: int, command: Command, events: list[Event] | None) -> None:
        self.seq, self.ts_ns, self.command, self.events = seq, ts_ns, command, events


async def journal(conn: asyncpg.Connection) -> list[JournalRow]:
    rows = await conn.fetch("SELECT seq, ts_ns, command, events FROM journal ORDER BY seq")
    return [
        JournalRow(r["seq"], r["ts_ns"], decode_command(r["command"]),
                   None if r["events"] is None else decode_events(r["events"]))
        for r in rows
    ]  # fmt: skip


def client_ids(rows: Sequence[JournalRow]) -> list[tuple[int, str]]:
    """(participant, client order id) of every journaled PlaceOrder, in seq order."""
    return [
        (row.command.participant_id, row.command.client_order_id)
        for row in rows
        if isinstance(row.command, PlaceOrder)
    ]


async def replay_hash(conn: asyncpg.Connection, *, use_snapshot: bool, until_seq: int | None = None) -> str:
    recovery = await recover(conn, Core, use_snapshot=use_snapshot, until_seq=until_seq)
    return recovery.core.state_hash()


async def ensure_market(sequencer: Sequencer) -> dict[int, int]:
    """List the instrument and give every seller a lot, unless recovery already did; seller -> lot id."""
    if SYMBOL not in sequencer.core.markets:
        await sequencer.submit(list_instrument())
    lots = {lot.seller_id: lot.lot_id for lot in sequencer.core.lot_records.values()}
    for seller in SELLERS:
        if seller not in lots:
            result = await sequencer.submit(register_lot(seller, heads=10_000_000))
            event = result.events[0]
            assert isinstance(event, LotRegistered)
            lots[seller] = event.lot.lot_id
    return lots


def random_order(rng: random.Random, cid: str, lots: dict[int, int]) -> PlaceOrder:
    """A limit order near the reference price: enough crossing to trade, enough resting to cancel."""
    price_fen = 2800 + 10 * rng.randint(-5, 5)
    heads = rng.randint(1, 8)
    if rng.random() < 0.5:
        return order(rng.choice(BUYERS), Side.BUY, price_fen, heads, cid=cid)
    seller = rng.choice(SELLERS)
    return order(seller, Side.SELL, price_fen, heads, cid=cid, lot_id=lots[seller])


async def _stream(sequencer: Sequencer, lots: dict[int, int], round_id: str, tasks: int) -> None:
    counter = itertools.count()
    rng = random.Random(round_id)
    out = sys.stdout

    async def submitter() -> None:
        while True:
            cid = f"{round_id}-{next(counter)}"
            command: Command = random_order(rng, cid, lots)
            try:
                result = await sequencer.submit(command)
            except SequencerError:
                await asyncio.sleep(0.01)
                continue
            out.write(f"ACK {cid} {result.seq}\n")
            out.flush()
            order_id = next((getattr(e, "order_id", 0) for e in result.events if hasattr(e, "order_id")), 0)
            if order_id and rng.random() < 0.2:
                # a cancel now and then keeps the book small; its outcome does not matter here
                cancel = CancelOrder(command.participant_id, 0, order_id)
                await asyncio.gather(sequencer.submit(cancel), return_exceptions=True)

    await asyncio.gather(*(submitter() for _ in range(tasks)))


# -- random command sequences (hypothesis) ---------------------------------------------------------

PRICE_STEPS = st.integers(-6, 6)
REUSED_IDS = ("r1", "r2", "r3")


def action_strategy() -> st.SearchStrategy[tuple[Any, ...]]:
    """Mostly orders (sells only by sellers, who sometimes buy too: self-trade prevention), some
    cancels and amendments of recent order ids, and now and then a tick, a session change or a new
    reference price. The kind is drawn first from a weighted list."""
    tif = st.sampled_from([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.GTD])
    cid = st.sampled_from([None] * 6 + list(REUSED_IDS))
    expire_steps = st.integers(1, 60)
    order_id = st.integers(1, 15)
    own = st.sampled_from([True, True, True, False])  # by the order's owner, if it rests (else as drawn)
    builders: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
        "buy": st.tuples(st.just("buy"), st.sampled_from(BUYERS * 3 + SELLERS), PRICE_STEPS, st.integers(1, 12),
                         tif, expire_steps, cid, st.booleans()),
        "sell": st.tuples(st.just("sell"), st.sampled_from(SELLERS), PRICE_STEPS, st.integers(1, 12),
                          tif, expire_steps, cid, st.booleans()),
        "cancel": st.tuples(st.just("cancel"), st.sampled_from(BUYERS + SELLERS), order_id, own),
        "amend": st.tuples(st.just("amend"), st.sampled_from(BUYERS + SELLERS), order_id, PRICE_STEPS,
                           st.integers(0, 15), own),
        "tick": st.just(("tick",)),
        "session": st.sampled_from([("halt",), ("resume",), ("auction",), ("uncross",)]),
        "reference": st.tuples(st.just("reference"), PRICE_STEPS),
    }  # fmt: skip
    weighted = ["buy"] * 8 + ["sell"] * 8 + ["cancel"] * 3 + ["amend"] * 2 + ["tick", "session", "reference"]
    return st.sampled_from(weighted).flatmap(builders.__getitem__)


def build_commands(actions: list[tuple[Any, ...]], lots: dict[int, int]) -> list[Command]:
    """Commands for drawn actions. A scratch core (on an approximate clock) tells who owns which
    resting order, so most cancels and amendments are their owner's and take effect."""
    fresh = itertools.count()
    commands: list[Command] = []
    scratch = Core()
    clock = StepClock(step_ns=3_000_000)
    scratch.apply(msgspec.structs.replace(list_instrument(), ts_ns=clock()))
    for seller in SELLERS:
        scratch.apply(msgspec.structs.replace(register_lot(seller), ts_ns=clock()))
    for action in actions:
        if commands:
            scratch.apply(msgspec.structs.replace(commands[-1], ts_ns=clock()))
        kind = action[0]
        if kind in ("buy", "sell"):
            _, participant, step, heads, tif, expire_steps, reused, market = action
            side = Side.BUY if kind == "buy" else Side.SELL
            cid = reused or f"h{next(fresh)}"
            order_type = OrderType.MARKET if market and tif == TimeInForce.IOC else OrderType.LIMIT
            commands.append(order(
                participant, side, 2800 + 10 * step, heads, cid=cid, ts_ns=0, order_type=order_type, tif=tif,
                expire_at_ns=START_NS + expire_steps * 1_000_000 if tif == TimeInForce.GTD else 0,
                lot_id=lots.get(participant, 0) if side == Side.SELL else 0,
            ))  # fmt: skip
        elif kind in ("cancel", "amend"):
            participant, order_id = action[1], action[2]
            if action[-1] and scratch.orders:  # one of the resting orders, by its owner
                order_id = sorted(scratch.orders)[order_id % len(scratch.orders)]
                participant = scratch.orders[order_id].participant_id
            if kind == "cancel":
                commands.append(CancelOrder(participant, 0, order_id))
            else:
                commands.append(AmendOrder(participant, 0, order_id, 2800 + 10 * action[3], action[4]))
        elif kind == "reference":
            commands.append(SetReferencePrice(OPERATOR, 0, SYMBOL, 2800 + 10 * action[1]))
        else:
            simple = {"tick": ClockTick, "halt": Halt, "resume": Resume, "auction": StartAuction, "uncross": Uncross}
            cls = simple[kind]
            commands.append(cls(OPERATOR, 0) if cls is ClockTick else cls(OPERATOR, 0, SYMBOL))
    return commands


async def child_main() -> None:
    dsn = os.environ[DSN_ENV]
    round_id = os.environ.get(ROUND_ENV, "r0")
    sequencer = Sequencer(dsn, core_type=Core, snapshot_every=300, max_batch=64)
    recovery = await sequencer.start()
    sys.stdout.write(f"RECOVERED {recovery.last_seq} {sequencer.core.state_hash()}\n")
    sys.stdout.flush()
    lots = await ensure_market(sequencer)
    await _stream(sequencer, lots, round_id, tasks=20)


if __name__ == "__main__":
    asyncio.run(child_main())
