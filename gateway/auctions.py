"""Lot auctions over HTTP and WebSocket (the rules: exchange/matching/lot_auction.py).

Routes: `POST /v1/auctions` (a seller offers its lot; an operator for `seller_id`), `GET /v1/auctions`
(`?status=`), `GET /v1/auctions/{auction_id}`, `POST /v1/auctions/{auction_id}/bids` (your maximum: the
proxy bids for you), `.../buy-now`, `.../withdraw`, `.../offers` (negotiation of a passed-in lot:
an offer, a counter-offer, or `accept`). Times are milliseconds since the epoch; prices integer fen
per kg live weight (finishing hogs) or per head (piglets), as `quote_unit` says.

Privacy: a bidder is shown by its paddle number only. Everyone sees the price, the bid count, the
leader's paddle, whether the reserve is met and the time left; a bidder also sees its own paddle and
maximum (`your_paddle`, `your_max_price_fen`); the seller also the reserve and the negotiation; an
operator everything, bidders' ids and maxima included.

WebSocket: `auctions.{auction_id}` carries an `auction` message (the public view) at subscription and
after every change; the bare channel `auctions` carries `auctions` messages listing the auctions
each committed batch changed (public views).

Error codes (beyond the gateway's own): `unknown_auction` 404, `invalid_auction`, `auction_not_open`,
`bid_too_low`, `auction_has_bids`, `buy_now_unavailable`, `not_negotiating`, `no_offer_to_accept`,
`insufficient_funds`, `self_trade_prevented`, `price_off_tick`, `invalid_price`, `lot_exhausted` 422
(`auction_not_open` also for any command on an auction that has ended);
`lot_not_found` 404; `not_authorized` 403.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from aiohttp import web

from exchange.commands import (
    BidLotAuction,
    BuyNowLotAuction,
    Command,
    NegotiateLotAuction,
    OfferLotAuction,
    WithdrawLotAuction,
)
from exchange.domain import AuctionState, LotAuction, OfferSide, RejectReason
from exchange.events import LotAuctionChanged, Rejected
from gateway.auth import ANY_ROLE, OPERATORS, SELLERS, Principal, Role, roles
from gateway.clock import exchange_now_ns as now_ns
from gateway.errors import ApiError
from gateway.exchange_port import EXCHANGE, ExchangePort
from gateway.readmodel import BatchDigest, ReadModel
from gateway.readmodel_snapshots import retired_auction, retired_auctions
from gateway.routes import Call, RouteTable
from gateway.schemas import QUOTE_UNIT, Id, PriceFen, TimeMs, rejection
from gateway.ws import Hub

__all__ = ["attach", "auction_view", "routes", "wire"]

routes = RouteTable()
_NS_PER_MS: Final = 1_000_000
_NS_PER_S: Final = 1_000_000_000
BIDDERS: Final = roles(Role.BUYER, Role.FARMER, Role.COOPERATIVE)
OFFERERS: Final = SELLERS | OPERATORS
StateName = Literal["scheduled", "open", "negotiating", "sold", "unsold", "withdrawn"]
_STATE_NAME: Final = {s: s.name.lower() for s in AuctionState}
_ENDED: Final = (AuctionState.SOLD, AuctionState.UNSOLD, AuctionState.WITHDRAWN)  # what memory may retire
_LIST_MAX: Final = 500  # auctions one listing returns
_SIDE_NAME: Final = {OfferSide.SELLER: "seller", OfferSide.BIDDER: "bidder"}


# -- requests -------------------------------------------------------------------------------------------


class IncrementRow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    from_price_fen: Annotated[int, msgspec.Meta(ge=0, le=10**10)]
    increment_fen: PriceFen


class OfferAuctionRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    lot_id: Id
    start_price_fen: PriceFen
    reserve_price_fen: PriceFen
    increments: Annotated[list[IncrementRow], msgspec.Meta(min_length=1, max_length=16)]
    closes_at_ms: TimeMs
    opens_at_ms: TimeMs | None = None  # default: now
    buy_now_price_fen: PriceFen | None = None
    extension_s: Annotated[int, msgspec.Meta(ge=0, le=3_600)] = 0
    negotiation_s: Annotated[int, msgspec.Meta(ge=0, le=7 * 86_400)] = 3_600
    catalogue: Annotated[str, msgspec.Meta(max_length=36)] = ""
    seller_id: Id | None = None  # an operator offers for this seller


ClientRef = Annotated[str, msgspec.Meta(
    min_length=1, max_length=36, pattern=r"\A[!-~]+\Z",
    description="1-36 printable ASCII characters, per participant: a retry with the same body gets the "
                "original answer; another body is 409 duplicate_reference",
)]  # fmt: skip


class BidRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_price_fen: PriceFen
    client_bid_ref: ClientRef | None = None


class NegotiationRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    price_fen: PriceFen | None = None
    accept: bool = False
    client_offer_ref: ClientRef | None = None


class AuctionQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    status: StateName | None = None


class AuctionPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    auction_id: Id


# -- views ----------------------------------------------------------------------------------------------


class BidderView(msgspec.Struct, frozen=True):
    paddle: int
    participant_id: int
    max_price_fen: int


class AuctionView(msgspec.Struct, frozen=True, omit_defaults=True):
    auction_id: int
    instrument: str
    lot_id: int
    heads: int
    quote_unit: str
    state: StateName
    start_price_fen: int
    increments: list[IncrementRow]
    opens_at_ms: int
    closes_at_ms: int
    time_left_ms: int  # 0 once bidding has ended
    price_fen: int  # 0 before the first bid
    bid_count: int
    leader_paddle: int | None
    reserve_met: bool
    buy_now_price_fen: int | None = None
    extension_s: int = 0
    catalogue: str = ""
    negotiate_until_ms: int | None = None
    trade_id: int | None = None
    your_paddle: int | None = None
    your_max_price_fen: int | None = None
    # the seller's and operators' eyes only
    seller_id: int | None = None
    reserve_price_fen: int | None = None
    offer_side: str | None = None  # in negotiation: who made the last offer
    offer_price_fen: int | None = None
    # operators only
    bidders: list[BidderView] | None = None


class AuctionMessage(msgspec.Struct, frozen=True, tag="auction", tag_field="type"):
    channel: str
    auction: AuctionView


class AuctionsMessage(msgspec.Struct, frozen=True, tag="auctions", tag_field="type"):
    channel: str
    auctions: list[AuctionView]


def auction_view(read_model: ReadModel, a: LotAuction, principal: Principal | None, now: int) -> AuctionView:
    """What ``principal`` (None: the public) may see of ``a`` at ``now`` (ns)."""
    operator = principal is not None and principal.role == Role.OPERATOR
    seller = operator or (principal is not None and principal.participant_id == a.seller_id)
    mine = None
    if principal is not None:
        mine = next((b for b in a.bidders if b.participant_id == principal.participant_id), None)
    leader = next((b for b in a.bidders if b.paddle == a.leader_paddle), None)
    party = seller or (mine is not None and mine is leader and a.state == AuctionState.NEGOTIATING)
    live = a.state in (AuctionState.SCHEDULED, AuctionState.OPEN)
    return AuctionView(
        a.auction_id, a.instrument, a.lot_id, a.heads,
        QUOTE_UNIT[read_model.instruments[a.instrument].spec.product_class], _STATE_NAME[a.state], a.start_price_fen,
        [IncrementRow(f, i) for f, i in a.increments], a.opens_at_ns // _NS_PER_MS, a.closes_at_ns // _NS_PER_MS,
        max(0, (a.closes_at_ns - now) // _NS_PER_MS) if live else 0, a.price_fen, a.bid_count,
        a.leader_paddle or None, leader is not None and a.price_fen >= a.reserve_price_fen,
        buy_now_price_fen=a.buy_now_price_fen or None, extension_s=a.extension_ns // _NS_PER_S,
        catalogue=a.catalogue,
        negotiate_until_ms=a.negotiate_until_ns // _NS_PER_MS if a.negotiate_until_ns else None,
        trade_id=a.trade_id or None,
        your_paddle=None if mine is None else mine.paddle,
        your_max_price_fen=None if mine is None else mine.max_price_fen,
        seller_id=a.seller_id if seller else None,
        reserve_price_fen=a.reserve_price_fen if seller else None,
        offer_side=_SIDE_NAME.get(a.offer_side) if party else None,
        offer_price_fen=(a.offer_price_fen or None) if party else None,
        bidders=[BidderView(b.paddle, b.participant_id, b.max_price_fen) for b in a.bidders] if operator else None,
    )  # fmt: skip


# -- routes ---------------------------------------------------------------------------------------------


async def _submit(call: Call, command: Command, auction_id: int | None, client_ref: str = "") -> AuctionView:
    """Journal the command; the auction it changed as the caller sees it, or the rejection's error. A
    retry of a client reference changes nothing and has no event: its answer is the auction as the
    original left it, which the core remembers with the reference (exchange/matching/lot_auction.py)."""
    port: ExchangePort = call.app[EXCHANGE]
    result = await port.submit(command)
    for event in result.events:
        if event.__class__ is Rejected:
            if event.reason == RejectReason.UNKNOWN_AUCTION and auction_id is not None \
                    and await _find(port, auction_id) is not None:
                raise rejection(RejectReason.AUCTION_NOT_OPEN)  # it has ended: the core keeps live ones only
            raise rejection(event.reason)
        if event.__class__ is LotAuctionChanged and (auction_id is None or event.auction.auction_id == auction_id):
            return auction_view(port.read_model, event.auction, call.principal, now_ns(call.app))
    if client_ref:
        # read after the retry committed, so after its original (journaled before it)
        used = port.sequencer.core.auctions.refs.get((call.principal.participant_id, client_ref))
        if used is not None:
            return auction_view(port.read_model, used.answer, call.principal, now_ns(call.app))
    raise RuntimeError(f"no auction event in the result of {command!r}")


async def _find(port: ExchangePort, auction_id: int) -> LotAuction | None:
    """An auction from memory, or, ended longer ago than the retention window, from PostgreSQL."""
    a = port.read_model.auction(auction_id)
    if a is None and port.pool is not None:
        a = await retired_auction(port.pool, auction_id)
    return a


async def _known(call: Call, auction_id: int) -> LotAuction:
    a = await _find(call.app[EXCHANGE], auction_id)
    if a is None:
        raise ApiError(404, "unknown_auction", "no such auction")
    return a


@routes.post("/v1/auctions", roles=OFFERERS, body=OfferAuctionRequest, response=AuctionView, status=201,
             errors=(404,))
async def offer_auction(call: Call, body: OfferAuctionRequest) -> AuctionView:
    """Offer a registered lot (its free heads, whole) by auction.

    A seller offers its own lot; an operator names `seller_id`. `reserve_price_fen` is hidden from
    bidders (at least the start price); `increments` is the bid-increment table (rows from price 0
    up, ascending); a bid within `extension_s` of the close extends it; lots of one `catalogue` close
    together. Errors: `lot_not_found` 404, `lot_exhausted`, `invalid_auction`, `price_off_tick`,
    `invalid_price` 422, `not_authorized` 403."""
    principal = call.principal
    if body.seller_id is not None and principal.role != Role.OPERATOR:
        raise ApiError(403, "not_authorized", "only an operator offers for another seller")
    now = now_ns(call.app)
    command = OfferLotAuction(
        principal.participant_id, 0, body.lot_id, body.start_price_fen, body.reserve_price_fen,
        tuple((row.from_price_fen, row.increment_fen) for row in body.increments),
        now if body.opens_at_ms is None else body.opens_at_ms * _NS_PER_MS, body.closes_at_ms * _NS_PER_MS,
        body.buy_now_price_fen or 0, body.extension_s * _NS_PER_S, body.negotiation_s * _NS_PER_S, body.catalogue,
        body.seller_id or 0,
    )  # fmt: skip
    return await _submit(call, command, None)


@routes.get("/v1/auctions", roles=ANY_ROLE, query=AuctionQuery, response=list[AuctionView])
async def list_auctions(call: Call, query: AuctionQuery) -> list[AuctionView]:
    """Lot auctions, newest first (`status`: scheduled, open, negotiating, sold, unsold, withdrawn)."""
    now = now_ns(call.app)
    port = call.app[EXCHANGE]
    read_model = port.read_model
    auctions = {**read_model.retired_auctions, **read_model.auctions}
    # Views only for the 500 shown: the filter walks ids, the view is built for what is returned.
    wanted = [auctions[i] for i in sorted(auctions, reverse=True)
              if query.status is None or _STATE_NAME[auctions[i].state] == query.status][:_LIST_MAX]
    states = [s for s in _ENDED if query.status is None or _STATE_NAME[s] == query.status]
    if states and port.pool is not None:  # and those memory retired (ended long ago) to PostgreSQL
        more = await retired_auctions(port.pool, states, _LIST_MAX)
        wanted += [a for a in more if a.auction_id not in auctions]
        wanted = sorted(wanted, key=lambda a: a.auction_id, reverse=True)[:_LIST_MAX]
    return [auction_view(read_model, a, call.principal, now) for a in wanted]


@routes.get("/v1/auctions/{auction_id}", roles=ANY_ROLE, params=AuctionPath, response=AuctionView)
async def get_auction(call: Call, params: AuctionPath) -> AuctionView:
    """One lot auction. Error: `unknown_auction` 404."""
    return auction_view(call.app[EXCHANGE].read_model, await _known(call, params.auction_id), call.principal,
                        now_ns(call.app))


@routes.post("/v1/auctions/{auction_id}/bids", roles=BIDDERS, params=AuctionPath, body=BidRequest,
             response=AuctionView, status=201, errors=(409,))
async def place_bid(call: Call, params: AuctionPath, body: BidRequest) -> AuctionView:
    """Bid your maximum; the proxy bids for you by the increment, never above it.

    Your maximum is held against your cash or credit line like a buy order of the lot at that price,
    and released when you are outbid. With `client_bid_ref` a retry (after a timeout or a 503) with
    the same body changes nothing and gets the original answer (the auction as your bid left it); the
    same reference with another body (or used for an offer) is 409 `duplicate_reference`. A rejected
    bid uses no reference. Errors: `unknown_auction` 404, `duplicate_reference` 409, `auction_not_open`,
    `bid_too_low`, `insufficient_funds`, `self_trade_prevented`, `price_off_tick` 422."""
    await _known(call, params.auction_id)
    ref = body.client_bid_ref or ""
    command = BidLotAuction(call.principal.participant_id, 0, params.auction_id, body.max_price_fen, ref)
    return await _submit(call, command, params.auction_id, ref)


@routes.post("/v1/auctions/{auction_id}/buy-now", roles=BIDDERS, params=AuctionPath, response=AuctionView)
async def buy_now(call: Call, params: AuctionPath) -> AuctionView:
    """Buy the lot at once at its buy-now price. Errors: `unknown_auction` 404, `buy_now_unavailable`,
    `auction_not_open`, `insufficient_funds` 422."""
    await _known(call, params.auction_id)
    command = BuyNowLotAuction(call.principal.participant_id, 0, params.auction_id)
    return await _submit(call, command, params.auction_id)


@routes.post("/v1/auctions/{auction_id}/withdraw", roles=OFFERERS, params=AuctionPath, response=AuctionView)
async def withdraw_auction(call: Call, params: AuctionPath) -> AuctionView:
    """Withdraw your lot before the first bid. Errors: `unknown_auction` 404, `auction_has_bids` 422,
    `not_authorized` 403."""
    await _known(call, params.auction_id)
    command = WithdrawLotAuction(call.principal.participant_id, 0, params.auction_id)
    return await _submit(call, command, params.auction_id)


@routes.post("/v1/auctions/{auction_id}/offers", roles=BIDDERS | OPERATORS, params=AuctionPath,
             body=NegotiationRequest, response=AuctionView, errors=(409,))
async def negotiate(call: Call, params: AuctionPath, body: NegotiationRequest) -> AuctionView:
    """Negotiate a passed-in lot: the seller and the top bidder only, until `negotiate_until_ms`.

    `{"price_fen": p}` makes an offer (or counter-offer) at or above the top bid; `{"accept": true}`
    takes the other side's last offer and sells the lot at it. With `client_offer_ref` a retry with the
    same body changes nothing and gets the original answer (an acceptance's: the sold auction); the same
    reference with another body is 409 `duplicate_reference`; a rejected request uses no reference.
    Errors: `unknown_auction` 404, `duplicate_reference` 409, `not_negotiating`, `no_offer_to_accept`,
    `bid_too_low`, `insufficient_funds` 422."""
    await _known(call, params.auction_id)
    if not body.accept and body.price_fen is None:
        raise ApiError(422, "invalid", "send price_fen (an offer) or accept: true")
    ref = body.client_offer_ref or ""
    command = NegotiateLotAuction(call.principal.participant_id, 0, params.auction_id, body.price_fen or 0,
                                  body.accept, ref)
    return await _submit(call, command, params.auction_id, ref)


# -- WebSocket ------------------------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def wire(app: web.Application, hub: Hub) -> None:
    """The `auctions.{id}` and `auctions` channels (at app creation)."""

    def snapshot(channel: str, principal: Principal | None) -> bytes | None:
        _, dot, name = channel.partition(".")
        read_model = app[EXCHANGE].read_model
        auctions = {**read_model.retired_auctions, **read_model.auctions}
        now = now_ns(app)
        if not dot:
            views = [auction_view(read_model, auctions[i], None, now) for i in sorted(auctions, reverse=True)
                     if auctions[i].state in _LIVE]
            return _encode(AuctionsMessage(channel, views))
        a = auctions.get(int(name)) if name.isdigit() else None
        if a is None:
            raise ApiError(404, "unknown_auction", "no such auction")
        return _encode(AuctionMessage(channel, auction_view(read_model, a, None, now)))

    hub.register_channel_kind("auctions", snapshot=snapshot, bare=True)


_LIVE: Final = frozenset({AuctionState.SCHEDULED, AuctionState.OPEN, AuctionState.NEGOTIATING})


def attach(app: web.Application, port: ExchangePort, hub: Hub) -> None:
    """Publish each committed batch's auction changes (public views) to the subscribed sockets."""

    def publish(_batch: object, digest: BatchDigest) -> None:
        if not digest.auctions:
            return
        now = now_ns(app)
        latest: dict[int, LotAuction] = {}
        for event in digest.auctions:
            latest[event.auction.auction_id] = event.auction
        views = {i: auction_view(port.read_model, a, None, now) for i, a in latest.items()}
        if hub.subscriber_count("auctions"):
            hub.publish("auctions", _encode(AuctionsMessage("auctions", list(views.values()))))
        for auction_id, view in views.items():
            channel = f"auctions.{auction_id}"
            if hub.subscriber_count(channel):
                hub.publish(channel, _encode(AuctionMessage(channel, view)))

    port.add_listener(publish)
