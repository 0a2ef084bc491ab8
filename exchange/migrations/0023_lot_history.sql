-- 0023_lot_history: lots sold out and lot auctions ended longer than the retention window ago, which the
-- gateway's read model (gateway/readmodel.py) no longer keeps in memory. Written by the gateway with
-- its read model snapshot (gateway/readmodel_snapshots.py), in the same transaction, and read by the lot
-- and auction routes for what memory no longer holds. `record` is the read model's own value, msgpack:
-- a lot with its reserved and sold heads, an auction as its last change left it.
CREATE TABLE lot_history (
    lot_id    bigint PRIMARY KEY,
    seller_id bigint NOT NULL,
    record    bytea  NOT NULL
);
CREATE INDEX lot_history_seller_idx ON lot_history (seller_id, lot_id);

CREATE TABLE auction_history (
    auction_id bigint   PRIMARY KEY,
    state      smallint NOT NULL,
    record     bytea    NOT NULL
);
