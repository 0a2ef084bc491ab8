"""What an operator watches beyond requests and orders: money, backlogs, payouts, loans, the ledger's balance,
recovery, snapshots and the build, as Prometheus gauges computed from the exchange core's state at scrape time.

`OperatorCollector` is a prometheus_client `Collector` registered on the application's registry
(`context`, a cleanup context of `gateway.app`). Nothing is counted as it happens: every figure is read
from the clearing when `/metrics` is scraped, so no event is counted twice, none is missed, and a restart
or a recovery after database trouble (which replaces the core) shows the recovered state at once.

Safety: the sequencer applies commands to the core synchronously on the event loop (only the encoding
of a snapshot's client-order index runs in a thread, on its own copy), and `collect` runs on the same
loop from the `/metrics` handler, so a scrape never sees a command half applied. The core may be a few
commands ahead of the last commit; those figures are as of the core, which is what is then committed.

Cost: a scrape must not walk the exchange's history (trades, payouts and loans are kept forever).
`_Index` walks them once when it first sees a core, then keeps only the live records (trades waiting for
a weigh-in, a settlement or an operator; payouts not yet confirmed or returned; open loans) and picks up
new ones by their id high-water marks (`next_trade_id`, `next_payout_id`, `next_loan_id`): a scrape costs
O(live records + ledger accounts + credit lines), never O(history). What leaves the live set for good
(a settled trade's fee forgone, a confirmed or returned payout) is added to running totals exactly once.

A walk's figures serve every scrape for `CORE_FIGURES_TTL_S` (1 s; same core), so a burst of scrapes
walks once (`hogx_metrics_core_walks_total` counts the walks).

Times are exported as Unix timestamps of the oldest item (`..._oldest_timestamp_seconds`, absent while
there is none), as Prometheus recommends: its age is `time() - metric` in PromQL, and it keeps growing
while the exchange is stuck.

Definitions: a *poor household* is a participant with a verified poor-household registration; the
payout queue is money on payables not yet in a payout; a poor household's *unpaid payable* is its money
on a payable or in a payout not yet confirmed, dated by the settlement that credited it (an advance by
its trade); a loan is *overdue* when it is an advance whose trade has settled (or was rejected) and it
still owes principal or interest (the settlement should have repaid it; credit-line loans have no due
date in the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import time
from collections.abc import AsyncIterator, Callable, Iterable
from importlib import metadata
from typing import Any, Final

import asyncpg
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exchange import core as core_module
from exchange.core import Core
from exchange.domain import TradingState
from exchange.events import LoanKind, PayoutPriority, PayoutState
from exchange.settlement.ledger import AccountCode
from exchange.settlement.model import SourceKind, TradeState
from gateway.state import CONFIG, METRICS, POOL, READINESS, Readiness

__all__ = ["CoreGauges", "OperatorCollector", "build_info", "context"]

_log = logging.getLogger(__name__)

_NS: Final = 1_000_000_000
_SNAPSHOT_POLL_S: Final = 15.0
CORE_FIGURES_TTL_S: Final = 1.0  # how long one walk of the core serves scrapes

_LIVE_TRADE: Final = frozenset((TradeState.OPEN, TradeState.DELIVERED, TradeState.DISPUTED))
_FINAL_PAYOUT: Final = frozenset((PayoutState.CONFIRMED, PayoutState.RETURNED))
_PAYOUT_STATES: Final = (("pending", PayoutState.PENDING), ("sent", PayoutState.SENT),
                         ("failed", PayoutState.FAILED))
_LOAN_KINDS: Final = (("advance", LoanKind.ADVANCE), ("credit_line", LoanKind.CREDIT_LINE))
_PRIORITIES: Final = ("poor_household", "other")


def build_info() -> dict[str, str]:
    """The build's labels: package version, Python, and whether the core runs compiled (mypyc)."""
    try:
        version = metadata.version("hogx")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        version = "unknown"
    compiled = not (core_module.__file__ or "").endswith(".py")
    return {"version": version, "python": platform.python_version(), "compiled": str(compiled).lower()}


class _Index:
    """The live records of one core; see the module docstring (Cost)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        clearing = core.clearing
        assert clearing is not None
        self.live_trades: set[int] = set()
        self.live_payouts: set[int] = set()
        self.open_loans: set[int] = set()
        self.fees_forgone_fen = 0
        self.fees_subsidised_fen = 0
        self.payouts_confirmed = 0
        self.payouts_returned = 0
        # One walk of the history; after it, only ids at or above the high-water marks are new.
        self.trade_hw = 1
        self.payout_hw = 1
        self.loan_hw = 1
        self._take_new(core)

    def _take_new(self, core: Core) -> None:
        clearing = core.clearing
        assert clearing is not None
        trades, payouts, loans = clearing.trades, clearing.payouts, clearing.loans
        next_trade, next_payout, next_loan = (core.counters.next_trade_id, clearing.counters.next_payout_id,
                                              clearing.counters.next_loan_id)
        self.live_trades.update(t for t in range(self.trade_hw, next_trade) if t in trades)
        self.live_payouts.update(p for p in range(self.payout_hw, next_payout) if p in payouts)
        self.open_loans.update(n for n in range(self.loan_hw, next_loan) if n in loans)
        self.trade_hw, self.payout_hw, self.loan_hw = next_trade, next_payout, next_loan

    def refresh(self) -> None:
        """Take the new records, drop those that became final (adding them to the totals once)."""
        core = self.core
        clearing = core.clearing
        assert clearing is not None
        self._take_new(core)
        trades = clearing.trades
        # a record final for longer than the retention window is gone from memory (exchange/core.py
        # "Memory"): one seen live at the last scrape but gone since is dropped uncounted
        for trade_id in [t for t in self.live_trades if t not in trades or trades[t].state not in _LIVE_TRADE]:
            self.live_trades.discard(trade_id)
            trade = trades.get(trade_id)
            if trade is not None and trade.state == TradeState.SETTLED:
                self.fees_forgone_fen += trade.fee_forgone_fen
                self.fees_subsidised_fen += trade.fee_subsidy_fen
        payouts = clearing.payouts
        for payout_id in [p for p in self.live_payouts if p not in payouts or payouts[p].state in _FINAL_PAYOUT]:
            self.live_payouts.discard(payout_id)
            if payout_id not in payouts:
                continue
            if payouts[payout_id].state == PayoutState.CONFIRMED:
                self.payouts_confirmed += 1
            else:
                self.payouts_returned += 1
        # A credit line's loan closes when repaid and opens again at the next credit-funded settlement.
        self.open_loans.update(line.loan_id for line in clearing.credit_lines.values() if line.loan_id)
        loans = clearing.loans
        self.open_loans.difference_update([n for n in self.open_loans if not loans[n].is_open])


class _Figures:
    """One scrape's figures (plain numbers), gathered in one pass over each live set."""

    def __init__(self) -> None:
        self.by_code_fen: dict[int, int] = {}  # normal balance by account code, posted
        self.escrow_holds_fen = 0
        self.imbalance_posted_fen = 0
        self.imbalance_pending_fen = 0
        self.queue_payees = {p: 0 for p in _PRIORITIES}
        self.queue_fen = {p: 0 for p in _PRIORITIES}
        self.subsidy_available_fen = 0
        self.trades: dict[TradeState, int] = {s: 0 for s in _LIVE_TRADE}
        self.oldest_ns: dict[str, int] = {}  # what -> the oldest timestamp
        self.payouts = {name: 0 for name, _ in _PAYOUT_STATES}
        self.payouts_fen = {name: 0 for name, _ in _PAYOUT_STATES}
        self.loans = {name: 0 for name, _ in _LOAN_KINDS}
        self.loans_fen = {name: 0 for name, _ in _LOAN_KINDS}
        self.overdue = 0
        self.overdue_fen = 0

    def oldest(self, what: str, ts_ns: int) -> None:
        if ts_ns > 0 and (what not in self.oldest_ns or ts_ns < self.oldest_ns[what]):
            self.oldest_ns[what] = ts_ns


def _gather(index: _Index) -> _Figures:
    index.refresh()
    clearing = index.core.clearing
    assert clearing is not None
    figures = _Figures()
    poor = {p.participant_id for p in clearing.participants.values() if p.poor_verified}
    poor_payees: list[int] = []
    _gather_accounts(clearing.ledger, poor, figures, poor_payees)
    trades, loans = clearing.trades, clearing.loans

    def source_ns(kind: int, ref_id: int) -> int:
        if kind == SourceKind.ADVANCE:
            loan = loans.get(ref_id)
            trade = trades.get(loan.trade_id) if loan is not None else None
            return trade.traded_at_ns if trade is not None else 0
        trade = trades.get(ref_id)
        return trade.settled_at_ns if trade is not None else 0

    for payee in poor_payees:
        for source in clearing.payables.get(payee, ()):
            figures.oldest("payable_poor", source_ns(source.kind, source.ref_id))
    for trade_id in index.live_trades:
        trade = trades[trade_id]
        state = trade.state
        figures.trades[state] += 1
        if state == TradeState.OPEN:
            figures.oldest("weigh_in", trade.traded_at_ns)
        elif state == TradeState.DELIVERED:
            figures.oldest("settlement", trade.delivered_at_ns)
            figures.oldest("settlement_deadline", trade.dispute_until_ns)
        else:
            figures.oldest("dispute", trade.delivered_at_ns)
    for payout_id in index.live_payouts:
        payout = clearing.payouts[payout_id]
        for name, state in _PAYOUT_STATES:
            if payout.state == state:
                figures.payouts[name] += 1
                figures.payouts_fen[name] += payout.amount_fen
        if payout.priority == PayoutPriority.SAME_DAY:
            for source in payout.sources:
                figures.oldest("payable_poor", source_ns(source.kind, source.ref_id))
    for loan_id in index.open_loans:
        loan = loans[loan_id]
        owed = loan.principal_fen + loan.interest_due_fen
        for name, kind in _LOAN_KINDS:
            if loan.kind == kind:
                figures.loans[name] += 1
                figures.loans_fen[name] += owed
        if loan.kind == LoanKind.ADVANCE:
            trade = trades.get(loan.trade_id)
            if trade is not None and trade.state in (TradeState.SETTLED, TradeState.REJECTED):
                figures.overdue += 1
                figures.overdue_fen += owed
    return figures


# Account codes as plain ints: the walk below compares every account's code, and an enum member's
# class-attribute lookup costs more than the comparison.
_ESCROW: Final = int(AccountCode.ESCROW)
_SUBSIDY: Final = int(AccountCode.POVERTY_SUBSIDY_FUND)
_PAYABLE: Final = int(AccountCode.FARMER_PAYABLE)
_DEBIT_NORMAL: Final = frozenset(int(c) for c in (AccountCode.LOANS_RECEIVABLE, AccountCode.INTEREST_RECEIVABLE,
                                                  AccountCode.BANK_SETTLEMENT))


def _gather_accounts(ledger: Any, poor: set[int], figures: _Figures, poor_payees: list[int]) -> None:
    """One pass over the ledger's accounts (a few per participant): balances by kind, the payout queue,
    and the ledger's debits minus credits. The ledger's own records are read, not copies: read only."""
    by_code = figures.by_code_fen
    posted = pending = 0
    for a in ledger._accounts.values():
        code = a.code
        dp, dpost, cp, cpost = a.debits_pending_fen, a.debits_posted_fen, a.credits_pending_fen, a.credits_posted_fen
        posted += dpost - cpost
        pending += dp - cp
        by_code[code] = by_code.get(code, 0) + (dpost - cpost if code in _DEBIT_NORMAL else cpost - dpost)
        if code == _PAYABLE:
            available = cpost - dpost - dp  # what is not already in a payout
            if available > 0:
                owner = a.owner_id
                if owner in poor:
                    figures.queue_payees["poor_household"] += 1
                    figures.queue_fen["poor_household"] += available
                    poor_payees.append(owner)
                else:
                    figures.queue_payees["other"] += 1
                    figures.queue_fen["other"] += available
        elif code == _ESCROW:
            figures.escrow_holds_fen += cp
        elif code == _SUBSIDY:
            figures.subsidy_available_fen += cpost - dpost - dp
    figures.imbalance_posted_fen, figures.imbalance_pending_fen = posted, pending


_Gauge = Callable[..., None]


def _gauge_into(out: list[Metric]) -> _Gauge:
    def gauge(name: str, doc: str, value: float | None = None, labels: Iterable[str] = (),
              samples: Iterable[tuple[tuple[str, ...], float]] = ()) -> None:
        family = GaugeMetricFamily(name, doc, value=value, labels=list(labels) or None)
        for label_values, v in samples:
            family.add_metric(list(label_values), v)
        out.append(family)

    return gauge


class CoreGauges:
    """The figures read from one exchange core (its markets and clearing); keeps the live index between
    scrapes and starts a new one when the core is replaced (a recovery).

    The figures of one walk are served again for `ttl_s` (same core): a burst of scrapes, or a scraper
    hammering the endpoint, costs one walk of the ledger's accounts on the event loop, not one each.
    `walks` counts the walks (exported as `hogx_metrics_core_walks_total`)."""

    def __init__(self, *, ttl_s: float = CORE_FIGURES_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._index: _Index | None = None
        self._ttl_s = ttl_s
        self._clock = clock
        self._cached: tuple[Core, float, list[Metric]] | None = None  # (core, when walked, figures)
        self.walks = 0

    def collect(self, core: Core) -> list[Metric]:
        now = self._clock()
        cached = self._cached
        if cached is not None and cached[0] is core and now - cached[1] < self._ttl_s:
            return cached[2]
        out = self._walk(core)
        self.walks += 1
        self._cached = (core, now, out)
        return out

    def _walk(self, core: Core) -> list[Metric]:
        out: list[Metric] = []
        gauge = _gauge_into(out)
        gauge("hogx_market_halted", "1 while the instrument's market is halted.", labels=["instrument"],
              samples=[((symbol,), int(m.state == TradingState.HALTED)) for symbol, m in sorted(core.markets.items())])
        if core.clearing is None:
            return out
        if self._index is None or self._index.core is not core:
            self._index = _Index(core)
        index = self._index
        f = _gather(index)
        code = f.by_code_fen
        gauge("hogx_escrow_obligations_fen", "Trade obligations in escrow (posted), fen.",
              code.get(AccountCode.ESCROW, 0))
        gauge("hogx_escrow_holds_fen", "Buy orders' holds reserved against escrow (pending), fen.",
              f.escrow_holds_fen)
        gauge("hogx_seller_receivables_fen", "Delivered trades' amounts held for sellers through the dispute "
              "window, fen.", code.get(AccountCode.SELLER_RECEIVABLE, 0))
        gauge("hogx_payables_fen", "Settled proceeds on payables (including money in unconfirmed payouts), fen.",
              code.get(AccountCode.FARMER_PAYABLE, 0))
        gauge("hogx_trades_awaiting_weigh_in", "Trades waiting for their weigh-in.",
              f.trades[TradeState.OPEN])
        gauge("hogx_trades_awaiting_settlement", "Weighed-in trades waiting for their dispute window to end.",
              f.trades[TradeState.DELIVERED])
        gauge("hogx_disputes_open", "Disputed trades waiting for an operator.", f.trades[TradeState.DISPUTED])
        for what, name, doc in _OLDEST:
            if what in f.oldest_ns:
                gauge(name, doc, f.oldest_ns[what] / _NS)
        gauge("hogx_payout_queue_payees", "Payees with money payable not yet in a payout, by priority.",
              labels=["priority"], samples=[((p,), f.queue_payees[p]) for p in _PRIORITIES])
        gauge("hogx_payout_queue_fen", "Money payable not yet in a payout, by payee priority, fen.",
              labels=["priority"], samples=[((p,), f.queue_fen[p]) for p in _PRIORITIES])
        gauge("hogx_payouts", "Payouts not final, by state (pending: to send; sent: unconfirmed; failed: refused "
              "by the bank, waiting for an operator).", labels=["state"],
              samples=[((name,), f.payouts[name]) for name, _ in _PAYOUT_STATES])
        gauge("hogx_payouts_fen", "Money in payouts not final, by state, fen.", labels=["state"],
              samples=[((name,), f.payouts_fen[name]) for name, _ in _PAYOUT_STATES])
        out.append(CounterMetricFamily("hogx_payouts_confirmed", "Payouts the bank confirmed.",
                                       value=index.payouts_confirmed))
        out.append(CounterMetricFamily("hogx_payouts_returned", "Payouts given up (money back on the payable).",
                                       value=index.payouts_returned))
        gauge("hogx_subsidy_fund_fen", "Poverty subsidy fund balance available to pay waived fees and interest, "
              "fen.", f.subsidy_available_fen)
        out.append(CounterMetricFamily("hogx_fees_forgone_fen", "Waived fees of poor households nobody paid "
                                       "(the subsidy fund was empty), fen.", value=index.fees_forgone_fen))
        out.append(CounterMetricFamily("hogx_fees_subsidised_fen", "Waived fees of poor households the subsidy "
                                       "fund paid, fen.", value=index.fees_subsidised_fen))
        gauge("hogx_loans_outstanding", "Open loans, by kind.", labels=["kind"],
              samples=[((name,), f.loans[name]) for name, _ in _LOAN_KINDS])
        gauge("hogx_loans_outstanding_fen", "Principal and interest due on open loans, by kind, fen.",
              labels=["kind"], samples=[((name,), f.loans_fen[name]) for name, _ in _LOAN_KINDS])
        gauge("hogx_loans_overdue", "Advances still owing after their trade settled.", f.overdue)
        gauge("hogx_loans_overdue_fen", "What overdue advances still owe, fen.", f.overdue_fen)
        gauge("hogx_ledger_debits_minus_credits_fen", "Sum over all ledger accounts of debits minus credits; "
              "anything but 0 is a bug.", labels=["balance"],
              samples=[(("posted",), f.imbalance_posted_fen), (("pending",), f.imbalance_pending_fen)])
        return out


_OLDEST: Final = (
    ("weigh_in", "hogx_trades_awaiting_weigh_in_oldest_timestamp_seconds",
     "Trade time of the oldest trade waiting for its weigh-in."),
    ("settlement", "hogx_trades_awaiting_settlement_oldest_timestamp_seconds",
     "Weigh-in time of the oldest trade waiting for settlement."),
    ("settlement_deadline", "hogx_trades_awaiting_settlement_oldest_deadline_timestamp_seconds",
     "Earliest end of a dispute window among trades waiting for settlement (it settles at the next tick)."),
    ("dispute", "hogx_disputes_open_oldest_timestamp_seconds",
     "Weigh-in time of the oldest disputed trade waiting for an operator."),
    ("payable_poor", "hogx_payable_poor_household_oldest_timestamp_seconds",
     "Settlement time of the oldest money owed to a poor household and not yet paid."),
)


class OperatorCollector(Collector):
    """The operator's gauges (see the module docstring), read from `shard` at every scrape."""

    def __init__(self, shard: Any, readiness: Readiness, queue_capacity: int,
                 labels: dict[str, str] | None = None) -> None:
        self._shard = shard
        self._readiness = readiness
        self._queue_capacity = queue_capacity
        self._build = labels if labels is not None else build_info()
        self._core_gauges = CoreGauges()
        self.snapshot: tuple[int, int] | None = None  # (seq, bytes) of the newest snapshot, polled

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on the state; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        out: list[Metric] = []
        gauge = _gauge_into(out)
        gauge("hogx_build_info", "The running build: version, Python, compiled core (1).",
              labels=self._build, samples=[(tuple(self._build.values()), 1)])
        gauge("hogx_ready", "1 when /readyz answers ready (recovery finished, taking commands), else 0.",
              1 if self._readiness.ready else 0)
        gauge("hogx_sequencer_queue_capacity", "Commands the sequencer queue holds before answering busy.",
              self._queue_capacity)
        sequencer = self._shard.sequencer
        gauge("hogx_journal_committed_seq", "Highest journal sequence number committed.", sequencer.committed_seq)
        out.append(CounterMetricFamily("hogx_sequencer_recoveries", "Core rebuilds after database trouble "
                                       "since the process started.", value=sequencer.recoveries))
        gauge("hogx_recovery_duration_seconds", "How long the last start-up recovery took (snapshot, journal "
              "tail, read model rebuild).", self._shard.recovery_s)
        recovery = sequencer.last_recovery
        if recovery is not None:
            gauge("hogx_recovery_replayed_commands", "Journal commands replayed after the snapshot at the last "
                  "recovery.", recovery.replayed)
        if self.snapshot is not None:
            gauge("hogx_snapshot_seq", "Journal sequence number of the newest snapshot.", self.snapshot[0])
            gauge("hogx_snapshot_size_bytes", "Size of the newest snapshot (state and client-order index).",
                  self.snapshot[1])
        out.extend(self._core_gauges.collect(sequencer.core))
        out.append(CounterMetricFamily("hogx_metrics_core_walks", "Walks of the exchange core's live records "
                                       "and ledger accounts for /metrics (one serves scrapes for 1 s).",
                                       value=self._core_gauges.walks))
        return out


async def _poll_snapshots(pool: asyncpg.Pool, collector: OperatorCollector) -> None:
    """The newest snapshot's seq and size, every `_SNAPSHOT_POLL_S` (a scrape cannot wait for a query)."""
    while True:
        try:
            row = await pool.fetchrow(
                "SELECT seq, octet_length(state) + coalesce(octet_length(client_orders), 0) AS size"
                " FROM snapshots ORDER BY seq DESC LIMIT 1")
            collector.snapshot = None if row is None else (row["seq"], row["size"])
        except (asyncpg.PostgresError, OSError) as exc:  # the database is down: keep the last figure
            _log.debug("snapshot size not read: %r", exc)
        await asyncio.sleep(_SNAPSHOT_POLL_S)


async def context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context (after the exchange's): register the collector, poll the snapshot size."""
    from gateway.exchange_port import EXCHANGE  # here: exchange_port imports the app's state module

    port = app[EXCHANGE]
    collector = OperatorCollector(port.shard, app[READINESS], app[CONFIG].sequencer_queue_size)
    registry = app[METRICS].registry
    registry.register(collector)
    poller = asyncio.create_task(_poll_snapshots(app[POOL], collector), name="ops-snapshot-size")
    try:
        yield
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        registry.unregister(collector)

