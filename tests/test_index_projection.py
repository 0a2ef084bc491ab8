"""The live-hog price index (exchange/priceindex.py) on a hand-computed example: trades of two days in
three series through the real pipeline (sequencer -> journal -> index projector -> PostgreSQL), and
every figure worked out by hand below with its rounding.

Series (product class, breed class, region):
  A = finishing hogs, 外三元, Rongchang  (fen per kg; base day named at listing: day 1)
  B = piglets, 土杂, Neijiang             (fen per head; no base named: its first day with trades)
  C = finishing hogs, 内三元, Rongchang   (base day named: day 2, so day 1 has no index)
Day 1 is Monday 2026-12-07 (CST), day 2 Tuesday 2026-12-08; the trades are at 10:00 CST.
"""

from __future__ import annotations

import datetime
from typing import Any

import asyncpg
import msgspec
import pytest_asyncio

from exchange import priceindex
from exchange.calendar import CST_OFFSET_NS
from exchange.commands import Command, decode_command
from exchange.core import Core
from exchange.domain import BreedClass, InstrumentSpec, ProductClass
from exchange.events import LotRegistered
from exchange.priceindex import IndexProjector, IndexRow, average_price_fen, index_x100, trade_value_fen
from exchange.sequencer import Sequencer
from gateway.schemas import BREED_CLASS_NAME, PRODUCT_CLASS_NAME
from tests.factories import hog_spec, list_instrument, order, register_lot
from tests.scenarios import BUY, SELL

from .conftest import FreshDatabase

DAY1, DAY2 = 2026_12_07, 2026_12_08
SELLER, BUYER = 11, 21
FINISHING, PIGLET = ProductClass.FINISHING_HOG, ProductClass.PIGLET
WSY, NSY, TZ = BreedClass.WAI_SAN_YUAN, BreedClass.NEI_SAN_YUAN, BreedClass.TU_ZA


def at(day: int, hhmm: str) -> int:
    hours, minutes = map(int, hhmm.split(":"))
    date = datetime.datetime(day // 10_000, day // 100 % 100, day % 100, hours, minutes, tzinfo=datetime.UTC)
    return int(date.timestamp()) * 1_000_000_000 - CST_OFFSET_NS


def _spec(symbol: str, **fields: Any) -> InstrumentSpec:
    return msgspec.structs.replace(hog_spec(symbol, price_band_bps=0), **fields)


SPEC_A = _spec("A-HOG", delivery_point="Rongchang", index_base_day=DAY1)
SPEC_B = _spec("B-PIG", product_class=PIGLET, breed_class=TZ, delivery_point="Neijiang", lot_avg_min_g=15_000,
               lot_avg_max_g=30_000, animal_min_g=10_000, animal_max_g=35_000, tick_fen=100,
               reference_price_fen=82_100)
SPEC_C = _spec("C-HOG", breed_class=NSY, delivery_point="Rongchang", index_base_day=DAY2)


class SetClock:
    """The exchange clock, set by the test; each reading a nanosecond on so batches stay ordered."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        self.now_ns += 1
        return self.now_ns


@pytest_asyncio.fixture
async def dsn(fresh_database_url: FreshDatabase) -> str:
    return await fresh_database_url()


async def _run(dsn: str) -> list[IndexRow]:
    clock = SetClock(at(DAY1, "08:00"))
    sequencer = Sequencer(dsn, core_type=Core, clock_ns=clock)
    await sequencer.start()
    try:
        async def submit(command: Command) -> Any:
            return await sequencer.submit(command)

        async def lot(symbol: str, avg_weight_g: int) -> int:
            registration = register_lot(SELLER, 100, instrument=symbol, avg_weight_g=avg_weight_g)
            [registered] = (await submit(registration)).events
            assert isinstance(registered, LotRegistered)
            return registered.lot.lot_id

        async def trade(symbol: str, lot_id: int, price_fen: int, heads: int) -> None:
            await submit(order(SELLER, SELL, price_fen, heads, lot_id=lot_id, instrument=symbol))
            events = (await submit(order(BUYER, BUY, price_fen, heads, instrument=symbol))).events
            assert [(e.price_fen, e.quantity_heads) for e in events if type(e).__name__ == "Trade"] \
                == [(price_fen, heads)]

        for spec in (SPEC_A, SPEC_B, SPEC_C):
            await submit(list_instrument(spec))
        a1, a2 = await lot("A-HOG", 110_000), await lot("A-HOG", 105_555)
        b1 = await lot("B-PIG", 20_000)
        c1 = await lot("C-HOG", 110_000)
        clock.now_ns = at(DAY1, "10:00")
        await trade("A-HOG", a1, 2800, 10)
        await trade("A-HOG", a2, 2830, 4)
        await trade("B-PIG", b1, 82_100, 3)
        await trade("B-PIG", b1, 82_400, 2)
        await trade("C-HOG", c1, 2900, 2)
        clock.now_ns = at(DAY2, "10:00")
        await trade("A-HOG", a1, 2800, 3)
        await trade("A-HOG", a1, 2810, 1)
        await trade("B-PIG", b1, 81_900, 1)
        await trade("C-HOG", c1, 2950, 2)
        committed = sequencer.committed_seq
    finally:
        await sequencer.stop()
    projector = IndexProjector(dsn, poll_interval_s=0.05)
    await projector.start()
    try:
        await projector.wait_for(committed, timeout_s=30)
    finally:
        await projector.stop()


    conn = await asyncpg.connect(dsn)
    try:
        return await priceindex.index_history(conn, DAY1, DAY2)
    finally:
        await conn.close()


def test_the_rounding_rules_half_up() -> None:
    assert average_price_fen(5, 2) == 3  # 2.5 -> 3
    assert average_price_fen(11_210, 4) == 2803  # 2802.5 -> 2803
    assert average_price_fen(39_320, 14) == 2809  # 2808.571 -> 2809
    assert index_x100(1, 1, 200_000, 1) == 1  # 0.5 hundredths -> 1
    assert index_x100(1, 1, 200_001, 1) == 0  # 0.49999.. -> 0
    assert trade_value_fen(FINISHING, 2830, 4, 105_555) == 1_194_883  # 1,194,882.6 -> 1,194,883
    assert trade_value_fen(FINISHING, 2830, 4, 105_500) == 1_194_260
    assert trade_value_fen(PIGLET, 82_100, 3, 20_000) == 246_300  # per head: the weight does not count


async def test_the_index_on_a_hand_computed_example(dsn: str) -> None:
    rows = await _run(dsn)
    got = [(r.day, r.product_class, r.breed_class, r.region, r.trades, r.heads, r.value_fen, r.average_price_fen,
            r.index_x100, r.base_day) for r in rows]
    assert got == [
        # A, day 1: 10 @ 2800 + 4 @ 2830 = 39,320 over 14 heads = 2808.571 -> 2809 fen/kg; the base day: 1000.00.
        # Value: 10 x 2800 x 110.000 kg = 3,080,000 + 4 x 2830 x 105.555 kg = 1,194,882.6 -> 1,194,883.
        (DAY1, FINISHING, WSY, "Rongchang", 2, 14, 4_274_883, 2809, 100_000, DAY1),
        # C, day 1: 2 @ 2900; its base day is day 2, so no index yet.
        (DAY1, FINISHING, NSY, "Rongchang", 1, 2, 2 * 2900 * 110, 2900, None, DAY2),
        # B, day 1: 3 @ 82,100 + 2 @ 82,400 = 411,100 over 5 heads = 82,220 fen/head; its first day: base.
        (DAY1, PIGLET, TZ, "Neijiang", 2, 5, 411_100, 82_220, 100_000, DAY1),
        # A, day 2: 3 @ 2800 + 1 @ 2810 = 11,210 over 4 = 2802.5 -> 2803 (half up). Index from the exact
        # sums: 100,000 x (11,210 / 4) / (39,320 / 14) = 99,783.825 -> 99,784, i.e. 997.84.
        (DAY2, FINISHING, WSY, "Rongchang", 2, 4, 4 * 2800 * 110 + 10 * 110, 2803, 99_784, DAY1),
        # C, day 2: its base day: 2 @ 2950 -> 1000.00.
        (DAY2, FINISHING, NSY, "Rongchang", 1, 2, 2 * 2950 * 110, 2950, 100_000, DAY2),
        # B, day 2: 1 @ 81,900: 100,000 x 81,900 / 82,220 = 99,610.800 -> 99,611, i.e. 996.11.
        (DAY2, PIGLET, TZ, "Neijiang", 1, 1, 81_900, 81_900, 99_611, DAY1),
    ]


async def test_the_history_filters_and_a_rebuild_gives_the_same_rows(dsn: str) -> None:
    rows = await _run(dsn)


    conn = await asyncpg.connect(dsn)
    try:
        rongchang = await priceindex.index_history(conn, DAY1, DAY2, region="Rongchang")
        assert [(r.day, r.breed_class) for r in rongchang] == [(DAY1, WSY), (DAY1, NSY), (DAY2, WSY), (DAY2, NSY)]
        piglets = await priceindex.index_history(conn, DAY2, DAY2, product_class=PIGLET)
        assert [(r.day, r.index_x100) for r in piglets] == [(DAY2, 99_611)]
        assert await priceindex.index_history(conn, DAY1, DAY2, breed_class=NSY, region="Neijiang") == []
        # the tables are a cache of the journal: emptied and replayed, they come back the same
        await conn.execute("TRUNCATE price_index_daily, price_index_series, price_index_instruments, price_index_lots;"
                           " UPDATE projections SET seq = 0 WHERE name = 'price_index'")
    finally:
        await conn.close()
    projector = IndexProjector(dsn, poll_interval_s=0.05)
    await projector.start()
    try:
        conn = await asyncpg.connect(dsn)
        last = await conn.fetchval("SELECT max(seq) FROM journal")
        await projector.wait_for(last, timeout_s=30)
        assert await priceindex.index_history(conn, DAY1, DAY2) == rows
        await conn.close()
    finally:
        await projector.stop()


async def test_a_close_reaches_the_projection_listeners_with_its_day(dsn: str) -> None:
    """The gateway publishes a series' final rows at each close: the projector tells its listeners."""
    from exchange.commands import ClockTick
    from exchange.domain import TradingSession

    clock = SetClock(at(DAY1, "08:00"))
    sequencer = Sequencer(dsn, core_type=Core, clock_ns=clock)
    await sequencer.start()
    try:
        await sequencer.submit(list_instrument(msgspec.structs.replace(SPEC_A, session=TradingSession())))
        registered = (await sequencer.submit(register_lot(SELLER, 100, instrument="A-HOG"))).events[0]
        clock.now_ns = at(DAY1, "10:00")
        await sequencer.submit(order(SELLER, SELL, 2800, 5, lot_id=registered.lot.lot_id, instrument="A-HOG"))
        await sequencer.submit(order(BUYER, BUY, 2800, 5, instrument="A-HOG"))
        clock.now_ns = at(DAY1, "15:30")
        await sequencer.submit(ClockTick(0, 0))
        committed = sequencer.committed_seq
    finally:
        await sequencer.stop()
    seen: list[priceindex.DayChanges] = []
    projector = IndexProjector(dsn, poll_interval_s=0.05)
    projector.listeners.append(seen.append)
    await projector.start()
    try:
        await projector.wait_for(committed, timeout_s=30)
    finally:
        await projector.stop()
    assert [close for changes in seen for close in changes.closes] == [(DAY1, "A-HOG")]
    assert {key: sums for changes in seen for key, sums in changes.sums.items()} == {
        (DAY1, (int(FINISHING), int(WSY), "Rongchang")): [1, 5, 5 * 2800, 5 * 2800 * 110]}


async def test_the_in_memory_index_serving_the_routes_equals_the_projection(dsn: str) -> None:
    """The API answers the rows still moving from gateway/index.py's in-memory index (here, with no
    projection watermark, it holds every row); fed the same journal, it gives the same
    figures as the PostgreSQL projection: the same rounding (value half up per trade, average and index
    half up) and the same base days (named at listing, or the first day with trades)."""
    from exchange.calendar import day_label
    from exchange.sequencer import decode_events
    from gateway.index import date_to_day, finality
    from gateway.readmodel import ReadModel

    projected = await _run(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        journal = await conn.fetch("SELECT seq, command, events FROM journal ORDER BY seq")
    finally:
        await conn.close()
    read_model = ReadModel()
    read_model.apply_batch((r[0], decode_command(r[1]), decode_events(r[2])) for r in journal)
    final = finality(read_model, at(DAY2, "23:00"))
    first, last = date_to_day("2026-12-07"), date_to_day("2026-12-08")
    in_memory = read_model.index.history(first, last, final)

    def label(date: str | None) -> int:
        return 0 if date is None else day_label(date_to_day(date))

    ours = sorted((label(r.date), r.region, r.product_class, r.breed_class, r.trades, r.heads, r.value_fen,
                   r.avg_price_fen, r.index_x100, label(r.base_date)) for r in in_memory)
    theirs = sorted((r.day, r.region, PRODUCT_CLASS_NAME[r.product_class], BREED_CLASS_NAME[r.breed_class],
                     r.trades, r.heads, r.value_fen, r.average_price_fen, r.index_x100, r.base_day) for r in projected)
    assert ours == theirs
    assert len(ours) == 6 and (DAY1, "Rongchang", "finishing_hog", "nei_san_yuan", 1, 2, 2 * 2900 * 110, 2900, None,
                               DAY2) in ours  # a base day named after the first trades: no index before it
