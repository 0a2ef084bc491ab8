"""The call auction: one uncrossing price for every order collected while the market was in auction.

Price choice, in order: the most executable heads; then the smallest imbalance between the heads
bid at or above and offered at or below the price; then the price nearest the reference price; then
the lower price. Only prices at which some order rests are candidates, so the price is always on
the tick and inside the band the orders were checked against.

Allocation is price-time: bids from the highest price, asks from the lowest, each FIFO within its
level, paired off at the one price until the executable volume is done. All-or-none sells take no
part (they cannot be allocated pro rata); the caller sweeps them afterwards against the bids left.
"""

from __future__ import annotations

from exchange.matching.book import BookSide, Order, OrderBook, level_of


def equilibrium(bids: list[Order], asks: list[Order], reference_price_fen: int) -> tuple[int, int]:
    """(price, executable heads) for the given bids and asks in priority order; (0, 0) if none."""
    prices = sorted({o.price_fen for o in bids} | {o.price_fen for o in asks})
    best: tuple[int, int, int, int] | None = None
    best_price = 0
    for price in prices:
        bid_heads = sum(o.remaining_heads for o in bids if o.price_fen >= price)
        ask_heads = sum(o.remaining_heads for o in asks if o.price_fen <= price)
        executable = min(bid_heads, ask_heads)
        if executable == 0:
            continue
        distance = abs(price - reference_price_fen) if reference_price_fen else 0
        rank = (-executable, abs(bid_heads - ask_heads), distance, price)
        if best is None or rank < best:
            best = rank
            best_price = price
    if best is None:
        return (0, 0)
    return (best_price, -best[0])


def uncross(book: OrderBook, reference_price_fen: int, ts_ns: int, events: list) -> tuple[int, int]:
    """Execute the auction on ``book``; returns (price, heads traded)."""
    bids = [o for o in book.bids.iter_orders() if not o.all_or_none]
    asks = [o for o in book.asks.iter_orders() if not o.all_or_none]
    price, volume = equilibrium(bids, asks, reference_price_fen)
    if volume == 0:
        return (0, 0)
    touched_bids: set[int] = set()
    touched_asks: set[int] = set()
    left = volume
    i = j = 0
    while left:
        bid = bids[i]
        ask = asks[j]
        quantity = min(bid.remaining_heads, ask.remaining_heads, left)
        _take(book, book.bids, bid, quantity, touched_bids)
        _take(book, book.asks, ask, quantity, touched_asks)
        book.emit_trade(bid, ask, price, quantity, 0, ts_ns, events)
        left -= quantity
        i += bid.remaining_heads == 0
        j += ask.remaining_heads == 0
    for side, prices in ((book.bids, sorted(touched_bids, reverse=True)), (book.asks, sorted(touched_asks))):
        for level_price in prices:
            book.level_changed(side, level_price, ts_ns, events)
            side.drop_level_if_empty(side.levels[side.key(level_price)])
    return (price, volume)


def _take(book: OrderBook, side: BookSide, order: Order, quantity: int, touched: set[int]) -> None:
    """Fill part of a resting order in place; a fully filled one leaves its level at once."""
    order.remaining_heads -= quantity
    order.filled_heads += quantity
    level = level_of(order)
    level.heads -= quantity
    touched.add(order.price_fen)
    if order.remaining_heads == 0:
        side.unlink(level, order)
        del book.live_orders[order.order_id]
