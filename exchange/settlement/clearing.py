"""Clearing: every money flow from a buyer's bid to a farmer's bank account, on the double-entry ledger.

``Clearing`` is the core's settlement stage. Its state (state.py: the ``Ledger``, the participants
registry, buy-order holds, trade obligations, deliveries, disputes, credit lines, advances, payouts and
their references) is changed only by the flows' modules, which it dispatches the core's hooks, events
and commands to; it keeps the memory and persistence of the whole. It is pure, synchronous and
deterministic like the core that owns it: time is the ``ts_ns`` of the command being applied.

Where each flow lives (all modules of ``exchange.settlement``)
-------------------------------------------------------------
``state``: the records, derived lookups, ledger plumbing and ``Chain``, shared by every flow;
``participants``: the registry, verification, cooperative members, consent; ``funds`` (flow 1):
deposits and withdrawals; ``holds`` (flows 2-3): holds, escrow, fills; ``delivery`` (flow 4):
weigh-ins, disputes, rejections; ``settling`` (flow 5): the settlement waterfall and fees;
``payouts`` (flow 6): runs, bank files, confirmations; ``financing`` (flow 7): credit lines, advances,
loans, interest, repayments, write-offs. The records are ``model``'s, every rounding rule ``rules``'s.

Hooks the core calls (see ``Clearing`` for signatures)
------------------------------------------------------
``check_buy`` before accepting a buy and ``check_sell`` before a sell (a seller must be a registered
farmer or cooperative); ``check_amend_buy`` before an amendment that could raise the hold;
``on_events`` exactly once at the end of every command (it reads ``InstrumentListed``,
``LotRegistered``, ``OrderAccepted`` — which places a buy's hold unless ``on_buy_accepted`` already
did — ``Trade``, ``OrderCancelled``, ``OrderExpired``, ``OrderAmended``, appends its own events and
queues the command's ledger rows); ``handlers()`` for the settlement commands; ``on_clock`` on every
``ClockTick``, after ``on_events``; ``snapshot``/``restore``/``state_hash``; ``command_rows`` /
``take_command_rows`` for the rows the sequencer writes in the batch transaction (pgstore.LedgerWriter).

Money flows (accounts: the chart in ledger.py; rounding: rules.py)
------------------------------------------------------------------
1. Deposit: BANK -> BUYER_CASH | FINANCIER_FUNDS | POVERTY_SUBSIDY_FUND, once per bank reference.
   Withdrawal: pending cash -> BANK, posted on the bank's confirmation, voided on failure. There is
   no timeout: money that may have left the bank is only ever resolved by a confirmation.
2. Hold: a buy holds ``hold_fen`` (pending cash -> ESCROW), against cash when it covers the hold,
   else against the first credit line (by financier id) of a financier the buyer consents to at that
   moment that does; never split. Cancel and expiry void the rest.
3. Trade: the fill posts heads x hold-per-head at the *trade* price into ESCROW (the trade's
   obligation) and re-holds the unfilled rest at the limit, in one linked chain; a fill below the
   limit thereby returns the difference.
4. Weigh-in: on an instrument whose ``quarantine_region`` checks certificates, the weigh-in's
   certificate must have the region's shape (``INVALID_QUARANTINE_CERT``, also at lot registration)
   and be the lot's (``QUARANTINE_CERT_MISMATCH``). It counts the heads delivered, their live weight,
   and the heads dead on arrival or refused at the scale, which are paid nothing: their part of the
   obligation (obligation / heads traded each, ``rules.payable_cap_fen``) is never paid: it returns
   to the buyer. Unfasted pigs lose the instrument's ``shrink_bps`` of their live weight before grading
   and pricing (``rules.shrink_g``). ``delivery_terms`` fixes the amount; ESCROW -> SELLER_RECEIVABLE
   (amount) and ESCROW -> the buyer's source (the rest). The amount stays in the receivable, held in
   trust, through the dispute window (``dispute_window_ns`` of the instrument after the weigh-in).
   Either party may dispute within the window; the trade then waits for an operator. A buyer's
   dispute can only lower the amount (the difference returns to the buyer). A seller's dispute (the
   scale under-read) holds ``rules.dispute_raise_limit_fen`` of the amount (5 %) from the trade's own
   source, the buyer's cash or the credit line that funded it (while the buyer consents), as a pending
   transfer source -> SELLER_RECEIVABLE; what the source lacks is not held and the dispute opens all
   the same, with what could be held (possibly nothing: then it can only lower). Its resolution may
   lower the amount (the hold voided) or raise it by at most what was held (that much posted, the rest
   released); the resolution settles the trade, a raise of a credit-funded trade becoming loan
   principal with the rest of the amount. A buyer may reject an OUT_OF_GRADE delivery within the
   window (all back, a seller's dispute hold voided).
5. Settlement (first clock tick at or after the window's end; trades in (deadline, trade id) order):
   fee: SELLER_RECEIVABLE -> FEE_INCOME, or for a verified poor household POVERTY_SUBSIDY_FUND ->
   FEE_INCOME (as far as the fund reaches; the rest is forgone, never charged to the farmer); then the
   seller's advances, the trade's own first, then by loan id, interest before principal:
   SELLER_RECEIVABLE -> FINANCIER_FUNDS (a poor household's interest is paid by the subsidy fund);
   the rest -> FARMER_PAYABLE; a cooperative's payable is split to its members (rules.py). A
   cooperative is the seller: it pays the fee and repays its own advances before the split, except
   the part of the fee on its verified poor members' shares, which the subsidy fund pays as for a poor
   household (as far as it reaches, the rest forgone) and which is added to those members' parts
   (their gross share); a poor member's share is also paid first at payout. A credit-funded
   trade's amount becomes the buyer's loan principal now (the financier paid the seller).
6. Payouts: a run creates one PAYOUT instruction per payee with money payable and a verified bank
   account, poor households first (SAME_DAY), then by participant id, each a pending transfer
   FARMER_PAYABLE -> BANK: PENDING -> SENT -> CONFIRMED (posted), or FAILED -> retried (PENDING,
   attempt + 1) or RETURNED (voided: back on the payable, with its trade sources).
7. Financing: credit lines earmark financier funds (FINANCIER_FUNDS -> BUYER_CREDIT_LINE); advances
   pay FINANCIER_FUNDS -> FARMER_PAYABLE at once; principal is tracked as LOANS_RECEIVABLE against
   LOANS_FUNDED; interest accrues one day for each midnight (CST) a loan is outstanding across, on the
   principal at that midnight, on the first clock tick after it (and before any change of the loan's
   principal), as INTEREST_RECEIVABLE -> INTEREST_INCOME: the financier's income, earned as it accrues.
   Collecting interest moves the cash payer -> FINANCIER_FUNDS and closes the receivable against
   INTEREST_COLLECTED (INTEREST_COLLECTED -> INTEREST_RECEIVABLE), never reversing the income, so
   INTEREST_INCOME = INTEREST_RECEIVABLE + INTEREST_COLLECTED (less what was written off).
   ``RepayLoan`` repays interest first, by loan id: credit-line loans from the buyer's cash, advances
   from the seller's payable;
   once per ``repayment_ref`` of the borrower when it names one (a retry gets the same answer).
   Credit lines do not revolve: repaid principal returns to the financier's funds, to grant again.
   ``WriteOffLoan``: the financier gives up a loan's principal and interest due (accrued through
   today); the claims close against their contras (interest against INTEREST_INCOME: income that will
   never be received is reversed) and the loan stops accruing.
   Advance, credit line and every new hold on a line need the borrower's consent to that financier
   (SetConsent); a financier always sees its own lines and loans and the trades they financed,
   consent lets it see the rest of the borrower's settlement (views.py).

Memory: only what is open
-------------------------
The clearing holds participants, accounts, holds, unsettled trades, open loans, credit lines, payables,
payouts not yet final, and, for idempotency, final records and their references inside the retention
window. A record that becomes final is queued (``_final_at``): a trade settled or rejected, a payout
confirmed or returned, a withdrawal paid or failed, and at once a deposit, a repayment, a payout run,
a bank file sent and a bank file imported. ``forget(before_ns)``, called by the core on every clock
tick with the tick's time less its window (``ClockTick.retention_ns``, default 24 h), drops what was
queued before that time, oldest first, then has the ledger forget every transfer that is final by the
tick (ledger.py, "Memory"): the clearing names no transfer twice (it numbers them from its counter) and
recognises a retried command by its reference and the records above, never by a transfer, so a final
transfer in memory would serve nothing; ``ledger_transfers`` has it. Inside the window a retried
reference gets the original answer (``DUPLICATE_REFERENCE`` if it differs); after it:

* a settled trade is kept while money from it is still payable or in a payout not yet final (how long
  a payee has waited is read from it); then, like the others,
* a trade, payout, run, bank file or import is unknown to the clearing (UNKNOWN_TRADE,
  UNKNOWN_REFERENCE). The records the API shows (trades, payouts, withdrawals, deposits, bank files)
  are kept for ``take_archived`` when forgotten: the sequencer's writer (pgstore.LedgerWriter) writes
  them to ``settlement_history`` (migration 0014) in the forgetting tick's transaction, and the API
  reads them from there;
* a deposit's bank reference, a withdrawal reference and a repayment reference must never take
  effect twice: each is written to ``settlement_refs`` (migration 0014) in the transaction of the
  batch that used it (pgstore.LedgerWriter), whose primary key refuses a second use for ever, and the
  gateway answers a reference it finds there with 409 ``reference_expired`` before submitting. Inside
  the window the clearing itself recognises it (the sequencer commits long before the window ends);
* a payout run reference, a bank file reference or an import reference is free again (another run
  pays only what is payable; a file or import lists payouts by id and attempt, which a final payout
  refuses); a bank file's SHA-256 leaves with its file, for ``settlement_history`` (``FILE_DIGEST``:
  the API serves the stored bytes by it);
* a registration reference (final at once) is known to the gateway for ever from ``settlement_refs``
  (kind 5, migration 0021, written with the registration): it answers 409 ``registration_expired``.
* an advance loan repaid in full or written off (``LOAN``; it never lends again) is queued when it
  closes and forgotten once its trade is too (a trade forgotten first queues its closed advance a window
  later, so the lender's views read it meanwhile): archived to ``settlement_history`` (kind 11), from
  which the API merges it into financiers' views and ``GET /v1/loans``, finds a forgotten trade's
  lender, and answers a write-off naming it (409 ``loan_closed``, as the clearing did). A credit line's
  loan stays with its line: the line's next draw opens it again.
* the loan accounts of a financier and a borrower (principal, its contra, interest receivable) are
  empty once no loan between them is open: the command that closes the last one parks them in the
  ledger (``park_loan_accounts``; ledger.py, "Memory": still accounts, out of the transfers' lookups,
  one small array each in snapshots) and the next loan between them unparks them (``_account_id``).
  Without this, every farmer who ever borrowed kept two full accounts in memory and snapshots. A parked
  account's key (``accounts``) is left out of snapshots too: ``restore`` derives it from the ledger's
  parked record (its kind, owner and counterparty), about 12 bytes an account.

Compiled (mypyc, ``setup.py``: this module, state.py and every flow's): the records it keeps
(``model.py``), the events and the commands are msgspec structs defined in plain modules, except open
holds, which every fill, cancel and expiry reads and moves: native ``state.HeldOrder`` records (snapshots
list them as ``model.Hold``); the clearing dispatches the core's events by exact type and keeps derived
lookups that save recomputing (``_payout_trade_ids``). A msgspec field read from compiled code is a
generic attribute lookup: on a hot path, read a field once into a local, or read the whole record or
event once as a tuple (``msgspec.structs.astuple``; the field orders it relies on are checked at import).
An int typed ``int`` is unboxed, and boxed anew (an allocation above 256) into every struct, dict key,
list or tuple it goes into: ids, amounts and times that only pass through are typed ``Boxed`` (Any), so
they stay the objects they came as (the core's ``ts_ns`` included), and a new sum is boxed once.

Authorisation: "operator" commands come from a registered operator or from participant 0 (the
system); other commands name who may send them in their docstring. Every rejection is a ``Rejected``
event with ``seq`` 0 and the command's reference in ``client_order_id``; a rejected command changes
nothing. A transfer the clearing computed that the ledger refuses is a bug: ``ClearingInvariantError``.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

import msgspec

from exchange.commands import (
    BankConfirmation,
    ConfirmDeposit,
    ConfirmWithdrawal,
    GrantAdvance,
    GrantCreditLine,
    ImportBankConfirmations,
    MarkPayoutsSent,
    OpenDispute,
    RecordWeighIn,
    ReduceCreditLine,
    RegisterParticipant,
    RejectDelivery,
    RepayLoan,
    RequestWithdrawal,
    ResolveDispute,
    RetryPayout,
    ReturnPayout,
    RunPayouts,
    SetConsent,
    SetCooperativeMembers,
    SetFeeSchedule,
    SetFinancingPolicy,
    UpdateParticipant,
    VerifyBankAccount,
    VerifyPoorHousehold,
    WriteOffLoan,
)
from exchange.domain import InstrumentSpec
from exchange.events import LoanKind, PayoutState
from exchange.settlement import delivery, financing, funds, holds, participants, payouts, rules, settling
from exchange.settlement.ledger import NO_ROWS, Account, Ledger, Posting
from exchange.settlement.model import (
    AccountKey,
    ClearingSnapshot,
    FinalKind,
    TradeRecord,
    TradeState,
    WithdrawalState,
)
from exchange.settlement.packing import pack_final, pack_payouts, unpack_final, unpack_payouts
from exchange.settlement.state import (
    _ARCHIVED_KINDS,
    _DELIVERED,
    _ENCODER,
    _FINAL_PAYOUT,
    _FINAL_TRADE,
    _FROM_ADVANCE,
    _INSTRUMENT_LISTED,
    _LOT_REGISTERED,
    _ORDER_ACCEPTED,
    _ORDER_AMENDED,
    _ORDER_CANCELLED,
    _ORDER_EXPIRED,
    _P_CONFIRMED,
    _TRADE,
    HOUSE,
    MAX_FEE_BPS,
    SYSTEM_ID,
    Boxed,
    ClearingInvariantError,
    ClearingState,
    HeldOrder,
    R,
)

# the names other modules import from here (HOUSE, MAX_FEE_BPS, SYSTEM_ID: defined with the state, state.py)
__all__ = ["HOUSE", "MAX_FEE_BPS", "SYSTEM_ID", "Clearing", "ClearingInvariantError"]

SNAPSHOT_VERSION: Final = 1
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(ClearingSnapshot)
# ClearingSnapshot's fields through bank_imports; the optional ones after them are left out when empty
_SNAPSHOT_REQUIRED_FIELDS: Final = ClearingSnapshot.__struct_fields__.index("bank_imports") + 1

Handler = Callable[[Any, list], None]
_FINAL_SENT_FILE: Final = int(FinalKind.SENT_FILE)
_FILE_DIGEST: Final = int(FinalKind.FILE_DIGEST)
_FINAL_LOAN: Final = int(FinalKind.LOAN)


class Clearing(ClearingState):
    """The core's settlement stage: its hooks and the settlement commands' handlers, each handed to the
    flow that owns it (the module docstring lists them); memory and persistence of the whole state."""

    def __init__(self) -> None:
        super().__init__()
        # every handler is a flow's function of this state: ``handler(command, events)``
        self._command_handlers: dict[type, Handler] = {
            RegisterParticipant: partial(participants.register_participant, self),
            UpdateParticipant: partial(participants.update_participant, self),
            VerifyBankAccount: partial(participants.verify_bank_account, self),
            VerifyPoorHousehold: partial(participants.verify_poor_household, self),
            SetCooperativeMembers: partial(participants.set_cooperative_members, self),
            SetConsent: partial(participants.set_consent, self),
            ConfirmDeposit: partial(funds.confirm_deposit, self),
            RequestWithdrawal: partial(funds.request_withdrawal, self),
            ConfirmWithdrawal: partial(funds.confirm_withdrawal, self),
            RecordWeighIn: partial(delivery.record_weigh_in, self),
            OpenDispute: partial(delivery.open_dispute, self),
            ResolveDispute: partial(delivery.resolve_dispute, self),
            RejectDelivery: partial(delivery.reject_delivery, self),
            GrantCreditLine: partial(financing.grant_credit_line, self),
            ReduceCreditLine: partial(financing.reduce_credit_line, self),
            GrantAdvance: partial(financing.grant_advance, self),
            RepayLoan: partial(financing.repay_loan, self),
            WriteOffLoan: partial(financing.write_off_loan, self),
            RunPayouts: partial(payouts.run_payouts, self),
            MarkPayoutsSent: partial(payouts.mark_payouts_sent, self),
            ImportBankConfirmations: partial(payouts.import_bank_confirmations, self),
            RetryPayout: partial(payouts.retry_payout, self),
            ReturnPayout: partial(payouts.return_payout, self),
            SetFeeSchedule: partial(settling.set_fee_schedule, self),
            SetFinancingPolicy: partial(financing.set_financing_policy, self),
        }
        # the payouts a snapshot lists whole (``ClearingSnapshot.payouts``): those restored from a snapshot
        # that listed them so (an earlier version's), every other is packed (packing.py). Ids are never
        # reused, so a forgotten payout's id may stay.
        self._listed_payouts: set[int] = set()
        # likewise the final queue: its entries before this index (restored from a snapshot that listed them,
        # ClearingSnapshot.final) are listed, the others packed (packing.py)
        self._listed_final_end = 0

    # ------------------------------------------------------------------------------ hooks of the core

    def check_buy(self, participant_id: int, spec: InstrumentSpec, limit_price_fen: int, heads: int) -> R | None:
        """Why a buy of ``heads`` at ``limit_price_fen`` cannot be accepted, or None (holds.check_buy)."""
        return holds.check_buy(self, participant_id, spec, limit_price_fen, heads)

    def check_sell(self, participant_id: int) -> R | None:
        """Why a sell cannot be accepted, or None (holds.check_sell)."""
        return holds.check_sell(self, participant_id)

    def on_buy_accepted(
        self, order_id: int, participant_id: int, spec: InstrumentSpec, limit_price_fen: int, heads: int, ts_ns: int
    ) -> None:
        """Place the hold of an accepted buy (holds.on_buy_accepted)."""
        holds.on_buy_accepted(self, order_id, participant_id, spec, limit_price_fen, heads, ts_ns)

    def check_amend_buy(self, order_id: int, new_price_fen: int, new_remaining_heads: int) -> R | None:
        """Why amending a buy cannot be covered, or None (holds.check_amend_buy)."""
        return holds.check_amend_buy(self, order_id, new_price_fen, new_remaining_heads)

    def check_bid(
        self, participant_id: int, spec: InstrumentSpec, price_fen: int, heads: int, hold_id: int
    ) -> R | None:
        """Why a lot-auction bid cannot be held, or None (holds.check_bid)."""
        return holds.check_bid(self, participant_id, spec, price_fen, heads, hold_id)

    def hold_bid(
        self, hold_id: int, participant_id: int, spec: InstrumentSpec, price_fen: int, heads: int, ts_ns: int
    ) -> None:
        """(Re)place a bidder's hold (holds.hold_bid)."""
        holds.hold_bid(self, hold_id, participant_id, spec, price_fen, heads, ts_ns)

    def release_bid(self, hold_id: int, ts_ns: int) -> None:
        """Void a bidder's hold (holds.release_bid)."""
        holds.release_bid(self, hold_id, ts_ns)

    def on_events(self, events: list, ts_ns: Boxed) -> None:
        """Follow one command's events; appends the clearing's own events to ``events``. The core calls
        this exactly once at the end of every command: it also closes the command's ledger rows."""
        # No copy of the list: the events the handlers append are the clearing's own, none of which has
        # a handler, so visiting them at the end of the loop changes nothing (and costs less than a copy
        # of every command's events). Dispatch by exact type: compiled, a direct call (a bound method
        # taken from a dict would be a generic Python call).
        for event in events:
            kind = type(event)  # compiled, Py_TYPE: ``event.__class__`` would be a generic attribute lookup
            if kind is _TRADE:
                holds.on_trade(self, event, ts_ns, events)
            elif kind is _ORDER_ACCEPTED:
                holds.on_accepted(self, event, ts_ns, events)
            elif kind is _ORDER_CANCELLED or kind is _ORDER_EXPIRED:
                holds.on_order_gone(self, event, ts_ns, events)
            elif kind is _ORDER_AMENDED:
                holds.on_amended(self, event, ts_ns, events)
            elif kind is _LOT_REGISTERED:
                holds.on_lot(self, event, ts_ns, events)
            elif kind is _INSTRUMENT_LISTED:
                holds.on_listed(self, event, ts_ns, events)
        self._end_command_rows(tick=False)
        if self.closed_loan_pairs:  # a repayment, a write-off or a settlement closed loans: park their accounts
            self.park_loan_accounts()

    def handlers(self) -> dict[type, Handler]:
        """The settlement commands' handlers: ``handler(command, events)``."""
        return dict(self._command_handlers)

    def on_clock(self, ts_ns: Boxed, events: list) -> None:
        """A clock tick: accrue a day's interest if a midnight passed, then settle every trade whose
        dispute window has closed."""
        day = rules.cst_day(ts_ns)
        if day > self.counters.last_accrual_day:
            self.counters.last_accrual_day = day
            for loan in list(self.loans.values()):
                if loan.is_open:
                    financing.bring_interest_up_to(self, loan, day, ts_ns, events, 0)
        # every due (deadline, trade id) in order: the smaller head of the two sorted queues each time
        # both queues as objects (Any): compiled, their (deadline, trade id) tuples are compared and
        # unpacked as they are, with no unboxing into C tuples and boxing into new ones
        deadlines: Any = self._deadlines
        late: Any = self._late_deadlines
        trades = self.trades
        while True:
            if deadlines and deadlines[0][0] <= ts_ns:
                _, trade_id = heapq.heappop(late) if late and late[0] < deadlines[0] else deadlines.popleft()
            elif late and late[0][0] <= ts_ns:
                _, trade_id = heapq.heappop(late)
            else:
                break
            trade = trades.get(trade_id)
            if trade is not None and trade.state == _DELIVERED:  # disputed, rejected, settled (or gone): stale
                settling.settle(self, trade, ts_ns, events)
        self._end_command_rows(tick=True)
        if self.closed_loan_pairs:  # the tick's settlements and subsidised interest closed loans
            self.park_loan_accounts()

    # ------------------------------------------------------------------------------------- queries

    def advance_limit_fen(self, trade: TradeRecord) -> int:
        """The largest advance a financier may grant on this trade (financing.advance_limit_fen)."""
        return financing.advance_limit_fen(self, trade)

    def borrower_owes_fen(self, borrower_id: int, financier_id: int, day: int) -> int:
        """What the borrower owes this financier on CST ``day`` (financing.borrower_owes_fen)."""
        return financing.borrower_owes_fen(self, borrower_id, financier_id, day)

    def confirmation_problems(self, rows: Sequence[BankConfirmation]) -> list[tuple[int, str]]:
        """Why rows of a confirmation file cannot be applied now (payouts.confirmation_problems)."""
        return payouts.confirmation_problems(self, rows)

    # ------------------------------------------------------------------------------------- memory

    def lot_in_use(self, lot_id: int) -> bool:
        """Whether a trade of this lot is still open (its record is needed: ``advance_limit_fen``)."""
        return lot_id in self._open_trades_by_lot

    def forget_lot(self, lot_id: int) -> None:
        """The core forgot this lot (sold out, final for the window, no open trade): drop its record."""
        self.lots.pop(lot_id, None)

    def forget(self, before_ns: int, now_ns: Boxed = 0) -> None:
        """Drop every record queued final before ``before_ns``, then the ledger's final transfers. The
        records the API reads history from (trades, payouts, withdrawals, deposits, bank files sent) are
        kept for ``take_archived(now_ns)``: the tick at ``now_ns`` writes them to settlement_history."""
        if self._unqueued_final:
            self._queue_unqueued_final()
        final = self.final
        head = self._final_head
        gone: list[tuple[int, Any]] = []
        awaiting: set[int] | None = None  # trades whose proceeds still wait for their payee
        while head < len(final) and final[head][0] < before_ns:
            _, kind, key = final[head]
            head += 1
            if kind == _FINAL_TRADE:
                if awaiting is None:
                    awaiting = self._trades_awaiting_payout()
                if key in awaiting:  # its money is still payable: looked at again a window later
                    final.append((now_ns if now_ns > before_ns else before_ns, kind, key))
                    continue
                record: Any = self.trades.pop(key, None)
                if record is not None and record.advance_loan_id:
                    self._advance_outlived(record.advance_loan_id, now_ns if now_ns > before_ns else before_ns)
            elif kind == _FINAL_PAYOUT:
                record = self.payouts.pop(key, None)
                self._payout_trade_ids.pop(key, None)
            elif kind == _FINAL_LOAN:
                loan = self.loans.get(key)
                if loan is not None and loan.trade_id in self.trades:  # queued again when its trade is forgotten
                    continue
                record = self._forget_loan(key)
            else:
                record = self._records_of(kind).pop(key, None)
            if record is not None and kind in _ARCHIVED_KINDS:
                gone.append((kind, record))
                if kind == _FINAL_SENT_FILE and key in self.file_digests:  # the API serves the file by it
                    gone.append((_FILE_DIGEST, (key, self.file_digests.pop(key))))
        if head > 1024 and 2 * head > len(final):  # drop the forgotten front now and then (amortised O(1))
            del final[:head]
            self._listed_final_end = max(0, self._listed_final_end - head)
            head = 0
        self._final_head = head
        if gone:
            self.archived.append((now_ns, gone))
        # every transfer final by this tick, not only those a window old: no retry ever names one ("Memory")
        self.ledger.forget(now_ns + 1 if now_ns >= before_ns else before_ns)

    def _advance_outlived(self, loan_id: int, at_ns: Boxed) -> None:
        """A trade was forgotten: its advance, if closed, is final from ``at_ns`` (one window more, so
        its lender's views read it while the trade leaves). An open one is queued when it closes."""
        loan = self.loans.get(loan_id)
        if loan is not None and not loan.is_open:
            self.final.append((at_ns, _FINAL_LOAN, loan_id))

    def _forget_loan(self, loan_id: int) -> Any:
        """Drop a closed advance (and its place in the borrower's index); the record, or None."""
        loan = self.loans.pop(loan_id, None)
        if loan is not None:
            ids = self._loans_by_borrower.get(loan.borrower_id)
            if ids is not None:
                ids.remove(loan_id)
                if not ids:
                    del self._loans_by_borrower[loan.borrower_id]
        return loan

    def _closed_advances(self) -> list[int]:
        """Closed advance loans memory holds whose trade it does not, by id: each is queued final (at its
        closing, financing.loan_closed, or its trade's forgetting, ``_advance_outlived``)."""
        return [k for k in sorted(self.loans) if self.loans[k].kind == LoanKind.ADVANCE
                and not self.loans[k].is_open and self.loans[k].trade_id not in self.trades]

    def _trades_awaiting_payout(self) -> set[int]:
        """Trades a payable or a payout not yet final still draws on (their settlement time is how long
        a payee has waited: kept until the money left)."""
        awaiting: set[int] = set()
        for sources in self.payables.values():
            for source in sources:
                if source.kind != _FROM_ADVANCE:  # a trade's proceeds or a member's share of them
                    awaiting.add(source.ref_id)
        for p in self.payouts.values():
            if p.state != _P_CONFIRMED and p.state != PayoutState.RETURNED:
                for source in p.sources:
                    if source.kind != _FROM_ADVANCE:
                        awaiting.add(source.ref_id)
        return awaiting

    def take_archived(self, ts_ns: int) -> list[tuple[int, Any]]:
        """What the ticks at ``ts_ns`` forgot that goes to history ([] if nothing); older entries (ticks
        replayed by recovery: in the database already) are dropped. Ticks stamped alike are taken
        together (a copy written twice is harmless: history rows are unique by the tick's seq)."""
        archived = self.archived
        while archived and archived[0][0] < ts_ns:
            archived.popleft()
        taken: list[tuple[int, Any]] = []
        while archived and archived[0][0] == ts_ns:
            taken.extend(archived.popleft()[1])
        return taken

    def _records_of(self, kind: int) -> dict:
        """The dict a final record of this kind is held in (trades and payouts: see forget)."""
        if kind == FinalKind.DEPOSIT:
            return self.deposits
        if kind == FinalKind.WITHDRAWAL:
            return self.withdrawals
        if kind == FinalKind.REPAYMENT:
            return self.repayments
        if kind == FinalKind.RUN:
            return self.runs
        if kind == FinalKind.SENT_FILE:
            return self.sent_files
        if kind == FinalKind.BANK_IMPORT:
            return self.bank_imports
        if kind == FinalKind.REGISTRATION:
            return self.registrations
        raise ClearingInvariantError(f"no final records of kind {kind}")

    def _queue_unqueued_final(self) -> None:
        """Queue the final records a snapshot of an earlier version held (final from now on)."""
        self._unqueued_final = False
        now = self.ledger.now_ns
        held = {(kind, key) for _, kind, key in self.final[self._final_head:]}
        final_trades = (TradeState.SETTLED, TradeState.REJECTED)
        keys: list[tuple[int, Any]] = [(_FINAL_TRADE, k) for k in sorted(self.trades)
                                       if self.trades[k].state in final_trades]
        keys += [(_FINAL_PAYOUT, k) for k in sorted(self.payouts)
                 if self.payouts[k].state in (PayoutState.CONFIRMED, PayoutState.RETURNED)]
        keys += [(int(FinalKind.WITHDRAWAL), k) for k in sorted(self.withdrawals)
                 if self.withdrawals[k].state != WithdrawalState.PENDING]
        for of_kind in (FinalKind.DEPOSIT, FinalKind.REPAYMENT, FinalKind.RUN, FinalKind.SENT_FILE,
                        FinalKind.BANK_IMPORT, FinalKind.REGISTRATION):
            keys += [(int(of_kind), k) for k in sorted(self._records_of(of_kind))]
        keys += [(_FINAL_LOAN, k) for k in self._closed_advances()]
        for kind, key in keys:
            if (kind, key) not in held:
                self.final.append((now, kind, key))

    def held_counts(self) -> dict[str, int]:
        """How many records of each kind memory holds (tests and benchmarks count them against what is open)."""
        return {
            "trades": len(self.trades), "payouts": len(self.payouts), "deposits": len(self.deposits),
            "withdrawals": len(self.withdrawals), "repayments": len(self.repayments), "runs": len(self.runs),
            "sent_files": len(self.sent_files), "bank_imports": len(self.bank_imports),
            "registrations": len(self.registrations), "file_digests": len(self.file_digests),
            "loans": len(self.loans),
            "final_queued": len(self.final) - self._final_head, "transfers": self.ledger.held_counts()[0],
            "parked_accounts": len(self.ledger.parked),
        }

    # ------------------------------------------------------------------------------- persistence
    # Ledger rows leave the clearing per command: ``on_events`` (and ``on_clock`` for a tick) moves
    # Ledger rows leave the clearing per command: each command's rows (new accounts, postings) stay in the
    # ledger's lists, and ``on_events`` (``on_clock`` for a tick) queues where they end (``_posting_ends``,
    # ``_account_ends``: one entry per command in the order applied). The sequencer's ``extra_writes`` takes a
    # batch's entries with ``take_command_rows`` (pgstore.LedgerWriter); tools and tests may use ``drain_*``
    # instead. The queue is not state: it is not in the snapshot, and rows of commands replayed during
    # recovery (durable already) must be dropped (``discard_command_rows``; LedgerWriter aligns by seq).

    def _end_command_rows(self, *, tick: bool) -> None:
        """Queue where the command just applied ends in the ledger's rows (they stay there until taken). A
        tick's own rows (``tick``) belong to the tick, whose ``on_events`` already queued its entry: it ends
        later."""
        ledger = self.ledger
        ends, account_ends = self._posting_ends, self._account_ends
        if tick and ends:
            ends[-1] = ledger.posting_count()
            account_ends[-1] = ledger.new_account_count()
        else:
            ends.append(ledger.posting_count())
            account_ends.append(ledger.new_account_count())
        ledger.close_rows()

    @property
    def command_rows(self) -> list[int]:
        """One entry per command whose rows are queued, oldest first (its postings' end in the ledger's
        queue): ``len`` is how many commands' rows ``take_command_rows`` can take."""
        return self._posting_ends

    def take_command_rows(self, n: int) -> list[tuple[Sequence[Account], Sequence[Posting]]]:
        """The oldest ``n`` commands' (new accounts, postings), removed from the queue: ``NO_ROWS`` for a
        command without rows, ``()`` for no new account."""
        ends, account_ends = self._posting_ends, self._account_ends
        if n > len(ends):
            raise ClearingInvariantError(f"{n} commands' ledger rows asked for, {len(ends)} queued")
        if n <= 0:
            return []
        last_posting, last_account = ends[n - 1], account_ends[n - 1]
        postings, accounts = self.ledger.take_rows(last_posting, last_account)
        taken: list[Any] = []  # (typed Any: NO_ROWS is typed as a tuple of any length, ledger_records.py)
        posting_start = account_start = 0
        for k in range(n):
            posting_end, account_end = ends[k], account_ends[k]
            if account_end > account_start:
                taken.append((accounts[account_start:account_end], postings[posting_start:posting_end]))
            elif posting_end > posting_start:
                taken.append(((), postings[posting_start:posting_end]))
            else:
                taken.append(NO_ROWS)
            posting_start, account_start = posting_end, account_end
        self._posting_ends = [end - last_posting for end in ends[n:]]
        self._account_ends = [end - last_account for end in account_ends[n:]]
        return taken

    def discard_command_rows(self) -> None:
        """Forget queued rows (after a recovery replay: they are in the database already)."""
        self._posting_ends = []
        self._account_ends = []
        self.archived.clear()
        self.ledger.drain_rows()

    def drain_postings(self) -> list[Posting]:
        """Every posting not yet taken, in order (for callers that do not write per command)."""
        postings = self.ledger.drain_postings()
        self._posting_ends = [0] * len(self._posting_ends)
        self._drop_empty_front()
        return postings

    def drain_new_accounts(self) -> list[Account]:
        """Every new account not yet taken, in order (see ``drain_postings``)."""
        accounts = self.ledger.drain_new_accounts()
        self._account_ends = [0] * len(self._account_ends)
        self._drop_empty_front()
        return accounts

    def _drop_empty_front(self) -> None:
        """Drop the entries at the front whose rows were all drained, so the queue still starts at the first
        command with rows left (ends never decrease: an entry is empty while both its ends are 0)."""
        ends, account_ends = self._posting_ends, self._account_ends
        first = 0
        while first < len(ends) and not ends[first] and not account_ends[first]:
            first += 1
        if first:
            del ends[:first]
            del account_ends[:first]

    def snapshot(self) -> bytes:
        """The whole state, canonically ordered (everything sorted by its key)."""
        snap = self._snapshot_struct()
        fields = msgspec.structs.astuple(snap)
        # An array-like struct encodes as the tuple of its fields; leaving out the empty optional fields at
        # its end keeps a state without them at exactly the bytes (and hash) earlier versions wrote.
        end = len(fields)
        while end > _SNAPSHOT_REQUIRED_FIELDS and not fields[end - 1]:
            end -= 1
        return _ENCODER.encode(fields[:end])

    def state_hash(self) -> str:
        return hashlib.blake2b(self.snapshot(), digest_size=32).hexdigest()

    @classmethod
    def restore(cls, data: bytes) -> Clearing:
        snap = _SNAPSHOT_DECODER.decode(data)
        if snap.version != SNAPSHOT_VERSION:
            raise ValueError(f"clearing snapshot version {snap.version} is not {SNAPSHOT_VERSION}")
        c = cls()  # compiled: a native class has no bare __new__; every field is replaced below
        c.ledger = Ledger.restore(snap.ledger)
        c.counters = snap.counters
        # the keys of parked accounts are the ledger's (a snapshot lists those of the others), all by id as
        # listed before; those a snapshot listed (an earlier version's) stay listed until unparked
        parked = c.ledger.parked
        keys = [(k.account_id, (k.code, k.owner_id, k.user_data)) for k in snap.accounts]
        c._listed_parked_keys = {account_id for account_id, _ in keys if account_id in parked}
        keys += [(account_id, (a.code, a.owner_id, a.user_data)) for account_id, a in parked.items()
                 if account_id not in c._listed_parked_keys]  # fmt: skip
        keys.sort()
        c.accounts = {key: account_id for account_id, key in keys}
        c.instruments = {s.symbol: s for s in snap.instruments}
        c.fee_bps = dict(snap.fee_bps)
        c.lots = {lot.lot_id: lot for lot in snap.lots}
        c.participants = {p.participant_id: p for p in snap.participants}
        c.holds = {h.order_id: HeldOrder.of(h, rules.hold_grams(c.instruments[h.instrument])) for h in snap.holds}
        c.trades = {t.trade_id: t for t in snap.trades}
        c.loans = {loan.loan_id: loan for loan in snap.loans}
        c.credit_lines = {(line.buyer_id, line.financier_id): line for line in snap.credit_lines}
        c.payables = dict(snap.payables)
        c.payouts = {p.payout_id: p for p in snap.payouts}
        c.runs = {r.run_ref: r for r in snap.runs}
        c.withdrawals = {(w.owner_id, w.withdrawal_ref): w for w in snap.withdrawals}
        c.deposits = {d.deposit_ref: d for d in snap.deposits}
        c.sent_files = {f.file_ref: f for f in snap.sent_files}
        c.bank_imports = {b.file_ref: b for b in snap.bank_imports}
        c.repayments = {(r.borrower_id, r.repayment_ref): r for r in snap.repayments}
        c.bank_codes = {pid: (bank, branch) for pid, bank, branch in snap.bank_codes}
        c.file_digests = dict(snap.file_digests)
        c.registrations = {r.registration_ref: r for r in snap.registrations}
        # the packed payouts need the participants and bank codes restored above; all by id, as listed before
        c._listed_payouts = set(c.payouts)
        c.payouts.update((p.payout_id, p) for p in unpack_payouts(c, snap.packed_payouts))
        c.payouts = {k: c.payouts[k] for k in sorted(c.payouts)}
        c.final = [(at, kind, tuple(key) if isinstance(key, list) else key) for at, kind, key in snap.final]
        c._listed_final_end = len(c.final)
        c.final += unpack_final(snap.packed_final)
        c._final_head = 0
        # (an earlier version's snapshot queued no registration: queued, with the rest, at the first tick)
        c._unqueued_final = not c.final or (
            bool(snap.registrations) and all(kind != FinalKind.REGISTRATION for _, kind, _ in c.final))
        c._rebuild_indexes()
        # (nor a closed advance: queued at the first tick too)
        queued_loans = {key for _, kind, key in c.final if kind == _FINAL_LOAN}
        c._unqueued_final = c._unqueued_final or any(k not in queued_loans for k in c._closed_advances())
        return c

    def _snapshot_struct(self) -> ClearingSnapshot:
        def by_key(d: dict) -> list:
            return [d[k] for k in sorted(d)]

        listed_end = max(self._final_head, self._listed_final_end)
        parked, listed_parked = self.ledger.parked, self._listed_parked_keys

        return ClearingSnapshot(
            SNAPSHOT_VERSION, self.counters, self.ledger.snapshot(allow_undrained=True),
            sorted((AccountKey(*k, v) for k, v in self.accounts.items() if v not in parked or v in listed_parked),
                   key=lambda a: a.account_id),
            by_key(self.instruments), sorted(self.fee_bps.items()), by_key(self.lots), by_key(self.participants),
            [self.holds[k].record() for k in sorted(self.holds)], by_key(self.trades), by_key(self.loans),
            by_key(self.credit_lines),
            [(k, self.payables[k]) for k in sorted(self.payables) if self.payables[k]],
            [self.payouts[k] for k in sorted(self.payouts) if k in self._listed_payouts],
            by_key(self.runs), by_key(self.withdrawals), by_key(self.deposits), by_key(self.sent_files),
            by_key(self.bank_imports), by_key(self.repayments),
            [(pid, codes[0], codes[1]) for pid, codes in sorted(self.bank_codes.items())],
            sorted(self.file_digests.items()), by_key(self.registrations), self.final[self._final_head:listed_end],
            pack_payouts(self, [self.payouts[k] for k in sorted(self.payouts) if k not in self._listed_payouts]),
            pack_final(self.final[listed_end:]),
        )  # fmt: skip
