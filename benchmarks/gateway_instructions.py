"""Server instructions per WebSocket order: the gateway benchmark's order entry counted by callgrind, a
figure that does not move with whatever else the machine is doing (orders/s on a shared 2-core machine
do, by 10 % and more between runs of the same code).

    python -m benchmarks.gateway_instructions --seconds 20 --json [--no-read-models]

Needs valgrind. `hogx serve` runs under `valgrind --tool=callgrind --instr-atstart=no` on a scratch
database (as `benchmarks.gateway`: listed instrument, buyers with cash, farmers with lots, rate limits
lifted). After a 5 s untimed warm-up, counting is switched on (`callgrind_control -i on`), the sockets of
`benchmarks.gateway.drive_ws` place orders for `--seconds`, counting is switched off and dumped. Printed:
every answer of the counted phase (all must be execution reports), the instructions counted, and their
quotient `instructions_per_order`. The server runs some 50x slower under valgrind, so work that happens
per unit of time (the projectors' rounds, clock ticks) weighs less than at full speed: compare this
figure between two versions of the code, never with seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.gateway import _free_port, drive_ws, prepare_market
from benchmarks.journal import scratch_database


def _callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _counted(out_prefix: Path) -> int:
    """The instructions of the dump(s) written under `out_prefix` (the switched-on phase only)."""
    total = 0
    for path in out_prefix.parent.glob(out_prefix.name + "*"):
        for line in path.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total


async def _ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(3000):  # valgrind starts Python slowly: up to 10 minutes
            if proc.returncode is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with session.get(url) as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("server under valgrind did not become ready")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOGX_")}
    async with scratch_database() as dsn:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        operator = ("bench_operator_" + secrets.token_hex(4), secrets.token_hex(24))
        server_env = env | {
            "DATABASE_URL": dsn, "HOGX_OPERATOR_KEY": operator[0], "HOGX_OPERATOR_SECRET": operator[1],
            "HOGX_RATE_LIMIT_PER_S": "1000000000", "HOGX_RATE_LIMIT_BURST": "1000000000",
            "HOGX_WS_MAX_INFLIGHT": "1024", "HOGX_DB_POOL_MAX": "4",
            "HOGX_PROJECT_READ_MODELS": "true" if args.read_models else "false",
        }
        with tempfile.TemporaryDirectory() as scratch:
            out_prefix = Path(scratch) / "callgrind.out"
            proc = await asyncio.create_subprocess_exec(
                "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_prefix}",
                sys.executable, "-m", "gateway", "serve", "--port", str(port), "--log-level", "WARNING",
                env=server_env, stderr=asyncio.subprocess.DEVNULL)
            try:
                await _ready(base + "/readyz", proc)
                traders = await prepare_market(base, operator, args.pairs)
                await drive_ws(base, traders, args.ws_connections, args.ws_window, 5.0, 0.0)
                _callgrind_control("-i", "on", str(proc.pid))
                load = await drive_ws(base, traders, args.ws_connections, args.ws_window, args.seconds, 0.0)
                _callgrind_control("-i", "off", str(proc.pid))
                _callgrind_control("-d", str(proc.pid))
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                await proc.wait()
            instructions = _counted(out_prefix)
    answers = sum(load.statuses.values())
    rejected = sum(n for status, n in load.statuses.items() if status.startswith("rejected:"))
    return {
        "seconds": args.seconds, "read_models": args.read_models, "answers": answers, "rejected": rejected,
        "instructions": instructions, "instructions_per_order": round(instructions / answers) if answers else 0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="counted seconds of order entry")
    parser.add_argument("--ws-connections", type=int, default=8)
    parser.add_argument("--ws-window", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=8, help="buyers and as many farmers")
    parser.add_argument("--no-read-models", dest="read_models", action="store_false",
                        help="without the PostgreSQL read-model projector (on by default, as `hogx serve`)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args))
    if not args.json:
        print(f"{figures['answers']} answers ({figures['rejected']} rejected), "
              f"{figures['instructions']:,} instructions: {figures['instructions_per_order']:,} per order")
    print(json.dumps(figures))
    if figures["rejected"] or not figures["answers"]:
        raise SystemExit("orders were rejected or none answered: a broken set-up, not a measurement")


if __name__ == "__main__":
    main()
