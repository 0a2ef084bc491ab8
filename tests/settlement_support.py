"""Settlement test support: the exchange as it runs (``new_exchange()``: the matching core with its
clearing) at a controllable exchange time, plus participants and instruments for the examples."""

from __future__ import annotations

from typing import Any

import msgspec

from exchange.commands import (
    ClockTick,
    Command,
    ConfirmDeposit,
    FundsAccount,
    ParticipantRole,
    RecordWeighIn,
    RegisterParticipant,
    SetConsent,
    VerifyBankAccount,
    VerifyPoorHousehold,
    stamp,
)
from exchange.core import Core, new_exchange
from exchange.domain import InstrumentSpec, ProductClass, RejectReason, Side
from exchange.events import Event, LotRegistered, OrderAccepted, Rejected, Trade
from exchange.settlement.clearing import Clearing
from exchange.settlement.views import SettlementReportRow, report_entries, visible_report
from tests.factories import hog_spec, list_instrument, order, register_lot

SECOND_NS = 1_000_000_000
HOUR_NS = 3600 * SECOND_NS
DAY_NS = 24 * HOUR_NS
T0 = 1_767_225_600 * SECOND_NS  # 2026-01-01 00:00 UTC = 08:00 in Chongqing (CST day 20454)

OPERATOR, BUYER, BUYER2, FARMER, POOR_FARMER, COOP, MEMBER_A, MEMBER_B, FINANCIER = 1, 10, 11, 20, 21, 30, 31, 32, 40
SYMBOL = "RC-LH-WSY"
PIGLETS = "RC-PG-WSY"


def dce_spec(symbol: str = SYMBOL, seller_fee_bps: int = 50) -> InstrumentSpec:
    """Finishing hogs on the Dalian grade: lot average 100-120 kg, each 90-140 kg, substitute up to
    +10 kg at ¥600/t (60 fen/kg) off; no underweight substitute (2 kg at 40 fen/kg, for the tests)."""
    return msgspec.structs.replace(
        hog_spec(symbol), seller_fee_bps=seller_fee_bps, overweight_limit_g=10_000,
        overweight_discount_fen_per_kg=60, underweight_limit_g=2_000, underweight_discount_fen_per_kg=40,
    )  # fmt: skip


def piglet_spec(symbol: str = PIGLETS) -> InstrumentSpec:
    """Piglets at ¥800 a head (tick ¥1), 15-25 kg average, each 10-30 kg; no band; 1 % fee."""
    return msgspec.structs.replace(
        hog_spec(symbol, reference_price_fen=80_000, price_band_bps=0, tick_fen=100),
        product_class=ProductClass.PIGLET, lot_avg_min_g=15_000, lot_avg_max_g=25_000, animal_min_g=10_000,
        animal_max_g=30_000, seller_fee_bps=100,
    )  # fmt: skip


class Exchange:
    """A core and its clearing at a controllable exchange time."""

    def __init__(self, *specs: InstrumentSpec, ts_ns: int = T0) -> None:
        self.core = new_exchange()
        self.ts_ns = ts_ns
        self.events: list[Event] = []  # everything ever emitted, in order
        self.commands: list[Command] = []  # everything ever applied, stamped, in order
        self.ok(RegisterParticipant(0, 0, OPERATOR, ParticipantRole.OPERATOR, "Market operator", "5001**********001X"))
        for spec in specs:
            self.ok(list_instrument(spec))

    @property
    def clearing(self) -> Clearing:
        assert self.core.clearing is not None
        return self.core.clearing

    def restore_from_snapshot(self) -> None:
        """Carry on with the core (and its clearing) rebuilt from a snapshot of this one."""
        self.core = Core.from_snapshot(self.core.snapshot())

    # -- time ----------------------------------------------------------------------------------------

    def advance(self, ns: int) -> None:
        self.ts_ns += ns

    def tick(self, ns: int = 0) -> list[Event]:
        self.advance(ns)
        return self.apply(ClockTick(0, 0))

    # -- applying commands ---------------------------------------------------------------------------

    def apply(self, command: Command) -> list[Event]:
        command = stamp(command, self.ts_ns)
        self.commands.append(command)
        events = self._apply(command)
        self.events.extend(events)
        return events

    def _apply(self, command: Command) -> list[Event]:
        return self.core.apply(command)

    def ok(self, command: Command) -> list[Event]:
        events = self.apply(command)
        rejected = [e for e in events if isinstance(e, Rejected)]
        assert not rejected, f"{command} was rejected: {rejected}"
        return events

    def reject(self, command: Command, reason: RejectReason) -> Rejected:
        events = self.apply(command)
        assert len(events) == 1 and isinstance(events[0], Rejected), events
        assert events[0].reason == reason, f"expected {reason.name}, got {events[0].reason.name}"
        return events[0]

    # -- participants and money ----------------------------------------------------------------------

    def register(self, pid: int, role: ParticipantRole, name: str = "", *, poor: bool = False,
                 bank: bool = True) -> None:
        account = f"6217{pid:012d}"
        self.ok(RegisterParticipant(OPERATOR, 0, pid, role, name or f"participant {pid}", "5001**********123X",
                                    account))
        if bank:
            self.ok(VerifyBankAccount(OPERATOR, 0, pid, account))
        if poor:
            self.ok(VerifyPoorHousehold(OPERATOR, 0, pid, f"500226{pid:06d}"))

    def deposit(self, owner: int, amount_fen: int, account: FundsAccount = FundsAccount.TRADING_CASH,
                ref: str | None = None) -> None:
        self.deposit_counter = getattr(self, "deposit_counter", 0) + 1
        self.ok(ConfirmDeposit(OPERATOR, 0, ref or f"BANK-{self.deposit_counter}", owner, account, amount_fen))

    def consent(self, participant: int, financier: int) -> None:
        self.ok(SetConsent(participant, 0, financier, True))

    # -- trading -------------------------------------------------------------------------------------

    def lot(self, seller: int, heads: int = 100, avg_weight_g: int = 110_000, instrument: str = SYMBOL) -> int:
        events = self.ok(register_lot(seller, heads, instrument=instrument, avg_weight_g=avg_weight_g))
        return next(e.lot.lot_id for e in events if isinstance(e, LotRegistered))

    def sell(self, seller: int, price_fen: int, heads: int, lot_id: int, **kwargs: Any) -> list[Event]:
        return self.ok(order(seller, Side.SELL, price_fen, heads, lot_id=lot_id, **kwargs))

    def buy(self, buyer: int, price_fen: int, heads: int, **kwargs: Any) -> list[Event]:
        return self.ok(order(buyer, Side.BUY, price_fen, heads, **kwargs))

    def trade(self, buyer: int, seller: int, price_fen: int, heads: int, *, limit_fen: int | None = None,
              instrument: str = SYMBOL, avg_weight_g: int = 110_000) -> Trade:
        """A lot, a resting sell at ``price_fen`` and a buy at ``limit_fen`` (default: the price) that takes it."""
        lot_id = self.lot(seller, heads, avg_weight_g, instrument)
        self.sell(seller, price_fen, heads, lot_id, instrument=instrument)
        events = self.buy(buyer, limit_fen or price_fen, heads, instrument=instrument)
        trades = [e for e in events if isinstance(e, Trade)]
        assert len(trades) == 1, events
        return trades[0]

    def weigh_in(self, trade_id: int, heads: int, total_weight_g: int, by: int | None = None) -> list[Event]:
        sender = by if by is not None else self.clearing.trades[trade_id].seller_id
        return self.ok(RecordWeighIn(sender, 0, trade_id, heads, total_weight_g, "CQ-2026-000001", True))

    # -- reading -------------------------------------------------------------------------------------

    def of(self, kind: type, events: list[Event] | None = None) -> list:
        return [e for e in (self.events if events is None else events) if isinstance(e, kind)]

    def balance(self, code: int, owner: int = 0, user_data: int = 0) -> int:
        """Balance in the account's normal direction, posted only (pending holds not subtracted)."""
        from exchange.settlement.ledger import CHART

        account_id = code if owner == 0 and user_data == 0 and code < 400 else \
            self.clearing.accounts.get((code, owner, user_data))
        if account_id is None:
            return 0
        a = self.clearing.ledger.account(account_id)
        assert a is not None
        if CHART[code].normal_balance == "debit":
            return a.debits_posted_fen - a.credits_posted_fen
        return a.credits_posted_fen - a.debits_posted_fen

    def held(self, code: int, owner: int, user_data: int = 0) -> int:
        account_id = self.clearing.accounts.get((code, owner, user_data))
        a = self.clearing.ledger.account(account_id) if account_id else None
        return 0 if a is None else a.debits_pending_fen


def world(hogs: InstrumentSpec | None = None) -> Exchange:
    """Both instruments (the hogs' ``dce_spec()`` unless given) and one participant of every kind (two poor
    households: POOR_FARMER, MEMBER_A)."""
    x = Exchange(hogs or dce_spec(), piglet_spec())
    x.register(BUYER, ParticipantRole.BUYER, "重庆肉联")
    x.register(BUYER2, ParticipantRole.BUYER)
    x.register(FARMER, ParticipantRole.FARMER, "李四")
    x.register(POOR_FARMER, ParticipantRole.FARMER, "张三", poor=True)
    x.register(COOP, ParticipantRole.COOPERATIVE, "荣昌生猪合作社")
    x.register(MEMBER_A, ParticipantRole.FARMER, "王五", poor=True)
    x.register(MEMBER_B, ParticipantRole.FARMER, "赵六")
    x.register(FINANCIER, ParticipantRole.FINANCIER, "荣昌农商行")
    return x


def report(x: Exchange, day: int, viewer: int | None = None, kind: str | None = None) -> list[SettlementReportRow]:
    """The daily settlement report of CST ``day`` as ``viewer`` (None: an operator) sees it: the rows the
    history projects from every event so far (``views.report_entries``), of one ``kind`` if given."""
    entries = [e for e in report_entries(1, x.events) if e.day == day and kind in (None, e.row.kind)]
    return visible_report(entries, viewer, x.clearing.has_consented)


def accepted_order_id(events: list[Event]) -> int:
    return next(e.order_id for e in events if isinstance(e, OrderAccepted))
