"""Holds and escrow (flows 2 and 3 of clearing.py's docstring): buy orders' and lot-auction bids' holds,
fills posted into escrow as trade obligations, and the core's order and listing events that move them.

``check_buy``/``check_sell``/``check_amend_buy``/``check_bid`` say why the core must refuse an order, an
amendment or a bid; the rest places, moves and voids holds (pending transfers source -> ESCROW, from the
buyer's cash or a consented credit line). Functions of the clearing's state (state.py), called by
``Clearing`` (clearing.py).
"""



from exchange.domain import InstrumentSpec
from exchange.events import (
    InstrumentListed,
    LotRegistered,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    Trade,
)
from exchange.settlement import rules
from exchange.settlement.ledger import (
    Transfer,
)
from exchange.settlement.state import (
    _BUY_SIDE,
    _EMPTY,
    _ESCROW,
    _IN_GRADE,
    _LINKED,
    _OBLIGATION_RECORDED,
    _OK,
    _OPEN,
    _PENDING,
    _POST,
    _POST_LINKED,
    _TC_HOLD,
    _TC_RELEASE,
    _TC_TRADE,
    _TRADE_RECORD,
    _TRANSFER,
    _VOID,
    _ZERO,
    SELLING_ROLES,
    TC,
    TRADING_ROLES,
    Boxed,
    ClearingInvariantError,
    ClearingState,
    HeldOrder,
    R,
    _astuple,
    refused,
    refused_chain,
)


def check_buy(
    cl: ClearingState, participant_id: int, spec: InstrumentSpec, limit_price_fen: int, heads: int
) -> R | None:
    """Why a buy of ``heads`` at ``limit_price_fen`` (a market buy: the band's upper edge, 0 if none)
    cannot be accepted, or None: the participant must be a registered trader and cash or one
    credit line must cover the whole hold."""
    if participant_id not in cl._traders:  # a registered trader: one set lookup, not the record's and its role's
        who = cl.participants.get(participant_id)
        if who is None:
            return R.UNKNOWN_PARTICIPANT
        if who.role not in TRADING_ROLES:
            return R.NOT_AUTHORIZED
    if limit_price_fen <= 0:
        return R.UNBOUNDED_HOLD
    # the clearing's per-instrument grams (kept since the listing; place_hold prices the hold by the same
    # table): recomputing them from the specification cost every buy a call
    grams = cl._hold_grams.get(spec.symbol)
    if grams is None:
        grams = rules.hold_grams(spec)  # an instrument the clearing was not told of: its rule as listed
    amount: int = heads * rules.per_head_hold_fen(grams, limit_price_fen)
    # hold_source's first answer, cash, inline (no tuple made for it): every buy of a funded buyer
    cash: Boxed = cl._cash_accounts.get(participant_id)
    if cash is not None and cl.ledger.available_fen(cash) >= amount:
        # Cash covers it: place_hold reuses this answer for the same buyer and amount while no transfer has
        # been made since (_next_transfer_id unchanged). Cash is tried first and its account never changes,
        # so only a transfer could change the answer. A line's answer also depends on consent (a participant
        # field, no transfer): never kept.
        cl._checked_buyer = participant_id
        cl._checked_amount = amount
        cl._checked_account = cash
        cl._checked_at_tid = cl._next_transfer_id
        return None
    return None if hold_source(cl, participant_id, amount) is not None else R.INSUFFICIENT_FUNDS


def check_sell(cl: ClearingState, participant_id: int) -> R | None:
    """Optional: a seller must be a registered farmer or cooperative (else its proceeds wait)."""
    if participant_id in cl._sellers:
        return None  # every sell of a registered seller: one set lookup instead of the record's and its role's
    who = cl.participants.get(participant_id)
    if who is None:
        return R.UNKNOWN_PARTICIPANT
    return None if who.role in SELLING_ROLES else R.NOT_AUTHORIZED


def on_buy_accepted(
    cl: ClearingState, order_id: int, participant_id: int, spec: InstrumentSpec, limit_price_fen: int, heads: int,
    ts_ns: int,
) -> None:
    """Place the hold of an accepted buy (``check_buy`` passed in the same command). Idempotent: the
    ``OrderAccepted`` event places it too if the core did not call this."""
    if order_id not in cl.holds:
        place_hold(cl, order_id, participant_id, limit_price_fen, heads, ts_ns, spec.symbol)


def place_hold(
    cl: ClearingState, order_id: Boxed, participant_id: Boxed, limit_price_fen: Boxed, heads: Boxed, ts_ns: Boxed,
    instrument: str,
) -> None:
    """Hold ``heads`` at ``limit_price_fen`` of a listed ``instrument`` for this order or bid."""
    # ids, price, heads and time pass on as the objects they came as (Boxed); the sums are ints
    grams: int = cl._hold_grams[instrument]
    per_head: int = rules.per_head_hold_fen(grams, limit_price_fen)
    heads_n: int = heads
    amount_n: int = heads_n * per_head
    amount: Boxed = amount_n  # boxed once: the hold's transfer
    account_id: Boxed
    financier_id: Boxed
    buyer_n: int = participant_id
    if (cl._checked_at_tid == cl._next_transfer_id and cl._checked_amount == amount_n
            and cl._checked_buyer == buyer_n):
        # check_buy's answer for this buyer and amount, cash, with no transfer since: hold_source's own
        account_id = cl._checked_account
        financier_id = _ZERO
    else:
        source = hold_source(cl, participant_id, amount)
        if source is None:
            raise ClearingInvariantError(f"buy {order_id} accepted without funds for its hold of {amount} fen")
        account_id = source[0]
        financier_id = source[1]
    tid = cl._next_tid()  # a transfer: the check's answer is spent (and could be no longer true)
    result = cl.ledger.create_transfer_of(tid, account_id, _ESCROW, amount, _TC_HOLD, order_id, _PENDING, _ZERO, ts_ns)
    if result is not _OK:
        refused(_TRANSFER(tid, account_id, _ESCROW, amount, _TC_HOLD, order_id, _PENDING), result)
    cl.holds[order_id] = HeldOrder(order_id, participant_id, instrument, limit_price_fen, per_head, heads, tid,
                                   account_id, financier_id, grams)


def check_amend_buy(cl: ClearingState, order_id: int, new_price_fen: int, new_remaining_heads: int) -> R | None:
    """Why amending a buy to this price and remaining quantity cannot be covered, or None (also for
    orders that hold nothing: sells). The old hold is released before the new one is taken."""
    hold = cl.holds.get(order_id)
    if hold is None:
        return None
    spec = cl.instruments[hold.instrument]
    need = new_remaining_heads * rules.hold_per_head_fen(spec, new_price_fen)
    if need <= hold.held_fen:
        return None
    if hold.financier_id and not cl.has_consented(hold.buyer_id, hold.financier_id):
        return R.INSUFFICIENT_FUNDS  # the line may hold no more than it did once consent is withdrawn
    if need <= hold.held_fen + cl.ledger.available_fen(hold.source_account_id):
        return None
    return R.INSUFFICIENT_FUNDS


# Lot auctions (exchange/matching/lot_auction.py): a bidder's maximum is held exactly like a buy's
# limit, under a hold id the core allocates from the order ids; the winning bid's ``Trade`` names
# it as ``buy_order_id``, so ``on_trade`` turns it into the obligation as for a book fill.


def check_bid(
    cl: ClearingState, participant_id: int, spec: InstrumentSpec, price_fen: int, heads: int, hold_id: int
) -> R | None:
    """Why ``heads`` at ``price_fen`` cannot be held for this bidder, or None: ``check_buy``'s rule,
    counting what the bidder's current hold ``hold_id`` (which the new one replaces) frees."""
    who = cl.participants.get(participant_id)
    if who is None:
        return R.UNKNOWN_PARTICIPANT
    if who.role not in TRADING_ROLES:
        return R.NOT_AUTHORIZED
    need = heads * rules.hold_per_head_fen(spec, price_fen)
    old = cl.holds.get(hold_id)
    if (
        old is not None
        and (not old.financier_id or cl.has_consented(participant_id, old.financier_id))
        and need <= old.per_head_fen * old.remaining_heads + cl.ledger.available_fen(old.source_account_id)
    ):
        return None
    return None if hold_source(cl, participant_id, need) is not None else R.INSUFFICIENT_FUNDS


def hold_bid(
    cl: ClearingState, hold_id: int, participant_id: int, spec: InstrumentSpec, price_fen: int, heads: int, ts_ns: int
) -> None:
    """(Re)place the bidder's hold at ``price_fen`` (``check_bid`` passed in the same command)."""
    release_bid(cl, hold_id, ts_ns)
    place_hold(cl, hold_id, participant_id, price_fen, heads, ts_ns, spec.symbol)


def release_bid(cl: ClearingState, hold_id: int, ts_ns: int) -> None:
    """Void a bidder's hold (outbid, passed in, withdrawn); nothing if it holds nothing."""
    hold = cl.holds.pop(hold_id, None)
    if hold is not None:
        _void(cl, hold.pending_id, ts_ns)


def on_listed(cl: ClearingState, e: InstrumentListed, ts_ns: Boxed, out: list) -> None:
    cl.instruments[e.spec.symbol] = e.spec
    cl.fee_bps[e.spec.symbol] = e.spec.seller_fee_bps
    cl._hold_grams[e.spec.symbol] = rules.hold_grams(e.spec)


def on_lot(cl: ClearingState, e: LotRegistered, ts_ns: Boxed, out: list) -> None:
    lot = e.lot
    cl.lots[lot.lot_id] = lot


def on_accepted(cl: ClearingState, e: OrderAccepted, ts_ns: Boxed, out: list) -> None:
    side: int = e.side  # unboxed (an IntEnum is an int): compared natively
    if side != _BUY_SIDE:
        return  # a sell holds nothing: one attribute read, not the tuple of all fields
    # (seq, ts_ns, order_id, participant_id, client_order_id, instrument, side, price_fen, quantity_heads,
    # lot_id): one tuple instead of five attribute reads
    f = _astuple(e)
    order_id: Boxed = f[2]
    if order_id not in cl.holds:
        place_hold(cl, order_id, f[3], f[7], f[8], ts_ns, f[5])


def on_trade(cl: ClearingState, e: Trade, ts_ns: Boxed, out: list) -> None:
    # The trade and the hold read as one tuple each (field order checked at import); ids, price and
    # heads pass on as the objects they came as (Boxed), the sums are ints boxed once each.
    # (seq, ts_ns, instrument, trade_id, price_fen, quantity_heads, buy_order_id, sell_order_id, buyer_id,
    # seller_id, lot_id, taker_side, buy_remaining_heads, sell_remaining_heads)
    f = _astuple(e)
    trade_id: Boxed = f[3]
    buy_order_id: Boxed = f[6]
    hold = cl.holds.get(buy_order_id)
    if hold is None:
        raise ClearingInvariantError(f"trade {trade_id}: buy order {buy_order_id} holds no funds")
    heads: Boxed = f[5]
    heads_n: int = heads
    remaining: int = hold.remaining_heads - heads_n
    buy_remaining: int = f[12]
    if remaining != buy_remaining or remaining < 0:
        raise ClearingInvariantError(f"trade {trade_id}: hold has {hold.remaining_heads} heads")
    instrument: Boxed = f[2]
    price: Boxed = f[4]
    per_head: int = hold.per_head_fen
    obligation_n: int = heads_n * rules.per_head_hold_fen(hold.hold_grams, price)  # the instrument's, as held
    released: int = heads_n * per_head - obligation_n
    if obligation_n <= 0 or released < 0:
        raise ClearingInvariantError(f"trade {trade_id} at {price} above the limit {hold.price_fen}")
    obligation: Boxed = obligation_n  # boxed once: the transfer, the record and the event
    source_account_id: Boxed = hold.source_account_id
    pending_id: Boxed = hold.pending_id
    tid: Boxed = cl._next_tid()
    # the ledger calls of _commit and _commit_one, inline: once per fill
    if remaining:
        # the post and the re-hold of the rest, one linked pair given by its fields (no request structs)
        rehold_id: Boxed = cl._next_tid()
        rehold_fen: Boxed = remaining * per_head
        order_id: Boxed = hold.order_id
        first, second = cl.ledger.create_pair_of(
            tid, _ZERO, _ZERO, obligation, _TC_TRADE, trade_id, _POST_LINKED, pending_id,
            rehold_id, source_account_id, _ESCROW, rehold_fen, _TC_HOLD, order_id, _PENDING, _ZERO, ts_ns,
        )  # fmt: skip
        if first is not _OK or second is not _OK:
            refused_chain([_TRANSFER(tid, _ZERO, _ZERO, obligation, _TC_TRADE, trade_id, _POST_LINKED, pending_id),
                           _TRANSFER(rehold_id, source_account_id, _ESCROW, rehold_fen, _TC_HOLD, order_id,
                                     _PENDING)], [first, second])  # fmt: skip
        hold.pending_id = rehold_id
        hold.remaining_heads = remaining
    else:
        result = cl.ledger.create_transfer_of(tid, _ZERO, _ZERO, obligation, _TC_TRADE, trade_id, _POST, pending_id,
                                              ts_ns)  # fmt: skip
        if result is not _OK:
            refused(_TRANSFER(tid, _ZERO, _ZERO, obligation, _TC_TRADE, trade_id, _POST, pending_id), result)
        del cl.holds[hold.order_id]
    buyer_id: Boxed = f[8]
    seller_id: Boxed = f[9]
    financier_id: Boxed = hold.financier_id
    lot_id: Boxed = f[10]
    # every field given (the defaults as the same objects): msgspec fills 26 missing fields' defaults at a
    # higher cost than it takes positional arguments
    cl.trades[trade_id] = _TRADE_RECORD(
        trade_id, instrument, buyer_id, seller_id, lot_id, buy_order_id, heads, price,
        obligation, source_account_id, financier_id, ts_ns, _OPEN, _ZERO, _ZERO, _ZERO, _IN_GRADE, _ZERO, _EMPTY, _ZERO,
        _ZERO, _ZERO, _EMPTY, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO,
        _ZERO, _ZERO,
    )  # fmt: skip
    cl._trade_opened(lot_id)
    if not cl.quiet:  # a replay's (ClearingState.quiet): output only
        out.append(_OBLIGATION_RECORDED(_ZERO, ts_ns, trade_id, buyer_id, seller_id, instrument, heads, price,
                                        obligation, released, financier_id))


def on_order_gone(cl: ClearingState, e: OrderCancelled | OrderExpired, ts_ns: Boxed, out: list) -> None:
    holds = cl.holds
    order_id: Boxed = e.order_id
    hold = holds.get(order_id)  # get and del: compiled, native dict calls, where pop() is a generic method call
    if hold is None:
        return  # a sell: nothing held
    del holds[order_id]
    _void(cl, hold.pending_id, ts_ns)


def _void(cl: ClearingState, pending_id: Boxed, ts_ns: Boxed) -> None:
    """Release a hold's pending transfer whole (the ledger makes only the void it keeps)."""
    tid = cl._next_tid()
    result = cl.ledger.create_transfer_of(tid, _ZERO, _ZERO, _ZERO, _TC_RELEASE, _ZERO, _VOID, pending_id, ts_ns)
    if result is not _OK:
        refused(_TRANSFER(tid, _ZERO, _ZERO, _ZERO, _TC_RELEASE, _ZERO, _VOID, pending_id), result)


def on_amended(cl: ClearingState, e: OrderAmended, ts_ns: Boxed, out: list) -> None:
    hold = cl.holds.get(e.order_id)
    if hold is None:
        return
    per_head = rules.hold_per_head_fen(cl.instruments[hold.instrument], e.price_fen)
    hold.price_fen = e.price_fen
    if per_head == hold.per_head_fen and e.remaining_heads == hold.remaining_heads:
        return
    void = Transfer(cl._next_tid(), 0, 0, 0, TC.ORDER_RELEASE, 0, _VOID | _LINKED, hold.pending_id)
    rehold = Transfer(cl._next_tid(), hold.source_account_id, _ESCROW, e.remaining_heads * per_head,
                      TC.ORDER_HOLD, hold.order_id, _PENDING)
    cl._commit([void, rehold], ts_ns)  # a failure here means the core skipped check_amend_buy
    hold.per_head_fen = per_head
    hold.remaining_heads = e.remaining_heads
    hold.pending_id = rehold.transfer_id


def hold_source(cl: ClearingState, buyer_id: Boxed, amount_fen: int) -> tuple[Boxed, Boxed] | None:
    """(account id, financier id or 0) that covers ``amount_fen`` whole: cash first, then the credit
    lines by financier id, only those of financiers the buyer consents to now (a withdrawn consent
    ends new holds on that line; what it already holds stays until filled or cancelled)."""
    # ids as the objects they are (Boxed): compiled, none is unboxed and boxed anew
    cash: Boxed = cl._cash_accounts.get(buyer_id)
    if cash is not None and cl.ledger.available_fen(cash) >= amount_fen:
        return cash, _ZERO
    for line in cl._lines_by_buyer.get(buyer_id, ()):
        account_id: Boxed = line.account_id
        if cl.ledger.available_fen(account_id) >= amount_fen:
            financier_id: Boxed = line.financier_id
            if cl.has_consented(buyer_id, financier_id):
                return account_id, financier_id
    return None
