"""Issue 11, deliveries (items 11-13): the quarantine certificate checked against the lot and the region's
shape, heads refused or dead on arrival, the shrink of unfasted pigs, and a seller's dispute that may
raise the amount from a hold on the buyer's money. Every figure is computed by hand in the comments."""

from __future__ import annotations

import msgspec
import pytest

from exchange.commands import (
    FundsAccount,
    GrantCreditLine,
    OpenDispute,
    RecordWeighIn,
    RegisterLot,
    RejectDelivery,
    RequestWithdrawal,
    ResolveDispute,
    decode_command,
    encode_command,
)
from exchange.core import new_exchange
from exchange.domain import QuarantineRegion, RejectReason, Side
from exchange.events import (
    DeliveryGrade,
    DeliveryRecorded,
    DeliveryResolved,
    DisputeOpened,
    LoanDrawn,
    LotRegistered,
    Trade,
    TradeSettled,
)
from exchange.settlement import rules
from exchange.settlement.clearing import Clearing
from exchange.settlement.ledger import AccountCode as AC
from exchange.settlement.model import TradeState
from tests.factories import list_instrument, order
from tests.settlement_support import (
    BUYER,
    BUYER2,
    FARMER,
    FINANCIER,
    HOUR_NS,
    OPERATOR,
    PIGLETS,
    Exchange,
    dce_spec,
    piglet_spec,
    world,
)

R = RejectReason
CN = "RC-LH-CN"  # the Dalian grade with the Chinese certificate rule and a 2.5 % shrink for unfasted pigs
CERT = "5001530001"  # Chongqing (50), serial 01530001
WINDOW_NS = 48 * HOUR_NS
HOLD_PER_HEAD = 392_000  # 140 kg (the heaviest animal) x 2800 fen/kg
OBLIGATION = 10 * HOLD_PER_HEAD  # 3,920,000 for 10 heads at 2800


def cn_world() -> Exchange:
    x = world()
    spec = msgspec.structs.replace(dce_spec(CN), quarantine_region=QuarantineRegion.CN, shrink_bps=250)
    x.ok(list_instrument(spec))
    return x


def lot(x: Exchange, cert: str = CERT, instrument: str = CN, heads: int = 10, avg_g: int = 110_000) -> int:
    events = x.ok(RegisterLot(FARMER, 0, instrument, heads, avg_g, "荣昌", cert))
    return next(e.lot.lot_id for e in events if isinstance(e, LotRegistered))


def traded(x: Exchange, instrument: str = CN, price_fen: int = 2800, heads: int = 10, cert: str = CERT,
           buyer: int = BUYER) -> int:
    lot_id = lot(x, cert, instrument, heads, 20_000 if instrument == PIGLETS else 110_000)
    x.ok(order(FARMER, Side.SELL, price_fen, heads, lot_id=lot_id, instrument=instrument))
    trades = x.of(Trade, x.ok(order(buyer, Side.BUY, price_fen, heads, instrument=instrument)))
    return trades[0].trade_id


def weigh(tid: int, heads: int, weight_g: int, cert: str = CERT, refused: int = 0, unfasted: bool = False,
          by: int = FARMER) -> RecordWeighIn:
    return RecordWeighIn(by, 0, tid, heads, weight_g, cert, True, refused, unfasted)


def check_books(x: Exchange) -> None:
    x.clearing.ledger.validate()
    assert Clearing.restore(x.clearing.snapshot()).state_hash() == x.clearing.state_hash()


# -- 11. the quarantine certificate ------------------------------------------------------------------------


@pytest.mark.parametrize(("cert", "ok"), [
    ("5001530001", True), (" 5101000002 ", True), ("6500000001", True),
    ("5000000000", False),  # serial all zero
    ("0001530001", False), ("7101530001", False), ("9901530001", False),  # not a mainland province code
    ("500153000", False), ("50015300011", False),  # 9 and 11 digits
    ("500153000１", False), ("5001 530001", False), ("No.5001530001", False), ("渝动检 5001530001", False),
    ("CQ-2026-000001", False), ("", False),
])  # fmt: skip
def test_chinese_certificate_number_is_ten_digits_under_a_province_code(cert: str, ok: bool) -> None:
    assert rules.cn_quarantine_cert_ok(cert) is ok
    assert rules.quarantine_cert_ok(QuarantineRegion.CN, cert) is ok
    assert rules.quarantine_cert_ok(QuarantineRegion.UNCHECKED, cert) is bool(cert.strip())


def test_lot_of_a_cn_instrument_needs_a_certificate_number_of_the_chinese_shape() -> None:
    x = cn_world()
    x.reject(RegisterLot(FARMER, 0, CN, 10, 110_000, "荣昌", "CQ-2026-000001"), R.INVALID_QUARANTINE_CERT)
    x.reject(RegisterLot(FARMER, 0, CN, 10, 110_000, "荣昌", "5000000000"), R.INVALID_QUARANTINE_CERT)
    assert lot(x, " 5001530001 ") > 0
    lot(x, "CQ-2026-000001", instrument=dce_spec().symbol)  # an UNCHECKED instrument: any text, as before


def test_weigh_in_must_name_the_lots_certificate_in_the_regions_shape() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = traded(x)
    x.reject(weigh(tid, 10, 1_100_000, cert="CQ-1"), R.INVALID_QUARANTINE_CERT)
    x.reject(weigh(tid, 10, 1_100_000, cert="5001530002"), R.QUARANTINE_CERT_MISMATCH)  # another load's
    x.reject(RecordWeighIn(FARMER, 0, tid, 10, 1_100_000, CERT, False), R.QUARANTINE_NOT_CHECKED)
    d = x.of(DeliveryRecorded, x.ok(weigh(tid, 10, 1_100_000, cert=f" {CERT} ")))[0]
    assert d.amount_fen == 3_080_000 and x.clearing.trades[tid].quarantine_cert == CERT


def test_matched_region_compares_any_text_and_unchecked_keeps_the_old_rule() -> None:
    x = world()
    x.ok(list_instrument(msgspec.structs.replace(dce_spec("RC-LH-M"), quarantine_region=QuarantineRegion.MATCHED)))
    x.deposit(BUYER, 20_000_000)
    tid = traded(x, "RC-LH-M", cert="渝动检 A-17")
    x.reject(weigh(tid, 10, 1_100_000, cert="渝动检 A-18"), R.QUARANTINE_CERT_MISMATCH)
    x.ok(weigh(tid, 10, 1_100_000, cert="渝动检 A-17"))
    old = traded(x, dce_spec().symbol, cert="CQ-2026-000001")
    x.ok(weigh(old, 10, 1_100_000, cert="anything"))  # listed without the rule: journals replay as written


# -- 12. heads refused, live weight and shrink ------------------------------------------------------------------


def test_refused_heads_are_paid_nothing_and_the_unfasted_shrink_comes_off_the_live_weight() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = traded(x)
    # 8 delivered unfasted at 920,017 g live, 2 dead on arrival. Shrink floor(920,017 x 250 / 10,000) =
    # floor(23,000.425) = 23,000 g; paid 897,017 g, avg floor(897,017 / 8) = 112,127 g: in grade.
    # Amount floor(897,017 x 2800 / 1000) = floor(2,511,647.6) = 2,511,647 (cap 3,920,000 - 2 x 392,000).
    d = x.of(DeliveryRecorded, x.ok(weigh(tid, 8, 920_017, refused=2, unfasted=True)))[0]
    assert (d.heads_delivered, d.heads_refused, d.total_weight_g, d.shrink_g, d.avg_weight_g) == (
        8, 2, 920_017, 23_000, 112_127)
    assert (d.grade, d.amount_fen, d.refund_fen) == (DeliveryGrade.IN_GRADE, 2_511_647, OBLIGATION - 2_511_647)
    t = x.clearing.trades[tid]
    assert (t.heads_refused, t.shrink_g) == (2, 23_000)
    assert x.balance(AC.BUYER_CASH, BUYER) == 10_000_000 - 2_511_647  # the refused heads' hold came back
    settled = x.of(TradeSettled, x.tick(WINDOW_NS))[0]
    assert (settled.fee_fen, settled.payable_fen) == (12_558, 2_499_089)  # floor(2,511,647 x 50 / 10,000)
    check_books(x)


def test_shrink_grades_on_the_paid_weight_and_fasted_pigs_lose_nothing() -> None:
    x = cn_world()
    x.deposit(BUYER, 20_000_000)
    fasted, unfasted = traded(x), traded(x)
    # 1,210,000 g for 10: avg 121 kg, 1 kg over the band: a substitute at 2740: 1210 x 2740 = 3,315,400
    d = x.of(DeliveryRecorded, x.ok(weigh(fasted, 10, 1_210_000)))[0]
    assert (d.shrink_g, d.grade, d.amount_fen) == (0, DeliveryGrade.SUBSTITUTE, 3_315_400)
    # unfasted: shrink 1,210,000 x 2.5 % = 30,250 g; paid 1,179,750 g, avg 117,975: in grade at 2800
    d = x.of(DeliveryRecorded, x.ok(weigh(unfasted, 10, 1_210_000, unfasted=True)))[0]
    assert (d.shrink_g, d.avg_weight_g, d.grade, d.amount_fen) == (30_250, 117_975, DeliveryGrade.IN_GRADE,
                                                                    3_303_300)
    assert rules.shrink_g(dce_spec(), 1_210_000, True) == 0  # an instrument without a shrink
    assert rules.shrink_g(piglet_spec(), 1_210_000, True) == 0  # per head: weight does not price


def test_refused_heads_cap_what_the_delivered_heads_can_be_paid() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = traded(x)
    # 5 heads at 150 kg (out of grade, 2740): 750 x 2740 = 2,055,000, above what 5 heads hold:
    # the cap is 3,920,000 - 5 x 392,000 = 1,960,000 (without the 5 refused: the whole obligation)
    assert rules.payable_cap_fen(OBLIGATION, 10, 5) == 1_960_000
    assert rules.delivery_terms(dce_spec(), 2800, OBLIGATION, 5, 750_000).amount_fen == 2_055_000
    d = x.of(DeliveryRecorded, x.ok(weigh(tid, 5, 750_000, refused=5)))[0]
    assert (d.grade, d.amount_fen, d.refund_fen) == (DeliveryGrade.OUT_OF_GRADE, 1_960_000, 1_960_000)


def test_refused_piglets_return_their_price_and_heads_never_exceed_the_trade() -> None:
    x = world()
    x.deposit(BUYER, 2_000_000)
    tid = traded(x, PIGLETS, 80_000, 10, cert="CQ-2026-000001")
    x.reject(weigh(tid, 8, 160_000, cert="x", refused=3), R.INVALID_DELIVERY)  # 8 + 3 > 10
    x.reject(weigh(tid, 8, 160_000, cert="x", refused=-1), R.INVALID_DELIVERY)
    d = x.of(DeliveryRecorded, x.ok(weigh(tid, 7, 140_000, cert="x", refused=3, unfasted=True)))[0]
    assert (d.amount_fen, d.refund_fen, d.shrink_g) == (560_000, 240_000, 0)  # 7 x ¥800; 3 x ¥800 back


def test_all_heads_refused_returns_the_whole_obligation() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = traded(x)
    x.reject(weigh(tid, 0, 5, refused=10), R.INVALID_DELIVERY)  # a weight without heads
    d = x.of(DeliveryRecorded, x.ok(weigh(tid, 0, 0, refused=10)))[0]
    assert (d.amount_fen, d.refund_fen, d.heads_refused) == (0, OBLIGATION, 10)
    assert x.balance(AC.BUYER_CASH, BUYER) == 10_000_000


def test_a_weigh_in_journaled_before_the_new_fields_decodes_to_the_old_meaning() -> None:
    new = RecordWeighIn(FARMER, 7, 3, 10, 1_100_000, "CQ-1", True)
    old_bytes = msgspec.msgpack.encode(["RecordWeighIn", FARMER, 7, 3, 10, 1_100_000, "CQ-1", True])
    assert decode_command(old_bytes) == new
    assert (new.heads_refused, new.unfasted) == (0, False)
    assert decode_command(encode_command(weigh(3, 8, 1, refused=2, unfasted=True))) == weigh(3, 8, 1, refused=2,
                                                                                           unfasted=True)


# -- 13. a seller's dispute may raise the amount ------------------------------------------------------------------


def delivered(x: Exchange, weight_g: int = 1_100_000, buyer: int = BUYER) -> int:
    tid = traded(x, buyer=buyer)
    x.ok(weigh(tid, 10, weight_g))
    return tid


def test_sellers_dispute_holds_five_percent_and_the_resolution_posts_the_raise_and_releases_the_rest() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = delivered(x)  # 1100 kg x 2800 = 3,080,000; 840,000 back: cash 6,920,000
    assert x.balance(AC.BUYER_CASH, BUYER) == 6_920_000
    opened = x.of(DisputeOpened, x.ok(OpenDispute(FARMER, 0, tid, "the scale under-read by 30 kg")))[0]
    # the limit: floor(3,080,000 x 500 / 10,000) = 154,000, held on the buyer's cash
    assert opened.raise_held_fen == 154_000 and x.held(AC.BUYER_CASH, BUYER) == 154_000
    assert x.clearing.ledger.available_fen(x.clearing.accounts[(AC.BUYER_CASH, BUYER, 0)]) == 6_766_000
    x.restore_from_snapshot()  # the hold survives a restart
    x.reject(ResolveDispute(OPERATOR, 0, tid, 3_234_001), R.INVALID_AMOUNT)  # 1 fen beyond the hold
    events = x.ok(ResolveDispute(OPERATOR, 0, tid, 3_164_000))  # 30 kg x 2800 = 84,000 more
    resolved = x.of(DeliveryResolved, events)[0]
    assert (resolved.amount_fen, resolved.refund_fen, resolved.raised_fen) == (3_164_000, 840_000, 84_000)
    assert x.held(AC.BUYER_CASH, BUYER) == 0  # 70,000 released
    assert x.balance(AC.BUYER_CASH, BUYER) == 6_920_000 - 84_000
    settled = x.of(TradeSettled, events)[0]
    # fee floor(3,164,000 x 50 / 10,000) = 15,820; payable 3,148,180
    assert (settled.amount_fen, settled.fee_fen, settled.payable_fen) == (3_164_000, 15_820, 3_148_180)
    t = x.clearing.trades[tid]
    assert (t.state, t.raised_fen, t.raise_held_fen, t.amount_fen + t.refund_fen) == (
        TradeState.SETTLED, 84_000, 154_000, OBLIGATION + 84_000)
    assert x.balance(AC.SELLER_RECEIVABLE, FARMER) == 0
    check_books(x)


def test_sellers_dispute_holds_only_what_the_buyer_has_and_may_also_lower() -> None:
    x = cn_world()
    x.deposit(BUYER, OBLIGATION)  # exactly the obligation
    # 1400 kg: avg 140 kg, out of grade at 2740: 3,836,000; 84,000 back is all the buyer has
    tid = delivered(x, 1_400_000)
    opened = x.of(DisputeOpened, x.ok(OpenDispute(FARMER, 0, tid, "under-read")))[0]
    assert opened.raise_held_fen == 84_000  # the limit 191,800, but only 84,000 available
    x.reject(ResolveDispute(OPERATOR, 0, tid, 3_920_001), R.INVALID_AMOUNT)
    x.ok(ResolveDispute(OPERATOR, 0, tid, 3_900_000))  # raised by 64,000, 20,000 released
    assert x.balance(AC.BUYER_CASH, BUYER) == 20_000 and x.held(AC.BUYER_CASH, BUYER) == 0
    check_books(x)

    y = cn_world()
    y.deposit(BUYER, 10_000_000)
    tid = delivered(y)
    y.ok(OpenDispute(FARMER, 0, tid, "under-read"))
    resolved = y.of(DeliveryResolved, y.ok(ResolveDispute(OPERATOR, 0, tid, 3_000_000)))[0]
    assert (resolved.refund_fen, resolved.raised_fen) == (920_000, 0)  # the hold voided, 80,000 back
    assert y.balance(AC.BUYER_CASH, BUYER) == 7_000_000 and y.held(AC.BUYER_CASH, BUYER) == 0
    check_books(y)


def test_sellers_dispute_against_a_buyer_with_nothing_opens_without_a_hold_and_cannot_raise() -> None:
    x = cn_world()
    x.deposit(BUYER, OBLIGATION)
    tid = traded(x)
    x.ok(weigh(tid, 10, 1_430_000))  # avg 143 kg, out of grade: 1430 x 2740 = 3,918,200; 1,800 back
    x.ok(RequestWithdrawal(BUYER, 0, "W-1", FundsAccount.TRADING_CASH, 1_800))  # and held for the bank
    opened = x.of(DisputeOpened, x.ok(OpenDispute(FARMER, 0, tid, "under-read")))[0]
    assert opened.raise_held_fen == 0 and x.clearing.trades[tid].raise_pending_id == 0
    x.reject(ResolveDispute(OPERATOR, 0, tid, 3_918_201), R.INVALID_AMOUNT)
    resolved = x.of(DeliveryResolved, x.ok(ResolveDispute(OPERATOR, 0, tid, 3_900_000)))[0]
    assert (resolved.amount_fen, resolved.raised_fen) == (3_900_000, 0)
    check_books(x)


def test_buyers_dispute_still_only_lowers_and_holds_nothing() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = delivered(x)
    assert x.of(DisputeOpened, x.ok(OpenDispute(BUYER, 0, tid, "lame")))[0].raise_held_fen == 0
    assert x.held(AC.BUYER_CASH, BUYER) == 0
    x.reject(ResolveDispute(OPERATOR, 0, tid, 3_080_001), R.INVALID_AMOUNT)
    x.ok(ResolveDispute(OPERATOR, 0, tid, 3_080_000))


def test_rejecting_an_out_of_grade_delivery_voids_the_sellers_dispute_hold() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = delivered(x, 1_320_000)  # avg 132 kg: out of grade, 1320 x 2740 = 3,616,800
    x.ok(OpenDispute(FARMER, 0, tid, "under-read"))
    assert x.held(AC.BUYER_CASH, BUYER) == 180_840  # floor(3,616,800 x 5 %)
    resolved = x.of(DeliveryResolved, x.ok(RejectDelivery(BUYER, 0, tid)))[0]
    assert (resolved.amount_fen, resolved.refund_fen, resolved.rejected) == (0, OBLIGATION, True)
    assert x.balance(AC.BUYER_CASH, BUYER) == 10_000_000 and x.held(AC.BUYER_CASH, BUYER) == 0
    check_books(x)


def test_sellers_dispute_on_a_credit_funded_trade_holds_on_the_line_and_the_raise_becomes_principal() -> None:
    x = cn_world()
    x.deposit(FINANCIER, 5_000_000, FundsAccount.FINANCIER_FUNDS)
    x.consent(BUYER2, FINANCIER)
    x.ok(GrantCreditLine(FINANCIER, 0, BUYER2, 4_000_000, 730))
    tid = delivered(x, buyer=BUYER2)  # 3,080,000; the line has 4,000,000 - 3,080,000 = 920,000 left
    x.ok(OpenDispute(FARMER, 0, tid, "under-read"))
    assert x.held(AC.BUYER_CREDIT_LINE, BUYER2, FINANCIER) == 154_000
    drawn = x.of(LoanDrawn, x.ok(ResolveDispute(OPERATOR, 0, tid, 3_234_000)))[0]
    assert drawn.amount_fen == 3_234_000  # the raise came from the line: the buyer owes it too
    assert x.balance(AC.BUYER_CREDIT_LINE, BUYER2, FINANCIER) == 4_000_000 - 3_234_000
    check_books(x)


def test_seller_dispute_journal_replays_to_the_same_state_hash() -> None:
    x = cn_world()
    x.deposit(BUYER, 10_000_000)
    tid = delivered(x)
    x.ok(OpenDispute(FARMER, 0, tid, "under-read"))
    x.ok(ResolveDispute(OPERATOR, 0, tid, 3_100_000))
    replay = new_exchange()
    for command in x.commands:
        replay.apply(command)
    assert replay.state_hash() == x.core.state_hash()
