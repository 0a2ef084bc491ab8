"""Financing (flow 7 of clearing.py's docstring): credit lines, advances, the loans they make, daily
interest accrual, repayments, write-offs and the financing policy.

Functions of the clearing's state (state.py): the handlers ``Clearing`` (clearing.py) gives the core,
and the accrual and repayment legs the settlement waterfall (settling.py) and the clock tick use.
"""



from exchange.commands import (
    GrantAdvance,
    GrantCreditLine,
    ReduceCreditLine,
    RepayLoan,
    SetFinancingPolicy,
    WriteOffLoan,
)
from exchange.events import (
    AdvanceGranted,
    CreditLineChanged,
    FinancingPolicySet,
    InterestAccrued,
    LoanDrawn,
    LoanKind,
    LoanPayer,
    LoanRepaid,
    LoanWrittenOff,
)
from exchange.settlement import rules
from exchange.settlement.model import (
    CreditLine,
    FinalKind,
    Loan,
    Repayment,
    SourceKind,
    TradeRecord,
    TradeState,
)
from exchange.settlement.state import (
    _SUBSIDY,
    AC,
    MAX_RATE_BPS,
    MAX_REF_LEN,
    ROLE,
    TC,
    TRADING_ROLES,
    Chain,
    ClearingState,
    R,
)


def repayment_legs(
    cl: ClearingState, chain: Chain, loan: Loan, payer: int, interest: int, principal: int, ref: int, ts_ns: int
) -> None:
    """Cash from ``payer`` to the financier's funds, and the claims closed by as much."""
    funds = cl._account_id(AC.FINANCIER_FUNDS, loan.financier_id, 0, ts_ns)
    if interest:
        chain.add(payer, funds, interest, TC.INTEREST_PAYMENT, ref)
        close_interest_claim(cl, chain, loan, interest, TC.INTEREST_PAYMENT, ts_ns)
    if principal:
        chain.add(payer, funds, principal, TC.REPAYMENT, ref)
        close_principal_claim(cl, chain, loan, principal, TC.REPAYMENT, ts_ns)


def close_interest_claim(cl: ClearingState, chain: Chain, loan: Loan, amount_fen: int, code: int, ts_ns: int) -> None:
    """The financier's claim to ``amount_fen`` of the loan's interest ends: paid (``code``
    INTEREST_PAYMENT: the income stays earned, INTEREST_COLLECTED records it received) or written off
    (the income that will never be received is reversed)."""
    fin = loan.financier_id
    contra = AC.INTEREST_COLLECTED if code == TC.INTEREST_PAYMENT else AC.INTEREST_INCOME
    chain.add(cl._account_id(contra, fin, 0, ts_ns),
              cl._account_id(AC.INTEREST_RECEIVABLE, fin, loan.borrower_id, ts_ns),
              amount_fen, code, loan.loan_id)


def close_principal_claim(cl: ClearingState, chain: Chain, loan: Loan, amount_fen: int, code: int, ts_ns: int) -> None:
    """The financier's claim to ``amount_fen`` of the loan's principal ends (repaid or written off)."""
    fin, borrower = loan.financier_id, loan.borrower_id
    chain.add(cl._account_id(AC.LOANS_FUNDED, fin, borrower, ts_ns),
              cl._account_id(AC.LOANS_RECEIVABLE, fin, borrower, ts_ns),
              amount_fen, code, loan.loan_id)


def loan_repaid(
    cl: ClearingState, loan: Loan, interest: int, principal: int, payer: LoanPayer, ref: int, ts_ns: int, out: list
) -> None:
    if not interest and not principal:
        return
    loan.interest_due_fen -= interest
    loan.principal_fen -= principal
    loan.principal_repaid_fen += principal
    if payer == LoanPayer.SUBSIDY_FUND:
        loan.interest_subsidised_fen += interest
    else:
        loan.interest_paid_fen += interest
    out.append(LoanRepaid(0, ts_ns, loan.loan_id, loan.financier_id, loan.borrower_id, principal, interest,
                          payer, ref))
    if not loan.is_open:
        loan_closed(cl, loan, ts_ns)


def loan_closed(cl: ClearingState, loan: Loan, ts_ns: int) -> None:
    """A loan has nothing owed any more. An advance never lends again: it is final, queued to leave
    memory after the retention window (Clearing.forget, for settlement_history). A credit line's loan
    stays with its line: the line's next draw opens it again."""
    if loan.kind == LoanKind.ADVANCE:
        cl._final_at(ts_ns, FinalKind.LOAN, loan.loan_id)
    # its accounts may be empty now: parked at the command's end (after its transfers are applied)
    cl.closed_loan_pairs.append((loan.financier_id, loan.borrower_id))


def accrue(cl: ClearingState, loan: Loan, day: int, ts_ns: int, out: list) -> None:
    """Charge the interest of every midnight since the loan's last accrual, on today's principal
    (callers accrue before every change of principal, so it is the principal of those midnights)."""
    days = day - loan.accrued_day
    if days <= 0:
        return
    loan.accrued_day = day
    interest, loan.carry = rules.accrue_interest(loan.principal_fen, loan.rate_bps, days, loan.carry)
    if not interest:
        return
    fin = loan.financier_id
    chain = Chain(cl)
    chain.add(cl._account_id(AC.INTEREST_RECEIVABLE, fin, loan.borrower_id, ts_ns),
              cl._account_id(AC.INTEREST_INCOME, fin, 0, ts_ns), interest, TC.INTEREST_ACCRUAL, loan.loan_id)
    chain.commit(ts_ns)
    loan.interest_due_fen += interest
    loan.interest_accrued_fen += interest
    out.append(InterestAccrued(0, ts_ns, loan.loan_id, fin, loan.borrower_id, day, days, interest))


def bring_interest_up_to(cl: ClearingState, loan: Loan, day: int, ts_ns: int, out: list, ref: int) -> None:
    """Interest accrued through ``day``, and a poor household's paid by the subsidy fund as far as it
    reaches (``interest_left_after_subsidy`` says what this leaves, without doing it)."""
    accrue(cl, loan, day, ts_ns, out)
    collect_subsidised_interest(cl, loan, ts_ns, out, ref)


def collect_subsidised_interest(cl: ClearingState, loan: Loan, ts_ns: int, out: list, ref: int) -> None:
    """A poor household's accrued interest, paid by the subsidy fund as far as the fund reaches."""
    if not loan.interest_due_fen or loan.kind != LoanKind.ADVANCE or not cl._is_poor(loan.borrower_id):
        return
    interest = min(loan.interest_due_fen, cl._balance(AC.POVERTY_SUBSIDY_FUND))
    if not interest:
        return
    chain = Chain(cl)
    repayment_legs(cl, chain, loan, _SUBSIDY, interest, 0, loan.loan_id, ts_ns)
    chain.commit(ts_ns)
    loan_repaid(cl, loan, interest, 0, LoanPayer.SUBSIDY_FUND, ref, ts_ns, out)


def new_loan(cl: ClearingState, kind: LoanKind, financier_id: int, borrower_id: int, trade_id: int, rate_bps: int,
              ts_ns: int) -> Loan:
    loan_id = cl.counters.next_loan_id
    cl.counters.next_loan_id = loan_id + 1
    loan = Loan(loan_id, kind, financier_id, borrower_id, trade_id, rate_bps, rules.cst_day(ts_ns))
    cl.loans[loan_id] = loan
    cl._loans_by_borrower.setdefault(borrower_id, []).append(loan_id)
    return loan


def lend_legs(cl: ClearingState, chain: Chain, loan: Loan, amount_fen: int, code: int, ts_ns: int) -> None:
    fin, borrower = loan.financier_id, loan.borrower_id
    chain.add(cl._account_id(AC.LOANS_RECEIVABLE, fin, borrower, ts_ns),
              cl._account_id(AC.LOANS_FUNDED, fin, borrower, ts_ns), amount_fen, code, loan.loan_id)


def draw_credit_line(cl: ClearingState, trade: TradeRecord, day: int, ts_ns: int, out: list) -> None:
    """A credit-funded trade settles: the financier's money paid the seller; the buyer owes it."""
    line = cl.credit_lines[(trade.buyer_id, trade.financier_id)]
    loan = cl.loans[line.loan_id]
    accrue(cl, loan, day, ts_ns, out)
    chain = Chain(cl)
    lend_legs(cl, chain, loan, trade.amount_fen, TC.CREDIT_LINE_DRAW, ts_ns)
    chain.commit(ts_ns)
    loan.principal_fen += trade.amount_fen
    loan.lent_fen += trade.amount_fen
    out.append(LoanDrawn(0, ts_ns, loan.loan_id, loan.financier_id, loan.borrower_id, trade.trade_id,
                         trade.amount_fen))


def financier_reason(
    cl: ClearingState, cmd: object, borrower_id: int, amount_fen: int, rate_bps: int | None
) -> R | None:
    financier_id = cmd.participant_id  # type: ignore[attr-defined]
    if not cl._has_role(financier_id, (ROLE.FINANCIER,)):
        return R.NOT_AUTHORIZED
    if not cl._has_role(borrower_id, TRADING_ROLES):
        return R.UNKNOWN_PARTICIPANT
    if not cl.has_consented(borrower_id, financier_id):
        return R.NO_CONSENT
    if type(amount_fen) is not int or amount_fen <= 0:
        return R.INVALID_AMOUNT
    if rate_bps is not None and not 0 <= rate_bps <= MAX_RATE_BPS:
        return R.INVALID_SETTINGS
    return None


def grant_credit_line(cl: ClearingState, cmd: GrantCreditLine, out: list) -> None:
    ref, fin = f"L{cmd.buyer_id}", cmd.participant_id
    reason = financier_reason(cl, cmd, cmd.buyer_id, cmd.amount_fen, cmd.rate_bps)
    if reason is None and cl._balance(AC.FINANCIER_FUNDS, fin) < cmd.amount_fen:
        reason = R.INSUFFICIENT_FUNDS
    if reason is not None:
        return cl._reject(cmd, reason, ref, out)
    line = cl.credit_lines.get((cmd.buyer_id, fin))
    if line is None:
        loan = new_loan(cl, LoanKind.CREDIT_LINE, fin, cmd.buyer_id, 0, cmd.rate_bps, cmd.ts_ns)
        account_id = cl._account_id(AC.BUYER_CREDIT_LINE, cmd.buyer_id, fin, cmd.ts_ns)
        line = CreditLine(fin, cmd.buyer_id, account_id, loan.loan_id)
        cl.credit_lines[(cmd.buyer_id, fin)] = line
        lines = cl._lines_by_buyer.setdefault(cmd.buyer_id, [])
        lines.append(line)
        lines.sort(key=lambda x: x.financier_id)
    loan = cl.loans[line.loan_id]
    accrue(cl, loan, rules.cst_day(cmd.ts_ns), cmd.ts_ns, out)  # the old rate up to today
    loan.rate_bps = cmd.rate_bps
    chain = Chain(cl)
    chain.add(cl._account_id(AC.FINANCIER_FUNDS, fin, 0, cmd.ts_ns), line.account_id, cmd.amount_fen,
              TC.CREDIT_LINE_GRANT, cmd.buyer_id)
    chain.commit(cmd.ts_ns)
    line.granted_fen += cmd.amount_fen
    out.append(CreditLineChanged(0, cmd.ts_ns, fin, cmd.buyer_id, cmd.rate_bps, cmd.amount_fen,
                                 cl.ledger.available_fen(line.account_id)))
    return None


def reduce_credit_line(cl: ClearingState, cmd: ReduceCreditLine, out: list) -> None:
    ref, fin = f"L{cmd.buyer_id}", cmd.participant_id
    line = cl.credit_lines.get((cmd.buyer_id, fin))
    if not cl._has_role(fin, (ROLE.FINANCIER,)):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    if line is None:
        return cl._reject(cmd, R.UNKNOWN_REFERENCE, ref, out)
    if type(cmd.amount_fen) is not int or cmd.amount_fen <= 0:
        return cl._reject(cmd, R.INVALID_AMOUNT, ref, out)
    if cl.ledger.available_fen(line.account_id) < cmd.amount_fen:
        return cl._reject(cmd, R.INSUFFICIENT_FUNDS, ref, out)
    chain = Chain(cl)
    chain.add(line.account_id, cl.accounts[(AC.FINANCIER_FUNDS, fin, 0)], cmd.amount_fen,
              TC.CREDIT_LINE_REDUCE, cmd.buyer_id)
    chain.commit(cmd.ts_ns)
    line.reduced_fen += cmd.amount_fen
    out.append(CreditLineChanged(0, cmd.ts_ns, fin, cmd.buyer_id, cl.loans[line.loan_id].rate_bps,
                                 -cmd.amount_fen, cl.ledger.available_fen(line.account_id)))
    return None


def advance_limit_fen(cl: ClearingState, trade: TradeRecord) -> int:
    """The most a financier may advance on this trade (policy share of its estimated value)."""
    spec = cl.instruments[trade.instrument]
    lot = cl.lots.get(trade.lot_id)
    declared_g = lot.avg_weight_g if lot is not None else spec.lot_avg_min_g
    estimated = rules.estimated_value_fen(spec, trade.price_fen, trade.heads, declared_g)
    return rules.advance_limit_fen(estimated, cl.counters.advance_max_bps)


def grant_advance(cl: ClearingState, cmd: GrantAdvance, out: list) -> None:
    ref, fin = f"T{cmd.trade_id}", cmd.participant_id
    trade = cl._trade_for(cmd, cmd.trade_id, out)
    if trade is None:
        return None
    if trade.advance_loan_id:
        loan = cl.loans[trade.advance_loan_id]
        if (loan.financier_id, loan.lent_fen, loan.rate_bps) != (fin, cmd.amount_fen, cmd.rate_bps):
            return cl._reject(cmd, R.DUPLICATE_REFERENCE, ref, out, trade.instrument)
        out.append(AdvanceGranted(0, cmd.ts_ns, loan.loan_id, fin, loan.borrower_id, trade.trade_id,
                                  loan.lent_fen, loan.rate_bps))
        return None
    reason = financier_reason(cl, cmd, trade.seller_id, cmd.amount_fen, cmd.rate_bps)
    if reason is None and trade.state != TradeState.OPEN:
        reason = R.INVALID_TRADE_STATE
    if reason is None and cmd.amount_fen > advance_limit_fen(cl, trade):
        reason = R.ADVANCE_TOO_LARGE
    if reason is None and cl._balance(AC.FINANCIER_FUNDS, fin) < cmd.amount_fen:
        reason = R.INSUFFICIENT_FUNDS
    if reason is not None:
        return cl._reject(cmd, reason, ref, out, trade.instrument)
    loan = new_loan(cl, LoanKind.ADVANCE, fin, trade.seller_id, trade.trade_id, cmd.rate_bps, cmd.ts_ns)
    chain = Chain(cl)
    chain.add(cl.accounts[(AC.FINANCIER_FUNDS, fin, 0)],
              cl._account_id(AC.FARMER_PAYABLE, trade.seller_id, 0, cmd.ts_ns),
              cmd.amount_fen, TC.ADVANCE, loan.loan_id)
    lend_legs(cl, chain, loan, cmd.amount_fen, TC.ADVANCE, cmd.ts_ns)
    chain.commit(cmd.ts_ns)
    loan.principal_fen = loan.lent_fen = cmd.amount_fen
    trade.advance_loan_id = loan.loan_id
    cl._credit_payable(trade.seller_id, SourceKind.ADVANCE, loan.loan_id, cmd.amount_fen)
    out.append(AdvanceGranted(0, cmd.ts_ns, loan.loan_id, fin, trade.seller_id, trade.trade_id, cmd.amount_fen,
                              cmd.rate_bps))
    return None


def borrower_owes_fen(cl: ClearingState, borrower_id: int, financier_id: int, day: int) -> int:
    """What the borrower itself owes this financier on CST ``day``: principal, and the interest
    accrued through that day's midnight unless the subsidy fund pays it (a poor household's advances)."""
    total = 0
    for loan in open_loans(cl, borrower_id, financier_id):
        total += loan.principal_fen + borrower_interest(cl, loan, day)
    return total


def borrower_interest(cl: ClearingState, loan: Loan, day: int) -> int:
    if loan.kind == LoanKind.ADVANCE and cl._is_poor(loan.borrower_id):
        return 0
    return loan.interest_due_fen + _interest_since(loan, day)


def interest_left_after_subsidy(cl: ClearingState, loan: Loan, day: int) -> int:
    """The interest due once accrued through ``day`` and, for a poor household's advance, paid by the
    subsidy fund as far as it reaches, as ``bring_interest_up_to`` would leave it, without doing it."""
    interest = loan.interest_due_fen + _interest_since(loan, day)
    if loan.kind == LoanKind.ADVANCE and cl._is_poor(loan.borrower_id):
        interest -= min(interest, cl._balance(AC.POVERTY_SUBSIDY_FUND))
    return interest


def open_loans(cl: ClearingState, borrower_id: int, financier_id: int) -> list[Loan]:
    loans = (cl.loans[i] for i in cl._loans_by_borrower.get(borrower_id, ()))
    return [loan for loan in loans if loan.financier_id == financier_id and loan.is_open]


def repay_loan(cl: ClearingState, cmd: RepayLoan, out: list) -> None:
    """Borrower: repay ``amount_fen`` to a financier over its loans by loan id, interest first;
    credit-line loans from the borrower's cash, advances from its payable."""
    ref, borrower, fin = cmd.repayment_ref or f"F{cmd.financier_id}", cmd.participant_id, cmd.financier_id
    if type(cmd.amount_fen) is not int or cmd.amount_fen <= 0 or len(cmd.repayment_ref) > MAX_REF_LEN:
        return cl._reject(cmd, R.INVALID_AMOUNT, ref, out)
    done = cl.repayments.get((borrower, cmd.repayment_ref)) if cmd.repayment_ref else None
    if done is not None:
        return retried_repayment(cl, cmd, done, out)
    day = rules.cst_day(cmd.ts_ns)
    loans = open_loans(cl, borrower, fin)
    # checked against the interest accrued through today, without accruing it yet: a rejected
    # command changes nothing
    if not loans or cmd.amount_fen > borrower_owes_fen(cl, borrower, fin, day):
        return cl._reject(cmd, R.INVALID_AMOUNT, ref, out)
    plan, need = repayment_plan(cl, loans, cmd.amount_fen, day)
    for key, amount in need.items():
        if cl._balance(*key) < amount:
            return cl._reject(cmd, R.INSUFFICIENT_FUNDS, ref, out)
    for loan in loans:
        accrue(cl, loan, day, cmd.ts_ns, out)
    chain = Chain(cl)
    for loan, interest, principal in plan:
        payer = cl.accounts[_repayment_source(loan)]
        repayment_legs(cl, chain, loan, payer, interest, principal, loan.loan_id, cmd.ts_ns)
    chain.commit(cmd.ts_ns)
    for loan, interest, principal in plan:
        if loan.kind == LoanKind.ADVANCE:
            cl._take_payable(borrower, interest + principal)
        loan_repaid(cl, loan, interest, principal, LoanPayer.BORROWER, 0, cmd.ts_ns, out)
    if cmd.repayment_ref:
        legs = [(loan.loan_id, principal, interest) for loan, interest, principal in plan]
        cl.repayments[(borrower, cmd.repayment_ref)] = Repayment(
            borrower, cmd.repayment_ref, fin, cmd.amount_fen, cmd.ts_ns, legs)
        cl._final_at(cmd.ts_ns, FinalKind.REPAYMENT, (borrower, cmd.repayment_ref))
    return None


def retried_repayment(cl: ClearingState, cmd: RepayLoan, done: Repayment, out: list) -> None:
    """A retry of a repayment that took effect: its ``LoanRepaid`` events again, changing nothing
    (no accrual either), or DUPLICATE_REFERENCE if it is not the same repayment."""
    if (done.financier_id, done.amount_fen) != (cmd.financier_id, cmd.amount_fen):
        return cl._reject(cmd, R.DUPLICATE_REFERENCE, cmd.repayment_ref, out)
    for loan_id, principal, interest in done.legs:
        out.append(LoanRepaid(0, done.ts_ns, loan_id, done.financier_id, done.borrower_id, principal, interest,
                              LoanPayer.BORROWER, 0))
    return None


def repayment_plan(
    cl: ClearingState, loans: list[Loan], amount_fen: int, day: int
) -> tuple[list[tuple[Loan, int, int]], dict[tuple[int, int, int], int]]:
    """(loan, interest, principal) to pay from each loan by loan id, interest first, and the total
    needed from each source account."""
    plan: list[tuple[Loan, int, int]] = []
    need: dict[tuple[int, int, int], int] = {}
    for loan in loans:
        interest = min(borrower_interest(cl, loan, day), amount_fen)
        principal = min(loan.principal_fen, amount_fen - interest)
        amount_fen -= interest + principal
        if interest or principal:
            plan.append((loan, interest, principal))
            key = _repayment_source(loan)
            need[key] = need.get(key, 0) + interest + principal
    return plan, need


def write_off_loan(cl: ClearingState, cmd: WriteOffLoan, out: list) -> None:
    """Financier: give up what is still owed on a loan of its own. Interest is accrued through today
    first (and a poor household's paid by the subsidy fund as far as it reaches, as on every tick),
    so the write-off is exactly the claim the financier held. Each claim closes against its contra
    (LOANS_FUNDED; INTEREST_INCOME, reversing income that will never be received): no cash moves,
    the loss is the lent cash that never returns to FINANCIER_FUNDS. A credit line itself is
    untouched: a later draw opens its loan again, so a financier that stops lending reduces the line
    too."""
    ref = f"L{cmd.loan_id}"
    loan = cl.loans.get(cmd.loan_id) if type(cmd.loan_id) is int else None
    if loan is None or loan.financier_id != cmd.participant_id:
        return cl._reject(cmd, R.UNKNOWN_LOAN, ref, out)
    day = rules.cst_day(cmd.ts_ns)
    if not loan.principal_fen and not interest_left_after_subsidy(cl, loan, day):
        return cl._reject(cmd, R.LOAN_CLOSED, ref, out)
    bring_interest_up_to(cl, loan, day, cmd.ts_ns, out, 0)
    principal, interest = loan.principal_fen, loan.interest_due_fen
    chain = Chain(cl)
    if principal:
        close_principal_claim(cl, chain, loan, principal, TC.LOAN_WRITE_OFF, cmd.ts_ns)
    if interest:
        close_interest_claim(cl, chain, loan, interest, TC.LOAN_WRITE_OFF, cmd.ts_ns)
    chain.commit(cmd.ts_ns)
    loan.principal_fen = loan.interest_due_fen = loan.carry = 0
    loan.principal_written_off_fen += principal
    loan.interest_written_off_fen += interest
    out.append(LoanWrittenOff(0, cmd.ts_ns, loan.loan_id, loan.financier_id, loan.borrower_id, principal, interest,
                              cmd.reason[:500]))
    loan_closed(cl, loan, cmd.ts_ns)
    return None


def set_financing_policy(cl: ClearingState, cmd: SetFinancingPolicy, out: list) -> None:
    if not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, "", out)
    if not 0 <= cmd.advance_max_bps <= rules.BPS:
        return cl._reject(cmd, R.INVALID_SETTINGS, "", out)
    cl.counters.advance_max_bps = cmd.advance_max_bps
    out.append(FinancingPolicySet(0, cmd.ts_ns, cmd.advance_max_bps))
    return None


def _interest_since(loan: Loan, day: int) -> int:
    """Interest the loan will accrue when brought up to ``day`` (not yet charged)."""
    days = day - loan.accrued_day
    return rules.accrue_interest(loan.principal_fen, loan.rate_bps, days, loan.carry)[0] if days > 0 else 0


def _repayment_source(loan: Loan) -> tuple[int, int, int]:
    """Account key a borrower repays a loan from: its cash (credit lines) or its payable (advances)."""
    code = AC.BUYER_CASH if loan.kind == LoanKind.CREDIT_LINE else AC.FARMER_PAYABLE
    return (code, loan.borrower_id, 0)
