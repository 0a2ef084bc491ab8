"""The order book of one instrument and continuous price-time matching.

Layout: each side keeps its price levels in a ``SortedList`` of keys (the price for asks, minus the
price for bids, so the best level is always key index 0) and a dict key -> ``Level``. A level is a
FIFO of orders as an intrusive doubly linked list, and a resting order points at its level, so adding
at the tail, filling at the head and cancelling anywhere are all O(1) without a lookup. ``Order``,
``Level``, ``LotState`` and ``Counters`` are plain slotted classes: compiled with mypyc (setup.py) their
fields are C struct members. They refer to each other only through ``prev``/``next``/``level`` and
``head``/``tail``, and every removal clears those, so reference counting alone frees them.

Matching rules (the naive reference book in ``tests/reference_book.py`` states the same rules):
- A taker walks the opposite side best price first, FIFO within a level, trading at the maker's price.
- An all-or-none maker (only sell orders may be all-or-none) trades only when the taker can take its
  whole remaining quantity in one fill; otherwise it is skipped and keeps its place.
- Self-trade prevention applies only to a fill that would otherwise happen (a skipped all-or-none
  maker is not a self-trade); the taker's mode decides: expire the taker (matching stops, the caller
  expires the rest of the taker), expire the maker (it is removed, matching goes on), or both.
- After each level the taker touched, one ``BookChanged`` gives that level's new absolute size.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

from sortedcontainers import SortedList

from exchange import events
from exchange.domain import ExpireReason, SelfTradePrevention, Side

# A command's time, carried as the int object it arrived in: compiled, a parameter typed int is unboxed
# and every event would box it anew (an allocation each); typed Any it passes through untouched.
TimeNs: TypeAlias = Any
# An order id, likewise kept as one int object from acceptance on: it keys the resting-order map and is
# in every event of the order, where a native int would be boxed anew each time.
OrderId: TypeAlias = Any

# Compiled, a module-level name is read from the module's dictionary at every use unless it is Final,
# which makes it a C static: the hot path's classes and constants are Final (enums as their int values).
BookChanged: Final = events.BookChanged
OrderExpired: Final = events.OrderExpired
Trade: Final = events.Trade
BUY: Final = int(Side.BUY)
SELL: Final = int(Side.SELL)
_EXPIRE_TAKER: Final = int(SelfTradePrevention.EXPIRE_TAKER)
_EXPIRE_MAKER: Final = int(SelfTradePrevention.EXPIRE_MAKER)
_SELF_TRADE: Final = ExpireReason.SELF_TRADE
# a side's int value -> the enum, for events (a variable-length tuple: compiled, a fixed one is boxed anew at every use)
SIDES: Final[tuple[Side, ...]] = (Side.BUY, Side.BUY, Side.SELL)
NO_LIMIT: Final = 1 << 62  # a limit key beyond every real price: a market order without a band


class LotState:
    """A registered lot and how many of its heads are reserved by open sells or already sold."""

    __slots__ = ("heads", "instrument", "lot_id", "reserved_heads", "seller_id", "sold_heads")

    def __init__(
        self, lot_id: int, seller_id: int, instrument: str, heads: int, reserved_heads: int = 0, sold_heads: int = 0
    ) -> None:
        self.lot_id = lot_id
        self.seller_id = seller_id
        self.instrument = instrument
        self.heads = heads
        self.reserved_heads = reserved_heads
        self.sold_heads = sold_heads

    @property
    def available_heads(self) -> int:
        return self.heads - self.reserved_heads - self.sold_heads


class Order:
    __slots__ = (
        "all_or_none", "client_order_id", "expire_at_ns", "filled_heads", "instrument", "is_limit", "level", "lot",
        "min_quantity_heads", "next", "order_id", "participant_id", "post_only", "prev", "price_fen", "priority",
        "quantity_heads", "remaining_heads", "side", "stp", "time_in_force",
    )  # fmt: skip

    def __init__(
        self, order_id: OrderId, participant_id: int, client_order_id: str, instrument: str, side: int, price_fen: int,
        quantity_heads: int, remaining_heads: int, time_in_force: int, expire_at_ns: int, post_only: bool,
        all_or_none: bool, stp: int, lot: LotState | None, priority: int = 0, filled_heads: int = 0,
    ) -> None:  # fmt: skip
        self.order_id = order_id
        self.participant_id = participant_id
        self.client_order_id = client_order_id
        self.instrument = instrument
        self.side = side
        self.price_fen = price_fen
        self.quantity_heads = quantity_heads  # total: filled + remaining + cancelled/expired
        self.remaining_heads = remaining_heads
        self.time_in_force = time_in_force
        self.expire_at_ns = expire_at_ns
        self.post_only = post_only
        self.all_or_none = all_or_none
        self.stp = stp
        self.lot = lot
        self.priority = priority  # lower trades first among equal prices; renewed when priority is lost
        self.filled_heads = filled_heads
        self.prev: Order | None = None
        self.next: Order | None = None
        self.level: Level | None = None  # the level it rests in (cancels and fills need no lookup)
        # what only the checks of a new order read (a resting order is a limit; its minimum is spent)
        self.is_limit = True
        self.min_quantity_heads = 0


class Level:
    __slots__ = ("head", "heads", "price", "price_fen", "tail")

    def __init__(self, price_fen: int) -> None:
        self.price_fen = price_fen
        # the price as one int object for the level's BookChanged events (compiled, the native field would be
        # boxed anew, an allocation, for every event)
        self.price: Any = price_fen
        self.heads = 0
        self.head: Order | None = None
        self.tail: Order | None = None


class BookSide:
    """One side of a book: sorted level keys, the levels, and the best key and level cached."""

    __slots__ = ("best", "best_key", "keys", "levels", "side", "sign")

    def __init__(self, side: int) -> None:
        self.side = side
        self.sign = -1 if side == BUY else 1  # key = sign * price (``key``), so index 0 is always the best
        self.keys: SortedList = SortedList()
        self.levels: dict[int, Level] = {}
        self.best_key: int | None = None
        # the level at best_key (compiled, a native field read where matching and resting would box the key
        # and look it up, and a comparison of its native price where one of best_key's is generic)
        self.best: Level | None = None

    def key(self, price_fen: int) -> int:
        """``sign * price_fen``, as a negation: compiled, a product with a negative operand leaves mypyc's
        short-int fast path for a generic multiplication (some 400 instructions; every bid that rests)."""
        return -price_fen if self.side == BUY else price_fen

    def append(self, order: Order) -> Level:
        """Put an order at the back of its price level."""
        key = self.key(order.price_fen)
        level = self.levels.get(key)
        if level is None:
            level = Level(order.price_fen)
            boxed: Any = key  # one object for both (a lookup by a key of the sorted list then meets itself)
            self.levels[boxed] = level
            self.keys.add(boxed)
            if self.best_key is None or key < self.best_key:
                self.best_key = boxed
                self.best = level
        tail = level.tail
        if tail is None:
            level.head = order
        else:
            tail.next = order
            order.prev = tail
        level.tail = order
        level.heads += order.remaining_heads
        order.level = level
        return level

    def unlink(self, level: Level, order: Order) -> None:
        """Take an order out of its level's queue (the caller keeps ``level.heads`` right)."""
        prev = order.prev
        nxt = order.next
        if prev is None:
            level.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            level.tail = prev
        else:
            nxt.prev = prev
        order.prev = None
        order.next = None
        order.level = None

    def drop_level_if_empty(self, level: Level) -> bool:
        if level.head is not None:
            return False
        key = self.key(level.price_fen)
        del self.levels[key]
        self.keys.remove(key)
        if key == self.best_key:
            if self.keys:
                best_key = self.keys[0]
                self.best_key = best_key
                self.best = self.levels[best_key]
            else:
                self.best_key = None
                self.best = None
        return True

    def level_at(self, index: int) -> Level | None:
        """The level ``index`` places from the best (0: the best), or None past the last."""
        if index == 0:
            return self.best
        keys = self.keys
        return self.levels[keys[index]] if index < len(keys) else None

    def iter_orders(self):
        for key in self.keys:
            order = self.levels[key].head
            while order is not None:
                yield order
                order = order.next

    def depth(self, levels: int) -> list[tuple[int, int]]:
        out = []
        for key in self.keys.islice(0, levels):
            level = self.levels[key]
            out.append((level.price_fen, level.heads))
        return out


def level_of(order: Order) -> Level:
    """The level a resting order is in."""
    level = order.level
    if level is None:
        raise ValueError(f"order {order.order_id} is not resting")
    return level


def release_remaining(order: Order) -> int:
    """End what is left of an order: its remaining heads go to zero and leave its lot's reservation."""
    heads = order.remaining_heads
    order.remaining_heads = 0
    if order.lot is not None:
        order.lot.reserved_heads -= heads
    return heads


class Counters:
    """Identifiers shared by all books of one core, so they are unique exchange-wide; and ``quiet``,
    which a replay sets while it rebuilds the state (``exchange/replay.py``): then the books number
    their level changes as always but build no ``BookChanged`` for them (output only: nothing in the
    core reads one, and a replay drops every event). Not state: never snapshotted, False otherwise."""

    __slots__ = ("next_lot_id", "next_order_id", "next_priority", "next_trade_id", "quiet")

    def __init__(
        self, next_order_id: int = 1, next_trade_id: int = 1, next_priority: int = 1, next_lot_id: int = 1
    ) -> None:
        self.next_order_id = next_order_id
        self.next_trade_id = next_trade_id
        self.next_priority = next_priority
        self.next_lot_id = next_lot_id
        self.quiet = False


class OrderBook:
    """One instrument: both sides, its sequence counter, and continuous matching."""

    __slots__ = ("asks", "bids", "counters", "instrument", "live_orders", "seq")

    def __init__(self, instrument: str, counters: Counters, live_orders: dict[OrderId, Order]) -> None:
        self.instrument = instrument
        self.counters = counters
        self.live_orders = live_orders  # the core's order_id -> resting Order map, shared
        self.bids = BookSide(BUY)
        self.asks = BookSide(SELL)
        self.seq = 0

    def side_of(self, side: int) -> BookSide:
        return self.bids if side == BUY else self.asks

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def rest(self, order: Order, ts_ns: TimeNs, events: list) -> None:
        """Queue an order at the back of its level with fresh time priority."""
        counters = self.counters
        order.priority = counters.next_priority
        counters.next_priority += 1
        self.live_orders[order.order_id] = order
        book_side = self.bids if order.side == BUY else self.asks
        level = book_side.best  # often the best level: no boxed key, no lookup
        if level is None or level.price_fen != order.price_fen:
            level = book_side.levels.get(book_side.key(order.price_fen))
        if level is None or level.tail is None:
            level = book_side.append(order)  # a new level: let append keep the sorted keys
        else:  # the common case, inlined: the back of an existing level
            tail = level.tail
            tail.next = order
            order.prev = tail
            level.tail = order
            level.heads += order.remaining_heads
            order.level = level
        self.seq += 1
        if not counters.quiet:
            events.append(BookChanged(self.seq, ts_ns, self.instrument, SIDES[order.side], level.price, level.heads))

    def remove(self, order: Order) -> BookSide:
        """Take a resting order off the book; the caller emits its events and the level change."""
        book_side = self.bids if order.side == BUY else self.asks
        level = level_of(order)
        book_side.unlink(level, order)
        level.heads -= order.remaining_heads
        del self.live_orders[order.order_id]
        return book_side

    def level_changed(self, book_side: BookSide, price_fen: int, ts_ns: TimeNs, events: list) -> None:
        """Emit the new size of the level at ``price_fen``: 0 if it is gone."""
        level = book_side.levels.get(book_side.key(price_fen))
        heads = 0 if level is None else level.heads
        self.seq += 1
        if not self.counters.quiet:
            events.append(BookChanged(self.seq, ts_ns, self.instrument, SIDES[book_side.side], price_fen, heads))

    def level_size_changed(self, book_side: BookSide, level: Level, ts_ns: TimeNs, events: list) -> None:
        """Emit the new size of a level in hand (0 while an emptied one waits to be dropped)."""
        self.seq += 1
        if not self.counters.quiet:
            events.append(
                BookChanged(self.seq, ts_ns, self.instrument, SIDES[book_side.side], level.price, level.heads)
            )

    def match(self, taker: Order, limit_key: int, ts_ns: TimeNs, events: list) -> bool:
        """Trade ``taker`` against the opposite side up to ``limit_key``; True if STP stopped it.

        ``limit_key`` is in the opposite side's key space: the price for a buy, minus the price for
        a sell, ``NO_LIMIT`` for an unbounded market order.
        """
        opp = self.asks if taker.side == BUY else self.bids
        index = 0  # the level's place from the best: levels the taker could not empty stay before it
        level = opp.best
        while taker.remaining_heads:
            if level is None:
                return False
            # the level's key, native (a key read from best_key or the sorted list compares generically)
            if opp.key(level.price_fen) > limit_key:
                return False
            before_heads = level.heads
            stopped = self._match_level(taker, opp, level, ts_ns, events)
            if level.heads != before_heads:
                self.seq += 1
                if not self.counters.quiet:
                    events.append(
                        BookChanged(self.seq, ts_ns, self.instrument, SIDES[opp.side], level.price, level.heads)
                    )
            if not opp.drop_level_if_empty(level):
                index += 1
            if stopped:
                return True
            if taker.remaining_heads:  # the next level only if needed (past the best, a sorted-list read)
                level = opp.level_at(index)
        return False

    def _match_level(self, taker: Order, opp: BookSide, level: Level, ts_ns: TimeNs, events: list) -> bool:
        maker = level.head
        taker_pid = taker.participant_id
        while maker is not None:
            following = maker.next
            remaining = taker.remaining_heads
            if maker.all_or_none and maker.remaining_heads > remaining:
                maker = following
                continue
            if maker.participant_id == taker_pid:
                mode = taker.stp
                if mode == _EXPIRE_TAKER:
                    return True
                self._expire_resting(opp, level, maker, ts_ns, events)
                if mode == _EXPIRE_MAKER:
                    maker = following
                    continue
                return True
            quantity = maker.remaining_heads if maker.remaining_heads < remaining else remaining
            self._fill(taker, maker, quantity, level.price, ts_ns, events)
            level.heads -= quantity
            if maker.remaining_heads == 0:
                opp.unlink(level, maker)
                del self.live_orders[maker.order_id]
            if taker.remaining_heads == 0:
                return False
            maker = following
        return False

    def _expire_resting(self, book_side: BookSide, level: Level, order: Order, ts_ns: TimeNs, events: list) -> None:
        book_side.unlink(level, order)
        level.heads -= order.remaining_heads
        del self.live_orders[order.order_id]
        self.retire(order, _SELF_TRADE, ts_ns, events)

    def retire(self, order: Order, reason: ExpireReason, ts_ns: TimeNs, events: list) -> None:
        """Expire what is left of an order that is not (or no longer) resting."""
        expired = release_remaining(order)
        self.seq += 1
        events.append(
            OrderExpired(self.seq, ts_ns, order.order_id, order.participant_id, self.instrument, expired, reason)
        )

    def _fill(self, taker: Order, maker: Order, quantity: int, price: Any, ts_ns: TimeNs, events: list) -> None:
        """One trade at the maker's price (``price``: its level's price object; compiled, the maker's native
        price would be boxed anew, an allocation, for every trade)."""
        taker.remaining_heads -= quantity
        taker.filled_heads += quantity
        maker.remaining_heads -= quantity
        maker.filled_heads += quantity
        buy, sell = (taker, maker) if taker.side == BUY else (maker, taker)
        self.emit_trade(buy, sell, price, quantity, taker.side, ts_ns, events)

    def emit_trade(
        self, buy: Order, sell: Order, price_fen: Any, quantity: int, taker_side: int, ts_ns: TimeNs, events: list
    ) -> None:
        """Record a trade whose order quantities are already updated; book the lot's sale."""
        lot = sell.lot
        assert lot is not None
        lot.reserved_heads -= quantity
        lot.sold_heads += quantity
        counters = self.counters
        trade_id = counters.next_trade_id
        counters.next_trade_id = trade_id + 1
        self.seq += 1
        events.append(
            Trade(
                self.seq, ts_ns, self.instrument, trade_id, price_fen, quantity,
                buy.order_id, sell.order_id, buy.participant_id, sell.participant_id, lot.lot_id,
                taker_side, buy.remaining_heads, sell.remaining_heads,
            )
        )  # fmt: skip

    def fillable(self, taker: Order, limit_key: int) -> int:
        """How many heads ``match`` would fill right now, without changing anything."""
        opp = self.asks if taker.side == BUY else self.bids
        need = taker.remaining_heads
        got = 0
        for key in opp.keys:
            if key > limit_key:
                break
            maker = opp.levels[key].head
            while maker is not None:
                left = need - got
                if maker.all_or_none and maker.remaining_heads > left:
                    pass
                elif maker.participant_id == taker.participant_id:
                    if taker.stp != _EXPIRE_MAKER:
                        return got
                else:
                    got += maker.remaining_heads if maker.remaining_heads < left else left
                    if got == need:
                        return got
                maker = maker.next
        return got

    def crosses(self, side: int, price_fen: int) -> bool:
        """Would a limit at this price meet the best resting price of the other side?"""
        if side == BUY:
            best = self.asks.best_key
            return best is not None and best <= price_fen
        best = self.bids.best_key
        return best is not None and -best >= price_fen

    def would_take(self, side: int, price_fen: int, heads: int, participant_id: int, all_or_none: bool) -> bool:
        """Would a limit order arriving now meet a resting order (trade with it, or hit its owner's own)?

        The post-only test. A crossing all-or-none sell too big for the order is passed over by
        matching, so it does not count: a buyer may rest a post-only bid above a whole-truck offer it
        cannot take. An all-or-none sell would take only a bid of another participant able to take it.
        """
        if not self.crosses(side, price_fen):
            return False
        if side == SELL:
            if not all_or_none:
                return True
            for key in self.bids.keys:
                bid = self.bids.levels[key].head
                assert bid is not None
                if bid.price_fen < price_fen:
                    return False
                while bid is not None:
                    if bid.remaining_heads >= heads and bid.participant_id != participant_id:
                        return True
                    bid = bid.next
            return False
        for key in self.asks.keys:
            ask = self.asks.levels[key].head
            assert ask is not None
            if ask.price_fen > price_fen:
                return False
            while ask is not None:
                if not (ask.all_or_none and ask.remaining_heads > heads):
                    return True
                ask = ask.next
        return False

    def match_all_or_none(self, taker: Order, limit_key: int, ts_ns: TimeNs, events: list) -> None:
        """An incoming all-or-none sell: one fill with the first bid able to take it all, or none.

        Bids of the seller itself are passed over (never traded with, never expired).
        """
        for key in self.bids.keys:
            if key > limit_key:
                return
            level = self.bids.levels[key]
            maker = level.head
            while maker is not None:
                if maker.remaining_heads >= taker.remaining_heads and maker.participant_id != taker.participant_id:
                    self._fill_whole(maker, taker, maker.price_fen, SELL, ts_ns, events)
                    return
                maker = maker.next

    def sweep_all_or_none(self, ts_ns: TimeNs, events: list) -> None:
        """Trade every resting all-or-none sell that a resting bid can now take whole.

        Needed after an auction uncross or after an all-or-none sell was reduced, the two ways such
        a sell can come to rest opposite a bid able to take it. The earlier order is the maker, unless
        only the later one is post-only: a post-only order never takes, so it is the maker then.
        """
        aon_sells = [order for order in self.asks.iter_orders() if order.all_or_none]
        for sell in aon_sells:
            bid = self._first_bid_taking_whole(sell)
            if bid is None:
                continue
            maker, taker = (bid, sell) if bid.priority < sell.priority else (sell, bid)
            if taker.post_only and not maker.post_only:
                maker, taker = taker, maker
            self._fill_whole(bid, sell, maker.price_fen, taker.side, ts_ns, events, sell_resting=True)

    def _first_bid_taking_whole(self, sell: Order) -> Order | None:
        for key in self.bids.keys:
            level = self.bids.levels[key]
            if level.price_fen < sell.price_fen:
                return None
            bid = level.head
            while bid is not None:
                if bid.remaining_heads >= sell.remaining_heads and bid.participant_id != sell.participant_id:
                    return bid
                bid = bid.next
        return None

    def _fill_whole(
        self, bid: Order, sell: Order, price_fen: int, taker_side: int, ts_ns: TimeNs, events: list,
        sell_resting: bool = False,
    ) -> None:
        """Fill an all-or-none sell completely against one resting bid."""
        quantity = sell.remaining_heads
        bid_level = level_of(bid)
        sell_level = level_of(sell) if sell_resting else None
        bid.remaining_heads -= quantity
        bid.filled_heads += quantity
        sell.remaining_heads = 0
        sell.filled_heads += quantity
        bid_level.heads -= quantity
        self.emit_trade(bid, sell, price_fen, quantity, taker_side, ts_ns, events)
        if bid.remaining_heads == 0:
            self.bids.unlink(bid_level, bid)
            del self.live_orders[bid.order_id]
        self.level_size_changed(self.bids, bid_level, ts_ns, events)
        self.bids.drop_level_if_empty(bid_level)
        if sell_level is not None:
            sell_level.heads -= quantity
            self.asks.unlink(sell_level, sell)
            del self.live_orders[sell.order_id]
            self.level_size_changed(self.asks, sell_level, ts_ns, events)
            self.asks.drop_level_if_empty(sell_level)
