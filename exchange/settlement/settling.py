"""Settlement and fees (flow 5 of clearing.py's docstring): the waterfall that pays a delivered trade's
amount out of the seller's receivable (fee or its subsidy, the seller's advances, the payable, a
cooperative's split to its members) and the fee schedule.

``settle`` runs on the first clock tick after the dispute window (``Clearing.on_clock``) or when a
dispute is resolved (delivery.py). Functions of the clearing's state (state.py).
"""



from exchange.commands import (
    SetFeeSchedule,
)
from exchange.events import (
    CooperativeSplitPaid,
    FeeScheduleSet,
    LoanPayer,
    TradeFacts,
)
from exchange.settlement import rules
from exchange.settlement.financing import bring_interest_up_to, draw_credit_line, loan_repaid, repayment_legs
from exchange.settlement.model import (
    Loan,
    Participant,
    TradeRecord,
)
from exchange.settlement.state import (
    _ADVANCE,
    _COOPERATIVE,
    _FEES,
    _FINAL_TRADE,
    _FROM_SPLIT,
    _FROM_TRADE,
    _PAYABLE,
    _PAYABLE_SOURCE,
    _SETTLED,
    _SUBSIDY,
    _TC_FEE,
    _TC_FEE_SUBSIDY,
    _TC_SETTLEMENT,
    _TC_SPLIT,
    _TRADE_SETTLED,
    _ZERO,
    MAX_FEE_BPS,
    Boxed,
    Chain,
    ClearingState,
    R,
    _astuple,
)


def settle(cl: ClearingState, trade: TradeRecord, ts_ns: Boxed, out: list) -> None:
    """Pay the trade's amount out of the seller's receivable: fee, advances, payable, split."""
    t = _astuple(trade)  # the fields read before anything changes the record (positions checked at import)
    seller: Boxed = t[3]
    amount: int = t[23]
    tid: Boxed = t[0]
    financier_id: Boxed = t[10]
    who = cl.participants.get(seller)
    poor = who is not None and who.poor_verified  # _is_poor, with the participant in hand
    # a cooperative with members to split its proceeds to, else None
    coop = who if who is not None and who.role == _COOPERATIVE and who.member_ids else None
    advances = seller_advances(cl, trade) if seller in cl._loans_by_borrower else ()
    if advances or (financier_id and amount):
        day = rules.cst_day(ts_ns)
        for loan in advances:  # interest up to today's midnight first; a poor household's from the fund
            bring_interest_up_to(cl, loan, day, ts_ns, out, tid)
        if financier_id and amount:
            draw_credit_line(cl, trade, day, ts_ns, out)
    receivable: Boxed = cl._receivable_accounts[seller]  # accounts[(_RECEIVABLE, seller, 0)]
    chain = Chain(cl)
    fee = rules.fee_fen(amount, cl.fee_bps.get(t[1], 0))
    waivers = poor_member_waivers(cl, coop, fee) if coop is not None and fee else ()
    waived = fee if poor else sum(waivers) if waivers else 0
    if waived:
        trade.fee_subsidy_fen = subsidy = min(waived, cl.ledger.available_fen(_SUBSIDY))
        trade.fee_forgone_fen = waived - subsidy
        chain.add(_SUBSIDY, _FEES, subsidy, _TC_FEE_SUBSIDY, tid)
    charged: Boxed = fee - waived  # boxed once: the record and the leg
    trade.fee_fen = charged
    chain.add(receivable, _FEES, charged, _TC_FEE, tid)
    # a poor household keeps its whole amount; a cooperative's poor members' waivers are kept apart
    # from its advances and reach those members in the split
    left = amount if poor else amount - fee
    repaid: list[tuple[Loan, int, int]] = []
    for loan in advances:
        interest = 0 if poor else min(loan.interest_due_fen, left)
        principal = min(loan.principal_fen, left - interest)
        left -= interest + principal
        repayment_legs(cl, chain, loan, receivable, interest, principal, tid, ts_ns)
        repaid.append((loan, interest, principal))
    payable: Boxed = cl._payable_accounts.get(seller)
    if payable is None:
        payable = cl._account_id(_PAYABLE, seller, 0, ts_ns)
    net: Boxed = left + (0 if poor else waived)  # boxed once: the leg, the record, the event
    chain.add(receivable, payable, net, _TC_SETTLEMENT, tid)
    splits = split_legs(cl, chain, trade, coop, payable, left, waivers, ts_ns) if coop is not None else []
    chain.commit(ts_ns)
    after_settlement(cl, trade, net, splits, repaid, ts_ns, out)


def seller_advances(cl: ClearingState, trade: TradeRecord) -> list[Loan]:
    """The seller's open advances: the trade's own first, then by loan id."""
    loan_ids = cl._loans_by_borrower.get(trade.seller_id)
    if not loan_ids:
        return []
    loans = [cl.loans[i] for i in loan_ids]
    advances = [loan for loan in loans if loan.kind == _ADVANCE and loan.is_open]
    advances.sort(key=lambda loan: (loan.loan_id != trade.advance_loan_id, loan.loan_id))
    return advances


def poor_member_waivers(cl: ClearingState, coop: Participant, fee_fen: int) -> tuple[int, ...]:
    """The fee waived for each member of ``coop`` (rules.poor_member_fee_waivers_fen), in member order."""
    poor = tuple(cl._is_poor(m) for m in coop.member_ids)
    return rules.poor_member_fee_waivers_fen(fee_fen, tuple(coop.shares_bps), poor) if any(poor) else ()


def split_legs(
    cl: ClearingState, chain: Chain, trade: TradeRecord, coop: Participant, payable: int, net_fen: int,
    waivers: tuple[int, ...], ts_ns: int,
) -> list[tuple[int, int]]:
    """Each member's part of ``net_fen`` (after the whole fee and the advances), plus the fee waived
    for it, from the cooperative's payable."""
    parts = rules.cooperative_split_fen(net_fen, tuple(coop.shares_bps))
    if waivers:
        parts = tuple(part + waiver for part, waiver in zip(parts, waivers, strict=True))
    splits = list(zip(coop.member_ids, parts, strict=True))
    for member_id, part in splits:
        member_payable = cl._account_id(_PAYABLE, member_id, 0, ts_ns)
        chain.add(payable, member_payable, part, _TC_SPLIT, trade.trade_id)
    return splits


def after_settlement(
    cl: ClearingState, trade: TradeRecord, net_fen: Boxed, splits: list[tuple[int, int]],
    repaid: list[tuple[Loan, int, int]], ts_ns: Boxed, out: list,
) -> None:
    for loan, interest, principal in repaid:
        loan_repaid(cl, loan, interest, principal, LoanPayer.BORROWER, trade.trade_id, ts_ns, out)
        trade.interest_paid_fen += interest
        trade.principal_repaid_fen += principal
    t = _astuple(trade)  # the fields the event reads, as one tuple (positions checked at import)
    tid: Boxed = t[0]
    seller: Boxed = t[3]
    trade.payable_fen = net_fen
    trade.state = _SETTLED
    trade.settled_at_ns = ts_ns
    cl.final.append((ts_ns, _FINAL_TRADE, tid))
    cl._trade_closed(t[4])
    kept_fen: Boxed = net_fen - sum(part for _, part in splits) if splits else net_fen
    if kept_fen:  # _credit_payable, inline: once per settlement
        fifo = cl.payables.get(seller)
        if fifo is None:
            cl.payables[seller] = fifo = []
        fifo.append(_PAYABLE_SOURCE(_FROM_TRADE, tid, kept_fen))
    # (amount, fee, fee subsidy, fee forgone, interest paid, principal repaid)
    out.append(_TRADE_SETTLED(_ZERO, ts_ns, tid, seller, t[23], t[27], t[28], t[29], t[30], t[31], net_fen,
                              trade_facts(cl, t)))
    for member_id, part in splits:
        cl._credit_payable(member_id, _FROM_SPLIT, tid, part)
        out.append(CooperativeSplitPaid(0, ts_ns, tid, seller, member_id, part, cl._is_poor(member_id)))


def trade_facts(cl: ClearingState, t: tuple) -> TradeFacts:
    """What the report states of a trade (read as one tuple, positions checked at import) as it is now,
    carried on the event that settles or rejects it."""
    advance = cl.loans.get(t[25]) if t[25] else None
    return TradeFacts(t[1], t[2], t[3], t[6], t[7], t[8], t[10], t[13], t[14], t[15], t[16], t[17], t[24],
                      t[25], 0 if advance is None else advance.financier_id, cl._is_poor(t[3]), t[33], t[34],
                      t[37])


def set_fee_schedule(cl: ClearingState, cmd: SetFeeSchedule, out: list) -> None:
    if not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, "", out, cmd.instrument)
    if cmd.instrument not in cl.instruments:
        return cl._reject(cmd, R.UNKNOWN_INSTRUMENT, "", out, cmd.instrument)
    if not 0 <= cmd.seller_fee_bps <= MAX_FEE_BPS:
        return cl._reject(cmd, R.INVALID_SETTINGS, "", out, cmd.instrument)
    cl.fee_bps[cmd.instrument] = cmd.seller_fee_bps
    out.append(FeeScheduleSet(0, cmd.ts_ns, cmd.instrument, cmd.seller_fee_bps))
    return None
