"""Settlement over HTTP: money in and out, deliveries and disputes, payouts and bank files, financing,
balances, statements and the daily settlement report (issue 5's API).

Routes (roles in brackets; "party" = the trade's buyer or seller):

- Money in and out: `POST /v1/deposits` and `POST /v1/deposit-imports` (operator; the bank's deposit
  file as CSV), `POST /v1/withdrawals` (a participant, from its own cash or funds),
  `POST /v1/withdrawals/confirmations` (operator), `GET /v1/withdrawals`.
- Deliveries: `POST /v1/trades/{trade_id}/weigh-in` (the seller or an operator: heads delivered and
  their live weight, heads refused or dead on arrival, unfasted, the lot's quarantine certificate),
  `.../dispute` (a party, inside the dispute window; the seller's holds up to 5 % of the amount from the
  buyer, what a raise may cost), `.../rejection` (the buyer, of an out-of-grade delivery),
  `.../resolution` (operator: lowers the amount, or raises it within a seller's dispute hold),
  `GET /v1/trades/{trade_id}/settlement`, `GET /v1/settlement/trades`.
- Payouts (operator): `POST /v1/payout-runs`; `POST /v1/payout-files` exports the bank file of every
  pending payout (format `HOGXPAY1`, `text/csv`, see the README), stores its bytes and SHA-256, then
  marks those payouts sent in one journaled command naming the digest; `GET /v1/payout-files/{file_ref}`
  downloads the stored bytes again; `POST /v1/payout-confirmations` imports the bank's answer (CSV in
  JSON; refused whole, every bad line listed, if any line is bad);
  `POST /v1/payouts/{payout_id}/retry|return`. `GET /v1/payouts` and `GET /v1/payouts/{payout_id}`: a
  payee's own, every payout for an operator.
- Financing: `POST /v1/credit-lines`, `POST /v1/credit-lines/{buyer_id}/reduce`, `POST /v1/advances`
  (financier), `GET /v1/financing/clients[/{participant_id}]` (financier: exposures, loans
  outstanding, repayments and the settlement state of every financed trade, of participants that consent
  to it or owe it: a financier always sees and may reduce its own credit lines and loans, also after
  the borrower withdrew consent), `POST /v1/loans/{loan_id}/write-off` (financier, its own loan),
  `POST /v1/repayments` and `GET /v1/loans` (the borrower).
- Every participant: `GET /v1/balances`, `GET /v1/statements`, `GET /v1/reports/settlement` (JSON)
  and `GET /v1/reports/settlement.csv`.
- Operator settings: `POST /v1/admin/fee-schedule`, `POST /v1/admin/financing-policy` (`GET`: every
  participant, a rule of the market).

(Participant profiles, verification, cooperative members and consent are in `gateway.participants`.)

Every change is one command through the sequencer, answered once it is durable; a rejection becomes
`{"code": <reason>, ...}` with the status of `schemas.REJECT_STATUS` (the one table for the core's
reasons). Reads come from the clearing of the sequencer's core in this process through
`exchange.settlement.views`; the core may already include commands of the batch being committed (a
few milliseconds ahead of the journal), which become durable or, if that commit fails, vanish with
the rebuilt core. Bank payout files are the exception: money leaves on them, so a file is handed out
(also again) only once the command that made it is durable. Statements are read from the ledger rows
in PostgreSQL, which commit with their batch; the daily settlement report from the settlement history
in PostgreSQL (`exchange.history`), once it holds everything the core has applied. Another
participant's trade, payout, account or client is a 404, exactly like a missing one; to a financier, a
participant that neither consents to it nor owes it anything does not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Final, TypeVar

import msgspec
from aiohttp import web

from exchange import history
from exchange.commands import (
    Command,
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
    SetFeeSchedule,
    SetFinancingPolicy,
    WriteOffLoan,
)
from exchange.domain import RejectReason
from exchange.events import Event, PayoutState, Rejected
from exchange.settlement import CHART, AccountCode, Clearing, Entry, PostingSide, TransferCode, pgstore
from exchange.settlement.bankfiles import (
    ConfirmationFile,
    LineProblem,
    Payer,
    bank_file_csv,
    parse_whole_number,
    payout_reference,
    payouts_to_send,
    read_confirmations,
    read_csv_rows,
    sent_pairs,
)
from exchange.settlement.clearing import HOUSE
from exchange.settlement.model import Payout, SentFile, TradeRecord, TradeState, Withdrawal, WithdrawalState
from exchange.settlement.rules import cst_day
from exchange.settlement.views import (
    ALL_SIDES,
    REPORT_COLUMNS,
    BalanceRow,
    FinancierView,
    LoanRow,
    SettlementReportRow,
    TradeSides,
    date_to_day,
    day_to_date,
    financier_portfolio,
    financier_view,
    loan_row,
    participant_balances,
    redact,
    report_csv,
    trade_sides,
    visible_report,
)
from gateway import store
from gateway.auth import ANY_ROLE, BUYERS, FINANCIERS, OPERATORS, SELLERS, Principal, Role
from gateway.errors import ApiError, Code
from gateway.exchange_port import EXCHANGE
from gateway.inputs import Text, refuse_control_characters
from gateway.routes import Call, RouteTable
from gateway.schemas import Id, Limit, Symbol, rejection
from gateway.state import CONFIG

__all__ = ["BORROWERS", "clearing_of", "rejection", "routes", "submit"]

routes = RouteTable()
R = RejectReason
_R = TypeVar("_R")  # a record of the clearing read back from history
_V = TypeVar("_V")
SHA256_HEADER: Final = "X-Hogx-SHA256"  # the hex SHA-256 of a payout file's bytes
BORROWERS: Final = SELLERS | BUYERS  # the roles that trade, consent, borrow and repay
OWNERS: Final = BORROWERS | FINANCIERS  # the roles that hold cash of their own
_NS_PER_MS: Final = 1_000_000
_CSV: Final = "text/csv"
MAX_IMPORT_ROWS: Final = 10_000
_COMMIT_WAIT_S: Final = 10.0  # how long a read waits for the batch it saw to commit before a 503
_COMMIT_POLL_S: Final = 0.002

# -- bounded request scalars ----------------------------------------------------------------------------

AmountFen = Annotated[int, msgspec.Meta(ge=1, le=10**14, description="integer fen, positive")]
AmountOrZeroFen = Annotated[int, msgspec.Meta(ge=0, le=10**14, description="integer fen")]
RateBps = Annotated[int, msgspec.Meta(ge=0, le=10_000, description="yearly interest in basis points")]
Bps = Annotated[int, msgspec.Meta(ge=0, le=10_000, description="basis points (10,000 = 100 %)")]
OwnerId = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1, description="participant id; 0 for the subsidy fund")]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"\A[A-Za-z0-9_.:\-]+\Z",
                                  description="a client-chosen reference: the idempotency key")]
BankRef = Annotated[Text, msgspec.Meta(max_length=64)]
Reason = Annotated[Text, msgspec.Meta(min_length=1, max_length=500)]
# A file travels in one request body, so it can be no longer than the body limit (HOGX_MAX_BODY_BYTES,
# 64 KiB by default); a bigger file is imported in parts (each deposit row is idempotent by itself).
MAX_CSV_CHARS: Final = 64 * 1024  # = GatewayConfig's default max_body_bytes (a test keeps them equal)
CsvText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CSV_CHARS,
                                      description="the file's text (UTF-8), at most the request body limit")]
Date = Annotated[str, msgspec.Meta(pattern=r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}\Z",
                                   description="a calendar day in China Standard Time, YYYY-MM-DD")]
TimeMs = Annotated[int, msgspec.Meta(ge=0, le=9_000_000_000_000, description="milliseconds since the epoch")]
Cursor = Annotated[str, msgspec.Meta(min_length=1, max_length=19, pattern=r"\A[0-9]+\Z")]


class FundsAccountName(StrEnum):
    TRADING_CASH = "trading_cash"  # a trader's cash for bids
    FINANCIER_FUNDS = "financier_funds"  # a financier's money to lend
    POVERTY_SUBSIDY_FUND = "poverty_subsidy_fund"  # the exchange's fund (owner 0)


class WithdrawableAccount(StrEnum):
    TRADING_CASH = "trading_cash"
    FINANCIER_FUNDS = "financier_funds"


FUNDS: Final = {name: FundsAccount[name.name] for name in FundsAccountName}
FUNDS_NAME: Final = {account: FundsAccountName[account.name] for account in FundsAccount}


class TradeStateName(StrEnum):
    OPEN = "OPEN"  # obligation in escrow, waiting for the weigh-in
    DELIVERED = "DELIVERED"  # weighed in; the dispute window is open
    DISPUTED = "DISPUTED"  # waiting for an operator
    SETTLED = "SETTLED"
    REJECTED = "REJECTED"  # the buyer rejected an out-of-grade delivery


class PayoutStateName(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    CONFIRMED = "CONFIRMED"
    FAILED = "FAILED"
    RETURNED = "RETURNED"


class WithdrawalStateName(StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    FAILED = "FAILED"


# -- rejections -----------------------------------------------------------------------------------------





def clearing_of(call: Call) -> Clearing:
    """The live clearing (looked up each time: the sequencer replaces its core when it recovers)."""
    clearing = call.app[EXCHANGE].sequencer.core.clearing
    if clearing is None:
        raise ApiError(503, Code.UNAVAILABLE, "settlement is not enabled on this exchange's journal")
    return clearing


async def refuse_expired_reference(call: Call, kind: int, owner_id: int, ref: str, held: bool) -> None:
    """409 `reference_expired` for a reference the core no longer holds (its retention window has passed)
    that took effect before: a deposit's bank reference, a withdrawal, repayment or client lot reference
    takes effect once, for ever (`settlement_refs`, migration 0014). A reference the core holds is left to
    it: a retry gets the original answer."""
    if held or not ref:
        return
    seq = await pgstore.used_reference(call.pool, kind, owner_id, ref)
    if seq is not None:
        raise ApiError(409, "reference_expired",
                       f"reference {ref!r} was used by journal entry {seq}, beyond the retention window: "
                       "it is not applied again; use a new reference for a new request")


async def submit(call: Call, command: Command) -> list[Event]:
    """Sequence one settlement command; its events once durable, or its rejection raised."""
    result = await call.app[EXCHANGE].submit(command)
    for event in result.events:
        if event.__class__ is Rejected:
            raise rejection(event.reason)
    return result.events


def _ms(ts_ns: int) -> int:
    return ts_ns // _NS_PER_MS


def _masked(bank_account: str) -> str:
    return "****" + bank_account[-4:] if bank_account else ""


def _is_operator(principal: Principal) -> bool:
    return principal.role == Role.OPERATOR


def _csv_response(data: bytes, filename: str) -> web.Response:
    return web.Response(body=data, content_type=_CSV, charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# -- deposits and withdrawals ---------------------------------------------------------------------------


class DepositRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Money that arrived at the bank; `deposit_ref` (the bank's reference) makes it idempotent."""

    deposit_ref: Ref
    owner_id: OwnerId
    account: FundsAccountName
    amount_fen: AmountFen


class DepositView(msgspec.Struct, frozen=True):
    deposit_ref: str
    owner_id: int
    account: FundsAccountName
    amount_fen: int
    transfer_id: int
    time_ms: int


class DepositImportRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The bank's deposit file: header `deposit_ref,owner_id,account,amount_fen`, one deposit a row
    (`account`: trading_cash, financier_funds or poverty_subsidy_fund)."""

    csv: CsvText


class DepositImportRow(msgspec.Struct, frozen=True):
    deposit_ref: str
    code: str  # "ok", or the rejection code of that row


class DepositImportView(msgspec.Struct, frozen=True):
    """Every row is its own idempotent deposit: importing the same file again changes nothing."""

    confirmed: int
    rejected: int
    rows: list[DepositImportRow]


class WithdrawalRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Money back to your verified bank account; held until an operator confirms the bank paid it."""

    withdrawal_ref: Ref
    account: WithdrawableAccount
    amount_fen: AmountFen


class WithdrawalConfirmation(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The bank paid the withdrawal (`ok`), or it failed and the money returns to the owner."""

    owner_id: Id
    withdrawal_ref: Ref
    ok: bool
    bank_ref: BankRef = ""


class WithdrawalView(msgspec.Struct, frozen=True):
    owner_id: int
    withdrawal_ref: str
    account: FundsAccountName
    amount_fen: int
    state: WithdrawalStateName
    bank_ref: str
    requested_ms: int


class WithdrawalQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    state: WithdrawalStateName | None = None
    limit: Limit = 100


class WithdrawalPage(msgspec.Struct, frozen=True):
    """Oldest first (the order an operator works through pending ones)."""

    withdrawals: list[WithdrawalView]


def _deposit_view(clearing: Clearing, ref: str) -> DepositView:
    d = clearing.deposits[ref]
    return DepositView(d.deposit_ref, d.owner_id, FUNDS_NAME[d.account], d.amount_fen, d.transfer_id, _ms(d.ts_ns))


def _withdrawal_view(w: Withdrawal) -> WithdrawalView:
    return WithdrawalView(w.owner_id, w.withdrawal_ref, FUNDS_NAME[w.account], w.amount_fen,
                          WithdrawalStateName[w.state.name], w.bank_ref, _ms(w.ts_ns))


@routes.post("/v1/deposits", roles=OPERATORS, body=DepositRequest, response=DepositView, status=201,
             errors=(404, 409))
async def confirm_deposit(call: Call, body: DepositRequest) -> DepositView:
    """Confirm money that arrived at the bank for a participant (or the subsidy fund, owner 0)."""
    await refuse_expired_reference(call, pgstore.REF_DEPOSIT, 0, body.deposit_ref,
                                   body.deposit_ref in clearing_of(call).deposits)
    await submit(call, ConfirmDeposit(call.principal.participant_id, 0, body.deposit_ref, body.owner_id,
                                      FUNDS[body.account], body.amount_fen))
    return _deposit_view(clearing_of(call), body.deposit_ref)


_DEPOSIT_COLUMNS: Final = ("deposit_ref", "owner_id", "account", "amount_fen")


def parse_deposits_csv(text: str) -> list[DepositRequest]:
    """The rows of a deposit file; `ValueError` names the first bad line (a file is taken whole or not
    at all, never guessed at)."""
    rows = read_csv_rows(text, _DEPOSIT_COLUMNS, MAX_IMPORT_ROWS, _deposit_row)
    if not rows:
        raise ValueError("the file has no deposits")
    return rows


def _deposit_row(line_no: int, fields: list[str]) -> DepositRequest:
    if len(fields) != len(_DEPOSIT_COLUMNS):
        raise ValueError(f"line {line_no}: expected {len(_DEPOSIT_COLUMNS)} fields, got {len(fields)}")
    ref, owner, account, amount = (f.strip() for f in fields)
    # bounded before int(): a thousand-digit number is a bad file, not a conversion to attempt
    owner_id = parse_whole_number(owner, "owner_id", line_no, minimum=0)
    amount_fen = parse_whole_number(amount, "amount_fen", line_no)
    try:
        # the request's own bounds and patterns
        return msgspec.convert({"deposit_ref": ref, "owner_id": owner_id, "account": account,
                                "amount_fen": amount_fen}, DepositRequest)
    except msgspec.ValidationError as exc:
        raise ValueError(f"line {line_no}: {exc}") from None


@routes.post("/v1/deposit-imports", roles=OPERATORS, body=DepositImportRequest, response=DepositImportView)
async def import_deposits(call: Call, body: DepositImportRequest) -> DepositImportView:
    """Confirm every deposit of the bank's deposit file (CSV); each row is idempotent by its reference."""
    try:
        rows = parse_deposits_csv(body.csv)
    except ValueError as exc:
        raise ApiError(422, "invalid_bank_file", str(exc)) from None
    sender = call.principal.participant_id
    commands = [ConfirmDeposit(sender, 0, r.deposit_ref, r.owner_id, FUNDS[r.account], r.amount_fen) for r in rows]
    outcomes = await asyncio.gather(*(_row_outcome(call, c) for c in commands))
    results = [DepositImportRow(c.deposit_ref, code) for c, code in zip(commands, outcomes, strict=True)]
    confirmed = sum(code == "ok" for code in outcomes)
    return DepositImportView(confirmed, len(results) - confirmed, results)


async def _row_outcome(call: Call, command: ConfirmDeposit) -> str:
    try:
        await refuse_expired_reference(call, pgstore.REF_DEPOSIT, 0, command.deposit_ref,
                                       command.deposit_ref in clearing_of(call).deposits)
        await submit(call, command)
    except ApiError as exc:
        if exc.status >= 500:
            raise
        return exc.code
    return "ok"


@routes.post("/v1/withdrawals", roles=OWNERS, body=WithdrawalRequest, response=WithdrawalView, status=201,
             errors=(404, 409))
async def request_withdrawal(call: Call, body: WithdrawalRequest) -> WithdrawalView:
    """Ask for money back to your verified bank account; it is held until the bank confirms."""
    owner = call.principal.participant_id
    await refuse_expired_reference(call, pgstore.REF_WITHDRAWAL, owner, body.withdrawal_ref,
                                   (owner, body.withdrawal_ref) in clearing_of(call).withdrawals)
    await submit(call, RequestWithdrawal(owner, 0, body.withdrawal_ref, FundsAccount[body.account.name],
                                         body.amount_fen))
    return _withdrawal_view(clearing_of(call).withdrawals[(owner, body.withdrawal_ref)])


@routes.post("/v1/withdrawals/confirmations", roles=OPERATORS, body=WithdrawalConfirmation,
             response=WithdrawalView, errors=(404, 409))
async def confirm_withdrawal(call: Call, body: WithdrawalConfirmation) -> WithdrawalView:
    """Record the bank's answer to a withdrawal: paid, or failed (the money returns)."""
    await submit(call, ConfirmWithdrawal(call.principal.participant_id, 0, body.owner_id, body.withdrawal_ref,
                                         body.ok, body.bank_ref))
    return _withdrawal_view(clearing_of(call).withdrawals[(body.owner_id, body.withdrawal_ref)])


@routes.get("/v1/withdrawals", roles=ANY_ROLE, query=WithdrawalQuery, response=WithdrawalPage)
async def list_withdrawals(call: Call, query: WithdrawalQuery) -> WithdrawalPage:
    """Your withdrawals (an operator: everyone's), oldest first, optionally by state."""
    principal = call.principal
    found = []
    for w in clearing_of(call).withdrawals.values():
        if not _is_operator(principal) and w.owner_id != principal.participant_id:
            continue
        if query.state is not None and w.state != WithdrawalState[query.state.name]:
            continue
        found.append(w)
    found.sort(key=lambda w: (w.ts_ns, w.owner_id, w.withdrawal_ref))
    return WithdrawalPage([_withdrawal_view(w) for w in found[:query.limit]])


# -- deliveries and disputes ----------------------------------------------------------------------------


class TradePath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    trade_id: Id


class WeighInRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What was delivered against a trade: the heads delivered and their total live weight in grams, the
    heads dead on arrival or refused at the scale (`heads_refused`: paid nothing, their hold returned to
    the buyer; delivered + refused at most the heads traded), whether the pigs came unfasted (the
    instrument's `shrink_bps` of the live weight is deducted before grading and pricing), and the animal
    quarantine certificate checked against the load: on an instrument whose `quarantine_region` checks
    certificates it must be the lot's (`quarantine_cert_mismatch`) and of the region's shape
    (`invalid_quarantine_cert`). Opens the dispute window."""

    heads_delivered: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
    total_weight_g: Annotated[int, msgspec.Meta(ge=0, le=10**12, description="live weight of the heads delivered")]
    quarantine_cert: Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]
    quarantine_checked: bool
    heads_refused: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    unfasted: bool = False


class DisputeRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A party disputes the weigh-in. A seller's dispute (the scale under-read) holds what a raise may
    cost the buyer: 5 % of the amount (`raise_held_fen`), as far as the buyer's cash (or the credit line
    that funded the trade) has it; the dispute opens all the same, with what could be held."""

    reason: Reason


class ResolutionRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The disputed trade settles at `amount_fen`: 0 .. the weigh-in amount (the rest returns to the buyer),
    or for a seller's dispute up to the amount plus `raise_held_fen` (the raise is paid from the hold,
    the rest of the hold released). Above that: 422 `invalid_amount`."""

    amount_fen: AmountOrZeroFen


class TradeSettlementView(msgspec.Struct, frozen=True):
    """A trade's way from obligation to payout. Amounts in fen, weights in grams, times in ms.

    A side's private fields are null to whoever may not see that side (`views.trade_sides`): the
    buyer's financier to the seller and the seller's financier; the seller's fee, subsidy, advance,
    repayments and payable to the buyer and the buyer's financier."""

    trade_id: int
    instrument: str
    state: TradeStateName
    buyer_id: int
    seller_id: int
    heads: int
    price_fen: int
    obligation_fen: int  # escrowed at the fill
    funded_by_financier_id: int | None  # 0: the buyer's cash
    advance_loan_id: int | None
    traded_ms: int
    heads_delivered: int
    total_weight_g: int
    avg_weight_g: int
    grade: str  # IN_GRADE, SUBSTITUTE or OUT_OF_GRADE
    discount_fen_per_kg: int
    quarantine_cert: str
    delivered_ms: int
    dispute_until_ms: int
    disputed_by: int
    dispute_reason: str
    amount_fen: int  # the final amount
    refund_fen: int  # returned to the buyer
    fee_fen: int | None
    fee_subsidy_fen: int | None  # a registered poor farmer's fee, paid by the subsidy fund
    fee_forgone_fen: int | None
    interest_paid_fen: int | None
    principal_repaid_fen: int | None
    payable_fen: int | None  # what went to the seller's payable (and its cooperative's members)
    settled_ms: int
    heads_refused: int  # dead on arrival or refused at the scale: paid nothing
    shrink_g: int  # deducted from the live weight of unfasted pigs
    raise_held_fen: int | None  # a seller's dispute: held from the buyer, the most a resolution may raise
    # (buyer-private: it tells what the buyer had available)
    raised_fen: int  # the resolution's raise (amount + refund = obligation + raised)


class TradeQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    state: TradeStateName | None = None
    cursor: Cursor | None = None
    limit: Limit = 100


class TradeSettlementPage(msgspec.Struct, frozen=True):
    """Newest first; pass `next_cursor` back as `cursor` for the next page (null: no more)."""

    trades: list[TradeSettlementView]
    next_cursor: str | None


def _trade_view(t: TradeRecord, sides: TradeSides) -> TradeSettlementView:
    return redact(TradeSettlementView(
        t.trade_id, t.instrument, TradeStateName[t.state.name], t.buyer_id, t.seller_id, t.heads, t.price_fen,
        t.obligation_fen, t.financier_id, t.advance_loan_id, _ms(t.traded_at_ns), t.heads_delivered,
        t.total_weight_g, t.avg_weight_g, t.grade.name, t.discount_fen_per_kg, t.quarantine_cert,
        _ms(t.delivered_at_ns), _ms(t.dispute_until_ns), t.disputed_by, t.dispute_reason, t.amount_fen,
        t.refund_fen, t.fee_fen, t.fee_subsidy_fen, t.fee_forgone_fen, t.interest_paid_fen,
        t.principal_repaid_fen, t.payable_fen, _ms(t.settled_at_ns), t.heads_refused, t.shrink_g,
        t.raise_held_fen, t.raised_fen,
    ), sides)  # fmt: skip


def finances(clearing: Clearing, financier_id: int, trade: TradeRecord) -> bool:
    """Whether the financier financed the trade (it then sees the trade: with the private fields of a side
    that consents to it, else its own loan on it only; see `views.trade_sides`)."""
    return any(trade_sides(clearing, financier_id, trade))


def _sides(clearing: Clearing, principal: Principal, trade: TradeRecord) -> TradeSides:
    return ALL_SIDES if _is_operator(principal) else trade_sides(clearing, principal.participant_id, trade)


def _may_see(clearing: Clearing, principal: Principal, trade: TradeRecord) -> bool:
    pid = principal.participant_id
    if _is_operator(principal) or pid in (trade.buyer_id, trade.seller_id):
        return True
    return principal.role == Role.FINANCIER and finances(clearing, pid, trade)


# -- history: what the clearing forgot -------------------------------------------------------------------
# The clearing holds a settled trade, a final payout or a bank file for its retention window only
# (exchange/core.py "Memory"); then its record is in `settlement_history` (pgstore, migration 0014),
# written with the clock tick that forgot it. Reads look in memory first, then there. A financier sees
# a forgotten trade it financed only through its parties' reports (history is kept by party).


async def _archived(call: Call, kind: int, record_type: type[_R], item_id: int, ref: str = "") -> _R | None:
    data = await pgstore.archived_record(call.pool, kind, item_id, ref)
    return None if data is None else msgspec.msgpack.decode(data, type=record_type)


async def _archived_page(call: Call, kind: int, record_type: type[_R], before: int | None, state: int | None,
                         limit: int) -> list[_R]:
    """Forgotten records of the caller (an operator: all), newest first, below `before`, in `state`."""
    party = None if _is_operator(call.principal) else call.principal.participant_id
    rows = await pgstore.archived_page(call.pool, kind, before, party, state, limit)
    return [msgspec.msgpack.decode(data, type=record_type) for data in rows]


def _newest(memory: list[tuple[int, _V]], archived: list[tuple[int, _V]], limit: int) -> tuple[list[_V], bool]:
    """The `limit` newest of both (by id, an id once), and whether there are more."""
    merged: dict[int, _V] = dict(archived)
    merged.update(memory)
    ids = sorted(merged, reverse=True)
    return [merged[i] for i in ids[:limit]], len(ids) > limit


async def _visible_trade(call: Call, trade_id: int) -> TradeRecord:
    """The trade if the caller may see it; anyone else's is `unknown_trade`, like a missing one."""
    clearing = clearing_of(call)
    trade = clearing.trades.get(trade_id)
    if trade is None:
        trade = await _archived(call, pgstore.HISTORY_TRADE, TradeRecord, trade_id)
    if trade is None or not _may_see(clearing, call.principal, trade):
        raise rejection(R.UNKNOWN_TRADE)
    return trade


async def _party_trade(call: Call, trade_id: int) -> TradeRecord:
    """The trade if the caller is a party to it or an operator (financiers act on trades elsewhere)."""
    trade = await _visible_trade(call, trade_id)
    if not _is_operator(call.principal) and call.principal.participant_id not in (trade.buyer_id, trade.seller_id):
        raise rejection(R.UNKNOWN_TRADE)
    return trade


async def _trade_command(call: Call, trade_id: int, command: Command) -> TradeSettlementView:
    await _party_trade(call, trade_id)
    await submit(call, command)
    clearing = clearing_of(call)
    trade = clearing.trades[trade_id]
    return _trade_view(trade, _sides(clearing, call.principal, trade))


@routes.post("/v1/trades/{trade_id}/weigh-in", roles=SELLERS | OPERATORS, params=TradePath, body=WeighInRequest,
             response=TradeSettlementView, errors=(404, 409))
async def record_weigh_in(call: Call, params: TradePath, body: WeighInRequest) -> TradeSettlementView:
    """Record the weigh-in of a delivery (the seller or an operator); fixes the final amount."""
    command = RecordWeighIn(call.principal.participant_id, 0, params.trade_id, body.heads_delivered,
                            body.total_weight_g, body.quarantine_cert, body.quarantine_checked,
                            body.heads_refused, body.unfasted)
    return await _trade_command(call, params.trade_id, command)


@routes.post("/v1/trades/{trade_id}/dispute", roles=BORROWERS, params=TradePath, body=DisputeRequest,
             response=TradeSettlementView, errors=(404, 409))
async def open_dispute(call: Call, params: TradePath, body: DisputeRequest) -> TradeSettlementView:
    """Dispute a delivery inside its dispute window (a party); the trade waits for an operator. The
    seller's dispute holds up to 5 % of the amount from the buyer (`raise_held_fen`)."""
    command = OpenDispute(call.principal.participant_id, 0, params.trade_id, body.reason)
    return await _trade_command(call, params.trade_id, command)


@routes.post("/v1/trades/{trade_id}/rejection", roles=BUYERS, params=TradePath, response=TradeSettlementView,
             errors=(404, 409))
async def reject_delivery(call: Call, params: TradePath) -> TradeSettlementView:
    """Reject an out-of-grade delivery inside the dispute window (the buyer): everything is refunded."""
    command = RejectDelivery(call.principal.participant_id, 0, params.trade_id)
    return await _trade_command(call, params.trade_id, command)


@routes.post("/v1/trades/{trade_id}/resolution", roles=OPERATORS, params=TradePath, body=ResolutionRequest,
             response=TradeSettlementView, errors=(404, 409))
async def resolve_dispute(call: Call, params: TradePath, body: ResolutionRequest) -> TradeSettlementView:
    """Resolve a dispute: the trade settles at once at the amount decided (a seller's dispute may raise it
    by at most `raise_held_fen`)."""
    command = ResolveDispute(call.principal.participant_id, 0, params.trade_id, body.amount_fen)
    return await _trade_command(call, params.trade_id, command)


@routes.get("/v1/trades/{trade_id}/settlement", roles=ANY_ROLE, params=TradePath, response=TradeSettlementView)
async def get_trade_settlement(call: Call, params: TradePath) -> TradeSettlementView:
    """A trade's delivery and settlement (its parties, its consented financier, operators)."""
    trade = await _visible_trade(call, params.trade_id)
    return _trade_view(trade, _sides(clearing_of(call), call.principal, trade))


@routes.get("/v1/settlement/trades", roles=ANY_ROLE, query=TradeQuery, response=TradeSettlementPage)
async def list_trade_settlements(call: Call, query: TradeQuery) -> TradeSettlementPage:
    """The settlement of the trades you may see, newest first (at most 1000 a page)."""
    clearing, principal = clearing_of(call), call.principal
    before = None if query.cursor is None else int(query.cursor)
    state = None if query.state is None else TradeState[query.state.name]
    memory: list[tuple[int, TradeRecord]] = []
    for trade_id in sorted(clearing.trades, reverse=True):
        if before is not None and trade_id >= before:
            continue
        trade = clearing.trades[trade_id]
        if (state is None or trade.state == state) and _may_see(clearing, principal, trade):
            memory.append((trade_id, trade))
            if len(memory) > query.limit:
                break
    archived: list[tuple[int, TradeRecord]] = []
    if state in (None, TradeState.SETTLED, TradeState.REJECTED):
        found = await _archived_page(call, pgstore.HISTORY_TRADE, TradeRecord, before, state, query.limit + 1)
        archived = [(t.trade_id, t) for t in found if _may_see(clearing, principal, t)]
    trades, more = _newest(memory, archived, query.limit)
    page = [_trade_view(t, _sides(clearing, principal, t)) for t in trades]
    return TradeSettlementPage(page, str(page[-1].trade_id) if more else None)


# -- payouts and bank files -----------------------------------------------------------------------------


class PayoutRunRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One payout per payee with money payable and a verified bank account, registered poor households
    first; `run_ref` makes it idempotent, `poor_only` pays only them (a same-day run)."""

    run_ref: Ref
    poor_only: bool = False


class PayoutView(msgspec.Struct, frozen=True):
    payout_id: int
    run_id: int
    payee_id: int
    amount_fen: int
    priority: str  # SAME_DAY (registered poor households) or NORMAL
    state: PayoutStateName
    attempt: int
    reference: str  # the bank's idempotency key of this attempt
    bank_account: str  # masked: the last four digits
    file_ref: str
    bank_ref: str
    reason: str
    trade_ids: list[int]
    created_ms: int
    updated_ms: int


class PayoutRunView(msgspec.Struct, frozen=True):
    run_id: int
    run_ref: str
    poor_only: bool
    total_fen: int
    payouts: list[PayoutView]  # in payment order: same-day first
    skipped_payee_ids: list[int]  # money payable, but no verified bank account
    created_ms: int


class PayoutFileRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Export every pending payout as the bank file `file_ref` and mark them sent."""

    file_ref: Ref


class PayoutFilePath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    file_ref: Ref


class ConfirmationImportRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The bank's confirmation file: header `payout_id,attempt,status,bank_ref,reason`, status OK or
    FAILED. `file_ref` makes the import idempotent; a refused file leaves it unused."""

    file_ref: Ref
    csv: CsvText


class ImportErrorRow(msgspec.Struct, frozen=True):
    payout_id: int
    reason: str


class ConfirmationImportView(msgspec.Struct, frozen=True):
    file_ref: str
    applied: int
    duplicates: int  # rows that repeat a payout's recorded answer
    errors: list[ImportErrorRow]  # empty: a file with a bad row is refused whole (older imports may list some)


class PayoutPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payout_id: Id


class PayoutQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    state: PayoutStateName | None = None
    cursor: Cursor | None = None
    limit: Limit = 100


class PayoutPage(msgspec.Struct, frozen=True):
    """Newest first; pass `next_cursor` back as `cursor` for the next page (null: no more)."""

    payouts: list[PayoutView]
    next_cursor: str | None


def _payout_view(p: Payout) -> PayoutView:
    return PayoutView(p.payout_id, p.run_id, p.payee_id, p.amount_fen, p.priority.name,
                      PayoutStateName[p.state.name], p.attempt, payout_reference(p.payout_id, p.attempt),
                      _masked(p.bank_account), p.file_ref, p.bank_ref, p.reason, list(p.trade_ids),
                      _ms(p.created_at_ns), _ms(p.updated_at_ns))


@routes.post("/v1/payout-runs", roles=OPERATORS, body=PayoutRunRequest, response=PayoutRunView, status=201,
             errors=(409,))
async def run_payouts(call: Call, body: PayoutRunRequest) -> PayoutRunView:
    """Create a payout run: one instruction per payee, registered poor households first."""
    await submit(call, RunPayouts(call.principal.participant_id, 0, body.run_ref, body.poor_only))
    clearing = clearing_of(call)
    run = clearing.runs[body.run_ref]
    payouts = sorted((clearing.payouts[i] for i in run.payout_ids), key=lambda p: (p.priority, p.payout_id))
    return PayoutRunView(run.run_id, run.run_ref, run.poor_only, run.total_fen, [_payout_view(p) for p in payouts],
                         list(run.skipped_ids), _ms(run.ts_ns))


def _render(call: Call, clearing: Clearing, file_ref: str, payouts: Iterable[Payout]) -> bytes:
    """The payout file of `payouts`, value date today (CST), debiting the configured payer's account;
    422 `payer_not_configured` if there is none (a real market without HOGX_PAYER_*)."""
    settings = call.app[CONFIG].payer()
    if settings is None:
        raise ApiError(422, "payer_not_configured", "no payout file without the exchange's settlement account: "
                       "set HOGX_PAYER_NAME, HOGX_PAYER_ACCOUNT, HOGX_PAYER_BANK_CODE and HOGX_PAYER_BRANCH_CODE")
    name, account, bank_code, branch_code = settings
    payer = Payer(name=name, account=account, bank_code=bank_code, branch_code=branch_code)
    return bank_file_csv(clearing, payouts, file_ref=file_ref, value_day=cst_day(time.time_ns()), payer=payer)


async def _bank_file(call: Call, file_ref: str) -> web.Response:
    """The file as sent, byte for byte (stored before it was sent), with its SHA-256 in `X-Hogx-SHA256`.
    A file sent before files were stored is rendered again: not the original (today's layout and value
    date, the current names), so it comes without `X-Hogx-SHA256`."""
    clearing = clearing_of(call)
    digest = clearing.file_digests.get(file_ref)
    if digest is None:
        # Sent before files were stored: rendered again, each payout under the attempt the file carried.
        sent = clearing.sent_files[file_ref]
        payouts = [msgspec.structs.replace(clearing.payouts[pid], attempt=attempt) for pid, attempt in sent.payouts]
        return _csv_response(_render(call, clearing, file_ref, payouts), f"{file_ref}.csv")
    stored = await store.load_payout_file(call.pool, file_ref, digest)
    if stored is None:  # stored before its command was journaled: never missing unless the table was edited
        raise RuntimeError(f"payout file {file_ref} ({digest}) is not in payout_files")
    response = _csv_response(stored, f"{file_ref}.csv")
    response.headers[SHA256_HEADER] = hashlib.sha256(stored).hexdigest()
    return response


async def _archived_bank_file(call: Call, file_ref: str) -> web.Response | None:
    """A file the clearing forgot: the bytes stored when it was sent, or (sent before files were stored)
    rendered again from history, its payouts from memory or history; None if there never was one."""
    clearing = clearing_of(call)
    if file_ref in clearing.file_digests:
        return await _bank_file(call, file_ref)
    sent = await _archived(call, pgstore.HISTORY_SENT_FILE, SentFile, 0, file_ref)
    if sent is None:
        return None
    payouts = []
    for payout_id, attempt in sent.payouts:
        p = clearing.payouts.get(payout_id) or await _archived(call, pgstore.HISTORY_PAYOUT, Payout, payout_id)
        if p is None:
            raise ApiError(503, Code.UNAVAILABLE, f"payout {payout_id} of the file is being archived: try again")
        payouts.append(msgspec.structs.replace(p, attempt=attempt))
    content = _render(call, clearing, file_ref, payouts)
    response = _csv_response(content, f"{file_ref}.csv")
    response.headers[SHA256_HEADER] = hashlib.sha256(content).hexdigest()
    return response


@routes.post("/v1/payout-files", roles=OPERATORS, body=PayoutFileRequest, response=None, media_type=_CSV,
             status=201, errors=(409,))
async def export_payout_file(call: Call, body: PayoutFileRequest) -> web.Response:
    """Export the bank file of every pending payout (format `HOGXPAY1`, see the README) and mark them
    sent; a repeat returns the same bytes. The file is stored (with its SHA-256, sent in `X-Hogx-SHA256`)
    before the command marking its payouts sent is journaled, and handed out only once that is durable."""
    clearing = clearing_of(call)
    sent = clearing.sent_files.get(body.file_ref)
    if sent is None:
        pending = payouts_to_send(clearing)
        if not pending:
            raise ApiError(409, "no_pending_payouts", "there is no pending payout to send")
        pairs = sent_pairs(pending)
        content = _render(call, clearing, body.file_ref, pending)
        digest = hashlib.sha256(content).hexdigest()
        await store.store_payout_file(call.pool, body.file_ref, digest, content)
    else:
        # The live core may show a file whose command is still being committed (a client's retry after a
        # timeout): the same command again is idempotent, and its durable answer implies the first's.
        pairs = tuple((payout_id, attempt) for payout_id, attempt in sent.payouts)
        digest = clearing.file_digests.get(body.file_ref, "")
    await submit(call, MarkPayoutsSent(call.principal.participant_id, 0, body.file_ref, pairs, digest))
    response = await _bank_file(call, body.file_ref)
    response.set_status(201)
    return response


@routes.get("/v1/payout-files/{file_ref}", roles=OPERATORS, params=PayoutFilePath, response=None,
            media_type=_CSV)
async def get_payout_file(call: Call, params: PayoutFilePath) -> web.Response:
    """Download an exported bank file again: the bytes that were sent (`X-Hogx-SHA256` their digest), only
    once the command that made it is durable. A file sent before files were stored is rendered again
    (today's layout and value date) and comes without `X-Hogx-SHA256`: it is not the original."""
    while True:
        clearing = clearing_of(call)
        if params.file_ref not in clearing.sent_files:
            archived = await _archived_bank_file(call, params.file_ref)
            if archived is None:
                raise rejection(R.UNKNOWN_REFERENCE)
            return archived
        if await _committed(call):
            return await _bank_file(call, params.file_ref)


async def _committed(call: Call) -> bool:
    """Wait until everything the live core shows at this moment is durable: True; False if the core was
    rebuilt meanwhile (a commit failed: what it showed may be gone, so look again). Raises 503 after
    `_COMMIT_WAIT_S`.

    The core shows commands up to `applied_seq`; once `committed_seq` reaches that seq with the same core
    object (a rebuild replaces it, and reuses the seqs of a lost batch), all of them are in the journal."""
    sequencer = call.app[EXCHANGE].sequencer
    core, shown_seq = sequencer.core, sequencer.applied_seq
    deadline = time.monotonic() + _COMMIT_WAIT_S
    while sequencer.committed_seq < shown_seq and sequencer.core is core:
        if time.monotonic() > deadline:
            raise ApiError(503, Code.UNAVAILABLE, "the file is not committed yet: try again")
        await asyncio.sleep(_COMMIT_POLL_S)
    return sequencer.core is core


class BankFileRefused(ApiError):
    """422 `invalid_bank_file` whose message lists every bad line of the file, each as
    `line <number> <code>: <why>`, separated by `; ` (the error body stays `{code, message}`)."""

    def __init__(self, problems: Iterable[LineProblem]) -> None:
        lines = sorted(problems, key=lambda p: p.line)
        listed = "; ".join(f"line {p.line} {p.code}: {_LINE_PREFIX.sub('', p.message)}" for p in lines)
        super().__init__(422, "invalid_bank_file", f"{len(lines)} bad line(s), nothing was applied (correct the file "
                         f"and send it again under the same file_ref): {listed}")


_LINE_PREFIX: Final = re.compile(r"^line \d+: ")


def _confirmation_problems(clearing: Clearing, read: ConfirmationFile) -> list[LineProblem]:
    """The rows the clearing could not apply now, by line (see `Clearing.confirmation_problems`)."""
    return [LineProblem(read.lines[index], code, f"payout {read.rows[index].payout_id}: {code.replace('_', ' ')}")
            for index, code in clearing.confirmation_problems(read.rows)]


@routes.post("/v1/payout-confirmations", roles=OPERATORS, body=ConfirmationImportRequest,
             response=ConfirmationImportView, errors=(409,))
async def import_confirmations(call: Call, body: ConfirmationImportRequest) -> ConfirmationImportView:
    """Import the bank's confirmation file: confirmed payouts are final, failed ones wait for a retry. The
    file is applied whole or not at all: any bad line (unreadable, an unknown payout, another attempt, a
    payout not sent, a payout named twice) is a 422 `invalid_bank_file` whose message lists every bad
    line (`line <n> <code>: <why>`), and leaves `file_ref` unused, so the corrected file is sent under the
    same reference."""
    read = read_confirmations(body.csv.encode())
    if read.problems:
        raise BankFileRefused(read.problems)
    for row in read.rows:  # the file's free text, held to the same rule as every text field
        refuse_control_characters(row.bank_ref, f"payout {row.payout_id}: bank_ref")
        refuse_control_characters(row.reason, f"payout {row.payout_id}: reason")
    if body.file_ref not in clearing_of(call).bank_imports:  # (a repeat is answered as the first time)
        problems = _confirmation_problems(clearing_of(call), read)
        if problems:
            raise BankFileRefused(problems)
    command = ImportBankConfirmations(call.principal.participant_id, 0, body.file_ref, read.rows, whole_file=True)
    result = await call.app[EXCHANGE].submit(command)
    for event in result.events:
        if event.__class__ is Rejected:
            moved = event.reason in (R.UNKNOWN_REFERENCE, R.INVALID_PAYOUT_STATE)  # since the check above
            problems = _confirmation_problems(clearing_of(call), read) if moved else []
            raise BankFileRefused(problems) if problems else rejection(event.reason)
    done = clearing_of(call).bank_imports[body.file_ref]
    return ConfirmationImportView(done.file_ref, done.applied, done.duplicates,
                                  [ImportErrorRow(pid, reason) for pid, reason in done.errors])


async def _visible_payout(call: Call, payout_id: int) -> Payout:
    payout = clearing_of(call).payouts.get(payout_id)
    if payout is None:
        payout = await _archived(call, pgstore.HISTORY_PAYOUT, Payout, payout_id)
    if payout is None or not (_is_operator(call.principal) or payout.payee_id == call.principal.participant_id):
        raise rejection(R.UNKNOWN_REFERENCE)
    return payout


@routes.post("/v1/payouts/{payout_id}/retry", roles=OPERATORS, params=PayoutPath, response=PayoutView,
             errors=(404, 409))
async def retry_payout(call: Call, params: PayoutPath) -> PayoutView:
    """Send a failed payout again, as a new attempt to the payee's current verified account."""
    await submit(call, RetryPayout(call.principal.participant_id, 0, params.payout_id))
    return _payout_view(await _visible_payout(call, params.payout_id))


@routes.post("/v1/payouts/{payout_id}/return", roles=OPERATORS, params=PayoutPath, response=PayoutView,
             errors=(404, 409))
async def return_payout(call: Call, params: PayoutPath) -> PayoutView:
    """Give a failed (or unsent) payout up: its money is payable to the payee again."""
    await submit(call, ReturnPayout(call.principal.participant_id, 0, params.payout_id))
    return _payout_view(await _visible_payout(call, params.payout_id))


@routes.get("/v1/payouts/{payout_id}", roles=ANY_ROLE, params=PayoutPath, response=PayoutView)
async def get_payout(call: Call, params: PayoutPath) -> PayoutView:
    """One of your payouts (an operator: any payout)."""
    return _payout_view(await _visible_payout(call, params.payout_id))


@routes.get("/v1/payouts", roles=ANY_ROLE, query=PayoutQuery, response=PayoutPage)
async def list_payouts(call: Call, query: PayoutQuery) -> PayoutPage:
    """Your payouts (an operator: every payout), newest first, optionally by state."""
    clearing, principal = clearing_of(call), call.principal
    before = None if query.cursor is None else int(query.cursor)
    state = None if query.state is None else PayoutState[query.state.name]
    memory: list[tuple[int, Payout]] = []
    for payout_id in sorted(clearing.payouts, reverse=True):
        p = clearing.payouts[payout_id]
        if (before is not None and payout_id >= before) or (state is not None and p.state != state):
            continue
        if _is_operator(principal) or p.payee_id == principal.participant_id:
            memory.append((payout_id, p))
            if len(memory) > query.limit:
                break
    archived: list[tuple[int, Payout]] = []
    if state in (None, PayoutState.CONFIRMED, PayoutState.RETURNED):
        found = await _archived_page(call, pgstore.HISTORY_PAYOUT, Payout, before, state, query.limit + 1)
        archived = [(p.payout_id, p) for p in found]
    payouts, more = _newest(memory, archived, query.limit)
    page = [_payout_view(p) for p in payouts]
    return PayoutPage(page, str(page[-1].payout_id) if more else None)


# -- financing ------------------------------------------------------------------------------------------


class CreditLineRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Earmark `amount_fen` more of your funds for a consenting buyer's bids, at a yearly rate."""

    buyer_id: Id
    amount_fen: AmountFen
    rate_bps: RateBps


class BuyerPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    buyer_id: Id


class ReduceRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    amount_fen: AmountFen


class AdvanceRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Advance a consenting seller part of a matched trade's estimated value (up to the policy share),
    paid to its payable at once and repaid first, with interest, when the trade settles."""

    trade_id: Id
    amount_fen: AmountFen
    rate_bps: RateBps


class RepaymentRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Repay a financier (interest first), from your cash (credit lines) or payable (advances)."""

    financier_id: Id
    amount_fen: AmountFen
    repayment_ref: Ref | None = None  # a retry with the same ref repays nothing twice


class ClientPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    participant_id: Id


class LoanPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    loan_id: Id


class WriteOffRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Why the claim is given up (a default, a court order, a settlement with the borrower ...)."""

    reason: Reason


class FinancierPortfolio(msgspec.Struct, frozen=True):
    """Everything a financier may see: one view per participant that consents to it or owes it."""

    financier_id: int
    exposure_fen: int
    clients: list[FinancierView]
    interest_earned_fen: int  # over every client: the financier's interest income, and what it collected
    interest_collected_fen: int


class LoanPage(msgspec.Struct, frozen=True):
    loans: list[LoanRow]


def _client_view(call: Call, participant_id: int) -> FinancierView:
    """The calling financier's view of a client; a participant that neither consents to it nor has a
    line or loan from it does not exist for it."""
    view = financier_view(clearing_of(call), call.principal.participant_id, participant_id)
    if view is None:
        raise rejection(R.UNKNOWN_PARTICIPANT)
    return view


@routes.post("/v1/credit-lines", roles=FINANCIERS, body=CreditLineRequest, response=FinancierView,
             errors=(404,))
async def grant_credit_line(call: Call, body: CreditLineRequest) -> FinancierView:
    """Grant (or raise) a consenting buyer's credit line; its bids may then hold against it."""
    _client_view(call, body.buyer_id)
    await submit(call, GrantCreditLine(call.principal.participant_id, 0, body.buyer_id, body.amount_fen,
                                       body.rate_bps))
    return _client_view(call, body.buyer_id)


@routes.post("/v1/credit-lines/{buyer_id}/reduce", roles=FINANCIERS, params=BuyerPath, body=ReduceRequest,
             response=FinancierView, errors=(404,))
async def reduce_credit_line(call: Call, params: BuyerPath, body: ReduceRequest) -> FinancierView:
    """Return undrawn credit of a buyer's line to your funds (also after the buyer withdrew consent)."""
    _client_view(call, params.buyer_id)
    await submit(call, ReduceCreditLine(call.principal.participant_id, 0, params.buyer_id, body.amount_fen))
    return _client_view(call, params.buyer_id)


@routes.post("/v1/advances", roles=FINANCIERS, body=AdvanceRequest, response=FinancierView, status=201,
             errors=(404, 409))
async def grant_advance(call: Call, body: AdvanceRequest) -> FinancierView:
    """Advance money to a consenting seller against one of its matched trades."""
    clearing, financier = clearing_of(call), call.principal.participant_id
    trade = clearing.trades.get(body.trade_id)
    if trade is None or not clearing.has_consented(trade.seller_id, financier):
        raise rejection(R.UNKNOWN_TRADE)
    await submit(call, GrantAdvance(financier, 0, body.trade_id, body.amount_fen, body.rate_bps))
    return _client_view(call, trade.seller_id)


@routes.get("/v1/financing/clients", roles=FINANCIERS, response=FinancierPortfolio)
async def list_clients(call: Call) -> FinancierPortfolio:
    """Exposures, loans, repayments and financed trades of every participant that consents to you or owes
    you (`consented` false: consent withdrawn, its line takes no new holds)."""
    financier = call.principal.participant_id
    views = financier_portfolio(clearing_of(call), financier)
    return FinancierPortfolio(financier, sum(v.exposure_fen for v in views), views,
                              sum(v.interest_earned_fen for v in views), sum(v.interest_collected_fen for v in views))


@routes.get("/v1/financing/clients/{participant_id}", roles=FINANCIERS, params=ClientPath,
            response=FinancierView)
async def get_client(call: Call, params: ClientPath) -> FinancierView:
    """One client's exposure, loans, repayments and financed trades."""
    return _client_view(call, params.participant_id)


@routes.post("/v1/loans/{loan_id}/write-off", roles=FINANCIERS, params=LoanPath, body=WriteOffRequest,
             response=LoanRow, errors=(404, 409))
async def write_off_loan(call: Call, params: LoanPath, body: WriteOffRequest) -> LoanRow:
    """Give up what is still owed on one of your loans: its principal and the interest accrued through
    today. The loan stops accruing; a credit line stays as it is (reduce it to stop new holds). A loan
    with nothing owed: 409 `loan_closed`; another financier's loan: 404 like a missing one."""
    clearing, financier = clearing_of(call), call.principal.participant_id
    loan = clearing.loans.get(params.loan_id)
    if loan is None or loan.financier_id != financier:
        raise rejection(R.UNKNOWN_LOAN)
    await submit(call, WriteOffLoan(financier, 0, params.loan_id, body.reason))
    return loan_row(clearing_of(call).loans[params.loan_id])


def _own_loans(clearing: Clearing, borrower_id: int, financier_id: int | None = None) -> LoanPage:
    loans = [loan for _, loan in sorted(clearing.loans.items())
             if loan.borrower_id == borrower_id and financier_id in (None, loan.financier_id)]
    return LoanPage([loan_row(loan) for loan in loans])


@routes.post("/v1/repayments", roles=BORROWERS, body=RepaymentRequest, response=LoanPage, errors=(409,))
async def repay(call: Call, body: RepaymentRequest) -> LoanPage:
    """Repay a financier; the answer is your loans from it after the repayment. With `repayment_ref` a
    retry repays nothing twice (same ref, other content: 409)."""
    borrower = call.principal.participant_id
    await refuse_expired_reference(call, pgstore.REF_REPAYMENT, borrower, body.repayment_ref or "",
                                   (borrower, body.repayment_ref) in clearing_of(call).repayments)
    await submit(call, RepayLoan(borrower, 0, body.financier_id, body.amount_fen, body.repayment_ref or ""))
    return _own_loans(clearing_of(call), borrower, body.financier_id)


@routes.get("/v1/loans", roles=BORROWERS, response=LoanPage)
async def list_loans(call: Call) -> LoanPage:
    """Your loans: advances against your trades and what your credit-funded trades drew."""
    return _own_loans(clearing_of(call), call.principal.participant_id)


# -- balances, statements, reports ----------------------------------------------------------------------


class BalanceQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    participant_id: OwnerId | None = None  # operators: anyone's (0: the house accounts)


class BalancesView(msgspec.Struct, frozen=True):
    participant_id: int  # 0: the exchange's own (house) accounts
    accounts: list[BalanceRow]


class StatementQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    account_id: Id
    from_ms: TimeMs = 0
    until_ms: TimeMs = 9_000_000_000_000
    cursor: Cursor | None = None
    limit: Limit = 100


class StatementLine(msgspec.Struct, frozen=True):
    """One change of the account. `entry`: POSTED moves the balance, PENDING holds money, RELEASE ends a
    hold (posted or voided). The changes are in the account's own direction (a deposit into cash is +)."""

    seq: int  # the journal command that made it
    transfer_id: int
    entry: str
    side: str  # DEBIT or CREDIT
    amount_fen: int
    balance_change_fen: int
    held_change_fen: int
    code: str  # why the money moved (TransferCode)
    ref: int  # order, trade, payout, loan ... id, by code
    pending_id: int
    time_ms: int


class StatementPage(msgspec.Struct, frozen=True):
    """Oldest first; pass `next_cursor` back as `cursor` for the next page (null: no more)."""

    account_id: int
    kind: str
    lines: list[StatementLine]
    next_cursor: str | None


class ReportQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    date: Date | None = None  # default: today in China Standard Time


class SettlementReport(msgspec.Struct, frozen=True):
    """That day's rows you may see (operators: all), by trade id: the trades settled or rejected, the
    cooperative members' shares, the loans' repayments and interest (`kind`), as they were then."""

    date: str
    rows: list[SettlementReportRow]


def _house_balances(clearing: Clearing) -> list[BalanceRow]:
    rows = []
    for code in HOUSE:
        a = clearing.ledger.account(int(code))
        assert a is not None  # created with the clearing
        debit_normal = CHART[code].normal_balance == "debit"
        balance = a.debits_posted_fen - a.credits_posted_fen
        balance = balance if debit_normal else -balance
        held = a.debits_pending_fen
        rows.append(BalanceRow(a.account_id, AccountCode(code).name, 0, balance, held,
                               balance if debit_normal else balance - held))
    return rows


@routes.get("/v1/balances", roles=ANY_ROLE, query=BalanceQuery, response=BalancesView, errors=(404,))
async def get_balances(call: Call, query: BalanceQuery) -> BalancesView:
    """Your ledger accounts and balances (an operator: anyone's, or the house accounts with 0)."""
    principal, clearing = call.principal, clearing_of(call)
    who = principal.participant_id if query.participant_id is None else query.participant_id
    if who != principal.participant_id and not _is_operator(principal):
        raise rejection(R.UNKNOWN_PARTICIPANT)
    if who == 0:
        return BalancesView(0, _house_balances(clearing))
    if who not in clearing.participants:
        raise rejection(R.UNKNOWN_PARTICIPANT)
    return BalancesView(who, participant_balances(clearing, who))


@routes.get("/v1/statements", roles=ANY_ROLE, query=StatementQuery, response=StatementPage, errors=(404,))
async def get_statement(call: Call, query: StatementQuery) -> StatementPage:
    """Every change of one of your accounts over a period, from the committed ledger, oldest first."""
    account = clearing_of(call).ledger.account(query.account_id)
    if account is None or not (_is_operator(call.principal) or account.owner_id == call.principal.participant_id):
        raise ApiError(404, Code.NOT_FOUND, "no such account")
    after = 0 if query.cursor is None else int(query.cursor)  # a line's transfer_id * 4 + entry
    rows = await pgstore.statement(call.pool, query.account_id, query.from_ms * _NS_PER_MS,
                                   query.until_ms * _NS_PER_MS, (after // 4, after % 4), query.limit + 1)
    debit_normal = CHART[account.code].normal_balance == "debit"
    lines = [_statement_line(row, debit_normal) for row in rows[:query.limit]]
    more = len(rows) > query.limit
    cursor = str(lines[-1].transfer_id * 4 + Entry[lines[-1].entry]) if more else None
    return StatementPage(account.account_id, AccountCode(account.code).name, lines, cursor)


def _statement_line(row: Iterable[int], debit_normal: bool) -> StatementLine:
    seq, transfer_id, entry, side, amount, code, ref, pending_id, ts_ns = row
    debit = side == PostingSide.DEBIT
    balance_change = held_change = 0
    if entry == Entry.POSTED:
        balance_change = amount if debit == debit_normal else -amount
    elif debit:  # a pending debit holds money; its release frees it
        held_change = amount if entry == Entry.PENDING else -amount
    code_name = TransferCode(code).name if code in TransferCode._value2member_map_ else str(code)
    return StatementLine(seq, transfer_id, Entry(entry).name, PostingSide(side).name, amount, balance_change,
                         held_change, code_name, ref, pending_id, _ms(ts_ns))


def _report_day(query: ReportQuery) -> int:
    if query.date is None:
        return cst_day(time.time_ns())  # the gateway may read the clock; the core never does
    try:
        return date_to_day(query.date)
    except ValueError:
        raise ApiError(422, Code.INVALID, f"no such date: {query.date}") from None


async def _report_rows(call: Call, day: int) -> list[SettlementReportRow]:
    """The day's rows from the settlement history in PostgreSQL, once it holds every command the core
    has applied (what the other settlement reads already show): an operator's whole, anyone else's those
    it may see (`views.visible_report`: the trades it is a party to or financed, its member shares and
    loans), without what is not its own."""
    shard = call.app[EXCHANGE].shard
    try:
        await shard.history.wait_for(shard.sequencer.applied_seq, _COMMIT_WAIT_S)
    except TimeoutError:
        raise ApiError(503, Code.UNAVAILABLE, "the settlement history is behind: try again",
                       retry_after_s=1) from None
    viewer = None if _is_operator(call.principal) else call.principal.participant_id
    entries = await history.day_entries(call.pool, day, viewer)
    return visible_report(entries, viewer, clearing_of(call).has_consented)


@routes.get("/v1/reports/settlement", roles=ANY_ROLE, query=ReportQuery, response=SettlementReport)
async def settlement_report(call: Call, query: ReportQuery) -> SettlementReport:
    """The daily settlement report: the trades settled or rejected that day, members' shares of them and
    loans' interest and repayments, that you may see; the facts as they were that day, never changed."""
    day = _report_day(query)
    return SettlementReport(day_to_date(day), await _report_rows(call, day))


@routes.get("/v1/reports/settlement.csv", roles=ANY_ROLE, query=ReportQuery, response=None, media_type=_CSV)
async def settlement_report_csv(call: Call, query: ReportQuery) -> web.Response:
    """The daily settlement report as CSV (a header row, then one row per report row)."""
    day = _report_day(query)
    rows = await _report_rows(call, day)
    data = report_csv(rows) if rows else (",".join(REPORT_COLUMNS) + "\r\n").encode()
    return _csv_response(data, f"settlement-{day_to_date(day)}.csv")


# -- operator settings ----------------------------------------------------------------------------------


class FeeScheduleRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The seller fee of an instrument in basis points of the final amount (at most 1,000)."""

    instrument: Symbol
    seller_fee_bps: Bps


class FeeScheduleView(msgspec.Struct, frozen=True):
    instrument: str
    seller_fee_bps: int


class FinancingPolicyRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An advance may be at most this share of a trade's estimated value."""

    advance_max_bps: Bps


class FinancingPolicyView(msgspec.Struct, frozen=True):
    advance_max_bps: int


@routes.post("/v1/admin/fee-schedule", roles=OPERATORS, body=FeeScheduleRequest, response=FeeScheduleView)
async def set_fee_schedule(call: Call, body: FeeScheduleRequest) -> FeeScheduleView:
    """Set an instrument's seller fee (waived for registered poor farmers: the subsidy fund pays it)."""
    await submit(call, SetFeeSchedule(call.principal.participant_id, 0, body.instrument, body.seller_fee_bps))
    return FeeScheduleView(body.instrument, clearing_of(call).fee_bps[body.instrument])


@routes.post("/v1/admin/financing-policy", roles=OPERATORS, body=FinancingPolicyRequest,
             response=FinancingPolicyView)
async def set_financing_policy(call: Call, body: FinancingPolicyRequest) -> FinancingPolicyView:
    """Set the largest share of a trade's estimated value a financier may advance."""
    await submit(call, SetFinancingPolicy(call.principal.participant_id, 0, body.advance_max_bps))
    return FinancingPolicyView(clearing_of(call).counters.advance_max_bps)


@routes.get("/v1/admin/financing-policy", roles=ANY_ROLE, response=FinancingPolicyView)
async def get_financing_policy(call: Call) -> FinancingPolicyView:
    """The financing policy in force: a rule of the market, readable by every participant (financiers
    grant advances within it, sellers ask for them), set by operators."""
    return FinancingPolicyView(clearing_of(call).counters.advance_max_bps)
