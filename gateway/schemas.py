"""The JSON shapes of the exchange API: request and response structs, their enums, and the mappings
between API names and the core's integer enums.

Every request struct sets `forbid_unknown_fields=True` (an unknown field is a 422) and bounds every
number and string, so a well-formed body can never overflow the core's 64-bit fields. Money is integer
fen, quantities integer heads, weights integer grams, times integer milliseconds since the epoch
(`*_ms`, what JavaScript clients can hold exactly; the core's nanoseconds are divided down).

Core rejection reasons become stable snake_case codes (`RejectReason.PRICE_OFF_TICK` ->
`price_off_tick`) with the HTTP status of `REJECT_STATUS`: 422 for business rules, 404 where the
resource is unknown or someone else's, 409 for conflicts with existing state.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

import msgspec

from exchange.domain import (
    BreedClass,
    InstrumentSpec,
    OrderType,
    ProductClass,
    QuarantineRegion,
    RejectReason,
    SelfTradePrevention,
    Side,
    TimeInForce,
    TradingState,
)
from exchange.settlement.clearing import MAX_FEE_BPS
from exchange.settlement.rules import MAX_SHRINK_BPS
from gateway.errors import ApiError
from gateway.inputs import Text

__all__ = [
    "BOOK_DEPTH_MAX",
    "PAGE_LIMIT_MAX",
    "REJECT_STATUS",
    "AmendOrderRequest",
    "BookView",
    "Candle",
    "CandleInterval",
    "CandlePage",
    "CandleQuery",
    "ExecutionReport",
    "Fill",
    "FillPage",
    "FillQuery",
    "InstrumentPath",
    "InstrumentRequest",
    "InstrumentView",
    "Liquidity",
    "LotPath",
    "LotView",
    "OrderPage",
    "OrderPath",
    "OrderQuery",
    "OrderStatus",
    "OrderTypeName",
    "PlaceOrderRequest",
    "ProductClassName",
    "ReferencePriceRequest",
    "RegisterLotRequest",
    "SideName",
    "StpName",
    "TimeInForceName",
    "TradePage",
    "TradeQuery",
    "TradeView",
    "TradingStateName",
    "reject_code",
]

PAGE_LIMIT_MAX: Final = 1000
BOOK_DEPTH_MAX: Final = 1000

# -- bounded scalars -----------------------------------------------------------------------------------

Id = Annotated[int, msgspec.Meta(ge=1, le=2**53 - 1, description="a positive identifier")]
PriceFen = Annotated[int, msgspec.Meta(ge=1, le=10**10, description="integer fen (per kg or per head)")]
Heads = Annotated[int, msgspec.Meta(ge=1, le=1_000_000, description="whole animals")]
WeightG = Annotated[int, msgspec.Meta(ge=1, le=10_000_000, description="integer grams")]
TimeMs = Annotated[int, msgspec.Meta(ge=1, le=9_000_000_000_000, description="milliseconds since the epoch")]
ClientOrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=36, pattern=r"\A[!-~]+\Z",
                                            description="1-36 printable ASCII characters, unique per "
                                                        "participant forever (the idempotency key)")]
ClientLotRef = Annotated[str, msgspec.Meta(min_length=1, max_length=36, pattern=r"\A[!-~]+\Z",
                                           description="1-36 printable ASCII characters, unique per seller "
                                                       "forever: a retry gets the original lot back")]
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"\A[A-Za-z0-9_\-]+\Z",
                                     description="instrument symbol, e.g. RC-LH-WSY")]
ShortText = Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]
Cursor = Annotated[str, msgspec.Meta(min_length=1, max_length=19, pattern=r"\A[0-9]+\Z",
                                     description="opaque cursor from a previous page's next_cursor")]
Limit = Annotated[int, msgspec.Meta(ge=1, le=PAGE_LIMIT_MAX)]
ToleranceG = Annotated[int, msgspec.Meta(ge=0, le=10_000_000, description="integer grams; 0: no tolerance")]
DiscountFenPerKg = Annotated[int, msgspec.Meta(ge=0, le=10**10, description="integer fen per kg live weight")]
_NS_PER_MS: Final = 1_000_000
MAX_DISPUTE_WINDOW_MS: Final = 90 * 86_400_000
# The settlement terms' defaults are InstrumentSpec's, so a listing that omits them means what the core
# would assume.
_SPEC_DEFAULT: Final = {f.name: f.default for f in msgspec.structs.fields(InstrumentSpec) if not f.required}
DEFAULT_DISPUTE_WINDOW_MS: Final = _SPEC_DEFAULT["dispute_window_ns"] // _NS_PER_MS

# -- enums as the API spells them ----------------------------------------------------------------------


class SideName(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderTypeName(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForceName(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"
    GTD = "GTD"
    DAY = "DAY"


class StpName(StrEnum):
    EXPIRE_TAKER = "expire_taker"
    EXPIRE_MAKER = "expire_maker"
    EXPIRE_BOTH = "expire_both"


class OrderStatus(StrEnum):
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


class Liquidity(StrEnum):
    MAKER = "maker"
    TAKER = "taker"
    AUCTION = "auction"  # filled in a call-auction uncross: neither side took


class ProductClassName(StrEnum):
    FINISHING_HOG = "finishing_hog"  # quoted in fen per kg live weight
    PIGLET = "piglet"  # quoted in fen per head


class BreedClassName(StrEnum):
    WAI_SAN_YUAN = "wai_san_yuan"  # 外三元
    NEI_SAN_YUAN = "nei_san_yuan"  # 内三元
    TU_ZA = "tu_za"  # 土杂


class QuarantineRegionName(StrEnum):
    """How an instrument checks quarantine certificates (`exchange.settlement.rules.quarantine_cert_ok`)."""

    UNCHECKED = "unchecked"  # any text, not compared with the lot's (the rule before issue 11)
    MATCHED = "matched"  # any text up to 64 characters; the weigh-in's must be the lot's
    CN = "cn"  # a Chinese 动物检疫合格证明 number (10 digits under a province code), the lot's at the weigh-in


class TradingStateName(StrEnum):
    CONTINUOUS = "continuous"
    AUCTION = "auction"
    HALTED = "halted"
    CLOSED = "closed"


class CandleInterval(StrEnum):
    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    H1 = "1h"
    D1 = "1d"


CANDLE_INTERVAL_MS: Final = {
    CandleInterval.M1: 60_000,
    CandleInterval.M5: 300_000,
    CandleInterval.M15: 900_000,
    CandleInterval.H1: 3_600_000,
    CandleInterval.D1: 86_400_000,
}

# API name <-> core enum. Tuples indexed by the core's IntEnum value are the fast way back.
SIDE: Final = {SideName.BUY: Side.BUY, SideName.SELL: Side.SELL}
SIDE_NAME: Final = (None, SideName.BUY, SideName.SELL)
ORDER_TYPE: Final = {OrderTypeName.LIMIT: OrderType.LIMIT, OrderTypeName.MARKET: OrderType.MARKET}
ORDER_TYPE_NAME: Final = (None, OrderTypeName.LIMIT, OrderTypeName.MARKET)
TIF: Final = {TimeInForceName[t.name]: t for t in TimeInForce}
TIF_NAME: Final = (None, *(TimeInForceName[t.name] for t in TimeInForce))
STP: Final = {StpName[s.name]: s for s in SelfTradePrevention}
PRODUCT_CLASS: Final = {ProductClassName[p.name]: p for p in ProductClass}
PRODUCT_CLASS_NAME: Final = {p: ProductClassName[p.name] for p in ProductClass}
BREED_CLASS: Final = {BreedClassName[b.name]: b for b in BreedClass}
BREED_CLASS_NAME: Final = {b: BreedClassName[b.name] for b in BreedClass}
TRADING_STATE: Final = {TradingStateName[s.name]: s for s in TradingState}
TRADING_STATE_NAME: Final = {s: TradingStateName[s.name] for s in TradingState}
QUARANTINE_REGION: Final = {QuarantineRegionName[r.name]: r for r in QuarantineRegion}
QUARANTINE_REGION_NAME: Final = {r: QuarantineRegionName[r.name] for r in QuarantineRegion}
QUOTE_UNIT: Final = {ProductClass.FINISHING_HOG: "fen_per_kg", ProductClass.PIGLET: "fen_per_head"}


# -- core rejections -> HTTP ----------------------------------------------------------------------------

R = RejectReason
# Business rules the request broke are 422; these are not.
_NOT_422: Final = {
    R.LOT_NOT_FOUND: 404,  # also another seller's lot: never revealed
    R.UNKNOWN_ORDER: 404,  # also another participant's order
    R.UNKNOWN_PARTICIPANT: 404,
    R.UNKNOWN_TRADE: 404,
    R.UNKNOWN_REFERENCE: 404,
    R.UNKNOWN_LOAN: 404,
    R.UNKNOWN_AUCTION: 404,
    R.NOT_AUTHORIZED: 403,
    R.DUPLICATE_CLIENT_ORDER_ID: 409,
    R.DUPLICATE_REFERENCE: 409,
    R.INSTRUMENT_EXISTS: 409,
    R.INVALID_STATE_TRANSITION: 409,
    R.INVALID_TRADE_STATE: 409,
    R.INVALID_PAYOUT_STATE: 409,
    R.LOAN_CLOSED: 409,
}
# An unknown instrument named in a body is a 422 (a path naming one answers 404 `unknown_instrument`).
REJECT_STATUS: Final[dict[RejectReason, int]] = {reason: _NOT_422.get(reason, 422) for reason in RejectReason}

_REJECT_CODE: Final = {reason: reason.name.lower() for reason in RejectReason}


def reject_code(reason: RejectReason) -> str:
    """The stable API code of a core rejection: the enum name in snake_case."""
    return _REJECT_CODE[reason]


# What the API says for each rejection of the core (trading and settlement alike).
_REJECT_MESSAGE: Final[dict[RejectReason, str]] = {
    RejectReason.UNKNOWN_INSTRUMENT: "no such instrument",
    RejectReason.MARKET_HALTED: "the market is halted",
    RejectReason.PRICE_OFF_TICK: "price_fen is not a multiple of the instrument's tick",
    RejectReason.PRICE_OUTSIDE_BAND: "price_fen is outside today's price band",
    RejectReason.QUANTITY_OUT_OF_RANGE: "quantity_heads is outside the instrument's order size range",
    RejectReason.LOT_NOT_FOUND: "no such lot",
    RejectReason.LOT_EXHAUSTED: "the lot has fewer free heads than the order",
    RejectReason.DUPLICATE_CLIENT_ORDER_ID: "client_order_id was already used",
    RejectReason.POST_ONLY_WOULD_TAKE: "a post-only order would trade at once",
    RejectReason.FOK_NOT_FILLABLE: "a fill-or-kill order cannot be filled completely now",
    RejectReason.MIN_QUANTITY_NOT_MET: "min_quantity_heads cannot be filled now",
    RejectReason.UNKNOWN_ORDER: "no such open order",
    RejectReason.INVALID_ORDER: "this combination of order fields is not allowed",
    RejectReason.INVALID_EXPIRY: "GTD needs expire_at_ms in the future, and only GTD takes it",
    RejectReason.NOT_ALLOWED_IN_AUCTION: "during a call auction only plain limit orders are taken",
    RejectReason.SELF_TRADE_PREVENTED: "the order would cross your own order",
    RejectReason.INSTRUMENT_EXISTS: "an instrument with this symbol exists",
    RejectReason.INVALID_INSTRUMENT: "the instrument specification is inconsistent",
    RejectReason.INVALID_STATE_TRANSITION: "the instrument's trading state does not allow this",
    RejectReason.LOT_OUT_OF_GRADE: "the lot's average weight is outside the instrument's grade",
    RejectReason.INVALID_LOT: "the lot needs heads, an origin and a quarantine certificate",
    RejectReason.NOTHING_TO_AMEND: "the amendment changes nothing",
    RejectReason.INVALID_PRICE: "price_fen must be positive",
    RejectReason.LOT_WRONG_INSTRUMENT: "the lot belongs to another instrument",
    RejectReason.INSUFFICIENT_FUNDS: "not enough available funds",
    RejectReason.UNKNOWN_PARTICIPANT: "no such participant",
    RejectReason.NOT_AUTHORIZED: "you may not do this to this resource",
    RejectReason.INVALID_PARTICIPANT: "the participant's profile does not allow this",
    RejectReason.UNKNOWN_TRADE: "no such trade",
    RejectReason.INVALID_DELIVERY: (
        "heads_delivered must be 0..the heads traded, with a weight exactly when heads were delivered, and the "
        "instrument's weight discount at that average weight must be below the trade price (else the delivery "
        "cannot be priced: an operator records it as not delivered, 0 heads, and it is settled outside the "
        "exchange)"
    ),
    RejectReason.QUARANTINE_NOT_CHECKED: "the quarantine certificate must be named and checked",
    RejectReason.INVALID_TRADE_STATE: "the trade's settlement state does not allow this",
    RejectReason.DISPUTE_WINDOW_CLOSED: "the dispute window has closed",
    RejectReason.DELIVERY_NOT_REJECTABLE: "the delivery is within the instrument's tolerance: it cannot be rejected",
    RejectReason.NO_CONSENT: "the participant has not consented to this financier",
    RejectReason.ADVANCE_TOO_LARGE: "the advance exceeds the policy share of the trade's estimated value",
    RejectReason.DUPLICATE_REFERENCE: "this reference was already used with different content",
    RejectReason.UNKNOWN_REFERENCE: "no such reference",
    RejectReason.INVALID_PAYOUT_STATE: "the payout's state does not allow this",
    RejectReason.INVALID_AMOUNT: "the amount or reference is not valid here (e.g. more than is owed)",
    RejectReason.INVALID_SHARES: "member shares must name farmers, be positive and sum to at most 10,000 bps",
    RejectReason.BANK_ACCOUNT_NOT_VERIFIED: "the bank account has not been verified by an operator",
    RejectReason.INVALID_SETTINGS: "the setting is out of range",
    RejectReason.UNKNOWN_LOAN: "no such loan of yours",
    RejectReason.LOAN_CLOSED: "nothing is owed on this loan",
    RejectReason.INVALID_QUARANTINE_CERT: (
        "quarantine_cert is not a certificate number of the instrument's region (cn: the 10 digits of the "
        "certificate number, the first two a mainland province code, e.g. 5001530001)"
    ),
    RejectReason.QUARANTINE_CERT_MISMATCH: "quarantine_cert is not the certificate of the trade's lot",
    RejectReason.MARKET_CLOSED: "the market is closed: outside its trading session",
    RejectReason.INVALID_CALENDAR_DAY: "the day must be a date after today (China Standard Time)",
}


def rejection(reason: RejectReason) -> ApiError:
    """The API error of a core rejection."""
    message = _REJECT_MESSAGE.get(reason) or reason.name.lower().replace("_", " ")
    return ApiError(REJECT_STATUS[reason], reject_code(reason), message)


# -- requests -------------------------------------------------------------------------------------------


class PlaceOrderRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A new order. Sells name the seller's `lot_id`; buys have none.

    `price_fen` is required on limit orders and not allowed on market orders. `time_in_force`
    defaults to GTC for limit and IOC for market orders; GTD needs `expire_at_ms`.
    """

    client_order_id: ClientOrderId
    instrument: Symbol
    side: SideName
    quantity_heads: Heads
    type: OrderTypeName = OrderTypeName.LIMIT
    price_fen: PriceFen | None = None
    time_in_force: TimeInForceName | None = None
    expire_at_ms: TimeMs | None = None
    post_only: bool = False
    min_quantity_heads: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    all_or_none: bool = False
    stp: StpName = StpName.EXPIRE_TAKER
    lot_id: Id | None = None


class AmendOrderRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """New limit price and/or new total quantity (filled + remaining); omitted fields stay.

    Reducing the quantity at the same price keeps time priority; anything else re-queues the order.
    """

    price_fen: PriceFen | None = None
    quantity_heads: Heads | None = None


class RegisterLotRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A seller's lot: what its sell orders refer to. The declared average weight must lie in the
    instrument's lot band."""

    instrument: Symbol
    heads: Heads
    avg_weight_g: WeightG
    origin: ShortText
    quarantine_cert: ShortText
    ear_tags: Annotated[Text, msgspec.Meta(max_length=200)] = ""
    client_lot_ref: ClientLotRef | None = None


ClockTime = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$",
                                        description="HH:MM, China Standard Time (UTC+8)")]
IsoDate = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", description="YYYY-MM-DD")]
Weekday = Annotated[int, msgspec.Meta(ge=1, le=7, description="ISO weekday: 1 Monday .. 7 Sunday")]


class SessionRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """An instrument's trading day in China Standard Time (exchange/calendar.py). Pre-open (a call
    auction: orders collect) from `pre_open`, the opening uncross and continuous trading at `open`, the
    close at `close` (DAY orders expire); an optional break `break_from`..`break_to`. Defaults: the
    Dalian day 08:50 / 09:00 / 15:00, Monday to Friday, no break."""

    pre_open: ClockTime = "08:50"
    open: ClockTime = "09:00"
    close: ClockTime = "15:00"
    break_from: ClockTime | None = None
    break_to: ClockTime | None = None
    weekdays: Annotated[list[Weekday], msgspec.Meta(min_length=1, max_length=7)] = msgspec.field(
        default_factory=lambda: [1, 2, 3, 4, 5])


class InstrumentRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A standard grade at one delivery point. `price_band_bps` 400 is ±4 % of the reference price
    (0: no band); the reference price must lie on the tick.

    Settlement terms (all optional): `seller_fee_bps` of the final amount (at most 1,000; the fee
    schedule can change it later). A delivery whose average weight lies above `lot_avg_max_g` by at
    most `overweight_limit_g` (below `lot_avg_min_g` by at most `underweight_limit_g`) is a substitute,
    paid at the price less `overweight_discount_fen_per_kg` (`underweight_...`) per kg; further out the
    buyer may also reject it. Piglets are priced per head and take no discount. Parties may dispute a
    weigh-in for `dispute_window_ms` (default 48 h; 0: settle at the next clock tick). A weigh-in of
    unfasted pigs loses `shrink_bps` of its live weight (at most 1,000). `quarantine_region` says how
    lots' quarantine certificates are checked (`cn`: the Chinese certificate number, at lot registration
    and at the weigh-in, where it must be the lot's; `matched`, the default: any text, the lot's at the
    weigh-in; `unchecked`: any text, as instruments listed before the rule replay).
    """

    symbol: Symbol
    product_class: ProductClassName
    breed_class: BreedClassName
    delivery_point: ShortText
    lot_avg_min_g: WeightG
    lot_avg_max_g: WeightG
    animal_min_g: WeightG
    animal_max_g: WeightG
    tick_fen: PriceFen
    min_order_heads: Heads
    max_order_heads: Heads
    price_band_bps: Annotated[int, msgspec.Meta(ge=0, le=9_999)]
    reference_price_fen: Annotated[int, msgspec.Meta(ge=0, le=10**10)]
    initial_state: TradingStateName = TradingStateName.CONTINUOUS
    seller_fee_bps: Annotated[int, msgspec.Meta(ge=0, le=MAX_FEE_BPS)] = _SPEC_DEFAULT["seller_fee_bps"]
    overweight_limit_g: ToleranceG = _SPEC_DEFAULT["overweight_limit_g"]
    overweight_discount_fen_per_kg: DiscountFenPerKg = _SPEC_DEFAULT["overweight_discount_fen_per_kg"]
    underweight_limit_g: ToleranceG = _SPEC_DEFAULT["underweight_limit_g"]
    underweight_discount_fen_per_kg: DiscountFenPerKg = _SPEC_DEFAULT["underweight_discount_fen_per_kg"]
    dispute_window_ms: Annotated[int, msgspec.Meta(
        ge=0, le=MAX_DISPUTE_WINDOW_MS, description="milliseconds after the weigh-in (at most 90 days)",
    )] = DEFAULT_DISPUTE_WINDOW_MS
    # A new listing checks certificates unless it says otherwise; the core's own default (unchecked) is
    # what instruments journaled before the rule replay with.
    quarantine_region: QuarantineRegionName = QuarantineRegionName.MATCHED
    shrink_bps: Annotated[int, msgspec.Meta(
        ge=0, le=MAX_SHRINK_BPS, description="basis points of live weight deducted from unfasted pigs",
    )] = _SPEC_DEFAULT["shrink_bps"]
    session: SessionRequest | None = None  # None: no trading calendar (the state changes only by operators)
    index_base_date: IsoDate | None = None  # the price index's base day (None: the first day with trades)


class HaltQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    reason: Annotated[Text, msgspec.Meta(max_length=200)] = ""


class ReferencePriceRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    price_fen: PriceFen


# -- path and query parameters --------------------------------------------------------------------------


class OrderPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    order_id: Id


class LotPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lot_id: Id


class InstrumentPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    instrument: Symbol


class OrderQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    status: OrderStatus | None = None
    instrument: Symbol | None = None
    cursor: Cursor | None = None
    limit: Limit = 100


class FillQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    instrument: Symbol | None = None
    cursor: Cursor | None = None
    limit: Limit = 100


class TradeQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    cursor: Cursor | None = None
    limit: Limit = 100


class BookQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    depth: Annotated[int, msgspec.Meta(ge=1, le=BOOK_DEPTH_MAX)] = 10


class CandleQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    interval: CandleInterval = CandleInterval.M1
    limit: Limit = 100


# -- responses ------------------------------------------------------------------------------------------


class Fill(msgspec.Struct, frozen=True, gc=False):
    """One side of one trade, as its participant sees it."""

    trade_id: int
    order_id: int
    instrument: str
    side: SideName
    price_fen: int
    quantity_heads: int
    liquidity: Liquidity
    time_ms: int
    lot_id: int


class ExecutionReport(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """An order's state after a command, sent only once that command is durable.

    `fills` are the fills this command produced (for `GET /v1/orders/{order_id}`: all of the order's
    fills). `quantity_heads` = `filled_heads` + `remaining_heads` while the order is open; once it is
    CANCELED or EXPIRED, `remaining_heads` is 0 and the rest was taken off. A REJECTED report (only on
    the `orders` WebSocket channel) has `order_id` 0 and the reason in `reject_code`.
    """

    order_id: int
    client_order_id: str
    instrument: str
    side: SideName
    type: OrderTypeName
    time_in_force: TimeInForceName
    status: OrderStatus
    price_fen: int
    quantity_heads: int
    filled_heads: int
    remaining_heads: int
    fills: list[Fill]
    lot_id: int
    expire_at_ms: int
    created_ms: int
    updated_ms: int
    reject_code: str | None = None


class OrderPage(msgspec.Struct, frozen=True):
    """Newest first; pass `next_cursor` back as `cursor` for the next page (null: no more)."""

    orders: list[ExecutionReport]
    next_cursor: str | None


class FillPage(msgspec.Struct, frozen=True):
    fills: list[Fill]
    next_cursor: str | None


class TradeView(msgspec.Struct, frozen=True, gc=False):
    """A public trade: no participant, order or lot ids. `taker_side` is null for an auction fill."""

    trade_id: int
    instrument: str
    price_fen: int
    quantity_heads: int
    taker_side: SideName | None
    time_ms: int
    seq: int


class TradePage(msgspec.Struct, frozen=True):
    trades: list[TradeView]
    next_cursor: str | None


class BookView(msgspec.Struct, frozen=True):
    """An L2 picture: `[price_fen, heads]` levels, best first, as of the instrument's sequence `seq`."""

    instrument: str
    seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


class Candle(msgspec.Struct, frozen=True):
    start_ms: int
    open_fen: int
    high_fen: int
    low_fen: int
    close_fen: int
    volume_heads: int
    trades: int


class CandlePage(msgspec.Struct, frozen=True):
    """Oldest first; only intervals with trades are present."""

    instrument: str
    interval: CandleInterval
    candles: list[Candle]


class InstrumentView(msgspec.Struct, frozen=True):
    symbol: str
    product_class: ProductClassName
    quote_unit: str  # fen_per_kg (finishing hogs) or fen_per_head (piglets)
    breed_class: BreedClassName
    delivery_point: str
    lot_avg_min_g: int
    lot_avg_max_g: int
    animal_min_g: int
    animal_max_g: int
    tick_fen: int
    min_order_heads: int
    max_order_heads: int
    price_band_bps: int
    reference_price_fen: int
    band_low_fen: int  # 0 and 0: no band
    band_high_fen: int
    state: TradingStateName
    seq: int
    seller_fee_bps: int  # as of now: the listing's, or the fee schedule's since
    overweight_limit_g: int
    overweight_discount_fen_per_kg: int
    underweight_limit_g: int
    underweight_discount_fen_per_kg: int
    dispute_window_ms: int
    quarantine_region: QuarantineRegionName
    shrink_bps: int
    session: SessionRequest | None = None  # the trading day; None: no calendar
    index_base_date: str | None = None
    state_reason: str = ""  # a halt's reason, or the calendar phase (pre_open, open, break, close)


class LotView(msgspec.Struct, frozen=True):
    """A lot and how many of its heads are on offer (`reserved_heads`), sold, and still free."""

    lot_id: int
    instrument: str
    heads: int
    avg_weight_g: int
    origin: str
    quarantine_cert: str
    ear_tags: str
    reserved_heads: int
    sold_heads: int
    available_heads: int
