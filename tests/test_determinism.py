"""Determinism and replay: the same commands always give the same events and the same state hash.

The workload is a seeded mix of every command on three instruments (one banded, one with a narrow
band, one unbanded that opens in a call auction): orders of every type and flag, cancels and amends of
live and unknown ids, halts, auctions, reference prices and clock ticks. It checks:
- two fresh cores fed the same commands give identical events and state hashes at every step;
- the journal round trip (``encode_command`` -> ``decode_command``) gives equal commands whose replay
  gives the same events and hash, and every event survives ``encode_event`` -> ``decode_event``;
- a core restored from a snapshot taken mid-stream finishes with the same events and hash;
- every command that emits anything other than a rejection changes the state hash;
- the hash does not depend on the interpreter's string hashing (``PYTHONHASHSEED``).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.commands import (
    AmendOrder,
    CancelOrder,
    ClockTick,
    Command,
    Halt,
    ListInstrument,
    PlaceOrder,
    RegisterLot,
    Resume,
    SetReferencePrice,
    StartAuction,
    Uncross,
    decode_command,
    encode_command,
)
from exchange.core import Core
from exchange.domain import OrderType, ProductClass, SelfTradePrevention, Side, TimeInForce, TradingState
from exchange.events import Event, OrderAccepted, Rejected, decode_event, encode_event
from tests.factories import OPERATOR, hog_spec
from tests.reference_book import ReferenceCore

SPECS = (
    hog_spec(symbol="RC-HOG", reference_price_fen=2800, price_band_bps=400, tick_fen=10),
    hog_spec(symbol="RC-NAR", reference_price_fen=2000, price_band_bps=30, tick_fen=5, min_order_heads=2,
             max_order_heads=20),
    msgspec.structs.replace(
        hog_spec(symbol="RC-PIG", reference_price_fen=80_000, price_band_bps=0, tick_fen=100, max_order_heads=50,
                 initial_state=TradingState.AUCTION),
        product_class=ProductClass.PIGLET,
    ),
)
SELLERS = (20, 21, 22)
PARTICIPANTS = (*SELLERS, 10, 11)
STEP_NS = 1_000_000_000
REPO = Path(__file__).resolve().parent.parent


def workload(seed: int, count: int) -> list[Command]:
    """A reproducible stream of ``count`` commands after the listings and lots (lot ids 1..9)."""
    rng = random.Random(seed)
    now = STEP_NS
    commands: list[Command] = [ListInstrument(OPERATOR, now, spec) for spec in SPECS]
    lots: list[tuple[int, int, str]] = []
    for seller in SELLERS:
        for spec in SPECS:
            commands.append(RegisterLot(seller, now, spec.symbol, 300, 110_000, "Rongchang", f"CQ-{seller}"))
            lots.append((len(lots) + 1, seller, spec.symbol))
    # the naive reference book says which orders rest, so cancels and amends mostly hit live ones
    oracle = ReferenceCore()
    for command in commands:
        oracle.apply(command)
    for n in range(count):
        if rng.random() < 0.05:
            now += STEP_NS * rng.randint(0, 3)
        command = _random_command(rng, now, n, lots, oracle)
        oracle.apply(command)
        commands.append(command)
    return commands


def _random_command(
    rng: random.Random, now: int, n: int, lots: list[tuple[int, int, str]], oracle: ReferenceCore
) -> Command:
    spec = rng.choice(SPECS)
    roll = rng.random()
    resting = oracle.resting_orders()
    if roll < 0.70:
        return _random_order(rng, now, n, spec, lots)
    target = rng.choice(resting) if resting and rng.random() < 0.8 else None
    order_id = target.order_id if target else rng.randint(1, n + 1)
    sender = target.participant_id if target and rng.random() < 0.9 else rng.choice(PARTICIPANTS)
    if roll < 0.80:
        return CancelOrder(sender, now, order_id)
    if roll < 0.90:
        price = rng.choice([0, 0, _price(rng, spec)])
        return AmendOrder(sender, now, order_id, price, rng.choice([0, 1, 4, 8, 12]))
    if roll < 0.94:
        return ClockTick(OPERATOR, now)
    if roll < 0.98:
        # mostly the transition the market's state invites, so halts and auctions do not last long
        closed = [m.spec for m in oracle.markets.values() if m.state != TradingState.CONTINUOUS]
        if closed and rng.random() < 0.8:
            spec = rng.choice(closed)
        state = oracle.markets[spec.symbol].state
        kinds = {
            TradingState.CONTINUOUS: [StartAuction, StartAuction, Halt],
            TradingState.AUCTION: [Uncross, Uncross, Halt],
            TradingState.HALTED: [Resume],
        }[state]
        kind = rng.choice([Halt, Resume, StartAuction, Uncross] if rng.random() < 0.1 else kinds)
        return kind(OPERATOR, now, spec.symbol)
    return SetReferencePrice(OPERATOR, now, spec.symbol, spec.reference_price_fen + spec.tick_fen * rng.randint(-2, 2))


def _price(rng: random.Random, spec) -> int:
    spread = 1 if spec.price_band_bps == 30 else 3
    price = spec.reference_price_fen + spec.tick_fen * rng.randint(-spread, spread)
    return price + (1 if rng.random() < 0.03 else 0)


def _random_order(rng: random.Random, now: int, n: int, spec, lots: list[tuple[int, int, str]]) -> PlaceOrder:
    side = rng.choice([Side.BUY, Side.SELL])
    participant = rng.choice(PARTICIPANTS)
    lot_id = 0
    if side == Side.SELL:
        lot_id, participant, _ = rng.choice([lot for lot in lots if lot[2] == spec.symbol])
    order_type = OrderType.MARKET if rng.random() < 0.1 else OrderType.LIMIT
    tif = rng.choice([TimeInForce.IOC, TimeInForce.FOK]) if order_type == OrderType.MARKET else rng.choice(
        [TimeInForce.GTC, TimeInForce.GTC, TimeInForce.GTD, TimeInForce.IOC, TimeInForce.FOK]
    )
    quantity = rng.randint(1, 12)
    resting = order_type == OrderType.LIMIT and tif in (TimeInForce.GTC, TimeInForce.GTD)
    return PlaceOrder(
        participant, now, f"d{n}", spec.symbol, side, order_type, _price(rng, spec), quantity, tif,
        now + STEP_NS * rng.randint(1, 5) if tif == TimeInForce.GTD else 0,
        post_only=resting and rng.random() < 0.1,
        min_quantity_heads=rng.randint(1, quantity) if not resting and rng.random() < 0.2 else 0,
        all_or_none=resting and side == Side.SELL and rng.random() < 0.2,
        stp=rng.choice(list(SelfTradePrevention)),
        lot_id=lot_id,
    )


def run(commands: list[Command]) -> tuple[list[list[Event]], list[str]]:
    """Events of every command and the state hash after each, on a fresh core."""
    core = Core()
    events, hashes = [], []
    for command in commands:
        events.append(core.apply(command))
        hashes.append(core.state_hash())
    return events, hashes


def test_workload_is_busy() -> None:
    """The workload exercises matching: plenty of accepted orders and trades, not only rejections."""
    events, _ = run(workload(7, 1500))
    names = [type(e).__name__ for batch in events for e in batch]
    assert names.count("Trade") > 100
    assert names.count("OrderAccepted") > 400
    for name in ("AuctionUncrossed", "OrderAmended", "OrderCancelled", "OrderExpired"):
        assert names.count(name) > 10, name


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_same_commands_give_same_events_and_hash(seed: int) -> None:
    commands = workload(seed, 400)
    first = run(commands)
    second = run(commands)
    assert first == second


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_journal_round_trip_replays_to_the_same_state(seed: int) -> None:
    commands = workload(seed, 400)
    journal = [encode_command(c) for c in commands]
    decoded = [decode_command(row) for row in journal]
    assert decoded == commands
    assert [type(c) for c in decoded] == [type(c) for c in commands]
    live_events, live_hashes = run(commands)
    replay_events, replay_hashes = run(decoded)
    assert replay_events == live_events
    assert replay_hashes[-1] == live_hashes[-1]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_events_round_trip_through_their_encoding(seed: int) -> None:
    events, _ = run(workload(seed, 300))
    for batch in events:
        for event in batch:
            decoded = decode_event(encode_event(event))
            assert decoded == event and type(decoded) is type(event)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cut=st.integers(0, 400))
def test_snapshot_mid_stream_finishes_the_same(seed: int, cut: int) -> None:
    commands = workload(seed, 300)
    cut = min(cut, len(commands))
    core = Core()
    for command in commands[:cut]:
        core.apply(command)
    restored = Core.from_snapshot(core.snapshot())
    assert restored.state_hash() == core.state_hash()
    assert restored.snapshot() == core.snapshot()
    for command in commands[cut:]:
        assert restored.apply(command) == core.apply(command)
    assert restored.state_hash() == core.state_hash()


def test_every_non_rejected_command_changes_the_hash() -> None:
    commands = workload(11, 1000)
    events, hashes = run(commands)
    before = Core().state_hash()
    for command, batch, after in zip(commands, events, hashes, strict=True):
        if all(isinstance(e, Rejected) for e in batch):
            assert after == before, f"rejected {command} changed the state"
        else:
            assert after != before, f"{command} gave {batch} but left the hash unchanged"
        before = after


def test_order_ids_and_sequences_are_dense() -> None:
    """Order ids count up from 1 without holes; each instrument's seq counts up from 1 without holes."""
    events, _ = run(workload(3, 1000))
    order_ids = [e.order_id for batch in events for e in batch if isinstance(e, OrderAccepted)]
    assert order_ids == list(range(1, len(order_ids) + 1))
    seqs: dict[str, list[int]] = {}
    for batch in events:
        for event in batch:
            if not isinstance(event, Rejected):
                symbol = getattr(event, "instrument", None) or _listed_symbol(event)
                seqs.setdefault(symbol, []).append(event.seq)
    for symbol, seen in seqs.items():
        assert seen == list(range(1, len(seen) + 1)), symbol


def _listed_symbol(event: Event) -> str:
    spec = getattr(event, "spec", None)
    return spec.symbol if spec is not None else event.lot.instrument  # type: ignore[attr-defined]


_FINGERPRINT = """
import hashlib
from exchange.core import Core
from exchange.events import encode_event
from tests.test_determinism import workload
core, digest = Core(), hashlib.blake2b()
for command in workload(5, 1500):
    for event in core.apply(command):
        digest.update(encode_event(event))
print(core.state_hash(), digest.hexdigest())
"""


def _fingerprint(hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", _FINGERPRINT], cwd=REPO, env=env, capture_output=True, text=True, check=True,
        timeout=120,
    )
    return result.stdout.strip()


def test_hash_and_events_do_not_depend_on_string_hashing() -> None:
    """Set or dict iteration over strings must never leak into events or the state hash."""
    here = hashlib.blake2b()
    core = Core()
    for command in workload(5, 1500):
        for event in core.apply(command):
            here.update(encode_event(event))
    expected = f"{core.state_hash()} {here.hexdigest()}"
    assert _fingerprint("1") == expected
    assert _fingerprint("4242") == expected
