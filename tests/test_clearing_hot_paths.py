"""The clearing's shortcuts on its hot paths give what the plain rules give: one grading per weigh-in
(``rules.priced_delivery_terms``) and dispute deadlines kept as a deque plus a heap for the ones that
come out of order (``Clearing._add_deadline``), before and after a restore."""

from __future__ import annotations

import msgspec
import pytest

from exchange.commands import ParticipantRole
from exchange.events import TradeSettled
from exchange.settlement import rules
from tests.settlement_support import BUYER, FARMER, HOUR_NS, POOR_FARMER, SYMBOL, Exchange, dce_spec, piglet_spec

LONG = "RC-LH-LONG"  # a dispute window of 10 hours; SYMBOL's is 1 hour


@pytest.mark.parametrize("price_fen", [40, 41, 60, 61, 2800])
@pytest.mark.parametrize(
    ("heads", "weight_g"),
    [(0, 0), (10, 1_100_000), (10, 1_250_000), (10, 1_300_010), (10, 950_000), (10, 970_000), (8, 880_000)],
)
def test_priced_delivery_terms_are_the_terms_or_none_where_the_discount_takes_the_price(
    price_fen: int, heads: int, weight_g: int
) -> None:
    for spec in (dce_spec(), piglet_spec()):
        obligation = rules.hold_fen(spec, price_fen, 10)
        terms = rules.priced_delivery_terms(spec, price_fen, obligation, heads, weight_g)
        if rules.discount_leaves_price(spec, price_fen, heads, weight_g):
            assert terms == rules.delivery_terms(spec, price_fen, obligation, heads, weight_g)
        else:
            assert terms is None
            with pytest.raises(ValueError, match="leaves nothing of the price"):
                rules.delivery_terms(spec, price_fen, obligation, heads, weight_g)


def _market() -> Exchange:
    x = Exchange(
        msgspec.structs.replace(dce_spec(), dispute_window_ns=HOUR_NS),
        msgspec.structs.replace(dce_spec(LONG), dispute_window_ns=10 * HOUR_NS),
    )
    x.register(BUYER, ParticipantRole.BUYER)
    x.register(FARMER, ParticipantRole.FARMER)
    x.register(POOR_FARMER, ParticipantRole.FARMER, poor=True)
    x.deposit(BUYER, 10**10)
    return x


@pytest.mark.parametrize("restore", [False, True])
def test_trades_settle_in_deadline_then_trade_id_order_when_deadlines_come_out_of_order(restore: bool) -> None:
    x = _market()
    weighed: list[tuple[int, int]] = []  # (deadline, trade id)
    # a long window first, then two short ones whose deadlines sort before it, then a long one again
    for instrument, seller in ((LONG, FARMER), (SYMBOL, POOR_FARMER), (SYMBOL, FARMER), (LONG, POOR_FARMER)):
        trade = x.trade(BUYER, seller, 2800, 2, instrument=instrument)
        x.weigh_in(trade.trade_id, 2, 220_000)
        weighed.append((x.clearing.trades[trade.trade_id].dispute_until_ns, trade.trade_id))
        x.advance(60 * 1_000_000_000)
    assert len(x.clearing._late_deadlines) == 2  # the short windows' deadlines came after a later one
    if restore:
        x.restore_from_snapshot()
    early = x.tick(2 * HOUR_NS)
    due = sorted(weighed)
    assert [e.trade_id for e in x.of(TradeSettled, early)] == [tid for _, tid in due[:2]]
    late = x.tick(10 * HOUR_NS)
    assert [e.trade_id for e in x.of(TradeSettled, late)] == [tid for _, tid in due[2:]]
    assert not x.clearing._deadlines and not x.clearing._late_deadlines
