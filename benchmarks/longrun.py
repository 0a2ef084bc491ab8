"""Long-run benchmark: N simulated market days through the sequencer into PostgreSQL, a restart each night.

    python -m benchmarks.longrun --days 30 --json
    python -m benchmarks.longrun --days 2 --commands-per-day 2000 --json   # a quick look

Does the exchange's cost stay bounded by what is open, day after day, or grow with its history? Every
day has the same volume and the same mix: sellers register lots and offer them, buyers cross them,
some resting bids are cancelled, an operator records each trade's weigh-in, a financier advances part
of some trades' value to their sellers (a loan repaid with interest when the trade settles), clock
ticks settle the delivered trades (fees, poor households' subsidies, cooperative splits), and the day
ends with a payout run, its bank file sent and the bank's answers (about 2 % failed, then returned).
The stream is `benchmarks.ledger.MarketDay`'s (`LongMarket` adds the days, the loans and the
night's payout cycle), made day by day in a child process by a scratch core, so its memory is not
this run's, and every command of it was accepted there. Simulated time moves one day per day, so
trades settle and payouts run as they would: a day's trading opens at 06:00 (UTC), or a day after the
last day's trading closed if that is later, and its night runs at 12:00 (20:00 CST, before the CST
midnight at which loans accrue). The sequencer's clock moves one microsecond a reading, so a day's
trading lasts well under a millisecond of exchange time and ends after as many readings as the
sequencer made batches, which varies from day to day (day 1, with the setup, makes more). Opening a day
after the last close keeps every day's close at the same point of the 24 h window: opened at 06:00
each day, the window at day 2's close would still hold the last third of day 1's trading (the part
stamped later than day 2's last tick) and, on later days, a varying tail of the day before: records
that a market trading for hours a day would have forgotten at the close.

Each day runs in a fresh process, as the exchange restarts: it recovers from the latest snapshot and
the journal tail (`Sequencer.start`), submits the day's trading (as the gateway hands commands over:
not stamped; `--window` in flight), stops with a snapshot at the close, starts again from it and
submits the night (the last settlement tick, the payout run, its bank file and the bank's answers),
times a page of a busy buyer's statement, and stops without a snapshot, so the next day's process
recovers from the close's snapshot and replays the night as its tail. Every day's snapshot is thus
taken at the same point of the day: with the default 24 h window, memory holds about one day of
final records at any point after the first day, and a snapshot taken at an arbitrary command count
(as this benchmark did before) compared a part of day 1 with a whole window on later days, a growth
ratio of about 2 with nothing growing.

What the window holds at the close is not the same on day 1 as later, and cannot be: after day 1 it
holds the setup (participants, their accounts) and day 1's trading; after day d > 1 the same and, still
inside its 24 h, the night of day d - 1 (its last settlement tick's trades, the payouts run and
confirmed or returned, the run, bank file and import: the clearing's final records, kept whole for
idempotency and for the API until the window passes). The ledger holds only the transfers open or
final since the last tick (it forgets the others at every tick: no retry names a transfer), about 770
on every day. The loan accounts of a financier and a farmer are held as accounts only while a loan
between them is open, and parked otherwise (one array of 8 ints in the snapshot, where an account is a
map of 11 named fields): every farmer who ever borrowed has a parked pair, so these grow until every
one has borrowed, then stay. Payouts and final-queue entries are packed in the snapshot (one row of
ints each, steps from the one before; memory holds them whole), and the keys of parked accounts are
left out (the ledger's parked records hold them). With 5,000 commands a day, 30 days, `snapshot_bytes`
(state and idempotency index) is 572 KB after day 1 and 680 KB after day 30 (ratio 1.19; 575 and 690 KB
with the parked accounts' keys, 586 and 732 KB before the packing; the state alone 521 KB after day 1,
619 KB after day 30). Day 1 to day 2 is the night entering the window: ~380 final payouts, ~140 more
settled trades, their final-queue entries and closed advances (kept a window after their trade). Day 2
to day 30 is the farmers met since (parked pairs: 236 parked accounts after day 1, 780 after day 30)
and ids grown wider (client order ids, order ids and sequence numbers past 65,535 take 5 bytes in
msgpack, not 3). The numbers of lots, orders, client order ids and the day's own trades are the same on
every day.

Recovery (`Sequencer.start`, 13 commands of the night replayed) takes about 40 ms on a quiet machine:
the pool, the connection and the writer lock, the snapshot's fetch, its restore (7.5 ms of CPU after day
1, 11-13 ms after day 30), the state hash that checks it (an encoding: 4.5-5 ms, 7-7.7 ms), the index,
the tail's replay (4-6 ms), the journal's partitions checked. It steps up from day 1 to day 2 and is
flat after (this process's CPU, one run: 22.5 ms after day 1, 36 ms after day 2, 33-41 ms on days 3 to
30), with the snapshot: restoring and hashing the night in the window (callgrind, `Core.from_snapshot`
and `state_hash`: 97M instructions after day 1, 128M after day 30, the payouts' unpacking and packing
11M of the difference) and the tail's tick forgetting the night before. Each of recovery's journal
queries used to be planned over every day's partition, 8-15 ms on 35 days' where 1-2.5 ms on day 1's 6
(EXPLAIN ANALYZE): it now reads the partitions of the tail's days only.

Day d's figures: its commands and rejections (should be 0:
the stream was valid for the scratch core), committed commands/s, its statement page, and from the
restart after it (the next process, right after recovery): the process's RSS, the size of the
snapshot it started from (state and idempotency index) and the recovery time, wall and this process's
CPU (`Sequencer.start`, the fastest of `RECOVERIES` recoveries from the same snapshot and tail, one after
the other: the machine's other load only ever adds to one). The recovery figures of day 1 and the last
day in the JSON are taken again after the last day, in the same minutes: the database as day 1 left it
(a copy made before the restart after it) and as the last day left it are recovered by fresh processes,
alternately, `RECOVERY_ROUNDS` times each, and each keeps its fastest of those rounds only (the day's own
figure is left out: taken minutes earlier, a minimum with it compared day 1's quietest minutes with the
end's; one run that kept it gave 1.47 while its per-day lines varied 21-40 ms CPU with no trend). Each is
still the recovery the next process does from that state; measured minutes apart, the two compared what
else the machine ran (on 2 busy cores, a restart's fastest of 3 varied from 40 to 100 ms, its ratio from
0.67 to 2.3).

Prints a line per day, then one JSON object: `days`, `commands`, `rss_mb_day1`, `rss_mb_last`,
`snapshot_bytes_day1`, `snapshot_bytes_last`, `recovery_s_day1`, `recovery_s_last`,
`statement_page_ms_last`, `growth_ratio_rss`, `growth_ratio_snapshot`, `growth_ratio_recovery` (last
day over day 1), `recovery_cpu_s_day1`, `recovery_cpu_s_last`, `growth_ratio_recovery_cpu`, `rejected`
(all days), and `held_day1`, `held_last`: what the restart after day 1 and after the last day held, by
kind (`held_counts`: orders, lots, ids, accounts, trades, payouts, loans, transfers...). Uses
`DATABASE_URL` or the embedded server, in a scratch database (and the copy of day 1's) dropped
afterwards. Wall-clock figures move with other load on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from benchmarks.journal import scratch_database
from benchmarks.ledger import BUYERS, COOPS, FARMERS, OPERATOR, MarketDay, clearing_of
from exchange import store
from exchange.commands import (
    ClockTick,
    Command,
    ConfirmDeposit,
    FundsAccount,
    GrantAdvance,
    ParticipantRole,
    RegisterParticipant,
    SetConsent,
    VerifyBankAccount,
)
from exchange.core import Core, new_exchange
from exchange.events import Rejected, Trade
from exchange.sequencer import Result, Sequencer
from exchange.settlement import pgstore
from exchange.settlement.ledger import AccountCode

DAY_NS = 86_400 * 10**9
START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
OPENING_NS = 6 * 3_600 * 10**9  # each simulated day's trading starts at 06:00 (UTC) at the earliest
NIGHT_NS = 12 * 3_600 * 10**9  # and its night (settlement, payout run, bank answers) at 12:00 (20:00 CST,
# before the CST midnight at which loans accrue interest: the same midnights as a night right after trading)
FINANCIER = 4000
STATEMENT_BUYER = BUYERS[0]
SELLERS = (*FARMERS, *COOPS)
RECOVERIES = 5  # each restart recovers this many times; its recovery time is the fastest (wall and CPU alike)
RECOVERY_ROUNDS = 5  # and, after the last day, the restarts after day 1 and the last day again, alternated

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[list[Command], int])  # a day's commands, where its night begins


class LongMarket(MarketDay):
    """`MarketDay` in days: a financier advancing on some trades, and a payout cycle every night."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        account = f"6217{FINANCIER:012d}"
        self.add(RegisterParticipant(OPERATOR, 0, FINANCIER, ParticipantRole.FINANCIER, "bank", "5001**********123X",
                                     account))  # fmt: skip
        self.add(VerifyBankAccount(OPERATOR, 0, FINANCIER, account))
        self.add(ConfirmDeposit(OPERATOR, 0, "funds", FINANCIER, FundsAccount.FINANCIER_FUNDS, 10**14))
        for farmer in FARMERS:
            self.add(SetConsent(farmer, 0, FINANCIER, True))
        self.closed_ns = 0  # when the last day's trading closed (0: before the first day)

    def day(self, day: int, commands: int) -> tuple[list[Command], int]:
        """The commands of simulated day `day` (0 is the first), about `commands` of them, and where its
        night (the last settlement tick and the payout cycle) begins among them."""
        # trading opens a day after the last one closed, as run_day's clock does
        self.ts_ns = max(self.ts_ns, START_NS + day * DAY_NS + OPENING_NS, self.closed_ns + DAY_NS)
        first = len(self.commands)
        rng = self.rng
        while len(self.commands) - first < commands:
            self.cross(rng.choice(SELLERS), rng.choice(BUYERS))
            if rng.random() < 0.2:
                self.rest_and_cancel(rng.choice(BUYERS))
            if len(self.delivered) >= 200:
                self.add(ClockTick(0, 0))
                self.delivered.clear()
        night = len(self.commands) - first
        self.closed_ns = self.ts_ns
        self.ts_ns = max(self.ts_ns, START_NS + day * DAY_NS + NIGHT_NS)
        self.add(ClockTick(0, 0))  # the last deliveries of the day settle
        self.delivered.clear()
        self.payout_cycle()  # the night's payout run, sent and confirmed by the bank
        out = self.commands[first:]
        del self.commands[:]  # the child keeps no history of commands
        return out, night

    def add(self, command: Command) -> list[Any]:
        events = super().add(command)
        if command.__class__.__name__ == "PlaceOrder" and self.rng.random() < 0.15:
            for trade in (e for e in events if e.__class__ is Trade):
                if trade.seller_id in FARMERS:  # type: ignore[union-attr]
                    # a tenth of the trade's value at ¥28/kg of 100 kg a head, within any policy's share
                    amount = trade.quantity_heads * 100 * 28 * 100 // 10  # type: ignore[union-attr]
                    super().add(GrantAdvance(FINANCIER, 0, trade.trade_id, amount, 600))  # type: ignore[union-attr]
        return events


def generate_days(seed: int, days: int, per_day: int, directory: str) -> None:
    """Child process: write day d's commands to `directory/day-d.msgpack` (atomically), day by day."""
    market = LongMarket(seed)
    setup = market.commands[:]
    del market.commands[:]
    for day in range(days):
        commands, night = market.day(day, per_day)
        if day == 0:
            commands, night = setup + commands, len(setup) + night
        path = Path(directory, f"day-{day}.msgpack")
        Path(f"{path}.part").write_bytes(_encoder.encode((commands, night)))
        os.replace(f"{path}.part", path)


# -- one day in its own process -------------------------------------------------------------------------------


class DayClock:
    """The sequencer's clock on simulated day `day`: from 06:00, one microsecond a reading; `open_at` and
    `night` move it on (never back)."""

    def __init__(self, day: int) -> None:
        self.day = day
        self.now_ns = START_NS + day * DAY_NS + OPENING_NS

    def __call__(self) -> int:
        self.now_ns += 1_000
        return self.now_ns

    def open_at(self, closed_ns: int) -> None:
        """Trading opens a day after the last day's trading closed at `closed_ns` (0: none did)."""
        if closed_ns:
            self.now_ns = max(self.now_ns, closed_ns + DAY_NS)

    def night(self) -> None:
        self.now_ns = max(self.now_ns, START_NS + self.day * DAY_NS + NIGHT_NS)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sequencer(dsn: str, clock: DayClock, snapshot_every: int, window: int) -> Sequencer:
    return Sequencer(dsn, core_type=new_exchange, clock_ns=clock, snapshot_every=snapshot_every,
                     queue_size=max(2 * window, 10_000))  # fmt: skip


async def run_day(dsn: str, day: int, stream: str, snapshot_every: int, window: int) -> dict[str, Any]:
    """Recover, measure, run the day's commands (if any), time a statement page; the figures."""
    clock = DayClock(day)
    sequencer = _sequencer(dsn, clock, snapshot_every, window)
    start_s, start_cpu_s = time.perf_counter(), time.process_time()
    recovery = await sequencer.start()
    figures: dict[str, Any] = {
        "recovery_s": time.perf_counter() - start_s,
        "recovery_cpu_s": time.process_time() - start_cpu_s,
        "replayed": recovery.replayed,
        "snapshot_seq": recovery.snapshot_seq,
    }
    try:
        gc.collect()
        figures["rss_mb"] = _rss_mb()
        for _ in range(RECOVERIES - 1):  # the fastest of a few: other load on the machine only slows one down
            await sequencer.stop(snapshot=False)
            sequencer = _sequencer(dsn, clock, snapshot_every, window)
            start_s, start_cpu_s = time.perf_counter(), time.process_time()
            await sequencer.start()
            figures["recovery_s"] = min(figures["recovery_s"], time.perf_counter() - start_s)
            figures["recovery_cpu_s"] = min(figures["recovery_cpu_s"], time.process_time() - start_cpu_s)
        figures["held"] = held_counts(sequencer.core, len(recovery.client_orders))
        conn = await asyncpg.connect(dsn)
        try:
            closed = await store.journal_entry(conn, recovery.snapshot_seq) if recovery.snapshot_seq else None
            clock.open_at(closed[0] if closed is not None else 0)  # the close's snapshot: the last trading
            figures["snapshot_bytes"] = (
                await conn.fetchval(
                    "SELECT coalesce(octet_length(state) + coalesce(octet_length(client_orders), 0), 0) FROM snapshots "
                    "WHERE seq = $1",
                    recovery.snapshot_seq,
                )
                or 0
            )
            if stream:
                stored, night = _decoder.decode(Path(stream).read_bytes())
                commands = [msgspec.structs.replace(c, ts_ns=0) for c in stored]
                start_s = time.perf_counter()
                results = await _submit_all(sequencer, commands[:night], window)
                elapsed_s = time.perf_counter() - start_s
                # the close: a snapshot, and the night after a restart from it (the next day's tail)
                await sequencer.stop(snapshot=True)
                sequencer = _sequencer(dsn, clock, snapshot_every, window)
                await sequencer.start()
                clock.night()
                start_s = time.perf_counter()
                results += await _submit_all(sequencer, commands[night:], window)
                figures["commands_per_s"] = len(commands) / (elapsed_s + time.perf_counter() - start_s)
                figures["commands"] = len(commands)
                figures["rejected"] = sum(e.__class__ is Rejected for r in results for e in r.events)
                del results, commands, stored
                figures["statement_page_ms"] = await _statement_page_ms(conn)
        finally:
            await conn.close()
    finally:
        await sequencer.stop(snapshot=False)  # as a crash or a deploy would: the next start replays a tail
    return figures


def held_counts(core: Core, index_entries: int) -> dict[str, int]:
    """What a recovered exchange holds, by kind (what its snapshot encodes): the core's, the clearing's
    and the ledger's records, and the sequencer's idempotency index."""
    clearing = clearing_of(core)
    counts = {"orders": len(core.orders), "lots": len(core.lots),
              "client_order_ids": sum(len(ids) for ids in core.client_order_ids.values()),
              "lot_refs": len(core.lot_refs), "index_entries": index_entries,
              "participants": len(clearing.participants), "accounts": len(clearing.accounts),
              "payables": sum(1 for sources in clearing.payables.values() if sources)}  # fmt: skip
    counts.update(clearing.held_counts())
    return counts


async def _submit_all(sequencer: Sequencer, commands: Sequence[Command], window: int) -> list[Result]:
    results: list[Result] = []
    chunk = max(1, window // 4)
    in_flight: list[list[asyncio.Future[Result]]] = []
    for first in range(0, len(commands), chunk):
        in_flight.append(sequencer.submit_many(commands[first : first + chunk]))
        if len(in_flight) * chunk > window:
            futures = in_flight.pop(0)
            await futures[-1]  # acknowledged in journal order: the chunk's last one is the last to resolve
            results += [f.result() for f in futures]
    for futures in in_flight:
        await futures[-1]
        results += [f.result() for f in futures]
    return results


async def _statement_page_ms(conn: asyncpg.Connection, repeat: int = 5) -> float:
    """Median ms of the first page (100 lines) of a busy buyer's cash statement over all time."""
    account_id = await conn.fetchval("SELECT account_id FROM ledger_accounts WHERE code = $1 AND owner_id = $2",
                                     int(AccountCode.BUYER_CASH), STATEMENT_BUYER)  # fmt: skip
    times_s = []
    for _ in range(repeat):
        start_s = time.perf_counter()
        await pgstore.statement(conn, account_id, limit=100)
        times_s.append(time.perf_counter() - start_s)
    return statistics.median(times_s) * 1000


def _worker_main(args: argparse.Namespace) -> None:
    figures = asyncio.run(run_day(args.dsn, args.day, args.stream, args.snapshot_every, args.window))
    print(json.dumps(figures))


# -- the driver -------------------------------------------------------------------------------------------------


def _day_process(dsn: str, day: int, stream: str, args: argparse.Namespace) -> dict[str, Any]:
    # snapshots only at the close (a periodic one would move the point of the day recovery starts from)
    command = [
        sys.executable,
        "-m",
        "benchmarks.longrun",
        "--worker",
        "--dsn",
        dsn,
        "--day",
        str(day),
        "--stream",
        stream,
        "--snapshot-every",
        str(10**12),
        "--window",
        str(args.window),
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True, env={**os.environ})
    if done.returncode:
        raise RuntimeError(f"day {day}'s process exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _admin_dsn(dsn: str) -> str:
    return store.dsn_with_database(dsn, "postgres")  # (a copy is made from a database nobody is connected to)


async def _copy_database(dsn: str, suffix: str) -> str:
    """A copy of the database of `dsn` (nobody connected to it), named with `suffix`; its DSN."""
    source = urlsplit(dsn).path.lstrip("/")
    target = f"{source}{suffix}"
    admin = await asyncpg.connect(_admin_dsn(dsn))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{target}"')
        for attempt in range(50):
            try:
                await admin.execute(f'CREATE DATABASE "{target}" TEMPLATE "{source}"')
                break
            except asyncpg.ObjectInUseError:  # the last process's backends may still be exiting
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return store.dsn_with_database(dsn, target)


async def _drop_database(dsn: str) -> None:
    admin = await asyncpg.connect(_admin_dsn(dsn))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path.lstrip("/")}" WITH (FORCE)')
    finally:
        await admin.close()


async def _wait_for(path: Path, generator: multiprocessing.Process) -> None:
    while not path.exists():
        if not generator.is_alive() and not path.exists():
            raise RuntimeError(f"the stream generator stopped (exit {generator.exitcode}) before {path.name}")
        await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with scratch_database() as dsn:
        with tempfile.TemporaryDirectory(prefix="hogx-longrun-") as directory:
            context = multiprocessing.get_context("spawn")
            generator = context.Process(target=generate_days,
                                        args=(args.seed, args.days, args.commands_per_day, directory))  # fmt: skip
            generator.start()
            try:
                return await _run_days(dsn, Path(directory), generator, args)
            finally:
                if generator.is_alive():
                    generator.terminate()
                generator.join()


async def _run_days(
    dsn: str, directory: Path, generator: multiprocessing.Process, args: argparse.Namespace
) -> dict[str, Any]:
    days: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None
    day1_dsn = dsn  # the database as day 1 left it (a copy, if more days follow): recovered again at the end
    try:
        for day in range(args.days + 1):  # the last process only restarts after the last day
            stream = ""
            if day < args.days:
                path = directory / f"day-{day}.msgpack"
                await _wait_for(path, generator)
                stream = str(path)
            if day == 1 and args.days > 1:
                day1_dsn = await _copy_database(dsn, "_day1")
            figures = await asyncio.to_thread(_day_process, dsn, day, stream, args)
            if previous is not None:
                # the restart after a day tells what that day left: memory, snapshot, recovery time
                previous.update(
                    rss_mb=figures["rss_mb"],
                    snapshot_bytes=figures["snapshot_bytes"],
                    recovery_s=figures["recovery_s"],
                    recovery_cpu_s=figures["recovery_cpu_s"],
                    replayed=figures["replayed"],
                    held=figures["held"],
                )
                days.append(previous)
                _print_day(len(days), previous)
            previous = figures
            if stream:
                Path(stream).unlink()
        first, last = days[0], days[-1]
        # Recovery times again, the restart after day 1 and after the last day alternated in the same minutes,
        # and only these: the day's own figures were taken minutes apart, under whatever else the machine ran
        # then, and a minimum taken with day 1's own would compare day 1's quietest minutes with the end's.
        again_by_day: dict[int, list[dict[str, Any]]] = {1: [], args.days: []}
        for _ in range(RECOVERY_ROUNDS):
            for day_dsn, day in ((day1_dsn, 1), (dsn, args.days)):
                again_by_day[day].append(await asyncio.to_thread(_day_process, day_dsn, day, "", args))
        for figures, day in ((first, 1), (last, args.days)):
            for key in ("recovery_s", "recovery_cpu_s"):
                figures[key] = min(again[key] for again in again_by_day[day])
    finally:
        if day1_dsn != dsn:
            await _drop_database(day1_dsn)
    return _summary(args, days)


def _summary(args: argparse.Namespace, days: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = days[0], days[-1]
    return {
        "days": args.days,
        "commands": int(sum(d["commands"] for d in days)),
        "commands_per_day": args.commands_per_day,
        "rejected": int(sum(d["rejected"] for d in days)),
        "rss_mb_day1": round(first["rss_mb"], 1),
        "rss_mb_last": round(last["rss_mb"], 1),
        "snapshot_bytes_day1": int(first["snapshot_bytes"]),
        "snapshot_bytes_last": int(last["snapshot_bytes"]),
        "recovery_s_day1": round(first["recovery_s"], 3),
        "recovery_s_last": round(last["recovery_s"], 3),
        "statement_page_ms_last": round(last["statement_page_ms"], 2),
        "commands_per_s_last": round(last["commands_per_s"]),
        "growth_ratio_rss": round(last["rss_mb"] / first["rss_mb"], 2),
        "growth_ratio_snapshot": round(last["snapshot_bytes"] / max(1, first["snapshot_bytes"]), 2),
        "growth_ratio_recovery": round(last["recovery_s"] / max(1e-9, first["recovery_s"]), 2),
        "recovery_cpu_s_day1": round(first["recovery_cpu_s"], 4),  # this process's CPU (not the server's)
        "recovery_cpu_s_last": round(last["recovery_cpu_s"], 4),
        "growth_ratio_recovery_cpu": round(last["recovery_cpu_s"] / max(1e-9, first["recovery_cpu_s"]), 2),
        "held_day1": first["held"],  # what the restart after day 1 held, by kind (held_counts)
        "held_last": last["held"],
    }


def _print_day(day: int, f: dict[str, Any]) -> None:
    print(
        f"day {day:>3}: {int(f['commands']):>7,} commands ({int(f['rejected'])} rejected) "
        f"{f['commands_per_s']:>8,.0f}/s | restart: rss {f['rss_mb']:7.1f} MB, snapshot "
        f"{f['snapshot_bytes'] / 1e6:8.2f} MB, recovery {f['recovery_s'] * 1000:6.1f} ms "
        f"({f['recovery_cpu_s'] * 1000:5.1f} ms CPU, "
        f"{int(f['replayed']):,} replayed) "
        f"| statement page {f['statement_page_ms']:.2f} ms",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--commands-per-day", type=int, default=20_000, help="the daily volume (about)")
    parser.add_argument("--window", type=int, default=4_000, help="commands in flight")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one day's process
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--day", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stream", default="", help=argparse.SUPPRESS)
    parser.add_argument("--snapshot-every", type=int, default=20_000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(args)
        return
    if args.days < 1 or args.commands_per_day < 1:
        parser.error("--days and --commands-per-day must be positive")
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
