"""Settlement history in PostgreSQL: the daily settlement report's rows, projected from the journal's
events and read back by the API (asyncpg).

Owns the `settlement_report_rows` table (migrations 0011, 0020) and its watermark `settlement_reports` in
`projections`. What is final lives here, not in the exchange's memory: a row states the facts as they
were when the trade settled, the member's share was paid or the loan's interest accrued or was paid
(the settlement events carry those facts, `exchange.events.TradeFacts`), and never changes (a trigger
refuses updates). The rows are `exchange.settlement.views.report_entries` of the journaled events
alone, so deleting them and setting the watermark back to 0 rebuilds them from the journal.

`ReportHistory` keeps the table current, always on (the report is answered from it):

- `catch_up(upto_seq)` at start-up, once the sequencer recovered: folds the journal's stored events
  after the watermark up to the recovered seq (page by page; a row already present is skipped, so a
  crash between a write and the watermark costs nothing; journal rows missing after the watermark, as
  archived days, stop it with `exchange.store.JournalGap` instead of being skipped);
- `feed(batch)` for every committed batch after that, in the publish step (the events are in memory:
  folding them costs a class check per event; a batch without settlement facts writes nothing);
- a writer task writes what was fed, with the watermark, in one transaction, off the
  acknowledgement path; the watermark alone is moved at most once per `flush_interval_s` when
  nothing else was written, so a restart folds little of the journal again.

Read-your-writes: `await history.wait_for(seq)` returns once every row of journal seqs up to `seq` is
in PostgreSQL (the report route waits for the last batch it may have seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Final

import asyncpg
import msgspec

from exchange.sequencer import CommittedBatch, decode_events
from exchange.settlement.views import REPORT_COLUMNS, ReportEntry, SettlementReportRow, report_entries
from exchange.store import check_journal_contiguous, follow_reconnecting, wait_event

__all__ = ["COLUMNS", "PROJECTION", "ReportHistory", "day_entries", "fold", "projected_seq", "write_entries"]

_log = logging.getLogger(__name__)

PROJECTION: Final = "settlement_reports"
COLUMNS: Final = ("seq", "ord", "day", "advance_financier_id", *REPORT_COLUMNS)
_PAGE_ROWS: Final = 20_000
_INSERT: Final = (
    f"INSERT INTO settlement_report_rows ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) ON CONFLICT (seq, ord) DO NOTHING"
)
_WATERMARK: Final = "UPDATE projections SET seq = greatest(seq, $2) WHERE name = $1"

Queryable = asyncpg.Pool | asyncpg.Connection


def fold(entries: Iterable[tuple[int, object, list]]) -> list[ReportEntry]:
    """The report rows of journal entries (seq, command, events)."""
    out: list[ReportEntry] = []
    for seq, _, events in entries:
        out.extend(report_entries(seq, events))
    return out


def _record(entry: ReportEntry) -> tuple:
    return (entry.seq, entry.ord, entry.day, entry.advance_financier_id, *msgspec.structs.astuple(entry.row))


async def write_entries(conn: asyncpg.Connection, entries: list[ReportEntry], upto_seq: int) -> None:
    """Insert `entries` (those already there are skipped) and move the watermark to `upto_seq`, in one
    transaction."""
    async with conn.transaction():
        if entries:
            await conn.executemany(_INSERT, [_record(e) for e in entries])
        await conn.execute(_WATERMARK, PROJECTION, upto_seq)


async def projected_seq(db: Queryable) -> int:
    """The journal seq whose rows the table includes (as written to PostgreSQL)."""
    return int(await db.fetchval("SELECT seq FROM projections WHERE name = $1", PROJECTION) or 0)


async def day_entries(db: Queryable, day: int, participant_id: int | None = None) -> list[ReportEntry]:
    """The rows of CST `day`; with `participant_id` only those naming it (as a party, member, borrower or
    lender: who may see which is `views.visible_report`'s to say)."""
    rows = await db.fetch(
        f"""SELECT {', '.join(COLUMNS)} FROM settlement_report_rows
            WHERE day = $1 AND ($2::bigint IS NULL OR $2 IN (buyer_id, seller_id, participant_id, financier_id,
                                                              funded_by_financier_id, advance_financier_id))
            ORDER BY trade_id, kind <> 'TRADE', seq, ord""",
        day, participant_id,
    )  # fmt: skip
    return [ReportEntry(r[0], r[1], r[2], r[3], SettlementReportRow(*tuple(r)[4:])) for r in rows]


class ReportHistory:
    """Keeps `settlement_report_rows` current; see the module docstring."""

    def __init__(self, dsn: str, *, flush_interval_s: float = 1.0) -> None:
        self.dsn = dsn
        self.flush_interval_s = flush_interval_s
        self.written_seq = 0  # every row of journal seqs up to this is in PostgreSQL
        self._fed_seq = 0  # the last journal seq folded (written or pending)
        self._pending: list[ReportEntry] = []
        self._watermark_seq = 0  # the watermark as last written
        self._watermark_at_s = 0.0
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._waiters = 0
        self._writing = False  # rows taken from _pending are being written

    async def catch_up(self, upto_seq: int) -> None:
        """Fold the journal from the watermark through `upto_seq` into the table (start-up)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            after_seq = await projected_seq(conn)
            page = await conn.prepare(
                "SELECT seq, events FROM journal WHERE seq > $1 AND seq <= $2 AND events IS NOT NULL "
                "ORDER BY seq LIMIT $3")
            while after_seq < upto_seq:
                rows = await page.fetch(after_seq, upto_seq, _PAGE_ROWS)
                # rows skipped (archived) would never be folded, and the watermark would pass them
                await check_journal_contiguous(
                    conn, after_seq, [r[0] for r in rows] if rows else [upto_seq + 1], "settlement history")
                if not rows:
                    break  # the rest of the range holds rows journaled without events: nothing to fold
                entries = fold((seq, None, decode_events(data)) for seq, data in rows)
                after_seq = rows[-1][0]
                await write_entries(conn, entries, after_seq)
            await write_entries(conn, [], upto_seq)
        finally:
            await conn.close()
        self._fed_seq = self._watermark_seq = upto_seq
        self._watermark_at_s = time.monotonic()
        await self._advanced(upto_seq)

    def feed(self, batch: CommittedBatch) -> None:
        """Fold a committed batch (a sequencer subscriber); the writer task writes its rows. A batch
        without rows, with nothing waiting to be written before it, is in the table already."""
        if batch.last_seq <= self._fed_seq:
            return
        pending = self._pending
        for seq, _, events in batch.entries():
            if seq > self._fed_seq:
                pending.extend(report_entries(seq, events))
        self._fed_seq = batch.last_seq
        if not pending and not self._writing:
            self.written_seq = batch.last_seq
            if not self._waiters:
                return
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="settlement-history")

    async def stop(self) -> None:
        """Write what was fed, then stop."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._pending or self._fed_seq > self._watermark_seq:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                                     asyncpg.InternalClientError):
                conn = await asyncpg.connect(self.dsn)
                try:
                    await self._write(conn)
                finally:
                    await conn.close()

    async def wait_for(self, seq: int, timeout_s: float = 5.0) -> None:
        """Until every row of journal seqs up to `seq` is in PostgreSQL; TimeoutError after `timeout_s`."""
        if self.written_seq >= seq:
            return
        self._waiters += 1
        try:
            self._wakeup.set()
            async with asyncio.timeout(timeout_s), self._progress:
                await self._progress.wait_for(lambda: self.written_seq >= seq)
        finally:
            self._waiters -= 1

    async def _run(self) -> None:
        await follow_reconnecting(self.dsn, self._follow, "settlement history", _log)

    async def _follow(self, conn: asyncpg.Connection) -> None:
        while True:
            self._wakeup.clear()
            if self._pending:
                await self._write(conn)
            elif self._fed_seq > self._watermark_seq and (
                    time.monotonic() - self._watermark_at_s >= self.flush_interval_s):
                await self._write(conn)  # the watermark alone, now and then
            else:
                await self._advanced(self._fed_seq)  # nothing waits: everything fed is in the table
            await wait_event(self._wakeup, self.flush_interval_s)

    async def _write(self, conn: asyncpg.Connection) -> None:
        entries, upto_seq = self._pending, self._fed_seq
        self._pending = []
        self._writing = True
        try:
            await write_entries(conn, entries, upto_seq)
        except BaseException:
            self._pending = entries + self._pending  # written again (and skipped where present) next time
            raise
        finally:
            self._writing = False
        self._watermark_seq, self._watermark_at_s = upto_seq, time.monotonic()
        await self._advanced(upto_seq)

    async def _advanced(self, seq: int) -> None:
        self.written_seq = max(self.written_seq, seq)
        async with self._progress:
            self._progress.notify_all()
