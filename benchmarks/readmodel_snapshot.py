"""Read model snapshot benchmark: encode and restore the gateway's read model at a realistic open state.

    python -m benchmarks.readmodel_snapshot --open-orders 75000 --json

Folds a flow of orders on the matching benchmark's instrument (mostly passive limits that rest, some
crossing takers and cancels: `OrderFlow`) into a `gateway.readmodel.ReadModel` until it holds
``--open-orders`` open orders, then times the whole snapshot (`gateway.readmodel_codec.snapshot`, as a
clean stop takes it), the longest single step of a sliced one (`snapshot_steps`: what one turn of the
event loop pays while the gateway takes one) and `restore`, each the best of ``--repeat`` runs. On code
before that module (format 3: `ReadModel.snapshot`, `restore`) it times those, with no steps.
It also compares the two candidate encodings of the orders (msgspec structs vs msgpack of plain tuples).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec

from benchmarks.matching import BUYERS, REFERENCE_FEN, SELLERS, SYMBOL, TICK_FEN, setup_commands
from exchange.commands import CancelOrder, ClockTick, Command, PlaceOrder
from exchange.core import Core
from exchange.domain import OrderType, Side, TimeInForce
from exchange.events import Event, LotRegistered
from gateway.readmodel import OPEN_STATUSES, OrderRecord, ReadModel
from gateway.schemas import Fill

try:
    from gateway import readmodel_codec as codec
except ImportError:  # before it: format 3
    codec = None  # type: ignore[assignment]


class OrderFlow:
    """Orders on the matching benchmark's instrument, applied to a core and folded into `model` in
    batches: passive limits inside the band (most rest), one crossing IOC limit in ten (fills, partly
    filled makers), one cancel in ten (closed orders). `tick` folds a clock tick."""

    def __init__(self, seed: int, model: ReadModel | None = None) -> None:
        self.rng = random.Random(seed)
        self.core = Core()
        self.model = model if model is not None else ReadModel()
        self.lot_of: dict[int, int] = {}
        self.seq, self.ts_ns, self.cid = 0, 1_000, 0
        for command in setup_commands():
            events = self._fold([command])
            self.lot_of.update((e.lot.seller_id, e.lot.lot_id) for e in events if isinstance(e, LotRegistered))

    def orders(self, count: int) -> None:
        commands = []
        for _ in range(count):
            self.ts_ns, self.cid = self.ts_ns + 1_000, self.cid + 1
            commands.append(self._next())
        self._fold(commands)

    def tick(self, retention_ns: int) -> None:
        self.ts_ns += 1_000
        self._fold([ClockTick(0, self.ts_ns, retention_ns)])

    def _fold(self, commands: list[Command]) -> list[Event]:
        """Apply each command to the core (as the sequencer would, in order) and fold the batch."""
        batch, every = [], []
        for command in commands:
            self.seq += 1
            events = self.core.apply(command)
            batch.append((self.seq, command, events))
            every += events
        self.model.apply_batch(batch)
        return every

    def _next(self) -> Command:
        rng, core, ts_ns = self.rng, self.core, self.ts_ns
        roll = rng.random()
        if roll < 0.1 and core.orders:
            rec = core.orders.get(rng.randrange(1, core.counters.next_order_id))
            if rec is not None:
                return CancelOrder(rec.participant_id, ts_ns, rec.order_id)
        side = Side.SELL if rng.random() < 0.5 else Side.BUY
        if roll < 0.2:  # a taker: crosses a few levels, the rest of it is cancelled (IOC)
            price, tif = (2_860 if side == Side.BUY else 2_740), TimeInForce.IOC
        else:  # a maker: rests on its own side of the reference price
            offset = rng.randint(1, 11) * TICK_FEN
            price, tif = (REFERENCE_FEN + offset if side == Side.SELL else REFERENCE_FEN - offset), TimeInForce.GTC
        participant = rng.choice(SELLERS) if side == Side.SELL else rng.choice(BUYERS)
        return PlaceOrder(participant, ts_ns, f"c{self.cid}", SYMBOL, side, OrderType.LIMIT, price,
                          rng.randint(1, 20), tif, 0, False, 0, False,
                          lot_id=self.lot_of[participant] if side == Side.SELL else 0)


def build(open_orders: int, seed: int) -> ReadModel:
    """A read model holding about `open_orders` open orders (those the core holds), folded from a flow."""
    flow = OrderFlow(seed)
    while len(flow.core.orders) < open_orders:
        flow.orders(1_000)
    return flow.model


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def _as_tuples(orders: list[OrderRecord]) -> list[tuple[Any, ...]]:
    astuple = msgspec.structs.astuple
    return [(*astuple(r)[:-1], [astuple(f) for f in r.fills]) for r in orders]


def _from_tuples(rows: list[list[Any]]) -> list[OrderRecord]:
    return [OrderRecord(*row[:-1], tuple(Fill(*f) for f in row[-1])) for row in rows]


def candidates(model: ReadModel, repeat: int) -> dict[str, float]:
    """The orders alone, two ways: msgspec structs (array-like orders; fills as structs) and msgpack
    of plain tuples (built from the structs, decoded untyped and rebuilt)."""
    orders = list(model.orders.values())
    enc = msgspec.msgpack.Encoder()
    struct_dec = msgspec.msgpack.Decoder(list[OrderRecord])
    plain_dec = msgspec.msgpack.Decoder()
    s_enc, s_bytes = best(lambda: enc.encode(orders), repeat)
    s_dec, _ = best(lambda: struct_dec.decode(s_bytes), repeat)
    t_enc, t_bytes = best(lambda: enc.encode(_as_tuples(orders)), repeat)
    t_dec, _ = best(lambda: _from_tuples(plain_dec.decode(t_bytes)), repeat)
    return {"structs_encode_ms": s_enc * 1e3, "structs_decode_ms": s_dec * 1e3, "structs_mb": len(s_bytes) / 2**20,
            "tuples_encode_ms": t_enc * 1e3, "tuples_decode_ms": t_dec * 1e3, "tuples_mb": len(t_bytes) / 2**20}


def longest_step(model: ReadModel, repeat: int) -> tuple[float, str, int] | None:
    """The longest single synchronous step of a sliced snapshot (seconds; the best of `repeat` runs),
    what it encoded (the last step: "last") and how many steps there were; None without steps."""
    if codec is None:
        return None
    runs = []
    for _ in range(repeat):
        gc.collect()
        worst, what, count = 0.0, "", 0
        steps = codec.snapshot_steps(model)
        while True:
            start = time.perf_counter()
            try:
                kind = next(steps)[0]
            except StopIteration:
                kind = "last"
            took, count = time.perf_counter() - start, count + 1
            if took > worst:
                worst, what = took, kind
            if kind == "last":
                break
        runs.append((worst, what, count))
    return min(runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--open-orders", type=int, default=75_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    model = build(args.open_orders, args.seed)
    if codec is None:  # (before gateway/readmodel_codec.py: format 3, the model's own methods)
        encode_s, data = best(model.snapshot, args.repeat)  # type: ignore[attr-defined]
        restore_s, _ = best(lambda: ReadModel().restore(data), args.repeat)  # type: ignore[attr-defined]
    else:
        encode_s, data = best(lambda: codec.snapshot(model), args.repeat)
        restore_s, _ = best(lambda: codec.restore(ReadModel(), data), args.repeat)
    step = longest_step(model, args.repeat)
    out = {
        "open_orders": sum(1 for r in model.orders.values() if r.status in OPEN_STATUSES),
        "orders_held": len(model.orders),
        "fills_held": sum(len(f) for f in model.fills_by_participant.values()),
        "snapshot_bytes": len(data),
        "encode_ms": round(encode_s * 1e3, 1),
        "steps": None if step is None else step[2],
        "longest_step_ms": None if step is None else round(step[0] * 1e3, 2),
        "longest_step": None if step is None else step[1],
        "restore_ms": round(restore_s * 1e3, 1),
        **{k: round(v, 1) for k, v in candidates(model, args.repeat).items()},
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
