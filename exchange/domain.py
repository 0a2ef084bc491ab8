"""Domain vocabulary of hogx: enums, the instrument specification and the lot.

Everything here is an immutable value (msgspec ``Struct`` with ``frozen=True``) or an ``IntEnum`` so that
it encodes compactly into the journal and decodes back to the same value on replay.

Units are part of every name: money is integer fen (``*_fen``), weights integer grams (``*_g``),
quantities integer heads (``*_heads``), time integer nanoseconds since the epoch (``ts_ns``).
How ``price_fen`` is read depends on the product class: fen per kg live weight for finishing hogs,
fen per head for piglets.
"""

from __future__ import annotations

from enum import IntEnum

import msgspec


class Side(IntEnum):
    BUY = 1
    SELL = 2


class OrderType(IntEnum):
    LIMIT = 1
    MARKET = 2


class TimeInForce(IntEnum):
    GTC = 1  # good till cancelled
    IOC = 2  # immediate or cancel: what does not fill at once expires
    FOK = 3  # fill or kill: fills completely at once or is rejected
    GTD = 4  # good till date: expires at the first command whose time reaches expire_at_ns
    DAY = 5  # expires at its instrument's close (instruments with a trading session only)


class SelfTradePrevention(IntEnum):
    """What happens when an order would trade with a resting order of the same participant."""

    EXPIRE_TAKER = 1
    EXPIRE_MAKER = 2
    EXPIRE_BOTH = 3


class ProductClass(IntEnum):
    FINISHING_HOG = 1  # quoted in fen per kg live weight, traded in whole heads
    PIGLET = 2  # quoted in fen per head


class BreedClass(IntEnum):
    WAI_SAN_YUAN = 1  # 外三元: Duroc x (Landrace x Large White)
    NEI_SAN_YUAN = 2  # 内三元: improved boars on a local sow line
    TU_ZA = 3  # 土杂: local x improved cross


class TradingState(IntEnum):
    CONTINUOUS = 1  # price-time matching
    AUCTION = 2  # call auction: orders collect without matching until Uncross
    HALTED = 3  # no new orders or amendments; cancels still allowed
    CLOSED = 4  # outside the trading session (exchange/calendar.py): as halted, but by the calendar


class TradingSession(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """An instrument's trading day in China Standard Time (UTC+8), in minutes after midnight.

    Pre-open (orders collect, no matching: a call auction) from ``pre_open_min``, the opening uncross
    and continuous trading from ``open_min``, the close at ``close_min``; an optional break (lunch)
    ``break_from_min``..``break_to_min`` (both 0: none). ``weekdays`` is a bit mask, bit 0 Monday
    (31: Monday to Friday). exchange/calendar.py runs it; the defaults are the Dalian day, unbroken.
    """

    pre_open_min: int = 8 * 60 + 50
    open_min: int = 9 * 60
    close_min: int = 15 * 60
    break_from_min: int = 0
    break_to_min: int = 0
    weekdays: int = 0b0011111


class QuarantineRegion(IntEnum):
    """Whose animal quarantine certificate rules an instrument's lots follow (``rules.quarantine_cert_ok``).

    The weigh-in's certificate must be the lot's (same text, surrounding blanks aside) on every region
    but UNCHECKED; CN also checks the shape of the number at lot registration and at the weigh-in.
    """

    UNCHECKED = 0  # instruments listed before the rule (their journals replay as written): any text
    MATCHED = 1  # any non-blank text, the weigh-in's the lot's
    CN = 2  # the number of a Chinese 动物检疫合格证明 (rules.cn_quarantine_cert_ok), the weigh-in's the lot's


class InstrumentSpec(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A standard grade of live hogs at one delivery point.

    ``price_band_bps`` is the daily band around ``reference_price_fen`` (400 = ±4 %); 0 means no band.
    The band is inclusive and its edges are rounded inwards to whole ticks, so every price inside it
    is tradable and nothing outside is.
    """

    symbol: str
    product_class: ProductClass
    breed_class: BreedClass
    delivery_point: str
    lot_avg_min_g: int  # declared average weight of a lot must lie in [lot_avg_min_g, lot_avg_max_g]
    lot_avg_max_g: int
    animal_min_g: int  # every animal must weigh within [animal_min_g, animal_max_g] at delivery
    animal_max_g: int
    tick_fen: int
    min_order_heads: int
    max_order_heads: int
    price_band_bps: int
    reference_price_fen: int
    initial_state: TradingState = TradingState.CONTINUOUS
    # Settlement terms (exchange/settlement/rules.py applies them). The seller's fee in basis points of
    # the final amount; an operator's SetFeeSchedule overrides it.
    seller_fee_bps: int = 0
    # A delivered lot whose average weight lies above lot_avg_max_g by at most overweight_limit_g (or
    # below lot_avg_min_g by at most underweight_limit_g) is a substitute: paid at the price less the
    # discount per kg of live weight (DCE: +10 kg at ¥600/t = 60 fen/kg). Further out the buyer may
    # reject the delivery within the dispute window. Piglets (priced per head) take no discount.
    overweight_limit_g: int = 0
    overweight_discount_fen_per_kg: int = 0
    underweight_limit_g: int = 0
    underweight_discount_fen_per_kg: int = 0
    dispute_window_ns: int = 48 * 3600 * 1_000_000_000  # after the weigh-in; closes on a clock tick
    # Delivery checks and terms (issue 11): the certificate rule of the region, and the shrink: basis
    # points of the live weight deducted from a weigh-in of unfasted pigs (gut fill), 0..MAX_SHRINK_BPS.
    quarantine_region: QuarantineRegion = QuarantineRegion.UNCHECKED
    shrink_bps: int = 0
    # The trading day (exchange/calendar.py); None: no calendar, the market is in its state until an
    # operator changes it.
    session: TradingSession | None = None
    # The price index's base day for this instrument's class and region (exchange/priceindex.py), as
    # yyyymmdd in China Standard Time; 0: the first day with trades.
    index_base_day: int = 0


class Lot(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Pigs one seller offers: what a sell order refers to. ``lot_id`` is assigned by the core."""

    lot_id: int
    seller_id: int
    instrument: str
    heads: int
    avg_weight_g: int
    origin: str
    quarantine_cert: str
    ear_tags: str = ""


class AuctionState(IntEnum):
    """A lot auction's state (exchange/matching/lot_auction.py). The last four are final."""

    SCHEDULED = 1  # offered, not yet open for bids
    OPEN = 2
    NEGOTIATING = 3  # passed in below the reserve: the top bidder's exclusive negotiation window
    SOLD = 4
    UNSOLD = 5  # no bid, or passed in and the negotiation ended without a deal
    WITHDRAWN = 6


class OfferSide(IntEnum):
    NONE = 0
    SELLER = 1
    BIDDER = 2


class AuctionBidder(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One bidder of one auction: its paddle (what everyone else sees), the hold its bids are held under
    (an id from the order ids) and its maximum, set at bid number ``max_bid_no`` (earlier wins a tie)."""

    participant_id: int
    paddle: int
    hold_id: int
    max_price_fen: int
    max_bid_no: int


class LotAuction(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A lot auction as of its last change (a new value per change: events carry it as it was).

    ``price_fen`` is the current price (0 before the first bid); ``leader_paddle`` the paddle that leads
    (0: none). ``reserve_price_fen`` and the bidders' maxima and ids are private: the gateway shows a
    bidder by paddle, the reserve only as met or not."""

    auction_id: int
    seller_id: int
    lot_id: int
    instrument: str
    heads: int
    start_price_fen: int
    reserve_price_fen: int
    increments: tuple[tuple[int, int], ...]
    opens_at_ns: int
    closes_at_ns: int
    buy_now_price_fen: int
    extension_ns: int
    negotiation_ns: int
    catalogue: str
    offered_by: int
    state: AuctionState
    price_fen: int = 0
    bid_count: int = 0
    leader_paddle: int = 0
    bidders: tuple[AuctionBidder, ...] = ()
    negotiate_until_ns: int = 0
    offer_side: OfferSide = OfferSide.NONE
    offer_price_fen: int = 0
    trade_id: int = 0
    ended_at_ns: int = 0


class RejectReason(IntEnum):
    """Why a command changed nothing. Stable codes: the gateway maps them to its error codes."""

    UNKNOWN_INSTRUMENT = 1
    MARKET_HALTED = 2
    PRICE_OFF_TICK = 3
    PRICE_OUTSIDE_BAND = 4
    QUANTITY_OUT_OF_RANGE = 5
    LOT_NOT_FOUND = 6
    LOT_EXHAUSTED = 7
    DUPLICATE_CLIENT_ORDER_ID = 8
    POST_ONLY_WOULD_TAKE = 9
    FOK_NOT_FILLABLE = 10
    MIN_QUANTITY_NOT_MET = 11
    UNKNOWN_ORDER = 12
    INVALID_ORDER = 13  # a combination of fields that makes no sense (reason in the docs of _check_order)
    INVALID_EXPIRY = 14
    NOT_ALLOWED_IN_AUCTION = 15
    SELF_TRADE_PREVENTED = 16
    INSTRUMENT_EXISTS = 17
    INVALID_INSTRUMENT = 18
    INVALID_STATE_TRANSITION = 19
    LOT_OUT_OF_GRADE = 20
    INVALID_LOT = 21
    NOTHING_TO_AMEND = 22
    INVALID_PRICE = 23
    LOT_WRONG_INSTRUMENT = 24
    # Settlement (exchange/settlement/clearing.py)
    INSUFFICIENT_FUNDS = 25  # neither cash nor a credit line covers the hold, a withdrawal, a grant
    UNKNOWN_PARTICIPANT = 26
    NOT_AUTHORIZED = 27  # the sender's role may not send this command (or not for this subject)
    INVALID_PARTICIPANT = 28  # malformed registration: empty name, unmasked ID number, bad role ...
    UNKNOWN_TRADE = 29
    INVALID_DELIVERY = 30  # more heads than traded, weight not positive ...
    QUARANTINE_NOT_CHECKED = 31
    INVALID_TRADE_STATE = 32  # e.g. a second weigh-in, a dispute on a settled trade
    DISPUTE_WINDOW_CLOSED = 33
    DELIVERY_NOT_REJECTABLE = 34  # the delivery is within the instrument's tolerance
    NO_CONSENT = 35  # the participant has not consented to this financier
    ADVANCE_TOO_LARGE = 36
    DUPLICATE_REFERENCE = 37  # a client-chosen reference reused with different content
    UNKNOWN_REFERENCE = 38  # no withdrawal, payout or run with that reference
    INVALID_PAYOUT_STATE = 39
    INVALID_AMOUNT = 40  # not a positive whole number of fen, beyond what is owed, or a malformed reference
    INVALID_SHARES = 41  # cooperative shares: unknown member, not positive, over 100 %
    UNBOUNDED_HOLD = 42  # a market buy with no price band has no worst case to hold
    BANK_ACCOUNT_NOT_VERIFIED = 43
    INVALID_SETTINGS = 44  # fee or policy out of range
    UNSUPPORTED_COMMAND = 45  # a settlement command sent to a matching-only core
    UNKNOWN_LOAN = 46  # also another financier's loan: never revealed
    LOAN_CLOSED = 47  # nothing is owed on the loan (repaid or written off)
    INVALID_QUARANTINE_CERT = 48  # not a certificate number of the instrument's region (lot or weigh-in)
    QUARANTINE_CERT_MISMATCH = 49  # the weigh-in's certificate is not the lot's
    # Lot auctions (exchange/matching/lot_auction.py): numbered from 100, clear of the others' growth
    UNKNOWN_AUCTION = 100  # no such auction, or it has ended
    INVALID_AUCTION = 101  # terms that make no sense: prices, increments, times (see lot_auction.py)
    AUCTION_NOT_OPEN = 102  # before its opening, at or after its close, or not taking bids
    BID_TOO_LOW = 103  # below the start price, the next increment, or not above one's own maximum
    AUCTION_HAS_BIDS = 104  # a lot may be withdrawn before the first bid only
    BUY_NOW_UNAVAILABLE = 105  # no buy-now price, or the bidding has reached it
    NOT_NEGOTIATING = 106  # not passed in, or the sender is neither its seller nor its top bidder
    NO_OFFER_TO_ACCEPT = 107  # no offer from the other side, or not at that price
    # The trading day (exchange/calendar.py): numbered from 120, clear of the others' growth
    MARKET_CLOSED = 120  # outside the instrument's trading session
    INVALID_CALENDAR_DAY = 121  # not a date, or not after today (China Standard Time)


class ExpireReason(IntEnum):
    IOC = 1  # the unfilled rest of an IOC or market order
    SELF_TRADE = 2  # removed by self-trade prevention
    GTD = 3  # its good-till-date passed
    END_OF_DAY = 4  # a DAY order at its instrument's close


def band_fen(spec: InstrumentSpec, reference_price_fen: int) -> tuple[int, int]:
    """The inclusive daily price band, edges rounded inwards to the tick; (0, 0) when unbanded."""
    if spec.price_band_bps == 0 or reference_price_fen == 0:
        return (0, 0)
    tick = spec.tick_fen
    low = -(-reference_price_fen * (10_000 - spec.price_band_bps) // 10_000)
    high = reference_price_fen * (10_000 + spec.price_band_bps) // 10_000
    low = -(-low // tick) * tick
    high = high // tick * tick
    return (max(low, tick), high)
