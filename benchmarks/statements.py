"""Statement benchmark: how long one page of an account's statement takes on a large ledger.

    python -m benchmarks.statements --rows 2000000 --json

Uses `DATABASE_URL` when set, otherwise the embedded server, in a scratch database created and
dropped by the run. Fills `ledger_transfers` with `--rows` synthetic posted transfers one millisecond
apart: escrow, a house account, on every row but every thousandth, which has the bank settlement
account instead; on the other side one big buyer's cash on every fifth row and 999 other buyers' taking
turns on the rest. Then times `pgstore.statement` pages of `--limit` lines, the median of `--repeat`
runs each, over the whole ledger (`_all`), its last 1 % (`_last_pct`), one minute in the middle
(`_minute_in_middle`, 60,000 rows) and a window after the last row (`_after_end`):

- `house_*`: escrow and `bank_*`: the bank settlement account, house accounts without an account
  index (migration 0007) whose pages walk the primary key;
- `big_buyer_*`: the big buyer (a fifth of all rows); `small_buyer_*`: another (one row in 999).

Prints figures, then as its last line one JSON object of milliseconds per page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import asyncpg

from benchmarks.journal import scratch_database
from exchange.settlement import pgstore
from exchange.settlement.ledger import AccountCode, Entry, TransferCode

MS_NS = 1_000_000
ESCROW = int(AccountCode.ESCROW)
BANK = int(AccountCode.BANK_SETTLEMENT)
FIRST_BUYER = 1000
BIG_BUYER = 1999
_FILL_SQL = f"""
INSERT INTO ledger_transfers (seq, transfer_id, entry, debit_account_id, credit_account_id, amount_fen,
                              released_fen, pending_id, user_data, ts_ns, code)
SELECT g, g, {int(Entry.POSTED)}, CASE WHEN g % 5 = 0 THEN {BIG_BUYER} ELSE {FIRST_BUYER} + g % 999 END,
       CASE WHEN g % 1000 = 0 THEN {BANK} ELSE {ESCROW} END, 100, 0, 0, 0, g * {MS_NS},
       {int(TransferCode.TRADE)}
FROM generate_series($1::bigint, $2::bigint) g
"""


async def _fill(conn: asyncpg.Connection, rows: int) -> None:
    step = 1_000_000
    for first in range(1, rows + 1, step):
        await conn.execute(_FILL_SQL, first, min(first + step - 1, rows))
    await conn.execute("VACUUM ANALYZE ledger_transfers")


async def _page_ms(conn: asyncpg.Connection, account_id: int, window: tuple[int, int], limit: int,
                   repeat: int) -> float:
    times_s = []
    for _ in range(repeat):
        start_s = time.perf_counter()
        await pgstore.statement(conn, account_id, window[0], window[1], (0, 0), limit)
        times_s.append(time.perf_counter() - start_s)
    return statistics.median(times_s) * 1000


async def run(rows: int, limit: int, repeat: int) -> dict[str, float]:
    last_ns, no_end = rows * MS_NS, 2**63 - 1
    spans = {"all": (0, no_end), "last_pct": (last_ns * 99 // 100, no_end),
             "minute_in_middle": (last_ns // 2, last_ns // 2 + 60_000 * MS_NS), "after_end": (last_ns + 1, no_end)}
    windows = {f"{who}_{span}": (account_id, spans[span])
               for who, account_id in (("house", ESCROW), ("big_buyer", BIG_BUYER)) for span in spans}
    windows["bank_all"] = (BANK, spans["all"])
    windows["bank_last_pct"] = (BANK, spans["last_pct"])
    windows["small_buyer_all"] = (FIRST_BUYER + 7, spans["all"])
    windows["small_buyer_last_pct"] = (FIRST_BUYER + 7, spans["last_pct"])
    async with scratch_database() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await _fill(conn, rows)
            return {f"{name}_ms_per_page": await _page_ms(conn, account_id, window, limit, repeat)
                    for name, (account_id, window) in windows.items()}
        finally:
            await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.rows, args.limit, args.repeat))
    for name, ms in figures.items():
        print(f"{name}: {ms:.2f} ms")
    if args.json:
        print(json.dumps({"rows": args.rows, "limit": args.limit, **figures}))


if __name__ == "__main__":
    main()
