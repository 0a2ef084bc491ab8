"""Replay's inner loop, compiled with the core: journaled commands applied to a core in seq order, and the
sequencer's idempotency index rebuilt as the live writer kept it.

Owns `ClientIndex` (the index as recovery rebuilds it) and `apply_commands` (one slice of a page of
decoded journal commands). `exchange.sequencer.recover` fetches and decodes the journal and calls these;
nothing here does I/O.

Why a module of its own: recovery applies every journaled command. Compiled in the core's group
(setup.py), `Core.apply` is a native call, the loop's tests are C comparisons and the index's lists
are appended natively (a deque's append is a generic method call from compiled code), where the
interpreted loop cost bytecode and a generic call into the compiled core per command.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from exchange.commands import ClockTick, Command, PlaceOrder
from exchange.core import MAX_CLIENT_ORDER_ID_LEN, Core, retention_of

ClientKey = tuple[int, str]

# Compiled, a module-level name is read from the module's dictionary at every use unless it is Final.
_PLACE_ORDER: Final = PlaceOrder
_CLOCK_TICK: Final = ClockTick


class ClientIndex:
    """The idempotency index as recovery rebuilds it: `seqs` (participant, client id) -> seq, and its
    keys with when each was indexed, oldest first, as two lists in step from `head` on (what the live
    sequencer keeps as two deques: `keys_deque`, `times_deque`)."""

    def __init__(self) -> None:
        self.seqs: dict[ClientKey, int] = {}
        self.keys: list[ClientKey] = []
        self.times: list[int] = []
        self.head = 0

    def add(self, key: ClientKey, seq: int, indexed_ns: int) -> None:
        """One id of a snapshot's copy of the index, in its order."""
        self.seqs[key] = seq
        self.keys.append(key)
        self.times.append(indexed_ns)

    def forget(self, held: dict[int, dict[str, int]], now_ns: int, before_ns: int) -> None:
        """Drop the ids indexed before `before_ns` whose order the core no longer holds (`held`: the
        core's client order ids); a resting order's id is looked at again a window later (as the
        sequencer's `forget_client_orders` does with its deques)."""
        keys, times, seqs = self.keys, self.times, self.seqs
        head = self.head
        while head < len(times) and times[head] < before_ns:
            key = keys[head]
            head += 1
            ids = held.get(key[0])
            if ids is not None and key[1] in ids:
                keys.append(key)  # a resting order keeps its id
                times.append(now_ns)
            else:
                seqs.pop(key, None)
        if head > 4096 and head * 2 > len(keys):  # the lists never hold more than twice what is live
            del keys[:head]
            del times[:head]
            head = 0
        self.head = head

    def keys_deque(self) -> deque[ClientKey]:
        return deque(self.keys[self.head :])

    def times_deque(self, default_ns: int) -> deque[int]:
        """The times, a 0 (an earlier version's snapshot did not say) as `default_ns`."""
        return deque([at or default_ns for at in self.times[self.head :]])


def apply_commands(
    core: Core, index: ClientIndex, commands: list[Command], start: int, stop: int, first_seq: int
) -> int:
    """Apply `commands[start:stop]` (`commands[0]` has seq `first_seq`) to `core`, indexing each
    `PlaceOrder`'s client order id as the live writer did and forgetting at each `ClockTick`; return the
    last command's ts_ns (0 for none). The events are dropped: replay rebuilds the state only, so the
    books build no `BookChanged` meanwhile (`Counters.quiet`: a level's size is output only; the books
    number the changes as always, so the state is the same) and the clearing no `ObligationRecorded`
    (`ClearingState.quiet`), and both are loud again when this returns."""
    counters = core.counters
    clearing = core.clearing
    counters.quiet = True
    if clearing is not None:
        clearing.quiet = True
    try:
        _apply(core, index, commands, start, stop, first_seq)
    finally:
        counters.quiet = False
        if clearing is not None:
            clearing.quiet = False
    return commands[stop - 1].ts_ns if stop > start else 0


def _apply(core: Core, index: ClientIndex, commands: list[Command], start: int, stop: int, first_seq: int) -> None:
    seqs = index.seqs
    keys = index.keys
    times = index.times
    seq = first_seq + start
    for i in range(start, stop):
        command = commands[i]
        kind = type(command)
        if kind is _PLACE_ORDER:
            cid: str = command.client_order_id  # type: ignore[union-attr]
            if 0 < len(cid) <= MAX_CLIENT_ORDER_ID_LEN:  # an id the index takes (not empty, not too long)
                key = (command.participant_id, cid)
                # one lookup: a new key (one journaled again was dropped first, so it is new too) is
                # indexed now; one already there only takes this seq
                if seqs.setdefault(key, seq) == seq:
                    keys.append(key)
                    times.append(command.ts_ns)
                else:
                    seqs[key] = seq
        core.apply(command)
        if kind is _CLOCK_TICK:
            tick_ns: int = command.ts_ns
            index.forget(core.client_order_ids, tick_ns, tick_ns - retention_of(command))  # type: ignore[arg-type]
            keys = index.keys  # forget may have compacted them
            times = index.times
        seq += 1
