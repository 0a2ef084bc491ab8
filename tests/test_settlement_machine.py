"""Stateful property test of settlement: random deposits, orders and fills, weigh-ins (heads short, refused
or dead on arrival, unfasted pigs with a shrink, a wrong quarantine certificate), disputes by the buyer or
by the seller (whose resolution may raise the amount from a hold on the buyer's money), advances,
credit lines, repayments, write-offs, withdrawals, clock ticks and payouts, through a real core and clearing,
checked after every step against an independent auditor.

The auditor re-states every rule in the simplest way it can, with plain integers and no ledger: which
buys are covered, each trade's obligation and final amount, the settlement waterfall, daily interest,
the subsidy fund, payouts. After every step the machine asserts that

- every account the clearing keeps has the balance (posted and held) the auditor expects, a seller's
  dispute hold included;
- all accounts sum to zero and no limited account is below zero (counted here, and ``validate()``);
- escrow equals the obligations of trades not yet weighed in (and the holds of resting buys), each
  seller's receivable the amounts of its weighed-in trades in their dispute window;
- each trade settles at most once, and exactly the trades the auditor says are due have settled;
- what every farmer and cooperative received (payable + paid out) equals what it earned minus fees
  and repayments, plus advances and cooperative shares;
- the clearing restored from its snapshot has the same state hash (and, now and then, takes over);
  at the end, replaying every command into a fresh core and clearing gives the same state hashes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from exchange.commands import (
    AmendOrder,
    BankConfirmation,
    CancelOrder,
    ClockTick,
    ConfirmDeposit,
    ConfirmWithdrawal,
    FundsAccount,
    GrantAdvance,
    GrantCreditLine,
    ImportBankConfirmations,
    MarkPayoutsSent,
    OpenDispute,
    RecordWeighIn,
    ReduceCreditLine,
    RejectDelivery,
    RepayLoan,
    RequestWithdrawal,
    ResolveDispute,
    RetryPayout,
    ReturnPayout,
    RunPayouts,
    SetConsent,
    SetCooperativeMembers,
    WriteOffLoan,
)
from exchange.domain import QuarantineRegion, RejectReason, Side, TimeInForce
from exchange.events import (
    DisputeOpened,
    LotRegistered,
    OrderAccepted,
    PayoutChanged,
    Rejected,
    Trade,
    TradeSettled,
)
from exchange.settlement.clearing import Clearing
from exchange.settlement.ledger import CHART, Account
from exchange.settlement.ledger import AccountCode as AC
from tests.factories import order, register_lot
from tests.settlement_support import (
    BUYER,
    BUYER2,
    COOP,
    FARMER,
    FINANCIER,
    HOUR_NS,
    MEMBER_A,
    MEMBER_B,
    OPERATOR,
    POOR_FARMER,
    dce_spec,
    world,
)

R = RejectReason
BUYERS = (BUYER, BUYER2)
SELLERS = (FARMER, POOR_FARMER, COOP)
PAYEES = (FARMER, POOR_FARMER, COOP, MEMBER_A, MEMBER_B)
POOR = frozenset({POOR_FARMER, MEMBER_A})
SHARES = {MEMBER_A: 6000, MEMBER_B: 3500}
FEE_BPS = 50
KEEP_ALL_NS = 100 * 365 * 24 * HOUR_NS  # a retention window no test reaches
WINDOW_NS = 48 * HOUR_NS
PRICES = st.integers(277, 283).map(lambda p: p * 10)  # inside the ±4 % band, close enough to cross often
KG = 1000
DAY_NS = 24 * HOUR_NS
CST_NS = 8 * HOUR_NS
SHRINK_BPS = 250  # unfasted pigs lose 2.5 % of their live weight
RAISE_BPS = 500  # a seller's dispute may raise the amount by 5 % of it (rules.MAX_DISPUTE_RAISE_BPS)
CERT = "CQ-2026-000001"  # every lot's (tests.factories.register_lot)
HOGS = msgspec.structs.replace(dce_spec(), shrink_bps=SHRINK_BPS, quarantine_region=QuarantineRegion.MATCHED)


def cst_day(ts_ns: int) -> int:
    return (ts_ns + CST_NS) // DAY_NS


def hold_per_head(price_fen: int) -> int:
    return 140 * price_fen  # the heaviest animal, 140 kg, at the price (a whole number of fen)


@dataclass
class ATrade:
    buyer: int
    seller: int
    heads: int
    price: int
    obligation: int
    on_line: bool
    declared_g: int
    state: str = "OPEN"
    amount: int = 0
    out_of_grade: bool = False
    deadline: int = 0
    advance: int = 0  # loan id
    raise_held: int = 0  # a seller's dispute: held from the buyer's trade source


@dataclass
class ALoan:
    kind: str  # "advance" | "line"
    borrower: int
    rate: int
    day: int
    principal: int = 0
    due: int = 0
    carry: int = 0
    trade: int = 0


@dataclass
class Auditor:
    """The expected state, in plain integers."""

    cash: Counter = field(default_factory=Counter)  # posted BUYER_CASH
    withdrawing: Counter = field(default_factory=Counter)
    line: int = 0  # BUYER2's credit line, posted
    funds: int = 0
    subsidy: int = 0
    fees: int = 0
    bank: int = 0
    escrow: int = 0
    receivable: Counter = field(default_factory=Counter)
    payable: Counter = field(default_factory=Counter)  # posted; in-flight payouts still count here
    inflight: Counter = field(default_factory=Counter)
    paid: Counter = field(default_factory=Counter)
    orders: dict[int, list[int]] = field(default_factory=dict)  # resting buy: [buyer, price, remaining, on_line]
    lots: dict[int, int] = field(default_factory=dict)  # lot id -> declared average grams
    trades: dict[int, ATrade] = field(default_factory=dict)
    loans: dict[int, ALoan] = field(default_factory=dict)
    line_loan: int = 0
    next_loan: int = 1
    last_day: int = 0
    payouts: dict[int, list] = field(default_factory=dict)  # id -> [payee, amount, state, attempt]
    # the farmer identity's terms, per payee
    earned: Counter = field(default_factory=Counter)
    fee_paid: Counter = field(default_factory=Counter)
    repaid: Counter = field(default_factory=Counter)
    advanced: Counter = field(default_factory=Counter)
    split_in: Counter = field(default_factory=Counter)
    split_out: Counter = field(default_factory=Counter)
    settled: set[int] = field(default_factory=set)

    # -- holds -----------------------------------------------------------------------------------------

    def held(self, buyer: int, on_line: bool) -> int:
        """Resting buys' holds and sellers' dispute holds on this source."""
        return self.order_held(buyer, on_line) + sum(
            t.raise_held for t in self.trades.values() if t.buyer == buyer and t.on_line == on_line)

    def order_held(self, buyer: int, on_line: bool) -> int:
        """Resting buys' holds on this source (pending into escrow)."""
        return sum(hold_per_head(p) * rest for b, p, rest, line in self.orders.values()
                   if b == buyer and bool(line) == on_line)

    def cash_available(self, buyer: int) -> int:
        return self.cash[buyer] - self.held(buyer, False) - self.withdrawing[buyer]

    def line_available(self) -> int:
        return self.line - self.held(BUYER2, True)

    def payable_available(self, payee: int) -> int:
        return self.payable[payee] - self.inflight[payee]

    def buy_source(self, buyer: int, hold: int) -> bool | None:
        """False: cash covers it; True: the credit line does; None: refused."""
        if self.cash_available(buyer) >= hold:
            return False
        if buyer == BUYER2 and self.line_loan and self.line_available() >= hold:
            return True
        return None

    def fill(self, t: Trade, ts_ns: int) -> None:
        buyer, _, _, on_line = self.orders[t.buy_order_id]
        obligation = hold_per_head(t.price_fen) * t.quantity_heads
        self.escrow += obligation
        if on_line:
            self.line -= obligation
        else:
            self.cash[buyer] -= obligation
        self.orders[t.buy_order_id][2] -= t.quantity_heads
        if not self.orders[t.buy_order_id][2]:
            del self.orders[t.buy_order_id]
        self.trades[t.trade_id] = ATrade(buyer, t.seller_id, t.quantity_heads, t.price_fen, obligation,
                                         bool(on_line), self.lots[t.lot_id])

    def refund(self, t: ATrade, amount: int) -> None:
        if t.on_line:
            self.line += amount
        else:
            self.cash[t.buyer] += amount

    # -- delivery ---------------------------------------------------------------------------------------

    def weigh_in(self, tid: int, heads: int, weight_g: int, ts_ns: int, refused: int = 0,
                 unfasted: bool = False) -> None:
        t = self.trades[tid]
        paid_g = weight_g - (weight_g * SHRINK_BPS // 10_000 if unfasted else 0)
        avg = paid_g // heads if heads else 0
        discount = 0
        if avg > 120 * KG:
            discount, t.out_of_grade = 60, avg > 130 * KG
        elif heads and avg < 100 * KG:
            discount, t.out_of_grade = 40, avg < 98 * KG
        cap = t.obligation - t.obligation // t.heads * refused  # refused heads: their hold goes back
        t.amount = min(paid_g * (t.price - discount) // KG, cap)
        self.escrow -= t.obligation
        self.receivable[t.seller] += t.amount
        self.refund(t, t.obligation - t.amount)
        t.state, t.deadline = "DELIVERED", ts_ns + WINDOW_NS

    def hold_raise(self, tid: int) -> int:
        """A seller's dispute: 5 % of the amount, as far as the trade's source has it available."""
        t = self.trades[tid]
        available = self.line_available() if t.on_line else self.cash_available(t.buyer)
        t.raise_held = min(t.amount * RAISE_BPS // 10_000, available)
        return t.raise_held

    def resolve(self, tid: int, new_amount: int) -> None:
        t = self.trades[tid]
        raised = max(new_amount - t.amount, 0)
        t.raise_held = 0  # posted in part or released
        if raised:
            self.refund(t, -raised)
            self.receivable[t.seller] += raised
            t.amount = new_amount
        else:
            self.lower(tid, new_amount)

    def lower(self, tid: int, new_amount: int) -> None:
        t = self.trades[tid]
        t.raise_held = 0
        self.receivable[t.seller] -= t.amount - new_amount
        self.refund(t, t.amount - new_amount)
        t.amount = new_amount

    # -- interest and settlement -------------------------------------------------------------------------

    def accrue(self, loan: ALoan, day: int) -> None:
        days = day - loan.day
        if days > 0:
            loan.day = day
            numerator = loan.principal * loan.rate * days + loan.carry
            loan.due += numerator // 3_650_000
            loan.carry = numerator % 3_650_000

    def subsidise(self, loan: ALoan) -> None:
        if loan.kind == "advance" and loan.borrower in POOR and loan.due:
            paid = min(loan.due, self.subsidy)
            self.subsidy -= paid
            self.funds += paid
            loan.due -= paid

    def tick(self, ts_ns: int) -> None:
        day = cst_day(ts_ns)
        if day > self.last_day:
            self.last_day = day
            for loan_id in sorted(self.loans):
                loan = self.loans[loan_id]
                if loan.principal or loan.due:
                    self.accrue(loan, day)
                    self.subsidise(loan)
        due = sorted((t.deadline, tid) for tid, t in self.trades.items() if t.state == "DELIVERED")
        for deadline, tid in due:
            if deadline <= ts_ns:
                self.settle(tid, ts_ns)

    def settle(self, tid: int, ts_ns: int) -> None:
        t = self.trades[tid]
        seller, amount, day = t.seller, t.amount, cst_day(ts_ns)
        poor = seller in POOR
        advances = sorted((lid != t.advance, lid) for lid, loan in self.loans.items()
                          if loan.kind == "advance" and loan.borrower == seller and (loan.principal or loan.due))
        for _, lid in advances:
            self.accrue(self.loans[lid], day)
            self.subsidise(self.loans[lid])
        if t.on_line and amount:
            line_loan = self.loans[self.line_loan]
            self.accrue(line_loan, day)
            line_loan.principal += amount
        fee = amount * FEE_BPS // 10_000
        # a cooperative's poor members: the fee on each one's share is waived, paid by the fund, and
        # added to its part of the split
        waived = {m: fee * share // 10_000 for m, share in SHARES.items() if m in POOR} if seller == COOP else {}
        left = amount
        if poor:
            subsidised = min(fee, self.subsidy)
            self.subsidy -= subsidised
            self.fees += subsidised
        else:
            left -= fee
            paid_fee = fee - sum(waived.values())
            subsidised = min(sum(waived.values()), self.subsidy)
            self.subsidy -= subsidised
            self.fees += paid_fee + subsidised
            self.fee_paid[seller] += paid_fee
        for _, lid in advances:
            loan = self.loans[lid]
            interest = 0 if poor else min(loan.due, left)
            principal = min(loan.principal, left - interest)
            left -= interest + principal
            loan.due -= interest
            loan.principal -= principal
            self.funds += interest + principal
            self.repaid[seller] += interest + principal
        self.receivable[seller] -= amount
        self.earned[seller] += amount
        self.payable[seller] += left + sum(waived.values())
        if seller == COOP:
            for member, share in SHARES.items():
                part = left * share // 10_000 + waived.get(member, 0)
                self.payable[COOP] -= part
                self.payable[member] += part
                self.split_out[COOP] += part
                self.split_in[member] += part
        t.state = "SETTLED"
        self.settled.add(tid)

    def owes(self, borrower: int, day: int) -> list[tuple[ALoan, int]]:
        """(loan, interest the borrower itself pays through ``day``) of the borrower's open loans, by id."""
        out = []
        for lid in sorted(self.loans):
            loan = self.loans[lid]
            if loan.borrower != borrower or not (loan.principal or loan.due):
                continue
            numerator = loan.principal * loan.rate * max(day - loan.day, 0) + loan.carry
            interest = loan.due + (numerator // 3_650_000 if day > loan.day else 0)
            if loan.kind == "advance" and borrower in POOR:
                interest = 0
            out.append((loan, interest))
        return out


class SettlementMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.x = world(HOGS)
        self.a = Auditor()
        self.log: list = []  # (ts_ns, command) of everything after world(), for the replay at the end
        self.steps = 0
        self.refs = 0

    # -- plumbing ------------------------------------------------------------------------------------------

    def ref(self, prefix: str) -> str:
        self.refs += 1
        return f"{prefix}{self.refs}"

    def send(self, command: object) -> list:
        events = self.x.apply(command)  # type: ignore[arg-type]
        self.log.append((self.x.ts_ns, command))
        return events

    def expect_ok(self, command: object) -> list:
        events = self.send(command)
        assert not [e for e in events if isinstance(e, Rejected)], (command, events)
        return events

    def expect_reject(self, command: object, reason: RejectReason) -> None:
        events = self.send(command)
        assert [type(e) for e in events] == [Rejected] and events[0].reason == reason, (command, events)

    def follow_trades(self, events: list) -> None:
        for e in events:
            if isinstance(e, Trade):
                self.a.fill(e, self.x.ts_ns)

    @initialize()
    def setup(self) -> None:
        self.expect_ok(SetCooperativeMembers(OPERATOR, 0, COOP, tuple(SHARES), tuple(SHARES.values())))
        for who in (BUYER2, FARMER, POOR_FARMER, COOP):
            self.expect_ok(SetConsent(who, 0, FINANCIER, True))
        self.expect_ok(ConfirmDeposit(OPERATOR, 0, "SETUP-F", FINANCIER, FundsAccount.FINANCIER_FUNDS, 30_000_000))
        self.expect_ok(ConfirmDeposit(OPERATOR, 0, "SETUP-B", BUYER, FundsAccount.TRADING_CASH, 40_000_000))
        self.expect_ok(ConfirmDeposit(OPERATOR, 0, "SETUP-S", 0, FundsAccount.POVERTY_SUBSIDY_FUND, 30_000))
        self.a.funds = 30_000_000
        self.a.cash[BUYER] = 40_000_000
        self.a.subsidy = 30_000
        self.a.bank = 70_030_000
        self.a.last_day = cst_day(self.x.ts_ns)

    # -- money in and out -------------------------------------------------------------------------------------

    @rule(buyer=st.sampled_from(BUYERS), amount=st.integers(1, 8_000_000))
    def deposit(self, buyer: int, amount: int) -> None:
        self.expect_ok(ConfirmDeposit(OPERATOR, 0, self.ref("D"), buyer, FundsAccount.TRADING_CASH, amount))
        self.a.cash[buyer] += amount
        self.a.bank += amount

    @rule(amount=st.integers(1, 200_000))
    def fund_subsidy(self, amount: int) -> None:
        self.expect_ok(ConfirmDeposit(OPERATOR, 0, self.ref("S"), 0, FundsAccount.POVERTY_SUBSIDY_FUND, amount))
        self.a.subsidy += amount
        self.a.bank += amount

    @rule(amount=st.integers(1, 3_000_000), ok=st.booleans())
    def withdraw(self, amount: int, ok: bool) -> None:
        ref = self.ref("W")
        request = RequestWithdrawal(BUYER, 0, ref, FundsAccount.TRADING_CASH, amount)
        if self.a.cash_available(BUYER) < amount:
            self.expect_reject(request, R.INSUFFICIENT_FUNDS)
            return
        self.expect_ok(request)
        self.a.withdrawing[BUYER] += amount
        self.check_books()  # with the withdrawal in flight
        self.expect_ok(ConfirmWithdrawal(OPERATOR, 0, BUYER, ref, ok, "B"))
        self.a.withdrawing[BUYER] -= amount
        if ok:
            self.a.cash[BUYER] -= amount
            self.a.bank -= amount

    # -- orders ---------------------------------------------------------------------------------------------

    @rule(seller=st.sampled_from(SELLERS), price=PRICES, heads=st.integers(1, 5),
          declared_kg=st.integers(100, 120))
    def sell(self, seller: int, price: int, heads: int, declared_kg: int) -> None:
        events = self.expect_ok(register_lot(seller, heads, avg_weight_g=declared_kg * KG))
        lot_id = next(e.lot.lot_id for e in events if isinstance(e, LotRegistered))
        self.a.lots[lot_id] = declared_kg * KG
        self.follow_trades(self.expect_ok(order(seller, Side.SELL, price, heads, lot_id=lot_id)))

    @rule(buyer=st.sampled_from(BUYERS), price=PRICES, heads=st.integers(1, 8), ioc=st.booleans())
    def buy(self, buyer: int, price: int, heads: int, ioc: bool) -> None:
        command = order(buyer, Side.BUY, price, heads, tif=TimeInForce.IOC if ioc else TimeInForce.GTC)
        source = self.a.buy_source(buyer, hold_per_head(price) * heads)
        if source is None:
            self.expect_reject(command, R.INSUFFICIENT_FUNDS)
            return
        events = self.expect_ok(command)
        order_id = next(e.order_id for e in events if isinstance(e, OrderAccepted))
        self.a.orders[order_id] = [buyer, price, heads, source]
        self.follow_trades(events)
        if ioc:
            self.a.orders.pop(order_id, None)

    @rule(buyer=st.sampled_from(BUYERS), seller=st.sampled_from(SELLERS), price=PRICES, heads=st.integers(1, 5),
          above=st.integers(0, 3), declared_kg=st.integers(100, 120))
    def cross(self, buyer: int, seller: int, price: int, heads: int, above: int, declared_kg: int) -> None:
        """A resting sell and a buy at or above it: the common case, so trades are frequent."""
        self.sell(seller, price, heads, declared_kg)
        self.buy(buyer, price + 10 * above, heads, False)

    @precondition(lambda self: self.a.orders)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.a.orders)))
        self.expect_ok(CancelOrder(self.a.orders[order_id][0], 0, order_id))
        del self.a.orders[order_id]

    @precondition(lambda self: self.a.orders)
    @rule(data=st.data(), price=PRICES)
    def amend(self, data: st.DataObject, price: int) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.a.orders)))
        buyer, old_price, rest, on_line = self.a.orders[order_id]
        command = AmendOrder(buyer, 0, order_id, price_fen=price)
        if price == old_price:
            self.expect_reject(command, R.NOTHING_TO_AMEND)
            return
        extra = hold_per_head(price) * rest - hold_per_head(old_price) * rest
        available = self.a.line_available() if on_line else self.a.cash_available(buyer)
        if extra > available:
            self.expect_reject(command, R.INSUFFICIENT_FUNDS)
            return
        events = self.expect_ok(command)
        self.a.orders[order_id][1] = price
        self.follow_trades(events)

    # -- delivery and disputes -------------------------------------------------------------------------------

    def pick(self, data: st.DataObject, *states: str) -> int | None:
        tids = sorted(tid for tid, t in self.a.trades.items() if t.state in states)
        return data.draw(st.sampled_from(tids)) if tids else None

    @rule(data=st.data(), short=st.integers(0, 2), refused=st.integers(0, 2), unfasted=st.booleans(),
          avg_g=st.sampled_from([96_500, 99_000, 110_000, 120_000, 125_000, 131_000]),
          extra_g=st.integers(0, 999), wrong_cert=st.booleans())
    def weigh_in(self, data: st.DataObject, short: int, refused: int, unfasted: bool, avg_g: int, extra_g: int,
                 wrong_cert: bool) -> None:
        tid = self.pick(data, "OPEN")
        if tid is None:
            return
        t = self.a.trades[tid]
        heads = max(t.heads - short, 0)
        refused = min(refused, t.heads - heads)
        weight = heads * avg_g + (extra_g if heads else 0)
        if wrong_cert:
            self.expect_reject(RecordWeighIn(t.seller, 0, tid, heads, weight, "CQ-1", True, refused, unfasted),
                               R.QUARANTINE_CERT_MISMATCH)
        self.expect_ok(RecordWeighIn(t.seller, 0, tid, heads, weight, CERT, True, refused, unfasted))
        self.a.weigh_in(tid, heads, weight, self.x.ts_ns, refused, unfasted)

    @rule(data=st.data(), by_seller=st.booleans())
    def dispute(self, data: st.DataObject, by_seller: bool) -> None:
        tid = self.pick(data, "DELIVERED")
        if tid is None:
            return
        t = self.a.trades[tid]
        command = OpenDispute(t.seller if by_seller else t.buyer, 0, tid, "weights")
        if self.x.ts_ns >= t.deadline:
            self.expect_reject(command, R.DISPUTE_WINDOW_CLOSED)
            return
        events = self.expect_ok(command)
        held = self.a.hold_raise(tid) if by_seller else 0
        assert [e.raise_held_fen for e in events if isinstance(e, DisputeOpened)] == [held]
        t.state = "DISPUTED"

    @rule(data=st.data(), percent=st.integers(0, 100), up=st.booleans())
    def resolve(self, data: st.DataObject, percent: int, up: bool) -> None:
        tid = self.pick(data, "DISPUTED")
        if tid is None:
            return
        t = self.a.trades[tid]
        self.expect_reject(ResolveDispute(OPERATOR, 0, tid, t.amount + t.raise_held + 1), R.INVALID_AMOUNT)
        amount = t.amount + t.raise_held * percent // 100 if up else t.amount * percent // 100
        events = self.expect_ok(ResolveDispute(OPERATOR, 0, tid, amount))
        self.a.resolve(tid, amount)
        self.a.settle(tid, self.x.ts_ns)
        assert [e.trade_id for e in events if isinstance(e, TradeSettled)] == [tid]

    @rule(data=st.data(), unfasted=st.booleans(), percent=st.integers(0, 100), up=st.booleans())
    def seller_disputes_the_scale(self, data: st.DataObject, unfasted: bool, percent: int, up: bool) -> None:
        """Weigh in an open trade, the seller disputes at once and an operator decides: raises are frequent."""
        tid = self.pick(data, "OPEN")
        if tid is None:
            return
        t = self.a.trades[tid]
        weight = t.heads * 110_000
        self.expect_ok(RecordWeighIn(t.seller, 0, tid, t.heads, weight, CERT, True, 0, unfasted))
        self.a.weigh_in(tid, t.heads, weight, self.x.ts_ns, 0, unfasted)
        self.dispute(data, True)
        self.resolve(data, percent, up)

    @rule(data=st.data())
    def reject_delivery(self, data: st.DataObject) -> None:
        tid = self.pick(data, "DELIVERED", "DISPUTED")
        if tid is None:
            return
        t = self.a.trades[tid]
        command = RejectDelivery(t.buyer, 0, tid)
        if not t.out_of_grade:
            self.expect_reject(command, R.DELIVERY_NOT_REJECTABLE)
        elif self.x.ts_ns >= t.deadline:
            self.expect_reject(command, R.DISPUTE_WINDOW_CLOSED)
        else:
            self.expect_ok(command)
            self.a.lower(tid, 0)
            t.state = "REJECTED"

    # -- financing --------------------------------------------------------------------------------------------

    @rule(data=st.data(), percent=st.integers(1, 80), rate=st.sampled_from([0, 435, 600, 1200]))
    def advance(self, data: st.DataObject, percent: int, rate: int) -> None:
        tid = self.pick(data, "OPEN")
        if tid is None or self.a.trades[tid].advance:
            return
        t = self.a.trades[tid]
        limit = t.heads * t.declared_g * t.price // KG * 7000 // 10_000
        amount = max(limit * percent // 70, 1)
        command = GrantAdvance(FINANCIER, 0, tid, amount, rate)
        if amount > limit:
            self.expect_reject(command, R.ADVANCE_TOO_LARGE)
        elif amount > self.a.funds:
            self.expect_reject(command, R.INSUFFICIENT_FUNDS)
        else:
            self.expect_ok(command)
            self.a.funds -= amount
            self.a.payable[t.seller] += amount
            self.a.advanced[t.seller] += amount
            t.advance = self.a.next_loan
            self.a.loans[self.a.next_loan] = ALoan("advance", t.seller, rate, cst_day(self.x.ts_ns), amount,
                                                   trade=tid)
            self.a.next_loan += 1

    @rule(amount=st.integers(1, 10_000_000), rate=st.sampled_from([365, 730, 900]))
    def grant_line(self, amount: int, rate: int) -> None:
        command = GrantCreditLine(FINANCIER, 0, BUYER2, amount, rate)
        if amount > self.a.funds:
            self.expect_reject(command, R.INSUFFICIENT_FUNDS)
            return
        self.expect_ok(command)
        a = self.a
        if not a.line_loan:
            a.line_loan = a.next_loan
            a.loans[a.next_loan] = ALoan("line", BUYER2, rate, cst_day(self.x.ts_ns))
            a.next_loan += 1
        a.accrue(a.loans[a.line_loan], cst_day(self.x.ts_ns))
        a.loans[a.line_loan].rate = rate
        a.funds -= amount
        a.line += amount

    @precondition(lambda self: self.a.line_loan)
    @rule(amount=st.integers(1, 5_000_000))
    def reduce_line(self, amount: int) -> None:
        command = ReduceCreditLine(FINANCIER, 0, BUYER2, amount)
        if amount > self.a.line_available():
            self.expect_reject(command, R.INSUFFICIENT_FUNDS)
            return
        self.expect_ok(command)
        self.a.line -= amount
        self.a.funds += amount

    @precondition(lambda self: any(loan.principal or loan.due for loan in self.a.loans.values()))
    @rule(data=st.data(), anyone=st.integers(0, 3), percent=st.integers(1, 110))
    def repay(self, data: st.DataObject, anyone: int, percent: int) -> None:
        a, day = self.a, cst_day(self.x.ts_ns)
        owing = sorted({loan.borrower for loan in a.loans.values() if loan.principal or loan.due})
        # mostly a borrower that owes something (else nearly every repayment is refused), now and then anyone
        borrower = data.draw(st.sampled_from([BUYER2, FARMER, POOR_FARMER, COOP] if not anyone else owing))
        owed = a.owes(borrower, day)
        total = sum(loan.principal + interest for loan, interest in owed)
        amount = max(total * percent // 100, 1)
        command = RepayLoan(borrower, 0, FINANCIER, amount)
        if not owed or amount > total:
            self.expect_reject(command, R.INVALID_AMOUNT)
            return
        plan, need, left = [], Counter(), amount
        for loan, interest in owed:
            i = min(interest, left)
            p = min(loan.principal, left - i)
            left -= i + p
            if i or p:
                plan.append((loan, i, p))
                need[loan.kind] += i + p
        if need["line"] > a.cash_available(borrower) or need["advance"] > a.payable_available(borrower):
            self.expect_reject(command, R.INSUFFICIENT_FUNDS)
            return
        self.expect_ok(command)
        for loan, _ in owed:
            a.accrue(loan, day)
        for loan, i, p in plan:
            loan.due -= i
            loan.principal -= p
            a.funds += i + p
            if loan.kind == "line":
                a.cash[borrower] -= i + p
            else:
                a.payable[borrower] -= i + p
                a.repaid[borrower] += i + p

    @precondition(lambda self: any(loan.principal or loan.due for loan in self.a.loans.values()))
    @rule(data=st.data(), by_borrower=st.booleans(), closed=st.integers(0, 4))
    def write_off(self, data: st.DataObject, by_borrower: bool, closed: int) -> None:
        a, day = self.a, cst_day(self.x.ts_ns)
        open_ids = sorted(lid for lid, x in a.loans.items() if x.principal or x.due)
        closed_ids = sorted(set(a.loans) - set(open_ids))
        lid = data.draw(st.sampled_from(closed_ids if closed_ids and not closed else open_ids))
        loan = a.loans[lid]
        if by_borrower:  # only the financier may: anyone else is told no such loan
            self.expect_reject(WriteOffLoan(loan.borrower, 0, lid, "forgive me"), R.UNKNOWN_LOAN)
            return
        if not (loan.principal or loan.due):
            self.expect_reject(WriteOffLoan(FINANCIER, 0, lid, "closed"), R.LOAN_CLOSED)
            return
        self.expect_ok(WriteOffLoan(FINANCIER, 0, lid, "default"))
        a.accrue(loan, day)
        a.subsidise(loan)
        loan.principal = loan.due = loan.carry = 0

    # -- time ------------------------------------------------------------------------------------------------

    @rule(data=st.data())
    def deliveries_then_two_days(self, data: st.DataObject) -> None:
        """Weigh in every open trade, then let the dispute windows close: settlements are frequent."""
        for tid in sorted(t for t, trade in self.a.trades.items() if trade.state == "OPEN"):
            t = self.a.trades[tid]
            heads = t.heads - data.draw(st.integers(0, min(t.heads, 1)))
            avg_g = data.draw(st.sampled_from([99_000, 110_000, 110_000, 125_000, 131_000]))
            self.expect_ok(RecordWeighIn(t.seller, 0, tid, heads, heads * avg_g, CERT, True))
            self.a.weigh_in(tid, heads, heads * avg_g, self.x.ts_ns)
        self.tick(49)

    @rule(hours=st.sampled_from([1, 5, 16, 30, 49, 72]))
    def tick(self, hours: int) -> None:
        self.x.advance(hours * HOUR_NS)
        # the auditor keeps every trade: this machine's window never elapses (test_bounded_state.py
        # drives the forgetting, against this very behaviour as its oracle)
        events = self.send(ClockTick(0, 0, KEEP_ALL_NS))
        self.a.tick(self.x.ts_ns)
        settled = sorted(e.trade_id for e in events if isinstance(e, TradeSettled))
        assert set(settled) <= self.a.settled

    # -- payouts ---------------------------------------------------------------------------------------------

    @rule(poor_only=st.booleans())
    def run_payouts(self, poor_only: bool) -> None:
        events = self.expect_ok(RunPayouts(OPERATOR, 0, self.ref("R"), poor_only))
        payees = [p for p in PAYEES if self.a.payable_available(p) > 0 and (p in POOR or not poor_only)]
        payees.sort(key=lambda p: (p not in POOR, p))
        made = [e for e in events if isinstance(e, PayoutChanged)]
        assert [(e.payee_id, e.amount_fen) for e in made] == [(p, self.a.payable_available(p)) for p in payees]
        for e in made:
            self.a.inflight[e.payee_id] += e.amount_fen
            self.a.payouts[e.payout_id] = [e.payee_id, e.amount_fen, "PENDING", 1]

    @precondition(lambda self: any(p[2] == "PENDING" for p in self.a.payouts.values()))
    @rule()
    def send_file(self) -> None:
        pairs = tuple((pid, p[3]) for pid, p in sorted(self.a.payouts.items()) if p[2] == "PENDING")
        self.expect_ok(MarkPayoutsSent(OPERATOR, 0, self.ref("F"), pairs))
        for pid, _ in pairs:
            self.a.payouts[pid][2] = "SENT"

    @precondition(lambda self: any(p[2] == "SENT" for p in self.a.payouts.values()))
    @rule(data=st.data(), ok=st.booleans())
    def bank_answers(self, data: st.DataObject, ok: bool) -> None:
        pid = data.draw(st.sampled_from(sorted(k for k, p in self.a.payouts.items() if p[2] == "SENT")))
        payee, amount, _, attempt = self.a.payouts[pid]
        row = BankConfirmation(pid, attempt, ok, self.ref("B"), "" if ok else "account frozen")
        self.expect_ok(ImportBankConfirmations(OPERATOR, 0, self.ref("C"), (row,)))
        if ok:
            self.a.payouts[pid][2] = "CONFIRMED"
            self.a.inflight[payee] -= amount
            self.a.payable[payee] -= amount
            self.a.paid[payee] += amount
            self.a.bank -= amount
        else:
            self.a.payouts[pid][2] = "FAILED"

    @rule(data=st.data())
    def payout_cycle(self, data: st.DataObject) -> None:
        """A run, its bank file, and the bank's answer to each payout in it."""
        self.run_payouts(False)
        if any(p[2] == "PENDING" for p in self.a.payouts.values()):
            self.send_file()
        while any(p[2] == "SENT" for p in self.a.payouts.values()):
            self.bank_answers(data, data.draw(st.booleans()))

    @precondition(lambda self: any(p[2] == "FAILED" for p in self.a.payouts.values()))
    @rule(data=st.data(), retry=st.booleans())
    def handle_failure(self, data: st.DataObject, retry: bool) -> None:
        pid = data.draw(st.sampled_from(sorted(k for k, p in self.a.payouts.items() if p[2] == "FAILED")))
        if retry:
            self.expect_ok(RetryPayout(OPERATOR, 0, pid))
            self.a.payouts[pid][2:] = ["PENDING", self.a.payouts[pid][3] + 1]
        else:
            self.expect_ok(ReturnPayout(OPERATOR, 0, pid))
            self.a.payouts[pid][2] = "RETURNED"
            self.a.inflight[self.a.payouts[pid][0]] -= self.a.payouts[pid][1]

    # -- invariants ------------------------------------------------------------------------------------------

    @invariant()
    def books_agree_with_the_auditor(self) -> None:
        self.check_books()

    def check_books(self) -> None:
        c, a = self.x.clearing, self.a
        c.ledger.validate()
        self.assert_sums_to_zero()
        for b in BUYERS:
            assert self.posted(AC.BUYER_CASH, b) == a.cash[b], f"cash of {b}"
            assert self.pending(AC.BUYER_CASH, b) == a.held(b, False) + a.withdrawing[b], f"holds of {b}"
        assert self.posted(AC.BUYER_CREDIT_LINE, BUYER2, FINANCIER) == a.line
        assert self.pending(AC.BUYER_CREDIT_LINE, BUYER2, FINANCIER) == a.held(BUYER2, True)
        open_obligations = sum(t.obligation for t in a.trades.values() if t.state == "OPEN")
        assert self.posted(AC.ESCROW) == a.escrow == open_obligations
        escrow = c.ledger.account(int(AC.ESCROW))
        assert escrow is not None and escrow.credits_pending_fen == a.order_held(BUYER, False) \
            + a.order_held(BUYER2, False) + a.order_held(BUYER2, True)
        for s in SELLERS:
            in_window = sum(t.amount for t in a.trades.values() if t.seller == s and t.state in ("DELIVERED",
                                                                                                  "DISPUTED"))
            assert self.posted(AC.SELLER_RECEIVABLE, s) == a.receivable[s] == in_window, f"receivable of {s}"
            receivable = self.account(AC.SELLER_RECEIVABLE, s)
            disputed = sum(t.raise_held for t in a.trades.values() if t.seller == s)  # its disputes' holds
            assert (receivable.credits_pending_fen if receivable else 0) == disputed, f"dispute holds for {s}"
        for p in PAYEES:
            assert self.posted(AC.FARMER_PAYABLE, p) == a.payable[p], f"payable of {p}"
            assert self.pending(AC.FARMER_PAYABLE, p) == a.inflight[p], f"payouts in flight of {p}"
            # what it received (payable + paid out) = earned - fees - repayments + advances +- shares
            assert a.payable[p] + a.paid[p] == (a.earned[p] - a.fee_paid[p] - a.repaid[p] + a.advanced[p]
                                                + a.split_in[p] - a.split_out[p]), f"farmer identity of {p}"
        assert self.posted(AC.FINANCIER_FUNDS, FINANCIER) == a.funds
        assert self.posted(AC.POVERTY_SUBSIDY_FUND) == a.subsidy
        assert self.posted(AC.FEE_INCOME) == a.fees
        assert self.posted(AC.BANK_SETTLEMENT) == a.bank
        for borrower in (BUYER2, FARMER, POOR_FARMER, COOP):
            loans = [loan for loan in a.loans.values() if loan.borrower == borrower]
            assert self.posted(AC.LOANS_RECEIVABLE, FINANCIER, borrower) == sum(x.principal for x in loans)
            assert self.posted(AC.INTEREST_RECEIVABLE, FINANCIER, borrower) == sum(x.due for x in loans)
        settled = Counter(e.trade_id for e in self.x.of(TradeSettled))
        assert all(n == 1 for n in settled.values()), "a trade settled twice"
        assert set(settled) == a.settled
        states = {tid: t.state.name for tid, t in c.trades.items()}
        assert states == {tid: t.state for tid, t in a.trades.items()}

    def assert_sums_to_zero(self) -> None:
        posted = pending = 0
        for acc in self.x.clearing.ledger.accounts():
            posted += acc.debits_posted_fen - acc.credits_posted_fen
            pending += acc.debits_pending_fen - acc.credits_pending_fen
        assert posted == 0 and pending == 0

    def account(self, code: int, owner: int = 0, user_data: int = 0) -> Account | None:
        account_id = int(code) if owner == 0 else self.x.clearing.accounts.get((code, owner, user_data))
        return None if account_id is None else self.x.clearing.ledger.account(account_id)

    def posted(self, code: int, owner: int = 0, user_data: int = 0) -> int:
        acc = self.account(code, owner, user_data)
        if acc is None:
            return 0
        balance = acc.credits_posted_fen - acc.debits_posted_fen
        return -balance if CHART[code].normal_balance == "debit" else balance

    def pending(self, code: int, owner: int, user_data: int = 0) -> int:
        acc = self.account(code, owner, user_data)
        return 0 if acc is None else acc.debits_pending_fen

    @invariant()
    def snapshot_restores_the_same_state(self) -> None:
        restored = Clearing.restore(self.x.clearing.snapshot())
        assert restored.state_hash() == self.x.clearing.state_hash()
        self.steps += 1
        if self.steps % 7 == 0:  # a core restored from its snapshot takes over: it must behave the same
            self.x.restore_from_snapshot()

    def teardown(self) -> None:
        """Replay equals live: every command again, into a fresh world, gives the same state hashes."""
        replay = world(HOGS)
        for ts_ns, command in self.log:
            replay.ts_ns = ts_ns
            replay.apply(command)
        assert replay.core.state_hash() == self.x.core.state_hash()
        assert replay.clearing.state_hash() == self.x.clearing.state_hash()
        assert replay.events == self.x.events


SettlementMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_settlement_machine = SettlementMachine.TestCase


@pytest.mark.soak
def test_settlement_machine_soak() -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(SettlementMachine, settings=settings(
        max_examples=1000, stateful_step_count=100, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
