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

import asyncpg

from exchange.commands import CancelOrder, Command, PlaceOrder, decode_command
from exchange.domain import Side
from exchange.events import Event, LotRegistered
from exchange.sequencer import Result, Sequencer, SequencerError, decode_events, recover
from tests.factories import SYMBOL, list_instrument, order, register_lot

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
    recovery = await recover(conn, use_snapshot=use_snapshot, until_seq=until_seq)
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


async def child_main() -> None:
    dsn = os.environ[DSN_ENV]
    round_id = os.environ.get(ROUND_ENV, "r0")
    sequencer = Sequencer(dsn, snapshot_every=300, max_batch=64)
    recovery = await sequencer.start()
    sys.stdout.write(f"RECOVERED {recovery.last_seq} {sequencer.core.state_hash()}\n")
    sys.stdout.flush()
    lots = await ensure_market(sequencer)
    await _stream(sequencer, lots, round_id, tasks=20)


def result_of(value: Result | BaseException) -> Result:
    assert isinstance(value, Result), value
    return value


if __name__ == "__main__":
    asyncio.run(child_main())
