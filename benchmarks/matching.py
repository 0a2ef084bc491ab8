"""Core benchmark: a fixed, seeded order mix through ``Core.apply``, every validation on.

    python -m benchmarks.matching --ops 1000000 --json                  # the exchange: settlement on
    python -m benchmarks.matching --ops 1000000 --core matching --json  # matching alone

`--core exchange` (the default) is the core as the sequencer runs it behind the gateway,
`new_exchange()`: matching with settlement, so every buy holds funds, every fill posts into escrow and
every cancel releases its hold. Its set-up registers an operator, the sellers as farmers with lots and
the buyers as buyers, funded far beyond what the mix can hold, so it accepts exactly the orders the bare
core accepts (checked: both end with the same resting orders). `--core matching` is the bare matching
engine, `Core()`.

The mix on one instrument: about 60 % passive limits near the mid, 25 % cancels of resting orders,
10 % limits crossing the spread, 5 % market orders, with hundreds to thousands of orders resting.
The stream is decided before timing (a scratch core tells which orders rest, so cancels name live
orders) and kept as plain tuples of numbers; each command is BUILT INSIDE the timed loop the way the
gateway builds it (`gateway.orders.place_command`: a `PlaceOrder` with all its fields positional and
its client order id a new string), so the figures include making the command, not only applying it
(`built_in_loop` in the JSON). Throughput is timed over the whole run without per-command clocks;
latency percentiles come from a second run on a fresh core that times each command (build + apply).
Both run with the collector as the sequencer runs it (`SequencerGC`). The naive reference book of the
tests runs the same commands (pre-built) in the same process for comparison. Prints figures, then one
JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections.abc import Callable, Sequence

import exchange.core as core_module
from exchange.commands import (
    CancelOrder,
    Command,
    ConfirmDeposit,
    FundsAccount,
    ListInstrument,
    ParticipantRole,
    PlaceOrder,
    RegisterLot,
    RegisterParticipant,
    VerifyBankAccount,
)
from exchange.core import Core, new_exchange
from exchange.domain import (
    BreedClass,
    InstrumentSpec,
    OrderType,
    ProductClass,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from exchange.sequencer import GC_YOUNG_THRESHOLD

SYMBOL = "RC-LH-WSY"
REFERENCE_FEN = 2800
TICK_FEN = 10
SELLERS = range(100, 110)
BUYERS = range(200, 210)
OPERATOR = 1  # the mix lists its instrument as participant 1


def _spec() -> InstrumentSpec:
    return InstrumentSpec(
        SYMBOL, ProductClass.FINISHING_HOG, BreedClass.WAI_SAN_YUAN, "Rongchang", 100_000, 120_000, 90_000,
        140_000, TICK_FEN, 1, 500, 400, REFERENCE_FEN,
    )  # fmt: skip


def setup_commands() -> list[Command]:
    """The bare matching core's set-up: the instrument and one huge lot per seller."""
    commands: list[Command] = [ListInstrument(OPERATOR, 1, _spec())]
    for seller in SELLERS:
        commands.append(RegisterLot(seller, 1, SYMBOL, 1_000_000_000, 110_000, "Rongchang", f"CQ-{seller}"))
    return commands


def exchange_setup_commands() -> list[Command]:
    """The set-up for the core with settlement: an operator, the sellers registered as farmers and the
    buyers as buyers (verified bank accounts), every buyer funded far beyond what the mix can hold, so
    settlement accepts exactly the orders the bare core accepts; then `setup_commands()`."""
    out: list[Command] = [
        RegisterParticipant(0, 0, OPERATOR, ParticipantRole.OPERATOR, "operator", "5001**********001X")
    ]
    people = [(p, ParticipantRole.FARMER) for p in SELLERS] + [(p, ParticipantRole.BUYER) for p in BUYERS]
    for pid, role in people:
        account = f"6217{pid:012d}"
        out.append(RegisterParticipant(OPERATOR, 0, pid, role, f"p{pid}", "5001**********123X", account))
        out.append(VerifyBankAccount(OPERATOR, 0, pid, account))
    out += [ConfirmDeposit(OPERATOR, 0, f"cash-{b}", b, FundsAccount.TRADING_CASH, 10**15) for b in BUYERS]
    return out + setup_commands()


CORES: dict[str, tuple[Callable[[], Core], Callable[[], list[Command]]]] = {
    "exchange": (new_exchange, exchange_setup_commands),  # as the sequencer runs it: settlement on
    "matching": (Core, setup_commands),
}


class MixGenerator:
    """Builds the command stream while a scratch core keeps track of what rests."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.core = Core()
        self.lot_of = {}
        for command in setup_commands():
            for event in self.core.apply(command):
                lot = getattr(event, "lot", None)
                if lot is not None:
                    self.lot_of[lot.seller_id] = lot.lot_id
        self.next_cid = 0
        self.ts_ns = 1_000

    def generate(self, ops: int) -> list[Command]:
        out = []
        rng = self.rng
        for _ in range(ops):
            self.ts_ns += 1_000
            roll = rng.random()
            if roll < 0.25 and len(self.core.orders) > 50:
                command: Command = self._cancel()
            elif roll < 0.85 or len(self.core.orders) < 1000:
                command = self._limit(passive=True)
            elif roll < 0.95:
                command = self._limit(passive=False)
            else:
                command = self._market()
            self.core.apply(command)
            out.append(command)
        return out

    def _cancel(self) -> CancelOrder:
        orders = self.core.orders
        # a random live order: sample from the dict's keys via a random probe of recent ids
        order_id = self.rng.choice(list(orders)) if len(orders) < 64 else self._sample_live()
        return CancelOrder(orders[order_id].participant_id, self.ts_ns, order_id)

    def _sample_live(self) -> int:
        orders = self.core.orders
        top = self.core.counters.next_order_id
        while True:
            order_id = self.rng.randrange(max(1, top - 20_000), top)
            if order_id in orders:
                return order_id

    def _mid(self) -> tuple[int, int]:
        book = self.core.markets[SYMBOL].book
        bid = -book.bids.best_key if book.bids.best_key is not None else REFERENCE_FEN - TICK_FEN
        ask = book.asks.best_key if book.asks.best_key is not None else REFERENCE_FEN + TICK_FEN
        return bid, ask

    def _place(self, side: Side, price: int, heads: int, order_type: OrderType, tif: TimeInForce) -> PlaceOrder:
        self.next_cid += 1
        seller = side == Side.SELL
        participant = self.rng.choice(SELLERS) if seller else self.rng.choice(BUYERS)
        return PlaceOrder(
            participant, self.ts_ns, f"b{self.next_cid}", SYMBOL, side, order_type, price, heads, tif,
            0, False, 0, False, lot_id=self.lot_of[participant] if seller else 0,
        )  # fmt: skip

    def _limit(self, passive: bool) -> PlaceOrder:
        rng = self.rng
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        bid, ask = self._mid()
        if passive:
            offset = int(rng.expovariate(0.25)) * TICK_FEN
            price = (bid - offset) if side == Side.BUY else (ask + offset)
            price = min(max(price, 2690), 2910)
            if side == Side.BUY and price >= ask:
                price = ask - TICK_FEN
            if side == Side.SELL and price <= bid:
                price = bid + TICK_FEN
            return self._place(side, price, rng.randint(1, 20), OrderType.LIMIT, TimeInForce.GTC)
        price = (ask + 2 * TICK_FEN) if side == Side.BUY else (bid - 2 * TICK_FEN)
        price = min(max(price, 2690), 2910)
        return self._place(side, price, rng.randint(10, 60), OrderType.LIMIT, TimeInForce.GTC)

    def _market(self) -> PlaceOrder:
        side = Side.BUY if self.rng.random() < 0.5 else Side.SELL
        return self._place(side, 0, self.rng.randint(1, 30), OrderType.MARKET, TimeInForce.IOC)


Recipe = tuple[int, int, int, int, int, int, int, int, int, int]
"""One command of the stream as plain values: (0, participant, ts_ns, order id, 0...) for a cancel,
(1, participant, ts_ns, client order number, side, order type, price, heads, time in force, lot) for
a place, the side, type and time in force as the enum members the gateway looks up for a request's
strings. The timed loops build the command from it (`build`), as the gateway does from a request."""

_CANCEL, _PLACE = 0, 1
_STP = SelfTradePrevention.EXPIRE_TAKER


def recipes(commands: Sequence[Command]) -> list[Recipe]:
    """The stream as numbers; each rebuilds (`build`) to exactly its command (checked)."""
    out: list[Recipe] = []
    for command in commands:
        if isinstance(command, CancelOrder):
            recipe: Recipe = (_CANCEL, command.participant_id, command.ts_ns, command.order_id, 0, 0, 0, 0, 0, 0)
        else:
            assert isinstance(command, PlaceOrder) and command.client_order_id.startswith("b")
            recipe = (_PLACE, command.participant_id, command.ts_ns, int(command.client_order_id[1:]),
                      command.side, command.order_type, command.price_fen, command.quantity_heads,
                      command.time_in_force, command.lot_id)  # fmt: skip
        if build(recipe) != command:
            raise AssertionError(f"{recipe} does not rebuild {command!r}")
        out.append(recipe)
    return out


def build(recipe: Recipe) -> Command:
    """The command of `recipe`, made as `gateway.orders.place_command` makes it: every field
    positional, the client order id a new string. (The timed loops inline this body.)"""
    kind, participant, ts_ns, number, side, order_type, price, heads, tif, lot = recipe
    if kind == _CANCEL:
        return CancelOrder(participant, ts_ns, number)
    return PlaceOrder(participant, ts_ns, f"b{number}", SYMBOL, side, order_type, price, heads, tif, 0, False, 0,
                      False, _STP, lot)  # type: ignore[arg-type]  # fmt: skip


def _fresh(factory: Callable[[], object], setup: Callable[[], list[Command]] = setup_commands) -> object:
    engine = factory()
    for command in setup():
        engine.apply(command)  # type: ignore[attr-defined]
    return engine


class SequencerGC:
    """The collector as the sequencer runs it (``Sequencer``, ``gc_young_threshold``): after recovery old
    objects are frozen out of the collector's scans, and a young collection runs every
    ``GC_YOUNG_THRESHOLD`` allocations instead of every 700."""

    def __enter__(self) -> None:
        gc.collect()
        gc.freeze()
        self.thresholds = gc.get_threshold()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *self.thresholds[1:])

    def __exit__(self, *exc: object) -> None:
        gc.set_threshold(*self.thresholds)
        gc.unfreeze()


def run_throughput(factory: Callable[[], object], commands: Sequence[Command]) -> float:
    """Commands per second of pre-built `commands` (the reference book's figure)."""
    engine = _fresh(factory)
    apply = engine.apply  # type: ignore[attr-defined]
    with SequencerGC():
        start = time.perf_counter()
        for command in commands:
            apply(command)
        elapsed = time.perf_counter() - start
    return len(commands) / elapsed


def run_built(core: str, stream: Sequence[Recipe]) -> tuple[float, int, float]:
    """(commands per second, orders resting at the end, commands per CPU second of this process): each
    command built in the loop, then applied. On a shared machine the CPU figure moves less than the wall
    clock's, which counts the time other processes had the core."""
    factory, setup = CORES[core]
    engine: Core = _fresh(factory, setup)  # type: ignore[assignment]
    apply = engine.apply
    with SequencerGC():
        start, start_cpu = time.perf_counter(), time.process_time()
        for kind, participant, ts_ns, number, side, order_type, price, heads, tif, lot in stream:
            if kind:
                apply(PlaceOrder(participant, ts_ns, f"b{number}", SYMBOL, side, order_type, price, heads, tif, 0,
                                 False, 0, False, _STP, lot))  # type: ignore[arg-type]  # fmt: skip
            else:
                apply(CancelOrder(participant, ts_ns, number))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return len(stream) / elapsed, len(engine.orders), len(stream) / cpu


def run_latency(core: str, stream: Sequence[Recipe]) -> list[int]:
    """Nanoseconds per command (build + apply), sorted."""
    factory, setup = CORES[core]
    engine: Core = _fresh(factory, setup)  # type: ignore[assignment]
    apply = engine.apply
    clock = time.perf_counter_ns
    samples = [0] * len(stream)
    with SequencerGC():
        for i, (kind, participant, ts_ns, number, side, order_type, price, heads, tif, lot) in enumerate(stream):
            t0 = clock()
            if kind:
                apply(PlaceOrder(participant, ts_ns, f"b{number}", SYMBOL, side, order_type, price, heads, tif, 0,
                                 False, 0, False, _STP, lot))  # type: ignore[arg-type]  # fmt: skip
            else:
                apply(CancelOrder(participant, ts_ns, number))
            samples[i] = clock() - t0
    samples.sort()
    return samples


def _percentile_us(sorted_ns: list[int], q: float) -> float:
    return round(sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000, 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--core", choices=list(CORES), default="exchange",
                        help="exchange: matching with settlement, as the sequencer runs it; matching: matching alone")
    parser.add_argument("--reference-ops", type=int, default=0, help="ops through the reference (default: <=20k)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    generator = MixGenerator(args.seed)
    commands = generator.generate(args.ops)
    resting = len(generator.core.orders)
    kinds = {"place_limit": 0, "place_market": 0, "cancel": 0}
    for command in commands:
        if isinstance(command, CancelOrder):
            kinds["cancel"] += 1
        elif command.order_type == OrderType.MARKET:
            kinds["place_market"] += 1
        else:
            kinds["place_limit"] += 1

    stream = recipes(commands)
    runs = [run_built(args.core, stream) for _ in range(3)]
    if any(rest != resting for _, rest, _ in runs):  # settlement must accept what the bare core accepts
        raise AssertionError(f"{args.core} core ends with {[r for _, r, _ in runs]} resting orders, expected {resting}")
    ops_per_s = max(rate for rate, _, _ in runs)
    ops_per_cpu_s = max(rate for _, _, rate in runs)
    latencies = run_latency(args.core, stream)
    result = {
        "core": args.core,
        "built_in_loop": True,
        "ops": len(commands),
        "ops_per_s": round(ops_per_s),
        "ops_per_cpu_s": round(ops_per_cpu_s),
        "p50_us": _percentile_us(latencies, 0.50),
        "p99_us": _percentile_us(latencies, 0.99),
        "p999_us": _percentile_us(latencies, 0.999),
        "resting_at_end": resting,
        "compiled": not core_module.__file__.endswith(".py"),  # the mypyc build (setup.py) or plain Python
    }
    reference_ops = args.reference_ops or min(args.ops, 20_000)  # the oracle is slow on purpose
    try:
        from tests.reference_book import ReferenceBook
    except ImportError:  # the oracle lives with the tests; without them, report the core alone
        ReferenceBook = None
    if ReferenceBook is not None:
        reference_ops_per_s = run_throughput(ReferenceBook, commands[:reference_ops])
        result["reference_ops"] = reference_ops
        result["reference_ops_per_s"] = round(reference_ops_per_s)
        result["ratio_vs_reference"] = round(ops_per_s / reference_ops_per_s, 2)
    print(f"mix: {kinds}, resting at end: {resting}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
