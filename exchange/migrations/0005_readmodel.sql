-- Read models the gateway queries, projected from the journal's events by exchange/readmodel.py.
-- They are a cache of the journal: dropping their rows and resetting the watermark rebuilds them.

-- One row per order ever placed with a well-formed client order id, accepted or rejected.
CREATE TABLE orders (
    participant_id  bigint   NOT NULL,
    client_order_id text     NOT NULL,
    order_id        bigint,                       -- NULL for a rejected order: it never got one
    instrument      text     NOT NULL,
    side            smallint NOT NULL CHECK (side IN (1, 2)),  -- 1 buy, 2 sell
    order_type      smallint NOT NULL,            -- exchange.domain.OrderType
    time_in_force   smallint NOT NULL,            -- exchange.domain.TimeInForce
    price_fen       bigint   NOT NULL,            -- the limit (for a market order the band edge, 0 unbanded)
    quantity_heads  integer  NOT NULL,            -- total: filled + remaining + cancelled/expired
    filled_heads    integer  NOT NULL,
    remaining_heads integer  NOT NULL,            -- still working in the book
    status          text     NOT NULL CHECK (status IN
                        ('NEW', 'PARTIALLY_FILLED', 'FILLED', 'CANCELED', 'REJECTED', 'EXPIRED')),
    reason          text,                         -- RejectReason or ExpireReason name
    lot_id          bigint   NOT NULL,            -- 0 for a buy
    expire_at_ns    bigint   NOT NULL,
    seq             bigint   NOT NULL,            -- journal seq of the PlaceOrder
    created_ts_ns   bigint   NOT NULL,
    updated_seq     bigint   NOT NULL,
    updated_ts_ns   bigint   NOT NULL,
    PRIMARY KEY (participant_id, client_order_id)
);
CREATE UNIQUE INDEX orders_order_id_idx ON orders (order_id);
CREATE INDEX orders_participant_seq_idx ON orders (participant_id, seq);

-- One row per fill. Public trade lists show no participant; fills are a participant's own side.
CREATE TABLE trades (
    trade_id        bigint   PRIMARY KEY,
    instrument      text     NOT NULL,
    price_fen       bigint   NOT NULL,
    quantity_heads  integer  NOT NULL,
    buy_order_id    bigint   NOT NULL,
    sell_order_id   bigint   NOT NULL,
    buyer_id        bigint   NOT NULL,
    seller_id       bigint   NOT NULL,
    lot_id          bigint   NOT NULL,
    taker_side      smallint NOT NULL,            -- 1 buy, 2 sell, 0 auction uncross
    seq             bigint   NOT NULL,            -- journal seq of the command that traded
    ts_ns           bigint   NOT NULL
);
CREATE INDEX trades_instrument_idx ON trades (instrument, trade_id);
CREATE INDEX trades_buyer_idx ON trades (buyer_id, trade_id);
CREATE INDEX trades_seller_idx ON trades (seller_id, trade_id);

-- How far each projection has applied the journal; written in the same transaction as its rows.
CREATE TABLE projections (
    name text   PRIMARY KEY,
    seq  bigint NOT NULL
);
INSERT INTO projections (name, seq) VALUES ('orders', 0);
