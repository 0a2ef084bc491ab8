"""Journal benchmark: durable commands per second through the sequencer against a raw COPY, and replay.

    python -m benchmarks.journal --commands 200000 --json                  # the exchange: settlement on
    python -m benchmarks.journal --commands 200000 --core matching --json  # matching alone

Uses `DATABASE_URL` when set, otherwise the embedded server (`./.hogx/pgdata`); either way it works
in a scratch database `hogx_bench_<pid>` created and dropped by the run, and the server's own
durability settings (fsync, synchronous_commit) apply.

1. Sequencer: the matching benchmark's seeded mix (passive limits, cancels, crossing limits, market
   orders) as fresh commands (`ts_ns` 0, as the gateway hands them over), submitted by `--clients`
   concurrent tasks. Each submits `--pipeline` commands at once (`submit_many`) and awaits only the
   last future (results resolve in seq order), then sends the next group: the load generator costs
   little, so the figures are the sequencer's. `--pipeline 1`: one command per task, each awaiting
   its ack before the next (the per-caller path of the gateway; then use hundreds of clients).
   Throughput counts commands durably committed; ack latency is submit -> result for every command
   (a group's commands all count the group's time). CPU time of this process (user + system, and
   system alone) and of the writer's PostgreSQL backend (from /proc, same machine) is reported per
   command: on a loaded machine it says more than the wall clock. What PostgreSQL stores and logs per
   command: `pg_rows_per_command` (rows the run added to the tables its batches write),
   `pg_stored_bytes_per_command` (their growth in heap and index pages, an exact figure for the scratch
   database) and `wal_bytes_per_command` (the server's WAL position before and after: exact on a server
   the run has to itself, an upper bound on one shared with other work).
   `--core exchange` (the default) runs the exchange as it runs behind the gateway: the core with
   settlement (`new_exchange`), an operator, the sellers registered as farmers and the buyers funded
   (`benchmarks.matching.exchange_setup_commands`), and the ledger's rows written in each batch's
   transaction (`LedgerWriter` as `extra_writes`). `--core matching` is the bare matching core,
   journal rows only: a figure for the engine, not for the exchange, which never runs without settlement.
   `--readmodel` adds the orders/trades read model: `transaction` writes it in the journal's
   transaction (`extra_writes=project_batch`), `projector` follows the journal asynchronously
   (then `readmodel_lag_s` is how long after the last ack the read model had caught up).
2. Raw COPY ceiling: the very rows the sequencer wrote, copied again with binary COPY into tables of
   the same shape (columns, primary key, indexes; `LIKE ... INCLUDING ALL`, so no triggers; the
   journal's twin partitioned too, its rows in one partition with the day partitions' key) in
   transactions of the sequencer's mean batch size: the journal rows, and with `--core exchange` the
   ledger rows of those commands in the same transaction. `ratio_vs_copy` is commands per second
   over journal rows per second; `copy_*_cpu_us_per_row` is its CPU, per journal row.
3. Replay: `recover(..., use_snapshot=False, freeze_gc=True)` rebuilds a fresh core from the whole
   journal as the sequencer does at start, the rebuilt state frozen out of the collector's scans
   (`replay_s` wall, `replay_cpu_s` this process's CPU).

Defaults (16 clients x 32 commands in flight, batches of at most 1000): the writer commits half of
what waits while applying the other half, so the two halves alternate and applying one overlaps
committing the other. More in flight makes batches bigger and acks slower (Little's law).

Prints figures, then as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import asyncpg
import msgspec

from benchmarks.matching import MixGenerator, exchange_setup_commands, setup_commands
from exchange import store
from exchange.commands import (
    Command,
)
from exchange.core import Core, new_exchange
from exchange.events import Rejected
from exchange.readmodel import Projector, project_batch
from exchange.sequencer import CommittedBatch, CoreFactory, ExtraWrites, Sequencer, recover
from exchange.settlement.pgstore import POSTING_COLUMNS, LedgerWriter


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A fresh, migrated database on the configured server, dropped afterwards."""
    url, server = await store.resolve_database_url()
    name = f"hogx_bench_{os.getpid()}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        dsn = store.dsn_with_database(url, name)
        conn = await asyncpg.connect(dsn)
        try:
            await store.migrate(conn)
        finally:
            await conn.close()
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if server is not None:
            await asyncio.to_thread(server.stop)


def fresh_commands(commands: Sequence[Command]) -> list[Command]:
    """The commands as a gateway hands them over: new objects, not yet stamped (`ts_ns` 0)."""
    replace = msgspec.structs.replace
    return [replace(command, ts_ns=0) for command in commands]


async def run_sequencer(dsn: str, commands: Sequence[Command], args: argparse.Namespace) -> dict[str, float]:
    settlement = args.core == "exchange"
    ledger_writer = LedgerWriter() if settlement else None
    extra_writes: ExtraWrites | None = ledger_writer
    if args.readmodel == "transaction":
        extra_writes = _both(ledger_writer, project_batch) if ledger_writer is not None else project_batch
    sequencer = Sequencer(
        dsn, core_type=new_exchange if settlement else Core, queue_size=max(args.clients * args.pipeline * 2, 10_000),
        max_batch=args.max_batch, snapshot_every=10**12, extra_writes=extra_writes,
    )  # fmt: skip
    if ledger_writer is not None:
        ledger_writer.attach(sequencer)
    await sequencer.start()
    projector = None
    if args.readmodel == "projector":
        projector = Projector(dsn)
        projector.attach(sequencer)
        await projector.start()
    for command in exchange_setup_commands() if settlement else setup_commands():
        result = await sequencer.submit(command)
        if any(event.__class__ is Rejected for event in result.events):
            raise RuntimeError(f"set-up command rejected: {command!r} -> {result.events!r}")
    batch_sizes: list[int] = []

    def count(batch: CommittedBatch) -> None:
        batch_sizes.append(len(batch))

    sequencer.subscribe(count)
    latencies_ns = [0] * len(commands)
    position = 0
    clock = time.perf_counter_ns
    submit = sequencer.submit_nowait
    submit_many = sequencer.submit_many

    async def one_at_a_time() -> None:
        nonlocal position
        while position < len(commands):
            index = position
            position += 1
            start_ns = clock()
            await submit(commands[index])
            latencies_ns[index] = clock() - start_ns

    async def pipelined(depth: int) -> None:
        nonlocal position
        while position < len(commands):
            first = position
            position = min(position + depth, len(commands))
            start_ns = clock()
            await submit_many(commands[first:position])[-1]  # results resolve in seq order
            latencies_ns[first:position] = [clock() - start_ns] * (position - first)

    backend_pid = sequencer.writer_backend_pid
    stored_start = await _stored(dsn)
    gc.collect()
    gc.freeze()  # as the sequencer does after recovery: old objects leave the collector's scans
    cpu_start = (time.process_time(), _backend_cpu_s(backend_pid), os.times().system)
    start_s = time.perf_counter()
    if args.pipeline > 1:
        await asyncio.gather(*(pipelined(args.pipeline) for _ in range(args.clients)))
    else:
        await asyncio.gather(*(one_at_a_time() for _ in range(args.clients)))
    elapsed_s = time.perf_counter() - start_s
    py_cpu_s, pg_cpu_s = time.process_time() - cpu_start[0], _backend_cpu_s(backend_pid) - cpu_start[1]
    py_sys_s = os.times().system - cpu_start[2]
    stored_end = await _stored(dsn)
    lag_s = 0.0
    if projector is not None:
        await projector.wait_for(sequencer.committed_seq, timeout_s=600)
        lag_s = time.perf_counter() - start_s - elapsed_s
        await projector.stop()
    gc.unfreeze()
    await sequencer.stop(snapshot=False)
    latencies_ns.sort()
    return {
        "commands_per_s": len(commands) / elapsed_s,
        "ack_p50_ms": latencies_ns[len(latencies_ns) // 2] / 1e6,
        "ack_p99_ms": latencies_ns[min(len(latencies_ns) - 1, int(len(latencies_ns) * 0.99))] / 1e6,
        "batches": len(batch_sizes),
        "mean_batch": sum(batch_sizes) / max(1, len(batch_sizes)),
        "py_cpu_us_per_command": py_cpu_s / len(commands) * 1e6,
        "pg_cpu_us_per_command": pg_cpu_s / len(commands) * 1e6,
        "py_sys_us_per_command": py_sys_s / len(commands) * 1e6,
        "readmodel_lag_s": lag_s,
        "pg_rows_per_command": (stored_end[0] - stored_start[0]) / len(commands),
        "pg_stored_bytes_per_command": (stored_end[1] - stored_start[1]) / len(commands),
        "wal_bytes_per_command": (stored_end[2] - stored_start[2]) / len(commands),
    }


# the tables a batch writes (the journal's day partitions, the ledger's): rows, heap + index bytes
_WRITTEN: Final = ("journal", "ledger_transfers", "ledger_accounts", "settlement_refs", "settlement_history")
_STORED_SQL: Final = f"""
SELECT {" + ".join(f"(SELECT count(*) FROM {table})" for table in _WRITTEN)},
       (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
        WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace
          AND (c.relispartition AND c.relname LIKE 'journal%' OR c.relname = ANY($1::text[]))),
       pg_current_wal_lsn() - '0/0'::pg_lsn
"""


async def _stored(dsn: str) -> tuple[int, int, int]:
    """(rows, heap and index bytes, the server's WAL position) of the tables the batches write."""
    conn = await asyncpg.connect(dsn)
    try:
        rows, size, wal = await conn.fetchrow(_STORED_SQL, list(_WRITTEN[1:]))
        return int(rows), int(size), int(wal)
    finally:
        await conn.close()


def _both(first: ExtraWrites, second: ExtraWrites) -> ExtraWrites:
    async def both(conn: asyncpg.Connection, batch: CommittedBatch) -> None:
        await first(conn, batch)
        await second(conn, batch)

    return both


def _backend_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) of a local PostgreSQL backend; 0.0 when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_raw_copy(dsn: str, chunk: int) -> dict[str, float]:
    """A plain binary COPY of the very rows the sequencer wrote, into tables of the same shape (columns,
    primary key and indexes; no triggers), one transaction per `chunk` journal rows as the sequencer's
    mean batch, which also holds the ledger rows of those commands when the run had settlement on.

    Returns journal rows per second and this process's and the backend's CPU per journal row."""
    conn = await asyncpg.connect(dsn)
    try:
        columns = ("seq", "ts_ns", "command", "events")
        rows = [tuple(r) for r in await conn.fetch("SELECT seq, ts_ns, command, events FROM journal ORDER BY seq")]
        postings = [tuple(r) for r in await conn.fetch(
            f"SELECT {', '.join(POSTING_COLUMNS)} FROM ledger_transfers ORDER BY seq, transfer_id")]
        # partitioned like the journal (by day, migration 0013), the rows in one partition keyed on seq
        await conn.execute("CREATE TABLE journal_copy (LIKE journal INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                           "INCLUDING STORAGE INCLUDING COMPRESSION) PARTITION BY RANGE (ts_ns)")
        await conn.execute("CREATE TABLE journal_copy_day PARTITION OF journal_copy (PRIMARY KEY (seq) "
                           "WITH (fillfactor = 100)) FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")
        await conn.execute("CREATE TABLE ledger_transfers_copy (LIKE ledger_transfers INCLUDING ALL)")
        gc.collect()
        backend_pid = conn.get_server_pid()
        cpu_start = (time.process_time(), _backend_cpu_s(backend_pid))
        start_s = time.perf_counter()
        posted = 0
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            last_seq = part[-1][0]
            end = posted
            while end < len(postings) and postings[end][0] <= last_seq:
                end += 1
            # the same pre-encoded binary COPY the sequencer sends: the ceiling is the best raw path
            data = memoryview(store.encode_journal_rows(
                part[0][0], [r[1] for r in part], [r[2] for r in part], [r[3] for r in part]))
            if end == posted:
                await conn.copy_to_table("journal_copy", source=data, columns=columns, format="binary")
                continue
            async with conn.transaction():
                await conn.copy_to_table("journal_copy", source=data, columns=columns, format="binary")
                await conn.copy_records_to_table("ledger_transfers_copy", records=postings[posted:end],
                                                 columns=POSTING_COLUMNS)
            posted = end
        elapsed_s = time.perf_counter() - start_s
        py_cpu_s, pg_cpu_s = time.process_time() - cpu_start[0], _backend_cpu_s(backend_pid) - cpu_start[1]
        return {
            "copy_rows_per_s": len(rows) / elapsed_s,
            "copy_py_cpu_us_per_row": py_cpu_s / len(rows) * 1e6,
            "copy_pg_cpu_us_per_row": pg_cpu_s / len(rows) * 1e6,
            "copy_ledger_rows": len(postings),
        }
    finally:
        await conn.close()


async def run_replay(dsn: str, core_type: CoreFactory) -> tuple[int, float, float]:
    """(commands replayed, wall seconds, CPU seconds of this process)."""
    conn = await asyncpg.connect(dsn)
    try:
        gc.collect()
        start_s, start_cpu_s = time.perf_counter(), time.process_time()
        recovery = await recover(conn, core_type, use_snapshot=False, freeze_gc=True)  # as the sequencer recovers
        return recovery.last_seq, time.perf_counter() - start_s, time.process_time() - start_cpu_s
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, float | int | str]:
    commands = fresh_commands(MixGenerator(args.seed).generate(args.commands))
    async with scratch_database() as dsn:
        live = await run_sequencer(dsn, commands, args)
        copy = await run_raw_copy(dsn, max(1, round(live["mean_batch"])))
        replayed, replay_s, replay_cpu_s = await run_replay(dsn, new_exchange if args.core == "exchange" else Core)
    return {
        "commands": len(commands),
        "core": args.core,
        "clients": args.clients,
        "pipeline": args.pipeline,
        "max_batch": args.max_batch,
        "commands_per_s": round(live["commands_per_s"]),
        "ack_p50_ms": round(live["ack_p50_ms"], 2),
        "ack_p99_ms": round(live["ack_p99_ms"], 2),
        "mean_batch": round(live["mean_batch"], 1),
        "py_cpu_us_per_command": round(live["py_cpu_us_per_command"], 2),
        "pg_cpu_us_per_command": round(live["pg_cpu_us_per_command"], 2),
        "pg_rows_per_command": round(live["pg_rows_per_command"], 3),
        "pg_stored_bytes_per_command": round(live["pg_stored_bytes_per_command"]),
        "wal_bytes_per_command": round(live["wal_bytes_per_command"]),
        "readmodel": args.readmodel,
        "readmodel_lag_s": round(live["readmodel_lag_s"], 2),
        "copy_rows_per_s": round(copy["copy_rows_per_s"]),
        "copy_py_cpu_us_per_row": round(copy["copy_py_cpu_us_per_row"], 2),
        "copy_pg_cpu_us_per_row": round(copy["copy_pg_cpu_us_per_row"], 2),
        "copy_ledger_rows": int(copy["copy_ledger_rows"]),
        "ratio_vs_copy": round(live["commands_per_s"] / copy["copy_rows_per_s"], 2),
        "replayed_commands": replayed,
        "replay_s": round(replay_s, 2),
        "replay_cpu_s": round(replay_cpu_s, 2),
        "replay_commands_per_s": round(replayed / replay_s),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=16, help="concurrent submitting tasks")
    parser.add_argument("--pipeline", type=int, default=32,
                        help="commands each client submits at once (submit_many); 1: one command, await its ack")
    parser.add_argument("--max-batch", type=int, default=1_000)
    parser.add_argument("--core", choices=["matching", "exchange"], default="exchange",
                        help="exchange: the core with settlement (funded buyers), ledger rows in each batch")
    parser.add_argument("--readmodel", choices=["off", "projector", "transaction"], default="off")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
