"""Lot auctions: one seller's registered lot sold by ascending online bids (竞价), as AuctionsPlus sells
livestock. Pure and deterministic like the core that owns it: time is the ``ts_ns`` of the command
being applied, and an auction opens, closes and lapses only on a ``ClockTick``.

``LotAuctions`` owns the live auctions (scheduled, open, negotiating) of one core; an auction that
ends (sold, unsold, withdrawn) leaves memory with its final ``LotAuctionChanged`` event, and the read
models keep it from there. Every change replaces the auction's ``LotAuction`` value (frozen) and
emits it, so an event always carries the auction as it was.

Rules
-----
- Offer (``OfferLotAuction``): the seller's own lot (an operator may offer for ``seller_id``); the
  lot's available heads are sold whole and stay reserved until the auction ends. Prices are the
  instrument's (fen per kg live weight for finishing hogs, fen per head for piglets), positive, on the
  tick, at most ``MAX_PRICE_FEN``, and for a finishing hog above its largest weight discount (so the
  weigh-in can price it); reserve >= start; a buy-now price (0: none) >= reserve and > start. The
  increment table's rows are (from price, increment): the first from 0, ascending, increments
  positive multiples of the tick; at most ``MAX_INCREMENT_ROWS``. ``opens_at`` < ``closes_at``, the
  close in the future. A lot of a ``catalogue`` whose other lots have not closed takes their closing
  time (they close together). No price band: the band is the continuous book's.
- Bid (``BidLotAuction``): from ``opens_at`` until before ``closes_at`` (the close itself happens on
  the first tick at or after it). A bid is the bidder's maximum: the first at least the start price;
  then at least the current price plus the increment at that price; the leader may only raise its own
  maximum. The proxy: a new maximum above the leader's takes the lead at the leader's maximum plus
  one increment (never above the new maximum); one at or below it leaves the leader in front at that
  bid plus one increment (never above the leader's maximum): a tie goes to the earlier maximum. When
  the leader's maximum reaches the reserve the price rises to the reserve at once.
- Money: every bid must be coverable like a buy order of the lot's heads at its maximum
  (``Clearing.check_bid``: the buy hold rule). Only the leader holds: its maximum, under its hold id
  (one per bidder per auction, taken from the order ids); an outbid leader's hold is voided at once.
  So no hold outlives an auction: the sale's ``Trade`` (``buy_order_id`` = the winner's hold id,
  ``sell_order_id`` 0, ``taker_side`` 0) turns the hold into the trade's obligation through the
  clearing's own trade path (the difference to the maximum returns to the bidder), and every other end
  voids it. From then on the trade settles like any book trade: weigh-in, dispute window, fees,
  advances, payouts.
- Anti-sniping: a bid at or after ``closes_at - extension_ns`` moves the close to the bid's time plus
  ``extension_ns``, for every open lot of its catalogue too.
- Close (tick at or after ``closes_at``; auctions in id order): no bid: UNSOLD. Price at or above the
  reserve: SOLD to the leader at the price. Below: passed in: NEGOTIATING until the tick's time plus
  ``negotiation_ns`` (0: UNSOLD at once), the top bidder's hold staying in place.
- Negotiation (``NegotiateLotAuction``): the seller (or an operator) and the top bidder alone; an
  offer at or above the top bid replaces the last offer (a counter-offer); ``accept`` takes the other
  side's last offer: SOLD at that price. A bidder's offer or acceptance above its held maximum must be
  coverable and re-holds at that price. The window's end (tick) leaves the lot UNSOLD.
- Buy-now (``BuyNowLotAuction``): while bidding is open and the price is below the buy-now price:
  SOLD to the sender at the buy-now price at once.
- Withdraw (``WithdrawLotAuction``): the seller (or an operator) before the first bid.
- The seller never bids on its own lot (SELF_TRADE_PREVENTED). An ended auction's lot heads are free
  again unless sold: the lot can be offered again.

Client references. A bid or a negotiation step may carry a ``client_ref`` (at most
``MAX_CLIENT_REF_LEN`` characters; per participant, one namespace for both). The first command that
takes effect with it is remembered with what it asked (the kind, the auction, the price, accept) and
the auction it left (its answer). The same reference again with the same request is a retry: nothing
changes and no event is emitted (the gateway answers the remembered auction); with another request it
is rejected DUPLICATE_REFERENCE. A rejected command uses no reference (nothing changed: sending it
again is decided afresh). A reference is kept for the tick's retention window after its use and, past
that, as long as its auction is live (``forget``, as the core forgets lots); once it is forgotten its
auction is over, so a late retry can only be refused (UNKNOWN_AUCTION), never take effect twice.

Rejections are ``Rejected`` events (``seq`` 0, the instrument named when known) and change nothing.
Lot-auction commands need the settlement stage: a matching-only core rejects them as unsupported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec.structs import replace

from exchange.commands import (
    BidLotAuction,
    BuyNowLotAuction,
    NegotiateLotAuction,
    OfferLotAuction,
    WithdrawLotAuction,
)
from exchange.domain import (
    AuctionBidder,
    AuctionState,
    InstrumentSpec,
    LotAuction,
    OfferSide,
    ProductClass,
    RejectReason,
)
from exchange.events import LotAuctionChanged, Rejected, Trade

if TYPE_CHECKING:
    from exchange.core import Core
    from exchange.settlement.clearing import Clearing

R = RejectReason
MAX_PRICE_FEN = 10**10  # ¥100 million a kg or a head: anything above is a typo, and heads x it stays in int64
MAX_INCREMENT_ROWS = 16
MAX_CATALOGUE_LEN = 36
MAX_EXTENSION_NS = 3_600 * 10**9  # an hour
MAX_NEGOTIATION_NS = 7 * 86_400 * 10**9  # a week
LIVE_STATES = (AuctionState.SCHEDULED, AuctionState.OPEN, AuctionState.NEGOTIATING)
BIDDING_STATES = (AuctionState.SCHEDULED, AuctionState.OPEN)


MAX_CLIENT_REF_LEN = 36
_BID, _NEGOTIATE = 1, 2
Request = tuple[int, int, int, bool]  # (kind, auction id, price, accept)


class AuctionRef(msgspec.Struct, frozen=True, array_like=True):
    """A client reference in use: what it asked, the auction it left, and since when it is queued."""

    participant_id: int
    ref: str
    queued_at_ns: int
    request: Request
    answer: LotAuction


class AuctionsRecord(msgspec.Struct, frozen=True, array_like=True):
    next_auction_id: int
    auctions: list[LotAuction]
    refs: list[AuctionRef] = []  # in forgetting order


class _RecordWithoutRefs(msgspec.Struct, frozen=True, array_like=True):
    """What a record without references encodes as: the bytes (and state hashes) from before them."""

    next_auction_id: int
    auctions: list[LotAuction]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AuctionsRecord)


def increment_at(increments: tuple[tuple[int, int], ...], price_fen: int) -> int:
    """The increment of the table's last row whose from-price is at or below ``price_fen``."""
    step = increments[0][1]
    for from_fen, increment_fen in increments:
        if from_fen > price_fen:
            break
        step = increment_fen
    return step


def leader_of(a: LotAuction) -> AuctionBidder | None:
    for b in a.bidders:
        if b.paddle == a.leader_paddle:
            return b
    return None


def bidder_of(a: LotAuction, participant_id: int) -> AuctionBidder | None:
    for b in a.bidders:
        if b.participant_id == participant_id:
            return b
    return None


def proxy_outcome(a: LotAuction, bid: AuctionBidder) -> tuple[AuctionBidder, int]:
    """(leader, price) after ``bid`` (a bidder's new maximum, already found valid) under the proxy rule."""
    leader = leader_of(a)
    if leader is None:
        new_leader, price = bid, a.start_price_fen
    elif leader.participant_id == bid.participant_id:
        new_leader, price = bid, a.price_fen
    elif bid.max_price_fen > leader.max_price_fen:
        step = increment_at(a.increments, leader.max_price_fen)
        new_leader, price = bid, min(bid.max_price_fen, leader.max_price_fen + step)
    else:  # at or below the leader's maximum: the earlier maximum keeps the lead
        step = increment_at(a.increments, bid.max_price_fen)
        new_leader, price = leader, min(leader.max_price_fen, bid.max_price_fen + step)
    if new_leader.max_price_fen >= a.reserve_price_fen:
        price = max(price, a.reserve_price_fen)
    return new_leader, max(price, a.price_fen)


def min_bid_fen(a: LotAuction, participant_id: int) -> int:
    """The least maximum this participant may bid now."""
    leader = leader_of(a)
    if leader is None:
        return a.start_price_fen
    if leader.participant_id == participant_id:
        return leader.max_price_fen + 1
    return a.price_fen + increment_at(a.increments, a.price_fen)


def price_reason(spec: InstrumentSpec, price_fen: int) -> R | None:
    """A price a lot may trade at: positive, bounded, on the tick, above any weight discount."""
    if price_fen <= 0 or price_fen > MAX_PRICE_FEN:
        return R.INVALID_PRICE
    if price_fen % spec.tick_fen:
        return R.PRICE_OFF_TICK
    discount = max(spec.overweight_discount_fen_per_kg, spec.underweight_discount_fen_per_kg)
    if spec.product_class == ProductClass.FINISHING_HOG and price_fen <= discount:
        return R.INVALID_PRICE
    return None


def terms_reason(spec: InstrumentSpec, cmd: OfferLotAuction) -> R | None:
    """Why an offer's terms cannot stand (see the module docstring), or None."""
    prices = [cmd.start_price_fen, cmd.reserve_price_fen] + ([cmd.buy_now_price_fen] if cmd.buy_now_price_fen else [])
    for price in prices:
        reason = price_reason(spec, price)
        if reason is not None:
            return reason
    if cmd.reserve_price_fen < cmd.start_price_fen or cmd.buy_now_price_fen < 0:
        return R.INVALID_AUCTION
    if cmd.buy_now_price_fen and (
        cmd.buy_now_price_fen < cmd.reserve_price_fen or cmd.buy_now_price_fen <= cmd.start_price_fen
    ):
        return R.INVALID_AUCTION
    rows = cmd.increments
    if not 0 < len(rows) <= MAX_INCREMENT_ROWS or rows[0][0] != 0:
        return R.INVALID_AUCTION
    for i, (from_fen, step) in enumerate(rows):
        if not 0 < step <= MAX_PRICE_FEN or step % spec.tick_fen or (i and from_fen <= rows[i - 1][0]):
            return R.INVALID_AUCTION
        if from_fen > MAX_PRICE_FEN:
            return R.INVALID_AUCTION
    if not (0 <= cmd.opens_at_ns < cmd.closes_at_ns and cmd.closes_at_ns > cmd.ts_ns):
        return R.INVALID_AUCTION
    if not (0 <= cmd.extension_ns <= MAX_EXTENSION_NS and 0 <= cmd.negotiation_ns <= MAX_NEGOTIATION_NS):
        return R.INVALID_AUCTION
    if len(cmd.catalogue) > MAX_CATALOGUE_LEN or cmd.seller_id < 0:
        return R.INVALID_AUCTION
    return None


class LotAuctions:
    """The live lot auctions of one core and the commands that change them."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.live: dict[int, LotAuction] = {}
        self.next_auction_id = 1
        # (participant, client ref) -> its use; in forgetting order (queue time never decreases)
        self.refs: dict[tuple[int, str], AuctionRef] = {}

    def handlers(self) -> dict[type, Callable[[Any, list], None]]:
        return {
            OfferLotAuction: self._offer,
            BidLotAuction: self._referenced(self._bid, lambda c: (_BID, c.auction_id, c.max_price_fen, False)),
            BuyNowLotAuction: self._buy_now,
            WithdrawLotAuction: self._withdraw,
            NegotiateLotAuction: self._referenced(
                self._negotiate, lambda c: (_NEGOTIATE, c.auction_id, c.price_fen, c.accept)),
        }

    # -- client references ------------------------------------------------------------------------------

    def _referenced(self, handler: Callable[[Any, list], None],
                    request_of: Callable[[Any], Request]) -> Callable[[Any, list], None]:
        """``handler`` behind the client reference rule (see "Client references")."""

        def handle(cmd: Any, events: list) -> None:
            ref = cmd.client_ref
            if not ref:
                return handler(cmd, events)
            if len(ref) > MAX_CLIENT_REF_LEN:
                return self._reject(cmd, R.INVALID_AUCTION, events)
            key = (cmd.participant_id, ref)
            request = request_of(cmd)
            used = self.refs.get(key)
            if used is not None:
                if used.request != request:
                    self._reject(cmd, R.DUPLICATE_REFERENCE, events, used.answer.instrument)
                return None  # a retry: the original answer stands, nothing happens again
            mark = len(events)
            handler(cmd, events)
            for event in events[mark:]:
                if type(event) is LotAuctionChanged and event.auction.auction_id == cmd.auction_id:
                    self.refs[key] = AuctionRef(cmd.participant_id, ref, cmd.ts_ns, request, event.auction)
                    break
            return None

        return handle

    def forget(self, now_ns: int, before_ns: int) -> None:
        """Drop the references queued before ``before_ns`` whose auction has ended; one whose auction is
        still live is looked at again a window later."""
        refs = self.refs
        while refs:
            key = next(iter(refs))
            used = refs[key]
            if used.queued_at_ns >= before_ns:
                break
            del refs[key]
            if used.answer.auction_id in self.live:
                refs[key] = replace(used, queued_at_ns=now_ns)

    # -- persistence ------------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Empty while no auction was ever offered (older snapshots keep their bytes and hashes)."""
        if self.next_auction_id == 1:
            return b""
        auctions = [self.live[k] for k in sorted(self.live)]
        if not self.refs:
            return _encoder.encode(_RecordWithoutRefs(self.next_auction_id, auctions))
        return _encoder.encode(AuctionsRecord(self.next_auction_id, auctions, list(self.refs.values())))

    def restore(self, data: bytes) -> None:
        if data:
            record = _decoder.decode(data)
            self.next_auction_id = record.next_auction_id
            self.live = {a.auction_id: a for a in record.auctions}
            self.refs = {(r.participant_id, r.ref): r for r in record.refs}

    # -- helpers ----------------------------------------------------------------------------------------

    @property
    def _clearing(self) -> Clearing:
        clearing = self.core.clearing
        assert clearing is not None  # the handlers are registered only with the settlement stage
        return clearing

    def _spec(self, a: LotAuction) -> InstrumentSpec:
        return self.core.markets[a.instrument].spec

    @staticmethod
    def _reject(cmd: Any, reason: R, events: list, instrument: str = "") -> None:
        events.append(Rejected(0, cmd.ts_ns, cmd.participant_id, reason, "", 0, instrument))

    def _emit(self, a: LotAuction, change: str, by: int, ts_ns: int, events: list) -> None:
        if a.state in LIVE_STATES:
            self.live[a.auction_id] = a
        else:
            self.live.pop(a.auction_id, None)
        events.append(LotAuctionChanged(0, ts_ns, change, by, a))

    def _acts_for_seller(self, a: LotAuction, participant_id: int) -> bool:
        return participant_id == a.seller_id or self._clearing._is_operator(participant_id)

    def _free_lot(self, a: LotAuction) -> None:
        self.core.lots[a.lot_id].reserved_heads -= a.heads

    def _new_bidder(self, a: LotAuction, participant_id: int, max_price_fen: int, bid_no: int) -> AuctionBidder:
        """The bidder's record with a new maximum: its paddle and hold id kept, or new ones on its first bid."""
        old = bidder_of(a, participant_id)
        if old is not None:
            return replace(old, max_price_fen=max_price_fen, max_bid_no=bid_no)
        counters = self.core.counters
        hold_id = counters.next_order_id
        counters.next_order_id = hold_id + 1
        return AuctionBidder(participant_id, len(a.bidders) + 1, hold_id, max_price_fen, bid_no)

    @staticmethod
    def _with_bidder(a: LotAuction, bidder: AuctionBidder) -> tuple[AuctionBidder, ...]:
        others = tuple(b for b in a.bidders if b.paddle != bidder.paddle)
        return tuple(sorted((*others, bidder), key=lambda b: b.paddle))

    def _sell(self, a: LotAuction, winner: AuctionBidder, price_fen: int, change: str, by: int, ts_ns: int,
              events: list) -> None:
        """The lot's trade at ``price_fen`` to ``winner``, whose hold (at least the price) it consumes."""
        core = self.core
        lot = core.lots[a.lot_id]
        lot.reserved_heads -= a.heads
        lot.sold_heads += a.heads
        counters = core.counters
        trade_id = counters.next_trade_id
        counters.next_trade_id = trade_id + 1
        book = core.markets[a.instrument].book
        events.append(Trade(book.next_seq(), ts_ns, a.instrument, trade_id, price_fen, a.heads, winner.hold_id, 0,
                            winner.participant_id, a.seller_id, a.lot_id, 0, 0, 0))
        sold = replace(a, state=AuctionState.SOLD, price_fen=price_fen, leader_paddle=winner.paddle,
                       trade_id=trade_id, ended_at_ns=ts_ns, bidders=self._with_bidder(a, winner))
        self._emit(sold, change, by, ts_ns, events)

    def _end_unsold(self, a: LotAuction, change: str, by: int, ts_ns: int, events: list) -> None:
        leader = leader_of(a)
        if leader is not None:
            self._clearing.release_bid(leader.hold_id, ts_ns)
        self._free_lot(a)
        state = AuctionState.WITHDRAWN if change == "withdrawn" else AuctionState.UNSOLD
        self._emit(replace(a, state=state, ended_at_ns=ts_ns), change, by, ts_ns, events)

    def _bidding_reason(self, a: LotAuction, participant_id: int, ts_ns: int) -> R | None:
        if a.state not in BIDDING_STATES or not a.opens_at_ns <= ts_ns < a.closes_at_ns:
            return R.AUCTION_NOT_OPEN
        if participant_id == a.seller_id:
            return R.SELF_TRADE_PREVENTED
        return None

    # -- commands ---------------------------------------------------------------------------------------

    def _offer(self, cmd: OfferLotAuction, events: list) -> None:
        core = self.core
        clearing = self._clearing
        seller_id = cmd.seller_id or cmd.participant_id
        if seller_id != cmd.participant_id and not clearing._is_operator(cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, events)
        reason = clearing.check_sell(seller_id)
        if reason is not None:
            return self._reject(cmd, reason, events)
        lot = core.lots.get(cmd.lot_id)
        if lot is None or lot.seller_id != seller_id:
            return self._reject(cmd, R.LOT_NOT_FOUND, events)  # another seller's lot is as good as missing
        if lot.available_heads < 1:
            return self._reject(cmd, R.LOT_EXHAUSTED, events, lot.instrument)
        spec = core.markets[lot.instrument].spec
        reason = terms_reason(spec, cmd)
        if reason is not None:
            return self._reject(cmd, reason, events, lot.instrument)
        closes_at_ns = cmd.closes_at_ns
        if cmd.catalogue:
            siblings = [a for a in self.live.values() if a.catalogue == cmd.catalogue and a.state in BIDDING_STATES]
            if siblings:
                closes_at_ns = siblings[0].closes_at_ns  # the catalogue closes together
                if closes_at_ns <= cmd.opens_at_ns:
                    return self._reject(cmd, R.INVALID_AUCTION, events, lot.instrument)
        auction_id = self.next_auction_id
        self.next_auction_id = auction_id + 1
        heads = lot.available_heads
        lot.reserved_heads += heads
        state = AuctionState.OPEN if cmd.opens_at_ns <= cmd.ts_ns else AuctionState.SCHEDULED
        a = LotAuction(
            auction_id, seller_id, lot.lot_id, lot.instrument, heads, cmd.start_price_fen, cmd.reserve_price_fen,
            cmd.increments, cmd.opens_at_ns, closes_at_ns, cmd.buy_now_price_fen, cmd.extension_ns,
            cmd.negotiation_ns, cmd.catalogue, cmd.participant_id, state,
        )  # fmt: skip
        self._emit(a, "offered", cmd.participant_id, cmd.ts_ns, events)
        return None

    def _bid(self, cmd: BidLotAuction, events: list) -> None:
        a = self.live.get(cmd.auction_id)
        if a is None:
            return self._reject(cmd, R.UNKNOWN_AUCTION, events)
        ts_ns = cmd.ts_ns
        reason = self._bidding_reason(a, cmd.participant_id, ts_ns)
        spec = self._spec(a)
        if reason is None:
            reason = price_reason(spec, cmd.max_price_fen)
        if reason is None and cmd.max_price_fen < min_bid_fen(a, cmd.participant_id):
            reason = R.BID_TOO_LOW
        me = bidder_of(a, cmd.participant_id)
        if reason is None:
            reason = self._clearing.check_bid(cmd.participant_id, spec, cmd.max_price_fen, a.heads,
                                              0 if me is None else me.hold_id)
        if reason is not None:
            return self._reject(cmd, reason, events, a.instrument)
        bid_no = a.bid_count + 1
        bid = self._new_bidder(a, cmd.participant_id, cmd.max_price_fen, bid_no)
        old_leader = leader_of(a)
        leader, price = proxy_outcome(a, bid)
        clearing = self._clearing
        if leader is bid:
            clearing.hold_bid(bid.hold_id, bid.participant_id, spec, bid.max_price_fen, a.heads, ts_ns)
            if old_leader is not None and old_leader.participant_id != bid.participant_id:
                clearing.release_bid(old_leader.hold_id, ts_ns)  # outbid: its money is free at once
        closes_at_ns = a.closes_at_ns
        extended = bool(a.extension_ns) and ts_ns >= closes_at_ns - a.extension_ns
        if extended:
            closes_at_ns = max(closes_at_ns, ts_ns + a.extension_ns)
        a = replace(a, state=AuctionState.OPEN, price_fen=price, bid_count=bid_no, leader_paddle=leader.paddle,
                    bidders=self._with_bidder(a, bid), closes_at_ns=closes_at_ns)
        self._emit(a, "bid", cmd.participant_id, ts_ns, events)
        if extended and a.catalogue:
            for other_id in sorted(self.live):
                other = self.live[other_id]
                if (other_id != a.auction_id and other.catalogue == a.catalogue and other.state in BIDDING_STATES
                        and other.closes_at_ns < closes_at_ns):
                    self._emit(replace(other, closes_at_ns=closes_at_ns), "extended", cmd.participant_id, ts_ns,
                               events)
        return None

    def _buy_now(self, cmd: BuyNowLotAuction, events: list) -> None:
        a = self.live.get(cmd.auction_id)
        if a is None:
            return self._reject(cmd, R.UNKNOWN_AUCTION, events)
        reason = self._bidding_reason(a, cmd.participant_id, cmd.ts_ns)
        if reason is None and not a.price_fen < a.buy_now_price_fen:
            reason = R.BUY_NOW_UNAVAILABLE
        me = bidder_of(a, cmd.participant_id)
        spec = self._spec(a)
        if reason is None:
            reason = self._clearing.check_bid(cmd.participant_id, spec, a.buy_now_price_fen, a.heads,
                                              0 if me is None else me.hold_id)
        if reason is not None:
            return self._reject(cmd, reason, events, a.instrument)
        old_leader = leader_of(a)
        price = a.buy_now_price_fen
        buyer = self._new_bidder(a, cmd.participant_id, price, a.bid_count + 1)
        clearing = self._clearing
        clearing.hold_bid(buyer.hold_id, buyer.participant_id, spec, price, a.heads, cmd.ts_ns)
        if old_leader is not None and old_leader.participant_id != buyer.participant_id:
            clearing.release_bid(old_leader.hold_id, cmd.ts_ns)
        self._sell(replace(a, bid_count=a.bid_count + 1), buyer, price, "bought_now", cmd.participant_id,
                   cmd.ts_ns, events)
        return None

    def _withdraw(self, cmd: WithdrawLotAuction, events: list) -> None:
        a = self.live.get(cmd.auction_id)
        if a is None:
            return self._reject(cmd, R.UNKNOWN_AUCTION, events)
        if not self._acts_for_seller(a, cmd.participant_id):
            return self._reject(cmd, R.NOT_AUTHORIZED, events, a.instrument)
        if a.state not in BIDDING_STATES:
            return self._reject(cmd, R.AUCTION_NOT_OPEN, events, a.instrument)
        if a.bid_count:
            return self._reject(cmd, R.AUCTION_HAS_BIDS, events, a.instrument)
        self._end_unsold(a, "withdrawn", cmd.participant_id, cmd.ts_ns, events)
        return None

    def _negotiate(self, cmd: NegotiateLotAuction, events: list) -> None:
        a = self.live.get(cmd.auction_id)
        if a is None:
            return self._reject(cmd, R.UNKNOWN_AUCTION, events)
        leader = leader_of(a)
        if a.state != AuctionState.NEGOTIATING or leader is None or cmd.ts_ns >= a.negotiate_until_ns:
            return self._reject(cmd, R.NOT_NEGOTIATING, events, a.instrument)
        if cmd.participant_id == leader.participant_id:
            side = OfferSide.BIDDER
        elif self._acts_for_seller(a, cmd.participant_id):
            side = OfferSide.SELLER
        else:
            return self._reject(cmd, R.NOT_NEGOTIATING, events, a.instrument)
        spec = self._spec(a)
        if cmd.accept:
            if a.offer_side in (OfferSide.NONE, side) or cmd.price_fen not in (0, a.offer_price_fen):
                return self._reject(cmd, R.NO_OFFER_TO_ACCEPT, events, a.instrument)
            price = a.offer_price_fen
        else:
            price = cmd.price_fen
            reason = price_reason(spec, price)
            if reason is None and price < a.price_fen:
                reason = R.BID_TOO_LOW  # never below the top bid
            if reason is not None:
                return self._reject(cmd, reason, events, a.instrument)
        if side == OfferSide.BIDDER and price > leader.max_price_fen:
            reason = self._clearing.check_bid(leader.participant_id, spec, price, a.heads, leader.hold_id)
            if reason is not None:
                return self._reject(cmd, reason, events, a.instrument)
            self._clearing.hold_bid(leader.hold_id, leader.participant_id, spec, price, a.heads, cmd.ts_ns)
            leader = replace(leader, max_price_fen=price)
            a = replace(a, bidders=self._with_bidder(a, leader))
        if cmd.accept:
            self._sell(a, leader, price, "sold", cmd.participant_id, cmd.ts_ns, events)
        else:
            self._emit(replace(a, offer_side=side, offer_price_fen=price), "offer", cmd.participant_id, cmd.ts_ns,
                       events)
        return None

    # -- the clock --------------------------------------------------------------------------------------

    def on_clock(self, ts_ns: int, events: list) -> None:
        """Open, close and lapse what is due at ``ts_ns``, in auction id order."""
        for auction_id in sorted(self.live):
            a = self.live[auction_id]
            if a.state == AuctionState.SCHEDULED and a.opens_at_ns <= ts_ns < a.closes_at_ns:
                self._emit(replace(a, state=AuctionState.OPEN), "opened", 0, ts_ns, events)
            elif a.state in BIDDING_STATES and a.closes_at_ns <= ts_ns:
                self._close(a, ts_ns, events)
            elif a.state == AuctionState.NEGOTIATING and a.negotiate_until_ns <= ts_ns:
                self._end_unsold(a, "unsold", 0, ts_ns, events)

    def _close(self, a: LotAuction, ts_ns: int, events: list) -> None:
        leader = leader_of(a)
        if leader is None:
            self._end_unsold(a, "unsold", 0, ts_ns, events)
        elif a.price_fen >= a.reserve_price_fen:
            self._sell(a, leader, a.price_fen, "sold", 0, ts_ns, events)
        elif a.negotiation_ns:
            self._emit(replace(a, state=AuctionState.NEGOTIATING, negotiate_until_ns=ts_ns + a.negotiation_ns),
                       "passed_in", 0, ts_ns, events)
        else:
            self._end_unsold(a, "unsold", 0, ts_ns, events)
