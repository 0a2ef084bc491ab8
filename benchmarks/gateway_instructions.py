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
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.gateway import (
    _free_port,
    drive_ws,
    new_operator,
    prepare_market,
    serve_args,
    server_env,
    subprocess_server,
)
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


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with scratch_database() as dsn:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        operator = new_operator()
        with tempfile.TemporaryDirectory() as scratch:
            out_prefix = Path(scratch) / "callgrind.out"
            valgrind = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_prefix}")
            # valgrind starts Python slowly, and writes its banner to stderr
            async with subprocess_server(serve_args(port), server_env(dsn, operator, args.read_models, args.ws_window),
                                         base + "/readyz", wrapper=valgrind, ready_timeout_s=600.0,
                                         quiet=True) as server:
                traders = await prepare_market(base, operator, args.pairs)
                await drive_ws(base, traders, args.ws_connections, args.ws_window, 5.0, 0.0)
                _callgrind_control("-i", "on", str(server.pid))
                load = await drive_ws(base, traders, args.ws_connections, args.ws_window, args.seconds, 0.0)
                _callgrind_control("-i", "off", str(server.pid))
                _callgrind_control("-d", str(server.pid))
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
