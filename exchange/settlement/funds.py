"""Deposits and withdrawals (flow 1 of clearing.py's docstring): money entering from the bank, once per
bank reference, and leaving for it, held pending until the bank confirms or fails it.

Functions of the clearing's state (state.py), the handlers ``Clearing`` (clearing.py) gives the core.
"""



from exchange.commands import (
    ConfirmDeposit,
    ConfirmWithdrawal,
    FundsAccount,
    RequestWithdrawal,
)
from exchange.events import (
    FundsDeposited,
    WithdrawalCompleted,
    WithdrawalRequested,
)
from exchange.settlement.ledger import (
    MAX_INT64,
    Transfer,
)
from exchange.settlement.model import (
    Deposit,
    FinalKind,
    Withdrawal,
    WithdrawalState,
)
from exchange.settlement.state import (
    _BANK,
    _PENDING,
    _POST,
    _VOID,
    FUNDS_CODE,
    HOUSE,
    MAX_REF_LEN,
    ROLE,
    TC,
    TRADING_ROLES,
    ClearingState,
    R,
)


def funds_owner_reason(cl: ClearingState, account: FundsAccount, owner_id: int) -> R | None:
    if account == FundsAccount.POVERTY_SUBSIDY_FUND:
        return None if owner_id == 0 else R.INVALID_PARTICIPANT
    roles = TRADING_ROLES if account == FundsAccount.TRADING_CASH else (ROLE.FINANCIER,)
    return None if cl._has_role(owner_id, roles) else R.UNKNOWN_PARTICIPANT


def funds_account_id(cl: ClearingState, account: FundsAccount, owner_id: int, ts_ns: int) -> int:
    code = FUNDS_CODE[account]
    return int(code) if code in HOUSE else cl._account_id(code, owner_id, 0, ts_ns)


def confirm_deposit(cl: ClearingState, cmd: ConfirmDeposit, out: list) -> None:
    ref = cmd.deposit_ref
    if not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    if not 0 < len(ref) <= MAX_REF_LEN or type(cmd.amount_fen) is not int or not 0 < cmd.amount_fen <= MAX_INT64:
        return cl._reject(cmd, R.INVALID_AMOUNT, ref, out)
    done = cl.deposits.get(ref)
    if done is not None:
        if (done.owner_id, done.account, done.amount_fen) != (cmd.owner_id, cmd.account, cmd.amount_fen):
            return cl._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
        out.append(FundsDeposited(0, done.ts_ns, done.owner_id, done.account, done.amount_fen, ref,
                                  done.transfer_id))
        return None
    reason = funds_owner_reason(cl, cmd.account, cmd.owner_id)
    if reason is not None:
        return cl._reject(cmd, reason, ref, out)
    account_id = funds_account_id(cl, cmd.account, cmd.owner_id, cmd.ts_ns)
    tid = cl._next_tid()
    cl._commit_one(Transfer(tid, _BANK, account_id, cmd.amount_fen, TC.DEPOSIT, 0), cmd.ts_ns)
    cl.deposits[ref] = Deposit(ref, cmd.owner_id, cmd.account, cmd.amount_fen, tid, cmd.ts_ns)
    cl._final_at(cmd.ts_ns, FinalKind.DEPOSIT, ref)
    out.append(FundsDeposited(0, cmd.ts_ns, cmd.owner_id, cmd.account, cmd.amount_fen, ref, tid))
    return None


def request_withdrawal(cl: ClearingState, cmd: RequestWithdrawal, out: list) -> None:
    ref, owner = cmd.withdrawal_ref, cmd.participant_id
    if not 0 < len(ref) <= MAX_REF_LEN or cmd.amount_fen <= 0 or type(cmd.amount_fen) is not int:
        return cl._reject(cmd, R.INVALID_AMOUNT, ref, out)
    done = cl.withdrawals.get((owner, ref))
    if done is not None:
        if (done.account, done.amount_fen) != (cmd.account, cmd.amount_fen):
            return cl._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
        out.append(WithdrawalRequested(0, done.ts_ns, owner, done.account, done.amount_fen, ref, done.pending_id))
        return None
    if cmd.account == FundsAccount.POVERTY_SUBSIDY_FUND:
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    reason = funds_owner_reason(cl, cmd.account, owner)
    if reason is not None:
        return cl._reject(cmd, reason, ref, out)
    if not cl.participants[owner].bank_verified:
        return cl._reject(cmd, R.BANK_ACCOUNT_NOT_VERIFIED, ref, out)
    if cl._balance(FUNDS_CODE[cmd.account], owner) < cmd.amount_fen:
        return cl._reject(cmd, R.INSUFFICIENT_FUNDS, ref, out)
    account_id = funds_account_id(cl, cmd.account, owner, cmd.ts_ns)
    tid = cl._next_tid()
    cl._commit_one(Transfer(tid, account_id, _BANK, cmd.amount_fen, TC.WITHDRAWAL, 0, _PENDING), cmd.ts_ns)
    cl.withdrawals[(owner, ref)] = Withdrawal(owner, ref, cmd.account, cmd.amount_fen, tid, cmd.ts_ns)
    out.append(WithdrawalRequested(0, cmd.ts_ns, owner, cmd.account, cmd.amount_fen, ref, tid))
    return None


def confirm_withdrawal(cl: ClearingState, cmd: ConfirmWithdrawal, out: list) -> None:
    ref = cmd.withdrawal_ref
    if not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    w = cl.withdrawals.get((cmd.owner_id, ref))
    if w is None:
        return cl._reject(cmd, R.UNKNOWN_REFERENCE, ref, out)
    outcome = WithdrawalState.PAID if cmd.ok else WithdrawalState.FAILED
    if w.state != WithdrawalState.PENDING:
        if (w.state, w.bank_ref) != (outcome, cmd.bank_ref):
            return cl._reject(cmd, R.INVALID_PAYOUT_STATE, ref, out)
    else:
        flag, code = (_POST, TC.WITHDRAWAL) if cmd.ok else (_VOID, TC.WITHDRAWAL)
        cl._commit_one(Transfer(cl._next_tid(), 0, 0, 0, code, 0, flag, w.pending_id), cmd.ts_ns)
        w.state, w.bank_ref = outcome, cmd.bank_ref
        cl._final_at(cmd.ts_ns, FinalKind.WITHDRAWAL, (w.owner_id, ref))
    out.append(WithdrawalCompleted(0, cmd.ts_ns, w.owner_id, ref, w.amount_fen, cmd.ok, w.bank_ref))
    return None
