"""`JournalProjector`: the loop every PostgreSQL projection of the committed journal runs, so the
read models' (`exchange.readmodel.Projector`) and the price index's (`exchange.priceindex.IndexProjector`)
projectors differ only in what they fold and write.

A projector follows the journal on its own connection (`store.follow_reconnecting`: reconnecting with
back-off), polling as a fallback. Attached to the sequencer of its own process (`attach`), it is handed
each committed batch and folds the entries right after its watermark from memory: the same (seq,
stamped command, events) the journal rows decode to, without fetching and decoding them again (on the
gateway that was about a third of the projectors' work, on the cores order entry needs). What memory
does not hold next (a start behind the journal, batches dropped because the projector fell more than
`max_fed_rows` behind, another projector's commits) is read from the journal. Each page of rows read
after its watermark (the `projections` row named `projection`) is checked for holes
(`store.check_journal_contiguous`: archived days stop it with `JournalGap`, logged, instead of being
skipped); fed batches follow one another by construction. Either way the page is folded (`fold`, pure:
fed events are shared with the gateway's read model, so a fold never changes them), and written with
the watermark in one transaction (`write`), after
taking the watermark `FOR UPDATE`: a second projector of the same name that got there first is
followed, not repeated, so each row counts exactly once. Acknowledgements never wait for it;
`wait_for(seq)` gives read-your-writes where needed.

After a round that did not fill a page, the projector rests `min_round_gap_s` (unless a `wait_for` is
waiting) before it reads again: under a steady flow of commits it would otherwise run a round per
commit, each a fetch, a `FOR UPDATE` and a transaction for a handful of rows, on the cores the
sequencer and the gateway need. Resting gathers those rows into one round; nothing it answers is read
within that time except through `wait_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

import asyncpg

from exchange.commands import Command, decode_command
from exchange.events import Event
from exchange.sequencer import CommittedBatch, Sequencer, decode_events
from exchange.store import JournalGap, check_journal_contiguous, follow_reconnecting, wait_event

__all__ = ["Folded", "JournalProjector"]


class Folded(Protocol):
    """What a fold of journal rows gives: at least the last seq it covers (the new watermark)."""

    last_seq: int


C = TypeVar("C", bound=Folded)
Entries = Iterable[tuple[int, Command, list[Event]]]


class JournalProjector(Generic[C]):
    """Follows the journal into PostgreSQL; subclasses name the projection and say how to fold and write."""

    projection: str = ""  # its `projections` row
    who: str = "projector"  # in log lines and JournalGap messages
    task_name: str = "journal-projector"

    def __init__(self, dsn: str, *, page_rows: int = 20_000, poll_interval_s: float = 0.5,
                 min_round_gap_s: float = 0.1, max_fed_rows: int = 100_000) -> None:
        self.dsn = dsn
        self.max_fed_rows = max_fed_rows
        self._fed: deque[CommittedBatch] = deque()  # committed batches not yet all projected, in seq order
        self._fed_rows = 0
        self.rows_from_memory = 0  # entries folded from fed batches
        self.rows_from_journal = 0  # and from journal rows read back
        self.page_rows = page_rows
        self.poll_interval_s = poll_interval_s
        self.min_round_gap_s = min_round_gap_s
        self.projected_seq = 0
        self._wakeup = asyncio.Event()
        self._hurry = asyncio.Event()  # a wait_for began: cut the rest short
        self._waiters = 0  # wait_for calls waiting: no rest between rounds while any is
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._log = logging.getLogger(type(self).__module__)

    # -- what a projection defines ------------------------------------------------------------------------

    def fold(self, entries: Entries) -> C:
        """The changes of a page of journal entries, in order (pure)."""
        raise NotImplementedError

    async def write(self, conn: asyncpg.Connection, changes: C) -> None:
        """Apply ``changes`` and move the watermark to ``changes.last_seq``, in the caller's transaction."""
        raise NotImplementedError

    def written(self, changes: C) -> None:
        """Called after ``changes`` committed (the watermark has moved); by default nothing."""

    # -- running ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, JournalGap):  # a gap was logged when it stopped
                await self._task

    def attach(self, sequencer: Sequencer) -> None:
        """Be handed every batch ``sequencer`` commits (and woken by it)."""
        self._unsubscribe.append(sequencer.subscribe(self.feed))

    def feed(self, batch: CommittedBatch) -> None:
        """Keep a committed batch to fold from memory; past `max_fed_rows` the oldest are dropped (read
        from the journal instead), so a projector that cannot keep up never holds more than that."""
        if batch.commands and batch.last_seq > self.projected_seq:
            # only the public part: not the sequencer's futures and encoded rows
            self._fed.append(CommittedBatch(batch.first_seq, batch.commands, batch.events))
            self._fed_rows += len(batch)
            while self._fed_rows > self.max_fed_rows:
                self._fed_rows -= len(self._fed.popleft())
        self._wakeup.set()

    def _fed_entries(self) -> list[tuple[int, Command, list[Event]]]:
        """Up to `page_rows` fed entries right after the watermark, or none when memory does not hold the
        next seq (the journal is read instead)."""
        after = self.projected_seq
        fed = self._fed
        while fed and fed[0].last_seq <= after:
            self._fed_rows -= len(fed.popleft())
        entries: list[tuple[int, Command, list[Event]]] = []
        for batch in fed:
            if batch.first_seq > after + 1 or len(entries) >= self.page_rows:
                break  # a hole (batches were dropped): the journal fills it first, then memory goes on
            if batch.first_seq > after:
                entries.extend(batch.entries())
            else:  # partly projected (rows read from the journal overlapped it)
                entries.extend(e for e in batch.entries() if e[0] > after)
            after = batch.last_seq
        return entries

    def notify(self) -> None:
        self._wakeup.set()

    async def wait_for(self, seq: int, timeout_s: float = 5.0) -> None:
        """Until the projection includes journal seq ``seq``; TimeoutError after ``timeout_s``."""
        self._waiters += 1
        try:
            self._wakeup.set()
            self._hurry.set()
            async with asyncio.timeout(timeout_s), self._progress:
                await self._progress.wait_for(lambda: self.projected_seq >= seq)
        finally:
            self._waiters -= 1

    async def _run(self) -> None:
        try:
            await follow_reconnecting(self.dsn, self._follow, self.who, self._log)
        except JournalGap:
            self._log.exception("%s stopped: it cannot project on over missing journal rows", self.who)
            raise

    async def _follow(self, conn: asyncpg.Connection) -> None:
        page = await conn.prepare(
            "SELECT seq, command, events FROM journal WHERE seq > $1 AND events IS NOT NULL ORDER BY seq LIMIT $2"
        )
        await self._advanced(await self._watermark(conn))
        while True:
            self._wakeup.clear()
            entries = self._fed_entries()
            if entries:
                changes, full = self.fold(entries), len(entries) >= self.page_rows
                self.rows_from_memory += len(entries)
            else:
                rows = await page.fetch(self.projected_seq, self.page_rows)
                if not rows:
                    await wait_event(self._wakeup, self.poll_interval_s)
                    continue
                # rows skipped (archived) would never be projected, and the watermark would pass them
                await check_journal_contiguous(conn, self.projected_seq, [r[0] for r in rows], self.who)
                changes = self.fold((r[0], decode_command(r[1]), decode_events(r[2])) for r in rows)
                full = len(rows) >= self.page_rows
                self.rows_from_journal += len(rows)
            async with conn.transaction():
                current = await conn.fetchval("SELECT seq FROM projections WHERE name = $1 FOR UPDATE",
                                              self.projection)
                if current != self.projected_seq:  # another projector got there first: follow it
                    await self._advanced(current)
                    continue
                await self.write(conn, changes)
            await self._advanced(changes.last_seq)
            self.written(changes)
            if not full:
                await self._rest()

    async def _rest(self) -> None:
        """`min_round_gap_s` before the next round, cut short by a `wait_for`."""
        if not self._waiters:
            await wait_event(self._hurry, self.min_round_gap_s)
        self._hurry.clear()

    async def _watermark(self, conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("SELECT seq FROM projections WHERE name = $1", self.projection) or 0)

    async def _advanced(self, seq: int) -> None:
        self.projected_seq = seq
        async with self._progress:
            self._progress.notify_all()
