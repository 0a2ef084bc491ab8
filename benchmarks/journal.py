"""Journal benchmark: durable commands per second through the sequencer against a raw COPY, and replay.

    python -m benchmarks.journal --commands 200000 --json

Uses `DATABASE_URL` when set, otherwise the embedded server (`./.hogx/pgdata`); either way it works
in a scratch database `hogx_bench_<pid>` created and dropped by the run, and the server's own
durability settings (fsync, synchronous_commit) apply.

1. Sequencer: the matching benchmark's seeded mix (passive limits, cancels, crossing limits, market
   orders) submitted by `--submitters` concurrent tasks, each awaiting its ack before sending its next
   command, so batches fill from many callers as they would behind the gateway. Throughput counts
   commands durably committed; ack latency is submit -> result for every command. CPU time of this
   process and of the writer's PostgreSQL backend (from /proc, same machine) is reported per command:
   on a loaded machine it says more than the wall clock.
   `--pipeline K` (default 0: off) also measures pipelining clients: each task submits K commands at
   once (`submit_many`) and awaits only the last future (results resolve in seq order).
   `--readmodel` adds the orders/trades read model: `transaction` writes it in the journal's
   transaction (`extra_writes=project_batch`), `projector` follows the journal asynchronously
   (then `readmodel_lag_s` is how long after the last ack the read model had caught up).
2. Raw COPY ceiling: the very rows the sequencer journaled, copied again with binary COPY into a
   table of the same shape in chunks of the sequencer's mean batch size, one commit per chunk.
3. Replay: `recover(..., use_snapshot=False)` rebuilds a fresh core from the whole journal
   (`replay_s` wall, `replay_cpu_s` this process's CPU).

Defaults (1000 submitters, batches of at most 500) keep two batches in flight, so applying one batch
overlaps committing the previous one; with as many submitters as `--max-batch` every command in
flight sits in the same batch and nothing overlaps.

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

import asyncpg

from benchmarks.matching import MixGenerator, setup_commands
from exchange import store
from exchange.commands import Command
from exchange.readmodel import Projector, project_batch
from exchange.sequencer import CommittedBatch, Sequencer, recover


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


async def run_sequencer(dsn: str, commands: Sequence[Command], args: argparse.Namespace) -> dict[str, float]:
    sequencer = Sequencer(
        dsn, queue_size=max(args.submitters * 2, 10_000), max_batch=args.max_batch, snapshot_every=10**12,
        extra_writes=project_batch if args.readmodel == "transaction" else None,
    )  # fmt: skip
    await sequencer.start()
    projector = None
    if args.readmodel == "projector":
        projector = Projector(dsn)
        projector.attach(sequencer)
        await projector.start()
    for command in setup_commands():
        await sequencer.submit(command)
    batch_sizes: list[int] = []

    def count(batch: CommittedBatch) -> None:
        batch_sizes.append(len(batch))

    sequencer.subscribe(count)
    latencies_ns = [0] * len(commands)
    position = 0
    clock = time.perf_counter_ns
    submit = sequencer.submit_nowait

    async def submitter() -> None:
        nonlocal position
        while position < len(commands):
            index = position
            position += 1
            start_ns = clock()
            await submit(commands[index])
            latencies_ns[index] = clock() - start_ns

    async def pipeliner(depth: int) -> None:
        nonlocal position
        while position < len(commands):
            first = position
            position = min(position + depth, len(commands))
            start_ns = clock()
            await sequencer.submit_many(commands[first:position])[-1]
            latencies_ns[first:position] = [clock() - start_ns] * (position - first)

    backend_pid = sequencer.writer_backend_pid
    gc.collect()
    gc.freeze()  # as the sequencer does after recovery: old objects leave the collector's scans
    cpu_start = (time.process_time(), _backend_cpu_s(backend_pid))
    start_s = time.perf_counter()
    if args.pipeline:
        await asyncio.gather(*(pipeliner(args.pipeline) for _ in range(max(1, args.submitters // args.pipeline))))
    else:
        await asyncio.gather(*(submitter() for _ in range(args.submitters)))
    elapsed_s = time.perf_counter() - start_s
    py_cpu_s, pg_cpu_s = time.process_time() - cpu_start[0], _backend_cpu_s(backend_pid) - cpu_start[1]
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
        "readmodel_lag_s": lag_s,
    }


def _backend_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) of a local PostgreSQL backend; 0.0 when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_raw_copy(dsn: str, chunk: int) -> float:
    """Rows per second of a plain binary COPY of the journal's rows, one commit per `chunk` rows."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = [tuple(r) for r in await conn.fetch("SELECT seq, ts_ns, command, events FROM journal ORDER BY seq")]
        await conn.execute("CREATE TABLE journal_copy (LIKE journal INCLUDING ALL)")
        columns = ("seq", "ts_ns", "command", "events")
        start_s = time.perf_counter()
        for i in range(0, len(rows), chunk):
            await conn.copy_records_to_table("journal_copy", records=rows[i : i + chunk], columns=columns)
        return len(rows) / (time.perf_counter() - start_s)
    finally:
        await conn.close()


async def run_replay(dsn: str) -> tuple[int, float, float]:
    """(commands replayed, wall seconds, CPU seconds of this process)."""
    conn = await asyncpg.connect(dsn)
    try:
        gc.collect()
        start_s, start_cpu_s = time.perf_counter(), time.process_time()
        recovery = await recover(conn, use_snapshot=False)
        return recovery.last_seq, time.perf_counter() - start_s, time.process_time() - start_cpu_s
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, float | int]:
    commands = MixGenerator(args.seed).generate(args.commands)
    async with scratch_database() as dsn:
        live = await run_sequencer(dsn, commands, args)
        copy_rows_per_s = await run_raw_copy(dsn, max(1, round(live["mean_batch"])))
        replayed, replay_s, replay_cpu_s = await run_replay(dsn)
    return {
        "commands": len(commands),
        "submitters": args.submitters,
        "pipeline": args.pipeline,
        "max_batch": args.max_batch,
        "commands_per_s": round(live["commands_per_s"]),
        "ack_p50_ms": round(live["ack_p50_ms"], 2),
        "ack_p99_ms": round(live["ack_p99_ms"], 2),
        "mean_batch": round(live["mean_batch"], 1),
        "py_cpu_us_per_command": round(live["py_cpu_us_per_command"], 2),
        "pg_cpu_us_per_command": round(live["pg_cpu_us_per_command"], 2),
        "readmodel": args.readmodel,
        "readmodel_lag_s": round(live["readmodel_lag_s"], 2),
        "copy_rows_per_s": round(copy_rows_per_s),
        "ratio_vs_copy": round(live["commands_per_s"] / copy_rows_per_s, 2),
        "replayed_commands": replayed,
        "replay_s": round(replay_s, 2),
        "replay_cpu_s": round(replay_cpu_s, 2),
        "replay_commands_per_s": round(replayed / replay_s),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200_000)
    parser.add_argument("--submitters", type=int, default=1_000, help="concurrent submitting tasks")
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--pipeline", type=int, default=0, help="commands per submit_many group (0: one each)")
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
