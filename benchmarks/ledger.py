"""Ledger benchmark: transfers per second in the core, and committed to PostgreSQL through the sequencer.

    python -m benchmarks.ledger --transfers 1000000 --json

1. Core, ledger alone: a seeded mix of transfers among 10,000 accounts, applied in batches of 1,000
   with ``Ledger.create_transfers`` (about 60 % single-phase, 20 % pending holds, 10 % posts of them,
   full or partial, 10 % voids; every limit checked), postings drained after each batch.
   -> ``transfers_per_s_core``.
2. Core, settlement flows: a seeded market day through the matching core with its clearing (buys
   holding funds, fills posting into escrow, weigh-ins, settlement at clock ticks with fees, poor
   households' subsidies and cooperative splits, payout runs sent and confirmed by the bank), counting
   the ledger transfers the clearing made. -> ``clearing_transfers_per_s_core`` (and commands/s).
3. Committed: the same command stream submitted to the durable sequencer, whose ``extra_writes``
   hook (``pgstore.LedgerWriter``) COPYs each batch's posting rows (one per transfer, binary) and new
   accounts in the journal batch's transaction, where their CHECK constraints verify them.
   -> ``transfers_per_s_committed``, and the CPU per command and per transfer of this process and of
   the writer's PostgreSQL backend (other load on the machine stretches the elapsed time, not those).
   Then the very posting rows are COPYed again, in as many chunks as the sequencer committed batches,
   one commit each, into a twin of ``ledger_transfers`` (``raw_copy_rows_per_s``: what the rows alone
   cost) and into a bare table without key, checks or indexes (``raw_copy_bare_rows_per_s``). Finally
   the database's balances (rebuilt from all postings) must equal the core's ledger, account by account.

Uses ``DATABASE_URL`` or the embedded server, in a scratch database dropped afterwards. Prints
figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import time
from collections import deque
from collections.abc import Sequence

import asyncpg
import msgspec

from benchmarks.journal import _backend_cpu_s, scratch_database
from exchange.commands import (
    BankConfirmation,
    CancelOrder,
    ClockTick,
    Command,
    ConfirmDeposit,
    FundsAccount,
    ImportBankConfirmations,
    ListInstrument,
    MarkPayoutsSent,
    ParticipantRole,
    PlaceOrder,
    RecordWeighIn,
    RegisterLot,
    RegisterParticipant,
    ReturnPayout,
    RunPayouts,
    SetCooperativeMembers,
    VerifyBankAccount,
    VerifyPoorHousehold,
)
from exchange.core import Core, new_exchange
from exchange.domain import BreedClass, InstrumentSpec, ProductClass, Side
from exchange.events import Event, OrderAccepted, PayoutChanged, PayoutState, Rejected, Trade
from exchange.sequencer import Result, Sequencer
from exchange.settlement import pgstore
from exchange.settlement.clearing import Clearing
from exchange.settlement.ledger import (
    CHART,
    Account,
    AccountCode,
    CreateTransferResult,
    Ledger,
    Posting,
    Transfer,
    TransferCode,
    TransferFlags,
)

SYMBOL = "RC-LH-WSY"
OPERATOR = 1
BUYERS = range(1000, 1050)
FARMERS = range(2000, 2400)  # every fifth a registered poor household
COOPS = range(3000, 3010)  # each with four members among the farmers
LEDGER_BATCH = 1000


# -- 1. the ledger alone --------------------------------------------------------------------------------------


def ledger_mix(n: int, seed: int, accounts: int = 10_000) -> tuple[Ledger, list[list[Transfer]]]:
    """A funded ledger and ``n`` transfers in batches; pending ids refer to earlier batches' holds."""
    rng = random.Random(seed)
    ledger = Ledger()
    cash = [Account(i, AccountCode.BUYER_CASH, owner_id=i, flags=CHART[AccountCode.BUYER_CASH].limit_flags)
            for i in range(1, accounts + 1)]
    source = Account(accounts + 1, AccountCode.INTEREST_INCOME, owner_id=1)  # no limit: funds the rest
    ledger.create_accounts([*cash, source], 1)
    ledger.create_transfers([Transfer(10**12 + i, source.account_id, i, 10**12, TransferCode.DEPOSIT)
                             for i in range(1, accounts + 1)], 1)
    ledger.drain_postings()
    ledger.drain_new_accounts()
    batches: list[list[Transfer]] = []
    open_holds: list[int] = []
    next_id = 1
    while next_id <= n:
        batch = []
        for _ in range(min(LEDGER_BATCH, n - next_id + 1)):
            batch.append(_one_transfer(rng, next_id, accounts, open_holds))
            next_id += 1
        batches.append(batch)
    return ledger, batches


def _one_transfer(rng: random.Random, tid: int, accounts: int, open_holds: list[int]) -> Transfer:
    roll = rng.random()
    if roll < 0.2 and open_holds:
        pending_id = open_holds.pop(rng.randrange(len(open_holds)))
        if roll < 0.1:
            return Transfer(tid, 0, 0, rng.choice((0, 1)), 0, 0, TransferFlags.POST_PENDING, pending_id)
        return Transfer(tid, 0, 0, 0, 0, 0, TransferFlags.VOID_PENDING, pending_id)
    dr = rng.randint(1, accounts)
    cr = rng.randint(1, accounts - 1)
    cr += cr >= dr  # never the same account
    amount = rng.randint(1, 100_000)
    if roll < 0.4:
        open_holds.append(tid)
        return Transfer(tid, dr, cr, amount, TransferCode.ORDER_HOLD, 0, TransferFlags.PENDING)
    return Transfer(tid, dr, cr, amount, TransferCode.SETTLEMENT)


def bench_ledger(n: int, seed: int) -> dict[str, float]:
    ledger, batches = ledger_mix(n, seed)
    ok = CreateTransferResult.OK
    gc.collect()
    gc.freeze()  # as the sequencer does after recovery: the prepared batches leave the collector's scans
    start_s = time.perf_counter()
    failed = 0
    for batch in batches:
        results = ledger.create_transfers(batch, 2)
        failed += sum(r is not ok for r in results)
        ledger.drain_postings()
    elapsed_s = time.perf_counter() - start_s
    gc.unfreeze()
    ledger.validate()
    return {"transfers_per_s_core": n / elapsed_s, "ledger_refused": failed}


# -- 2. settlement flows in the core ------------------------------------------------------------------------------


def clearing_of(core: Core) -> Clearing:
    """The clearing of an exchange core (``new_exchange()``: the core as the sequencer runs it, the
    compiled class itself; a subclass defined here would run every call of the core on itself through
    Python-level dispatch, which the exchange does not pay)."""
    assert core.clearing is not None
    return core.clearing


def _spec() -> InstrumentSpec:
    return InstrumentSpec(
        SYMBOL, ProductClass.FINISHING_HOG, BreedClass.WAI_SAN_YUAN, "Rongchang", 100_000, 120_000, 90_000,
        140_000, 10, 1, 500, 400, 2800, seller_fee_bps=50, overweight_limit_g=10_000,
        overweight_discount_fen_per_kg=60, dispute_window_ns=0,  # settle at the next tick: time-independent
    )  # fmt: skip


def setup_commands() -> list[Command]:
    """Instrument, participants with verified bank accounts, poor households, cooperatives, money."""
    out: list[Command] = [
        RegisterParticipant(0, 0, OPERATOR, ParticipantRole.OPERATOR, "operator", "5001**********001X"),
        ListInstrument(OPERATOR, 0, _spec()),
        ConfirmDeposit(OPERATOR, 0, "subsidy", 0, FundsAccount.POVERTY_SUBSIDY_FUND, 10**11),
    ]
    people = [(b, ParticipantRole.BUYER) for b in BUYERS] + [(f, ParticipantRole.FARMER) for f in FARMERS]
    people += [(c, ParticipantRole.COOPERATIVE) for c in COOPS]
    for pid, role in people:
        account = f"6217{pid:012d}"
        out.append(RegisterParticipant(OPERATOR, 0, pid, role, f"p{pid}", "5001**********123X", account))
        out.append(VerifyBankAccount(OPERATOR, 0, pid, account))
    out += [VerifyPoorHousehold(OPERATOR, 0, f, f"500226{f}") for f in FARMERS if f % 5 == 0]
    for i, coop in enumerate(COOPS):
        members = tuple(FARMERS[4 * i: 4 * i + 4])
        out.append(SetCooperativeMembers(OPERATOR, 0, coop, members, (3000, 3000, 2000, 1500)))
    out += [ConfirmDeposit(OPERATOR, 0, f"cash-{b}", b, FundsAccount.TRADING_CASH, 10**13) for b in BUYERS]
    return out


class MarketDay:
    """Builds the command stream of a market day while a scratch core tells what happened (trade ids,
    payout ids), so every command of the stream is valid when replayed in the same order."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.core = new_exchange()
        self.commands: list[Command] = []
        self.ts_ns = 1_767_225_600 * 10**9
        self.delivered: list[int] = []  # trade ids weighed in since the last tick
        self.resting_buys: list[tuple[int, int]] = []
        self.refs = 0
        for command in setup_commands():
            self.add(command)

    def add(self, command: Command) -> list[Event]:
        self.ts_ns += 1000
        command = msgspec.structs.replace(command, ts_ns=self.ts_ns)
        events = self.core.apply(command)
        clearing_of(self.core).discard_command_rows()
        if any(e.__class__ is Rejected for e in events):
            raise AssertionError(f"the workload made an invalid command: {command} -> {events}")
        self.commands.append(command)
        return events

    @property
    def transfers(self) -> int:
        return clearing_of(self.core).counters.next_transfer_id - 1

    def generate(self, transfers: int) -> list[Command]:
        rng = self.rng
        while self.transfers < transfers:
            self.cross(rng.choice((*FARMERS, *COOPS)), rng.choice(BUYERS))
            if rng.random() < 0.2:
                self.rest_and_cancel(rng.choice(BUYERS))
            if len(self.delivered) >= 200:
                self.add(ClockTick(0, 0))  # settles every delivered trade: fees, subsidies, splits
                self.delivered.clear()
            if rng.random() < 0.004:
                self.payout_cycle()
        return self.commands

    def cross(self, seller: int, buyer: int) -> None:
        rng = self.rng
        heads = rng.randint(1, 20)
        price = 2800 + 10 * rng.randint(-5, 5)
        lot = self.add(RegisterLot(seller, 0, SYMBOL, heads, rng.randint(100, 120) * 1000, "Rongchang", "CQ-1"))
        lot_id = lot[0].lot.lot_id  # type: ignore[union-attr]
        self.refs += 1
        self.add(PlaceOrder(seller, 0, f"s{self.refs}", SYMBOL, Side.SELL, 1, price, heads, lot_id=lot_id))
        events = self.add(PlaceOrder(buyer, 0, f"b{self.refs}", SYMBOL, Side.BUY, 1, price + 10 * rng.randint(0, 3),
                                     heads))
        for trade in (e for e in events if e.__class__ is Trade):
            delivered = max(trade.quantity_heads - rng.choice((0, 0, 0, 1)), 1)  # type: ignore[union-attr]
            weight = delivered * rng.choice((105_000, 112_000, 118_000, 124_000)) + rng.randint(0, 999)
            self.add(RecordWeighIn(OPERATOR, 0, trade.trade_id, delivered, weight, "CQ-1", True))  # type: ignore[union-attr]
            self.delivered.append(trade.trade_id)  # type: ignore[union-attr]

    def rest_and_cancel(self, buyer: int) -> None:
        self.refs += 1
        events = self.add(PlaceOrder(buyer, 0, f"r{self.refs}", SYMBOL, Side.BUY, 1, 2700, 5))
        order_id = next(e.order_id for e in events if e.__class__ is OrderAccepted)  # type: ignore[union-attr]
        self.add(CancelOrder(buyer, 0, order_id))

    def payout_cycle(self) -> None:
        """A payout run, its bank file sent, and the bank's answers (about 2 % failed, then retried)."""
        self.refs += 1
        events = self.add(RunPayouts(OPERATOR, 0, f"run{self.refs}"))
        pairs = tuple((e.payout_id, e.attempt) for e in events if e.__class__ is PayoutChanged)  # type: ignore[union-attr]
        if not pairs:
            return
        self.add(MarkPayoutsSent(OPERATOR, 0, f"file{self.refs}", pairs))
        rows = tuple(BankConfirmation(pid, attempt, self.rng.random() > 0.02, f"bank{pid}") for pid, attempt in pairs)
        self.add(ImportBankConfirmations(OPERATOR, 0, f"conf{self.refs}", rows))
        payouts = clearing_of(self.core).payouts
        for pid, _ in pairs:
            if payouts[pid].state == PayoutState.FAILED:
                self.add(ReturnPayout(OPERATOR, 0, pid))


def bench_clearing(commands: Sequence[Command]) -> dict[str, float]:
    core = new_exchange()
    clearing = clearing_of(core)
    gc.collect()
    gc.freeze()
    start_s = time.perf_counter()
    for i, command in enumerate(commands):
        core.apply(command)
        if not i % 1000:
            clearing.discard_command_rows()  # as the sequencer's writer takes them
    elapsed_s = time.perf_counter() - start_s
    gc.unfreeze()
    clearing.ledger.validate()
    transfers = clearing.counters.next_transfer_id - 1
    return {
        "clearing_transfers": transfers,
        "clearing_commands": len(commands),
        "clearing_transfers_per_s_core": transfers / elapsed_s,
        "clearing_commands_per_s_core": len(commands) / elapsed_s,
    }


# -- 3. committed through the sequencer ------------------------------------------------------------------------------


async def bench_committed(dsn: str, commands: Sequence[Command], max_batch: int, window: int) -> dict[str, float]:
    batch_sizes: list[int] = []
    writer = pgstore.LedgerWriter()
    sequencer = Sequencer(dsn, core_type=new_exchange, queue_size=window * 2, max_batch=max_batch,
                          snapshot_every=10**12, extra_writes=writer)
    writer.attach(sequencer)
    sequencer.subscribe(lambda batch: batch_sizes.append(len(batch)))
    # unstamped, as the gateway hands them over: the sequencer stamps them in place (a command stamped
    # already, resubmitted, would be copied first)
    commands = [msgspec.structs.replace(command, ts_ns=0) for command in commands]
    await sequencer.start()
    gc.collect()
    gc.freeze()
    backend_pid = sequencer.writer_backend_pid
    cpu_start = (time.process_time(), _backend_cpu_s(backend_pid))
    start_s = time.perf_counter()
    in_flight: deque[list[asyncio.Future]] = deque()  # the futures of each submitted chunk
    chunk = max(1, window // 4)
    results: list[Result] = []
    for first in range(0, len(commands), chunk):
        in_flight.append(sequencer.submit_many(commands[first:first + chunk]))
        while len(in_flight) * chunk > window:
            results += await _acked(in_flight.popleft())
    while in_flight:
        results += await _acked(in_flight.popleft())
    elapsed_s = time.perf_counter() - start_s
    py_cpu_s, pg_cpu_s = time.process_time() - cpu_start[0], _backend_cpu_s(backend_pid) - cpu_start[1]
    gc.unfreeze()
    rejected = sum(e.__class__ is Rejected for r in results for e in r.events)
    core = sequencer.core
    await sequencer.stop(snapshot=False)
    transfers = clearing_of(core).counters.next_transfer_id - 1
    mean_batch = sum(batch_sizes) / max(1, len(batch_sizes))
    figures = {
        "transfers_per_s_committed": transfers / elapsed_s,
        "posting_rows_per_s_committed": writer.rows_written / elapsed_s,
        "committed_commands_per_s": len(commands) / elapsed_s,
        "committed_transfers": transfers,
        "posting_rows": writer.rows_written,
        "mean_batch": mean_batch,
        "rejected_in_tail": rejected,
        # where the time goes: this process (core, encoding) and the writer's PostgreSQL backend; per
        # transfer too, which other load on the machine does not change (elapsed time it does)
        "py_cpu_us_per_command": py_cpu_s / len(commands) * 1e6,
        "pg_cpu_us_per_command": pg_cpu_s / len(commands) * 1e6,
        "py_cpu_us_per_transfer": py_cpu_s / transfers * 1e6,
        "pg_cpu_us_per_transfer": pg_cpu_s / transfers * 1e6,
    }
    conn = await asyncpg.connect(dsn)
    try:
        figures.update(await _raw_copy(conn, len(batch_sizes)))
        stored = await pgstore.balances(conn)
        expected = {a.account_id: (a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen,
                                   a.credits_posted_fen) for a in clearing_of(core).ledger.accounts()}
        figures["database_matches_core"] = stored == expected
    finally:
        await conn.close()
    return figures


async def _acked(futures: list[asyncio.Future]) -> list[Result]:
    """A chunk's results. The sequencer acknowledges in journal order, so once the chunk's last command
    is acknowledged every one is (``result()`` raises if one is not): one wait a chunk, not one a command."""
    await futures[-1]
    return [f.result() for f in futures]


async def _raw_copy(conn: asyncpg.Connection, batches: int) -> dict[str, float]:
    """The committed posting rows again, binary-encoded as the writer does, in as many chunks as the
    sequencer committed batches, one commit each: into a twin of ``ledger_transfers`` (its checks,
    key and indexes: what the rows cost) and into a bare table (no constraint, no index: the ceiling)."""
    rows = await conn.fetch(f"SELECT {', '.join(pgstore.POSTING_COLUMNS)} FROM ledger_transfers ORDER BY seq")
    chunk = max(1, -(-len(rows) // max(1, batches)))
    data = [pgstore.encode_postings(*_per_command(rows[i:i + chunk])) for i in range(0, len(rows), chunk)]
    figures = {}
    backend_pid = conn.get_server_pid()
    for name, like in (("raw_copy_rows_per_s", "INCLUDING ALL"), ("raw_copy_bare_rows_per_s", "")):
        table = f"bench_{name}"
        await conn.execute(f"CREATE TABLE {table} (LIKE ledger_transfers {like})")
        cpu_start_s, start_s = _backend_cpu_s(backend_pid), time.perf_counter()
        for part in data:
            await conn.copy_to_table(table, source=memoryview(part), columns=pgstore.POSTING_COLUMNS, format="binary")
        figures[name] = len(rows) / (time.perf_counter() - start_s)
        figures[name.replace("rows_per_s", "pg_cpu_us_per_row")] = (
            (_backend_cpu_s(backend_pid) - cpu_start_s) / max(1, len(rows)) * 1e6)
    return figures


def _per_command(rows: Sequence[asyncpg.Record]) -> tuple[int, list[tuple[tuple[()], list[Posting]]]]:
    """(first seq, each seq's postings from the first to the last seq of ``rows``): rows sorted by seq as
    ``pgstore.encode_postings`` takes them."""
    first_seq = rows[0][0]
    per_command: list[tuple[tuple[()], list[Posting]]] = [((), []) for _ in range(rows[-1][0] - first_seq + 1)]
    for r in rows:
        per_command[r[0] - first_seq][1].append(Posting(*r[1:]))
    return first_seq, per_command


# -- main --------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=200_000, help="ledger transfers per phase")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--max-batch", type=int, default=2_000, help="sequencer: most commands per commit")
    parser.add_argument("--window", type=int, default=20_000, help="sequencer: commands in flight")
    parser.add_argument("--no-db", action="store_true", help="core figures only")
    parser.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    args = parser.parse_args()

    figures: dict[str, float] = {"transfers": args.transfers, "seed": args.seed}
    figures.update(bench_ledger(args.transfers, args.seed))
    print(f"ledger alone:   {figures['transfers_per_s_core']:>12,.0f} transfers/s in the core")
    commands = MarketDay(args.seed).generate(args.transfers)
    figures.update(bench_clearing(commands))
    print(f"clearing flows: {figures['clearing_transfers_per_s_core']:>12,.0f} transfers/s in the core "
          f"({figures['clearing_commands_per_s_core']:,.0f} commands/s, {len(commands):,} commands)")
    if not args.no_db:
        figures.update(asyncio.run(_committed(commands, args)))
        print(f"committed:      {figures['transfers_per_s_committed']:>12,.0f} transfers/s "
              f"({figures['posting_rows_per_s_committed']:,.0f} posting rows/s, "
              f"{figures['committed_commands_per_s']:,.0f} commands/s, mean batch {figures['mean_batch']:,.0f})")
        print(f"                CPU per command: {figures['py_cpu_us_per_command']:.1f} us here, "
              f"{figures['pg_cpu_us_per_command']:.1f} us in the writer's PostgreSQL backend; per transfer "
              f"{figures['py_cpu_us_per_transfer']:.1f} us and {figures['pg_cpu_us_per_transfer']:.1f} us")
        print(f"raw COPY:       {figures['raw_copy_rows_per_s']:>12,.0f} posting rows/s into a twin of "
              f"ledger_transfers ({figures['raw_copy_pg_cpu_us_per_row']:.2f} us backend CPU a row), "
              f"{figures['raw_copy_bare_rows_per_s']:,.0f}/s without key, checks or indexes "
              f"({figures['raw_copy_bare_pg_cpu_us_per_row']:.2f} us)")
        print(f"database balances equal the core's ledger: {figures['database_matches_core']}")
    if args.json:
        print(json.dumps(figures))


async def _committed(commands: Sequence[Command], args: argparse.Namespace) -> dict[str, float]:
    async with scratch_database() as dsn:
        return await bench_committed(dsn, commands, args.max_batch, args.window)


if __name__ == "__main__":
    main()
