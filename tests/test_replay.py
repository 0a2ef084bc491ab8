"""Replay's compiled loop (exchange/replay.py): the state and the idempotency index it rebuilds equal
what the live writer's way of keeping them gives, however the commands are sliced, also when the index's
lists are compacted (more than 4,096 ids forgotten). No database: the journal's commands are made here,
as the sequencer stamps them."""

from __future__ import annotations

from collections import deque

import msgspec
import pytest

from benchmarks.matching import MixGenerator, exchange_setup_commands
from exchange.commands import ClockTick, Command, PlaceOrder
from exchange.core import MAX_CLIENT_ORDER_ID_LEN, Core, new_exchange, retention_of
from exchange.events import BookChanged, Event, ObligationRecorded
from exchange.replay import ClientIndex, apply_commands
from exchange.sequencer import forget_client_orders

WINDOW_NS = 2_000_000  # 2,000 commands of 1 µs apart: ids indexed then are looked at by a later tick
STEP_NS = 1_000


def _journal(orders: int) -> list[Command]:
    """The exchange benchmark's set-up and mix, stamped 1 µs apart, a tick with a short window every 500."""
    mix = MixGenerator(7).generate(orders)
    out: list[Command] = []
    ts_ns = 10**12
    for i, command in enumerate([*exchange_setup_commands(), *mix]):
        if i and i % 500 == 0:
            out.append(ClockTick(0, ts_ns, WINDOW_NS))
            ts_ns += STEP_NS
        out.append(msgspec.structs.replace(command, ts_ns=ts_ns))
        ts_ns += STEP_NS
    return out


def _live_index(journal: list[Command]) -> tuple[str, dict, deque, deque]:
    """The state hash and the index as the live writer keeps them (Sequencer._absorb's rule: a dict and
    two deques, `forget_client_orders` at each tick), applied one command at a time."""
    core = new_exchange()
    seqs: dict = {}
    keys: deque = deque()
    times: deque = deque()
    for seq, command in enumerate(journal, 1):
        if type(command) is PlaceOrder and 0 < len(command.client_order_id) <= MAX_CLIENT_ORDER_ID_LEN:
            key = (command.participant_id, command.client_order_id)
            if key not in seqs:
                keys.append(key)
                times.append(command.ts_ns)
            seqs[key] = seq
        core.apply(command)
        if type(command) is ClockTick:
            forget_client_orders(seqs, keys, times, core.client_order_ids, command.ts_ns,
                                 command.ts_ns - retention_of(command))  # fmt: skip
    return core.state_hash(), seqs, keys, times


def test_replay_rebuilds_the_live_state_and_index_in_any_slices() -> None:
    journal = _journal(12_000)
    live_hash, seqs, keys, times = _live_index(journal)
    assert len(keys) < len(seqs) + 1 and len(keys) > 0
    assert sum(type(c) is PlaceOrder for c in journal) - len(keys) > 4_096  # compaction happened
    for slice_size in (1, 997, len(journal)):
        core = new_exchange()
        index = ClientIndex()
        last_ts_ns = 0
        for start in range(0, len(journal), slice_size):
            last_ts_ns = apply_commands(core, index, journal, start, min(start + slice_size, len(journal)), 1)
        assert core.state_hash() == live_hash
        assert last_ts_ns == journal[-1].ts_ns
        assert index.seqs == seqs
        assert index.keys_deque() == keys
        assert index.times_deque(0) == times
        assert index.head < 4_096 or index.head * 2 <= len(index.keys)  # compacted lists


def test_replay_continues_an_index_restored_from_a_snapshot() -> None:
    """A snapshot's copy of the index (`ClientIndex.add`, in its order) then the journal's tail."""
    journal = _journal(3_000)
    live_hash, seqs, keys, times = _live_index(journal)
    core = new_exchange()
    index = ClientIndex()
    cut = 1_800
    apply_commands(core, index, journal[:cut], 0, cut, 1)
    restored = ClientIndex()
    for key, at in zip(index.keys_deque(), index.times_deque(0), strict=True):
        restored.add(key, index.seqs[key], at)
    assert apply_commands(core, restored, journal, cut, len(journal), 1) == journal[-1].ts_ns
    assert core.state_hash() == live_hash
    assert restored.seqs == seqs
    assert restored.keys_deque() == keys
    assert restored.times_deque(0) == times
    assert apply_commands(core, restored, journal, 5, 5, 1) == 0  # an empty slice


def test_an_id_without_its_time_counts_from_the_end_of_the_replay() -> None:
    """An earlier version's snapshot listed no times (0): recovery hands them over as its last time."""
    index = ClientIndex()
    index.add((1, "a"), 1, 0)
    index.add((1, "b"), 2, 5)
    assert index.times_deque(9) == deque([9, 5])
    assert index.keys_deque() == deque([(1, "a"), (1, "b")])


def test_quiet_books_build_no_level_changes_and_change_nothing_else() -> None:
    """While a replay applies commands (`Counters.quiet`, `ClearingState.quiet`), the books leave out
    `BookChanged` and the clearing `ObligationRecorded`, only: every other event is the live one (book seq
    numbers included), and the state is the same."""
    journal = _journal(3_000)
    live, quiet = new_exchange(), new_exchange()
    quiet.counters.quiet = True
    assert quiet.clearing is not None
    quiet.clearing.quiet = True
    left_out = {BookChanged: 0, ObligationRecorded: 0}
    for command in journal:
        events: list[Event] = live.apply(command)
        loud = [e for e in events if type(e) not in left_out]
        for e in events:
            if type(e) in left_out:
                left_out[type(e)] += 1
        assert quiet.apply(command) == loud
    assert min(left_out.values()) > 400
    assert quiet.state_hash() == live.state_hash()


def test_the_books_are_loud_again_after_a_replay_also_when_it_fails() -> None:
    journal = _journal(2_000)
    core = new_exchange()
    apply_commands(core, ClientIndex(), journal, 0, 300, 1)
    assert core.counters.quiet is False
    assert core.clearing is not None and core.clearing.quiet is False
    after = [type(e) for command in journal[300:] for e in core.apply(command)]
    assert BookChanged in after and ObligationRecorded in after

    class Failing(Core):
        def apply(self, command: Command) -> list[Event]:
            assert self.counters.quiet  # the replay's own setting reached the core
            assert self.clearing is not None and self.clearing.quiet
            raise RuntimeError("a bug in the core")

    failing = Failing(new_exchange().clearing)
    with pytest.raises(RuntimeError, match="a bug"):
        apply_commands(failing, ClientIndex(), journal, 0, 10, 1)
    assert failing.counters.quiet is False
    assert failing.clearing is not None and failing.clearing.quiet is False
