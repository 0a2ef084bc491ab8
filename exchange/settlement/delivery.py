"""Delivery and disputes (flow 4 of clearing.py's docstring): the weigh-in that prices a trade's
delivery and splits its obligation between the seller's receivable and the buyer, the dispute window,
a seller's dispute hold, the operator's resolution (which settles at once) and the buyer's rejection of
an out-of-grade delivery.

Functions of the clearing's state (state.py), the handlers ``Clearing`` (clearing.py) gives the core.
"""



from exchange.commands import (
    OpenDispute,
    RecordWeighIn,
    RejectDelivery,
    ResolveDispute,
)
from exchange.domain import InstrumentSpec
from exchange.events import (
    DeliveryGrade,
    DeliveryResolved,
    DisputeOpened,
)
from exchange.settlement import rules
from exchange.settlement.ledger import (
    MAX_INT64,
    Transfer,
)
from exchange.settlement.model import (
    FinalKind,
    TradeRecord,
    TradeState,
)
from exchange.settlement.rules import DeliveryTerms
from exchange.settlement.settling import settle, trade_facts
from exchange.settlement.state import (
    _DELIVERED,
    _DELIVERY_RECORDED,
    _ESCROW,
    _LINKED,
    _OK,
    _OPEN,
    _PENDING,
    _POST,
    _RECEIVABLE,
    _SHORT_MAX,
    _TC_ADJUSTMENT,
    _TC_SETTLEMENT,
    _TRANSFER,
    _UNCHECKED_CERTS,
    _VOID,
    _ZERO,
    AC,
    TC,
    Boxed,
    Chain,
    ClearingState,
    R,
    _astuple,
    refused,
    refused_chain,
)


def record_weigh_in(cl: ClearingState, cmd: RecordWeighIn, out: list) -> None:
    # The command, the trade and the terms read as one tuple each (field order checked at import); ids,
    # weights and amounts pass on as the objects they came as (Boxed), each new sum boxed once.
    # (participant_id, ts_ns, trade_id, heads_delivered, total_weight_g, quarantine_cert, quarantine_checked,
    # heads_refused, unfasted)
    c = _astuple(cmd)
    trade = cl.trades.get(c[2])
    if trade is None:
        return cl._reject(cmd, R.UNKNOWN_TRADE, f"T{c[2]}", out)
    # (trade_id, instrument, buyer_id, seller_id, lot_id, buy_order_id, heads, price_fen, obligation_fen,
    # source_account_id, financier_id, traded_at_ns, state, ...)
    t = _astuple(trade)
    instrument: Boxed = t[1]
    spec = cl.instruments[instrument]
    terms = weigh_in_terms(cl, c, t, spec)
    if not isinstance(terms, DeliveryTerms):
        return cl._reject(cmd, terms, f"T{c[2]}", out, instrument)
    ts_ns: Boxed = c[1]
    trade_id: Boxed = t[0]
    heads: Boxed = c[3]
    weight_g: Boxed = c[4]
    refused_heads: Boxed = c[7]
    # (avg_weight_g, grade, discount_fen_per_kg, amount_fen, shrink_g)
    avg_g, grade, discount, amount, shrink = _astuple(terms)
    amount_n: int = amount
    obligation_n: int = t[8]
    refund: Boxed = obligation_n - amount_n  # boxed once: the transfer, the record and the event
    seller_id: Boxed = t[3]
    receivable: Boxed = cl._receivable_accounts.get(seller_id)  # accounts[(_RECEIVABLE, seller_id, 0)]
    if receivable is None:
        receivable = cl._account_id(_RECEIVABLE, seller_id, 0, ts_ns)
    # The chain of two legs, written out (as Chain would make it, without its calls): the amount to the
    # seller's receivable, the rest back to the buyer's source, a leg of 0 left out. Both are >= 0 and
    # not both 0: the amount is at most the obligation, which is positive (holds.on_trade).
    tid: Boxed = cl._next_tid()
    if amount_n and refund:
        refund_id: Boxed = cl._next_tid()
        chain = [_TRANSFER(tid, _ESCROW, receivable, amount, _TC_SETTLEMENT, trade_id, _LINKED),
                 _TRANSFER(refund_id, _ESCROW, t[9], refund, _TC_ADJUSTMENT, trade_id, _ZERO)]
        results = cl.ledger.create_transfers(chain, ts_ns)
        if results.count(_OK) != 2:
            refused_chain(chain, results)
    else:
        leg = _TRANSFER(tid, _ESCROW, receivable, amount, _TC_SETTLEMENT, trade_id, _ZERO) if amount_n else \
            _TRANSFER(tid, _ESCROW, t[9], refund, _TC_ADJUSTMENT, trade_id, _ZERO)
        result = cl.ledger.create_transfer(leg, ts_ns)
        if result is not _OK:
            refused(leg, result)
    until_ns: Boxed = ts_ns + spec.dispute_window_ns  # boxed once: the record, the deadline, the event
    trade.state = _DELIVERED
    trade.heads_delivered, trade.total_weight_g = heads, weight_g
    trade.heads_refused, trade.shrink_g = refused_heads, shrink
    trade.avg_weight_g, trade.grade = avg_g, grade
    trade.discount_fen_per_kg = discount
    cert: str = c[5]  # a str: compiled, strip is a native call
    trade.quarantine_cert = cert.strip()
    trade.amount_fen, trade.refund_fen = amount, refund
    trade.delivered_at_ns = ts_ns
    trade.dispute_until_ns = until_ns
    cl._add_deadline(until_ns, trade_id)
    out.append(_DELIVERY_RECORDED(_ZERO, ts_ns, trade_id, heads, weight_g, avg_g, grade, discount, amount,
                                  refund, until_ns, refused_heads, shrink))
    return None


def weigh_in_terms(cl: ClearingState, c: tuple, t: tuple, spec: InstrumentSpec) -> DeliveryTerms | R:
    """The terms of this weigh-in (``c``: the RecordWeighIn's fields) of a known trade (``t``: its
    record's fields), or why it must be rejected (checked in this order; the terms are computed once,
    for the last check and the amount). The certificate: checked and named, then (an instrument
    whose ``quarantine_region`` checks it) of the region's shape and the lot's own."""
    participant_id: Boxed = c[0]
    if participant_id != t[3] and not cl._is_operator(participant_id):
        return R.NOT_AUTHORIZED
    if t[12] != _OPEN:
        return R.INVALID_TRADE_STATE
    cert: str = c[5]  # a str: compiled, strip is a native call
    if not c[6] or not cert.strip():
        return R.QUARANTINE_NOT_CHECKED
    region = spec.quarantine_region
    if region != _UNCHECKED_CERTS:
        if not rules.quarantine_cert_ok(region, cert):
            return R.INVALID_QUARANTINE_CERT
        lot = cl.lots.get(t[4])
        if lot is None or not rules.same_quarantine_cert(lot.quarantine_cert, cert):
            return R.QUARANTINE_CERT_MISMATCH
    heads: Boxed = c[3]
    weight_g: Boxed = c[4]
    refused: Boxed = c[7]
    heads_traded: Boxed = t[6]
    if not _valid_delivery(heads_traded, heads, weight_g, refused):
        return R.INVALID_DELIVERY
    cap: Boxed = t[8] if not refused else rules.payable_cap_fen(t[8], heads_traded, refused)
    terms = rules.priced_delivery_terms(spec, t[7], cap, heads, weight_g, c[8])
    if terms is None:
        return R.INVALID_DELIVERY  # its discount would take the whole price: refused, never paid as 0
    return terms


def open_dispute(cl: ClearingState, cmd: OpenDispute, out: list) -> None:
    ref = f"T{cmd.trade_id}"
    trade = cl._trade_for(cmd, cmd.trade_id, out)
    if trade is None:
        return None
    if cmd.participant_id not in (trade.buyer_id, trade.seller_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out, trade.instrument)
    if trade.state != TradeState.DELIVERED:
        return cl._reject(cmd, R.INVALID_TRADE_STATE, ref, out, trade.instrument)
    if cmd.ts_ns >= trade.dispute_until_ns:
        return cl._reject(cmd, R.DISPUTE_WINDOW_CLOSED, ref, out, trade.instrument)
    trade.state = TradeState.DISPUTED
    trade.disputed_by, trade.dispute_reason = cmd.participant_id, cmd.reason[:500]
    if cmd.participant_id == trade.seller_id:
        hold_raise(cl, trade, cmd.ts_ns)
    out.append(DisputeOpened(0, cmd.ts_ns, trade.trade_id, cmd.participant_id, trade.dispute_reason,
                             trade.raise_held_fen))
    return None


def hold_raise(cl: ClearingState, trade: TradeRecord, ts_ns: int) -> None:
    """A seller's dispute: hold what a raise may cost the buyer, ``rules.dispute_raise_limit_fen`` of the
    weigh-in amount, on the trade's own source (its cash, or the credit line that funded it while the
    buyer still consents to that financier), as far as it has it available: the dispute never waits
    for the buyer's money, and the resolution may raise by at most what is held (possibly 0). A
    pending transfer source -> SELLER_RECEIVABLE, posted in part by a raise, else voided."""
    limit = rules.dispute_raise_limit_fen(trade.amount_fen)
    source = trade.source_account_id
    usable = not trade.financier_id or cl.has_consented(trade.buyer_id, trade.financier_id)
    held = min(limit, cl.ledger.available_fen(source)) if usable else 0
    if held <= 0:
        return
    tid = cl._next_tid()
    receivable = cl._receivable_accounts[trade.seller_id]
    cl._commit_one(Transfer(tid, source, receivable, held, TC.DELIVERY_ADJUSTMENT, trade.trade_id, _PENDING),
                     ts_ns)
    trade.raise_pending_id, trade.raise_held_fen = tid, held


def end_raise_hold(cl: ClearingState, trade: TradeRecord, raise_fen: int, ts_ns: int) -> None:
    """Post ``raise_fen`` of a seller's dispute hold to the seller's receivable (the rest is released),
    or void it for 0; nothing if nothing was held."""
    if not trade.raise_pending_id:
        return
    flag = _POST if raise_fen else _VOID
    cl._commit_one(Transfer(cl._next_tid(), 0, 0, raise_fen, TC.DELIVERY_ADJUSTMENT, trade.trade_id, flag,
                              trade.raise_pending_id), ts_ns)
    trade.raise_pending_id = 0
    trade.amount_fen += raise_fen
    trade.raised_fen = raise_fen


def resolve_dispute(cl: ClearingState, cmd: ResolveDispute, out: list) -> None:
    """The operator's decision: 0 .. the weigh-in amount, lowered ones returning the difference to the
    buyer, or for a seller's dispute up to the amount plus what was held, the raise posted from the
    hold to the seller's receivable (the rest of the hold released). The trade settles at once."""
    ref = f"T{cmd.trade_id}"
    if not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    trade = cl._trade_for(cmd, cmd.trade_id, out)
    if trade is None:
        return None
    if trade.state != TradeState.DISPUTED:
        return cl._reject(cmd, R.INVALID_TRADE_STATE, ref, out, trade.instrument)
    weighed = trade.amount_fen
    if type(cmd.amount_fen) is not int or not 0 <= cmd.amount_fen <= weighed + trade.raise_held_fen:
        return cl._reject(cmd, R.INVALID_AMOUNT, ref, out, trade.instrument)
    raise_fen = max(cmd.amount_fen - weighed, 0)
    end_raise_hold(cl, trade, raise_fen, cmd.ts_ns)
    if not raise_fen:
        refund_from_receivable(cl, trade, weighed - cmd.amount_fen, cmd.ts_ns)
    out.append(DeliveryResolved(0, cmd.ts_ns, trade.trade_id, trade.amount_fen, trade.refund_fen, False,
                                cmd.participant_id, raise_fen))
    settle(cl, trade, cmd.ts_ns, out)
    return None


def reject_delivery(cl: ClearingState, cmd: RejectDelivery, out: list) -> None:
    ref = f"T{cmd.trade_id}"
    trade = cl._trade_for(cmd, cmd.trade_id, out)
    if trade is None:
        return None
    if cmd.participant_id != trade.buyer_id:
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out, trade.instrument)
    if trade.state not in (TradeState.DELIVERED, TradeState.DISPUTED):
        return cl._reject(cmd, R.INVALID_TRADE_STATE, ref, out, trade.instrument)
    if trade.grade != DeliveryGrade.OUT_OF_GRADE:
        return cl._reject(cmd, R.DELIVERY_NOT_REJECTABLE, ref, out, trade.instrument)
    if cmd.ts_ns >= trade.dispute_until_ns:
        return cl._reject(cmd, R.DISPUTE_WINDOW_CLOSED, ref, out, trade.instrument)
    end_raise_hold(cl, trade, 0, cmd.ts_ns)  # a seller's dispute ends with the rejection: released
    refund_from_receivable(cl, trade, trade.amount_fen, cmd.ts_ns)
    trade.state = TradeState.REJECTED
    trade.settled_at_ns = cmd.ts_ns
    cl._final_at(cmd.ts_ns, FinalKind.TRADE, trade.trade_id)
    cl._trade_closed(trade.lot_id)
    out.append(DeliveryResolved(0, cmd.ts_ns, trade.trade_id, 0, trade.refund_fen, True, cmd.participant_id, 0,
                                trade_facts(cl, _astuple(trade))))
    return None


def refund_from_receivable(cl: ClearingState, trade: TradeRecord, refund_fen: int, ts_ns: int) -> None:
    chain = Chain(cl)
    receivable = cl.accounts[(AC.SELLER_RECEIVABLE, trade.seller_id, 0)]
    chain.add(receivable, trade.source_account_id, refund_fen, TC.DELIVERY_ADJUSTMENT, trade.trade_id)
    chain.commit(ts_ns)
    trade.amount_fen -= refund_fen
    trade.refund_fen += refund_fen


def _valid_delivery(heads_traded: int, heads_delivered: int, total_weight_g: int, heads_refused: int) -> bool:
    """Heads delivered and refused, each >= 0, together at most the heads traded; a weight exactly when
    heads were delivered, that PostgreSQL can hold."""
    if heads_refused < 0 or not 0 <= heads_delivered <= heads_traded - heads_refused or total_weight_g < 0:
        return False
    # compiled, an int up to _SHORT_MAX is held unboxed; comparing one with MAX_INT64 (not short) would box it
    if not (total_weight_g <= _SHORT_MAX or total_weight_g <= MAX_INT64):
        return False
    return (heads_delivered == 0) == (total_weight_g == 0)
