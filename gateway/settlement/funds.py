"""Money in and out over HTTP: `POST /v1/deposits` and `POST /v1/deposit-imports` (operator; the bank's
deposit file as CSV), `POST /v1/withdrawals` (a participant, from its own cash or funds),
`POST /v1/withdrawals/confirmations` (operator), `GET /v1/withdrawals`.
"""

from __future__ import annotations

import asyncio
from typing import Final

import msgspec

from exchange.commands import (
    ConfirmDeposit,
    ConfirmWithdrawal,
    FundsAccount,
    RequestWithdrawal,
)
from exchange.settlement import Clearing, pgstore
from exchange.settlement.bankfiles import (
    parse_whole_number,
    read_csv_rows,
)
from exchange.settlement.model import Withdrawal, WithdrawalState
from gateway.auth import ANY_ROLE, OPERATORS
from gateway.errors import ApiError
from gateway.routes import Call, RouteTable
from gateway.schemas import Id, Limit
from gateway.settlement.common import (
    FUNDS,
    FUNDS_NAME,
    MAX_IMPORT_ROWS,
    OWNERS,
    AmountFen,
    BankRef,
    CsvText,
    FundsAccountName,
    OwnerId,
    Ref,
    WithdrawableAccount,
    WithdrawalStateName,
    clearing_of,
    is_operator,
    refuse_expired_reference,
    submit,
    to_ms,
)

routes = RouteTable()

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
    return DepositView(d.deposit_ref, d.owner_id, FUNDS_NAME[d.account], d.amount_fen, d.transfer_id, to_ms(d.ts_ns))


def _withdrawal_view(w: Withdrawal) -> WithdrawalView:
    return WithdrawalView(w.owner_id, w.withdrawal_ref, FUNDS_NAME[w.account], w.amount_fen,
                          WithdrawalStateName[w.state.name], w.bank_ref, to_ms(w.ts_ns))


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
        if not is_operator(principal) and w.owner_id != principal.participant_id:
            continue
        if query.state is not None and w.state != WithdrawalState[query.state.name]:
            continue
        found.append(w)
    found.sort(key=lambda w: (w.ts_ns, w.owner_id, w.withdrawal_ref))
    return WithdrawalPage([_withdrawal_view(w) for w in found[:query.limit]])


