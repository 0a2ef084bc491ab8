"""Memory benchmark: what the exchange holds after the ledger benchmark's market day (``MarketDay``).

    python -m benchmarks.memory --transfers 400000 --retention-ms 10 --json

Builds the day's command stream in a child process (a scratch core tells it what happened; the stream is
kept in a file under the temporary directory for the next run), then applies it to a fresh
``new_exchange()`` as the sequencer would (ledger rows taken every 1,000 commands) and reports the
process's resident memory after it (``rss_mb``) and what the state added to it (``rss_growth_mb``: the
stream itself is loaded before), the snapshot's size and encoding time, and how many transfers, trades
and payouts memory holds.

The day's clock moves 1 µs a command, so the default retention window (24 h) never passes inside it:
``--retention-ms`` sets the window the day's clock ticks carry (``ClockTick.retention_ns``), e.g. 10 ms
~ the last 10,000 commands, to see what a day that lasts longer than its window holds; 0 keeps the
default. A run on code without ``retention_ns`` (before issue 12) ignores it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import msgspec

from benchmarks.ledger import MarketDay, clearing_of
from exchange.commands import ClockTick, Command
from exchange.core import new_exchange


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * 4096 / 2**20


def _with_retention(commands: list[Command], retention_ns: int) -> list[Command]:
    if not retention_ns or "retention_ns" not in ClockTick.__struct_fields__:
        return commands
    return [msgspec.structs.replace(c, retention_ns=retention_ns) if isinstance(c, ClockTick) else c
            for c in commands]


def generate(transfers: int, seed: int, path: str) -> None:
    """Write the day's command stream to ``path`` (msgpack), built in this process's scratch core."""
    commands = MarketDay(seed).generate(transfers)
    with open(path, "wb") as out:
        out.write(msgspec.msgpack.encode(commands))


def measure(path: str, retention_ns: int) -> dict[str, float]:
    """Apply the stream at ``path`` to a fresh exchange (in a process that built nothing else)."""
    with open(path, "rb") as src:
        commands = _with_retention(msgspec.msgpack.decode(src.read(), type=list[Command]), retention_ns)
    gc.collect()
    rss_before = _rss_mb()
    core = new_exchange()
    clearing = clearing_of(core)
    for i, command in enumerate(commands):
        core.apply(command)
        if not i % 1000:
            clearing.discard_command_rows()
    clearing.discard_command_rows()
    gc.collect()
    rss_after = _rss_mb()
    start_s = time.perf_counter()
    snapshot = core.snapshot()
    encode_s = time.perf_counter() - start_s
    held = getattr(clearing.ledger, "_transfers", {})
    return {
        "transfers": clearing.counters.next_transfer_id - 1,
        "commands": len(commands),
        "retention_ns": retention_ns,
        "rss_mb": round(rss_after, 1),
        "rss_growth_mb": round(rss_after - rss_before, 1),
        "snapshot_bytes": len(snapshot),
        "snapshot_encode_s": round(encode_s, 3),
        "transfers_held": len(held),
        "trades_held": len(clearing.trades),
        "payouts_held": len(clearing.payouts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transfers", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--retention-ms", type=float, default=0.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--stream", help="the command stream's file (made when missing)")
    args = parser.parse_args()
    path = args.stream or os.path.join(tempfile.gettempdir(), f"hogx-marketday-{args.seed}-{args.transfers}.msgpack")
    if not os.path.exists(path):
        # in a child process: the scratch core that builds the stream leaves nothing in this one's heap
        subprocess.run([sys.executable, "-c", f"from benchmarks.memory import generate; "
                        f"generate({args.transfers}, {args.seed}, {path!r})"], check=True)
    figures = measure(path, int(args.retention_ms * 1_000_000))
    for key, value in figures.items():
        print(f"{key:>20}: {value}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
