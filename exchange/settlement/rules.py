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
shrink (unfasted hogs)      floor(live_weight_g x shrink_bps / 10,000) grams    the seller (less weight
                            off the live weight of the delivered heads; the     deducted)
                            grade and the amount use the weight left
delivery amount (hogs)      floor(paid_weight_g x (price - discount) / 1000)    the buyer
                            (a discount at or above the price: refused), at
                            most the obligation less the refused heads' part
refused / dead heads        paid nothing: their part of the obligation          exact (the obligation
                            (obligation / heads traded each) goes back          is heads x per head)
seller's dispute hold       min(floor(weigh-in amount x 500 / 10,000), what     the buyer
                            the buyer's trade source has available)
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

from exchange.domain import InstrumentSpec, ProductClass, QuarantineRegion, band_fen
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
MAX_SHRINK_BPS: Final = 1_000  # an instrument deducts at most 10 % of the live weight for gut fill
# A seller's dispute (the scale under-read) may raise the weigh-in amount by at most this share of it,
# held from the buyer when the dispute opens: 5 %, the AuctionsPlus weight tolerance for sheep, far
# beyond a certified scale's error, so a real under-read fits and a claim cannot reprice the trade.
MAX_DISPUTE_RAISE_BPS: Final = 500
MAX_QUARANTINE_CERT_LEN: Final = 64
# GB/T 2260 province-level codes of mainland China: the first two digits of a certificate number.
CN_PROVINCE_CODES: Final = frozenset({
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
    "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65",
})
_UNCHECKED: Final = QuarantineRegion.UNCHECKED
_CN: Final = QuarantineRegion.CN
_DIGITS: Final = frozenset("0123456789")
# Module globals for enum members: an enum class attribute is a slow lookup on Python 3.11 (clearing.py).
# Final, like the struct every weigh-in makes: compiled, C statics instead of module-dict lookups.
_IN_GRADE: Final = DeliveryGrade.IN_GRADE
_SUBSTITUTE: Final = DeliveryGrade.SUBSTITUTE
_OUT_OF_GRADE: Final = DeliveryGrade.OUT_OF_GRADE
_DELIVERY_TERMS: Final = DeliveryTerms


def cst_day(ts_ns: int) -> int:
    """Days since 1970-01-01 in China Standard Time: the calendar day of ``ts_ns`` in Chongqing."""
    return (ts_ns + CST_OFFSET_NS) // NS_PER_DAY


def cn_quarantine_cert_ok(cert: str) -> bool:
    """Whether ``cert`` (surrounding blanks aside) has the shape of the number of a Chinese animal
    quarantine certificate (动物检疫合格证明), as the exchange accepts it: exactly 10 ASCII digits, the
    first two the GB/T 2260 code of the issuing province (``CN_PROVINCE_CODES``, e.g. 50 Chongqing, 51
    Sichuan), the other eight the issuing office's serial, not all zero. Only the number, as printed
    after "No.": no prefix, no inner blank, no full-width digit. (No regex: the shape is three checks.)"""
    number = cert.strip()
    return (
        len(number) == 10
        and all(ch in _DIGITS for ch in number)
        and number[:2] in CN_PROVINCE_CODES
        and number[2:] != "00000000"
    )


def quarantine_cert_ok(region: QuarantineRegion, cert: str) -> bool:
    """Whether ``cert`` may name a lot's (or a weigh-in's) quarantine certificate on an instrument of
    ``region``: never blank, at most ``MAX_QUARANTINE_CERT_LEN`` characters from MATCHED on (an
    UNCHECKED instrument keeps the old rule: any non-blank text), and for CN the shape of
    ``cn_quarantine_cert_ok``."""
    if not cert.strip():
        return False
    if region == _UNCHECKED:
        return True
    if region == _CN:
        return cn_quarantine_cert_ok(cert)
    return len(cert.strip()) <= MAX_QUARANTINE_CERT_LEN


def same_quarantine_cert(lot_cert: str, weigh_in_cert: str) -> bool:
    """Whether the weigh-in names the lot's certificate: the same text, surrounding blanks aside."""
    return lot_cert.strip() == weigh_in_cert.strip()


def hold_per_head_fen(spec: InstrumentSpec, price_fen: int) -> int:
    """The most one head of this instrument can cost at ``price_fen``.

    Finishing hogs (fen per kg): the heaviest animal the band allows, ``animal_max_g``, at the price,
    rounded UP to a whole fen, so the hold always covers any in-band delivery. Piglets (fen per head):
    the price. Holds are exactly linear in heads, so releasing part of a hold is exact.
    """
    return per_head_hold_fen(hold_grams(spec), price_fen)


PER_HEAD: Final = -1  # hold_grams of an instrument priced per head


def hold_grams(spec: InstrumentSpec) -> int:
    """What ``hold_per_head_fen`` prices a head of this instrument by: the heaviest animal the band allows
    (``animal_max_g``, never negative in a valid specification) for finishing hogs, ``PER_HEAD`` for piglets.
    The clearing keeps it per instrument (``_hold_grams``): every buy accepted and every fill needs it."""
    product_class = spec.product_class
    # identity first: a decoded spec holds the enum member itself, and compiled, ``==`` on two objects is a
    # generic rich comparison
    if product_class is FINISHING_HOG or product_class == FINISHING_HOG:
        return spec.animal_max_g
    return PER_HEAD


def per_head_hold_fen(grams: int, price_fen: int) -> int:
    """``hold_per_head_fen`` from the instrument's ``hold_grams``: grams x price per kg rounded UP to a whole
    fen, or the price itself (``PER_HEAD``). Rounded up as floor((n + 999) / 1000), equal to -(-n // 1000) for
    every integer n: compiled, a product with a negative factor takes the slow generic multiply."""
    if grams == PER_HEAD:
        return price_fen
    return (grams * price_fen + GRAMS_PER_KG - 1) // GRAMS_PER_KG


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
    spec: InstrumentSpec, price_fen: int, obligation_fen: int, heads_delivered: int, total_weight_g: int,
    unfasted: bool = False,
) -> DeliveryTerms:
    """The final amount of a delivery, by the instrument's weight band, tolerance, discounts and shrink.

    ``total_weight_g`` is the live weight of the delivered heads (heads dead on arrival or refused at
    the scale are neither weighed nor counted here); ``obligation_fen`` is what the delivered heads may
    cost at most (``payable_cap_fen``: the escrowed obligation less the refused heads' part).

    - Unfasted finishing hogs (``unfasted``) lose the instrument's shrink first: ``shrink_g`` =
      floor(live grams x ``shrink_bps`` / 10,000) (the seller keeps the fraction of a gram); the paid
      weight is the live weight less the shrink. Fasted pigs, piglets and ``shrink_bps`` 0: no shrink.
    - The average weight is floor(paid grams / heads delivered).
    - In the lot band ``[lot_avg_min_g, lot_avg_max_g]``: IN_GRADE, no discount.
    - Above it by at most ``overweight_limit_g`` (below by at most ``underweight_limit_g``): SUBSTITUTE,
      the price less ``overweight_discount_fen_per_kg`` (``underweight_...``) for every kg.
    - Further out: OUT_OF_GRADE: the same discount applies if the buyer accepts; the buyer may reject.
    - Finishing hogs: amount = floor(paid grams x discounted price / 1000): the buyer keeps the fraction
      of a fen. Piglets are priced per head and take no discount: amount = heads delivered x price.
    - A short delivery is thereby paid pro rata (only what was delivered is paid). The amount never
      exceeds ``obligation_fen``: weight beyond what the hold covered (animals above the band's
      per-animal maximum) is not paid.
    - The discounted price must stay positive: a discount at or above the price raises ``ValueError``
      (never paid as nothing); callers refuse such a weigh-in first (``discount_leaves_price``), or
      call ``priced_delivery_terms``, which answers None instead.
    """
    terms = priced_delivery_terms(spec, price_fen, obligation_fen, heads_delivered, total_weight_g, unfasted)
    if terms is None:
        paid_g = total_weight_g - shrink_g(spec, total_weight_g, unfasted)
        discount = _grade(spec, paid_g // heads_delivered)[1]
        raise ValueError(f"a discount of {discount} fen/kg leaves nothing of the price {price_fen} fen/kg")
    return terms


def priced_delivery_terms(
    spec: InstrumentSpec, price_fen: int, obligation_fen: int, heads_delivered: int, total_weight_g: int,
    unfasted: bool = False,
) -> DeliveryTerms | None:
    """``delivery_terms``, or None where ``discount_leaves_price`` is False (the discount takes the whole
    price): one grading for the weigh-in's check and its amount."""
    if heads_delivered == 0:
        return _DELIVERY_TERMS(0, _IN_GRADE, 0, 0)
    shrink = shrink_g(spec, total_weight_g, unfasted) if unfasted else 0
    paid_g = total_weight_g - shrink
    avg_g = paid_g // heads_delivered
    grade, discount = _grade(spec, avg_g)
    if spec.product_class == FINISHING_HOG:
        unit_price = price_fen - discount
        if unit_price <= 0:
            return None
        amount = paid_g * unit_price // GRAMS_PER_KG
    else:
        discount = 0
        amount = heads_delivered * price_fen
    return _DELIVERY_TERMS(avg_g, grade, discount, min(amount, obligation_fen), shrink)


def shrink_g(spec: InstrumentSpec, live_weight_g: int, unfasted: bool) -> int:
    """The weight deducted from a weigh-in for gut fill: floor(live grams x ``shrink_bps`` / 10,000) for
    unfasted finishing hogs, else 0 (the seller keeps the fraction of a gram)."""
    if not unfasted or spec.product_class != FINISHING_HOG:
        return 0
    return live_weight_g * spec.shrink_bps // BPS


def payable_cap_fen(obligation_fen: int, heads_traded: int, heads_refused: int) -> int:
    """The most the delivered heads of a trade can be paid: the obligation less the refused (or dead on
    arrival) heads' part, obligation / heads traded each. Exact: the obligation is heads x the hold per
    head at the trade price (``hold_fen``), so every refused head returns its whole hold to the buyer."""
    if not heads_refused:
        return obligation_fen
    return obligation_fen - obligation_fen // heads_traded * heads_refused


def dispute_raise_limit_fen(amount_fen: int) -> int:
    """The most a seller's dispute may raise a weigh-in amount: floor(amount x ``MAX_DISPUTE_RAISE_BPS``
    / 10,000); the buyer keeps the odd fen. The clearing holds it (as far as the buyer's trade source
    has it available) when the dispute opens."""
    return amount_fen * MAX_DISPUTE_RAISE_BPS // BPS


def discount_leaves_price(
    spec: InstrumentSpec, price_fen: int, heads_delivered: int, total_weight_g: int, unfasted: bool = False
) -> bool:
    """Whether the delivery can be priced by the instrument's terms: the weight discount for its average
    (paid) weight (finishing hogs) is below the trade price. Where it is not, the weigh-in is refused:
    animals delivered for nothing is not a price, and a clamp to 0 would pay the farmer nothing without
    a word."""
    if heads_delivered == 0 or spec.product_class != FINISHING_HOG:
        return True
    paid_g = total_weight_g - shrink_g(spec, total_weight_g, unfasted)
    return _grade(spec, paid_g // heads_delivered)[1] < price_fen


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
