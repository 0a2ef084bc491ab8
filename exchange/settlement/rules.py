"""The money rules of settlement: every computation that turns weights, prices, shares and rates into fen.

Pure integer functions, one rounding rule each, stated in its docstring together with who gets the odd
fen. Nothing here rounds silently: where a rule cannot be met (a market buy without a price limit) the
caller rejects the command instead.

Summary of the rounding rules (the module's contract; tests pin every one with exact figures):

==========================  ==================================================  =======================
computation                 rule                                                the odd fen goes to
==========================  ==================================================  =======================
hold per head (hogs)        ceil(animal_max_g x price_fen_per_kg / 1000)        held from the buyer,
                                                                                returned at settlement
delivery amount (hogs)      floor(total_weight_g x (price - discount) / 1000)   the buyer
                            (a discount at or above the price: refused)
seller fee                  floor(amount x fee_bps / 10,000)                    the seller
poor member's fee waiver    floor(fee x share_bps / 10,000) per verified poor   the cooperative pays
                            member of a selling cooperative, paid by the        it (the fee's rest)
                            subsidy fund, added to that member's part
cooperative member share    floor(net x share_bps / 10,000) each                the cooperative
advance limit               floor(estimated value x advance_max_bps / 10,000)   the financier (lends less)
estimated value (hogs)      floor(heads x declared avg g x price / 1000)        the financier
daily interest              floor((principal x rate_bps + carry) / 3,650,000),  the borrower until the
                            remainder carried to the next day                   fractions make a fen
==========================  ==================================================  =======================
"""

from __future__ import annotations

from typing import Final

from exchange.domain import InstrumentSpec, ProductClass, band_fen
from exchange.events import DeliveryGrade

# A msgspec struct, so defined in a module that is not compiled (see setup.py); re-exported here.
from exchange.settlement.model import DeliveryTerms as DeliveryTerms

GRAMS_PER_KG: Final = 1000
BPS: Final = 10_000  # basis points in a whole
DAYS_PER_YEAR: Final = 365  # interest: a year is 365 days, also in leap years (benchmark-rate convention)
INTEREST_DENOMINATOR: Final = BPS * DAYS_PER_YEAR
NS_PER_DAY: Final = 86_400 * 1_000_000_000
CST_OFFSET_NS: Final = 8 * 3600 * 1_000_000_000  # days change at midnight China Standard Time (UTC+8)
FINISHING_HOG: Final = ProductClass.FINISHING_HOG
# Module globals for enum members: an enum class attribute is a slow lookup on Python 3.11 (clearing.py).
# Final, like the struct every weigh-in makes: compiled, C statics instead of module-dict lookups.
_IN_GRADE: Final = DeliveryGrade.IN_GRADE
_SUBSTITUTE: Final = DeliveryGrade.SUBSTITUTE
_OUT_OF_GRADE: Final = DeliveryGrade.OUT_OF_GRADE
_DELIVERY_TERMS: Final = DeliveryTerms


def cst_day(ts_ns: int) -> int:
    """Days since 1970-01-01 in China Standard Time: the calendar day of ``ts_ns`` in Chongqing."""
    return (ts_ns + CST_OFFSET_NS) // NS_PER_DAY


def hold_per_head_fen(spec: InstrumentSpec, price_fen: int) -> int:
    """The most one head of this instrument can cost at ``price_fen``.

    Finishing hogs (fen per kg): the heaviest animal the band allows, ``animal_max_g``, at the price,
    rounded UP to a whole fen, so the hold always covers any in-band delivery. Piglets (fen per head):
    the price. Holds are exactly linear in heads, so releasing part of a hold is exact.
    """
    if spec.product_class == FINISHING_HOG:
        return -(-spec.animal_max_g * price_fen // GRAMS_PER_KG)
    return price_fen


def hold_fen(spec: InstrumentSpec, price_fen: int, heads: int) -> int:
    """The worst-case value of ``heads`` at ``price_fen``: heads x ``hold_per_head_fen``."""
    return heads * hold_per_head_fen(spec, price_fen)


def estimated_value_fen(spec: InstrumentSpec, price_fen: int, heads: int, declared_avg_g: int) -> int:
    """A matched trade's value before the weigh-in, from the lot's declared average weight.

    Finishing hogs: floor(heads x declared average grams x price / 1000); piglets: heads x price.
    Rounded down, in the financier's favour: it caps an advance.
    """
    if spec.product_class == FINISHING_HOG:
        return heads * declared_avg_g * price_fen // GRAMS_PER_KG
    return heads * price_fen


def advance_limit_fen(estimated_fen: int, advance_max_bps: int) -> int:
    """The largest advance on a trade: floor(estimated value x policy share); the financier lends less."""
    return estimated_fen * advance_max_bps // BPS


def delivery_terms(
    spec: InstrumentSpec, price_fen: int, obligation_fen: int, heads_delivered: int, total_weight_g: int
) -> DeliveryTerms:
    """The final amount of a delivery, by the instrument's weight band, tolerance and discounts.

    - The average weight is floor(total grams / heads delivered).
    - In the lot band ``[lot_avg_min_g, lot_avg_max_g]``: IN_GRADE, no discount.
    - Above it by at most ``overweight_limit_g`` (below by at most ``underweight_limit_g``): SUBSTITUTE,
      the price less ``overweight_discount_fen_per_kg`` (``underweight_...``) for every kg.
    - Further out: OUT_OF_GRADE: the same discount applies if the buyer accepts; the buyer may reject.
    - Finishing hogs: amount = floor(total grams x discounted price / 1000): the buyer keeps the fraction
      of a fen. Piglets are priced per head and take no discount: amount = heads delivered x price.
    - A short delivery is thereby paid pro rata (only what was delivered is paid). The amount never
      exceeds the escrowed obligation: weight beyond what the hold covered (animals above the band's
      per-animal maximum) is not paid.
    - The discounted price must stay positive: a discount at or above the price raises ``ValueError``
      (never paid as nothing); callers refuse such a weigh-in first (``discount_leaves_price``), or
      call ``priced_delivery_terms``, which answers None instead.
    """
    terms = priced_delivery_terms(spec, price_fen, obligation_fen, heads_delivered, total_weight_g)
    if terms is None:
        discount = _grade(spec, total_weight_g // heads_delivered)[1]
        raise ValueError(f"a discount of {discount} fen/kg leaves nothing of the price {price_fen} fen/kg")
    return terms


def priced_delivery_terms(
    spec: InstrumentSpec, price_fen: int, obligation_fen: int, heads_delivered: int, total_weight_g: int
) -> DeliveryTerms | None:
    """``delivery_terms``, or None where ``discount_leaves_price`` is False (the discount takes the whole
    price): one grading for the weigh-in's check and its amount."""
    if heads_delivered == 0:
        return _DELIVERY_TERMS(0, _IN_GRADE, 0, 0)
    avg_g = total_weight_g // heads_delivered
    grade, discount = _grade(spec, avg_g)
    if spec.product_class == FINISHING_HOG:
        unit_price = price_fen - discount
        if unit_price <= 0:
            return None
        amount = total_weight_g * unit_price // GRAMS_PER_KG
    else:
        discount = 0
        amount = heads_delivered * price_fen
    return _DELIVERY_TERMS(avg_g, grade, discount, min(amount, obligation_fen))


def discount_leaves_price(spec: InstrumentSpec, price_fen: int, heads_delivered: int, total_weight_g: int) -> bool:
    """Whether the delivery can be priced by the instrument's terms: the weight discount for its average
    weight (finishing hogs) is below the trade price. Where it is not, the weigh-in is refused: animals
    delivered for nothing is not a price, and a clamp to 0 would pay the farmer nothing without a word."""
    if heads_delivered == 0 or spec.product_class != FINISHING_HOG:
        return True
    return _grade(spec, total_weight_g // heads_delivered)[1] < price_fen


def band_clears_discounts(spec: InstrumentSpec, reference_price_fen: int) -> bool:
    """Whether every price the band allows around ``reference_price_fen`` lies above the instrument's
    largest weight discount, so that every delivery it can trade can be priced. True where nothing is
    known (no band or no reference price) and where nothing is discounted. For validating a listing and
    a new reference price."""
    discount = max(spec.overweight_discount_fen_per_kg, spec.underweight_discount_fen_per_kg)
    if spec.product_class != FINISHING_HOG or not discount:
        return True
    low_fen, _ = band_fen(spec, reference_price_fen)
    return low_fen == 0 or low_fen > discount


def _grade(spec: InstrumentSpec, avg_g: int) -> tuple[DeliveryGrade, int]:
    if avg_g > spec.lot_avg_max_g:
        over = avg_g - spec.lot_avg_max_g
        grade = _SUBSTITUTE if over <= spec.overweight_limit_g else _OUT_OF_GRADE
        return grade, spec.overweight_discount_fen_per_kg
    if avg_g < spec.lot_avg_min_g:
        under = spec.lot_avg_min_g - avg_g
        grade = _SUBSTITUTE if under <= spec.underweight_limit_g else _OUT_OF_GRADE
        return grade, spec.underweight_discount_fen_per_kg
    return _IN_GRADE, 0


def fee_fen(amount_fen: int, fee_bps: int) -> int:
    """The seller fee: floor(amount x fee_bps / 10,000); the seller keeps the odd fen."""
    return amount_fen * fee_bps // BPS


def poor_member_fee_waivers_fen(fee_fen: int, shares_bps: tuple[int, ...], poor: tuple[bool, ...]) -> tuple[int, ...]:
    """The part of a cooperative's seller fee waived for each member: floor(fee x share / 10,000) for a
    verified poor member, 0 for any other. The subsidy fund pays the waivers and each is added to its
    member's part of the split; the cooperative pays the rest of the fee, its own and its other members'
    shares and every odd fen."""
    return tuple(fee_fen * share // BPS if is_poor else 0 for share, is_poor in zip(shares_bps, poor, strict=True))


def cooperative_split_fen(net_fen: int, shares_bps: tuple[int, ...]) -> tuple[int, ...]:
    """Each member's part: floor(net x share / 10,000). The cooperative keeps the rest: its own share
    (10,000 - sum of shares) and every odd fen."""
    return tuple(net_fen * share // BPS for share in shares_bps)


def accrue_interest(principal_fen: int, rate_bps: int, days: int, carry: int) -> tuple[int, int]:
    """Interest for ``days`` whole days on a constant principal: (interest_fen, new carry).

    A day's interest is principal x yearly rate / 365, in units of 1/3,650,000 fen. Whole fen are
    charged, the remainder is carried to the next day, so over any period the borrower pays the exact
    interest less under one fen (the borrower keeps the fraction until it makes a whole fen).
    """
    numerator = principal_fen * rate_bps * days + carry
    return numerator // INTEREST_DENOMINATOR, numerator % INTEREST_DENOMINATOR


def yuan(fen: int) -> str:
    """``fen`` as yuan with two decimals, exactly (no float): 123456 -> "1234.56", -5 -> "-0.05"."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"
