-- The live-hog price index (exchange/priceindex.py), projected from the journal's events. Like the other
-- read models it is a cache of the journal: dropping its rows and resetting its watermark rebuilds it.

-- A series is one product class, breed class and delivery region (an instrument's delivery point).
CREATE TABLE price_index_series (
    product_class smallint NOT NULL,
    breed_class   smallint NOT NULL,
    region        text     NOT NULL,
    base_day      integer  NOT NULL,            -- yyyymmdd named by the first listing that names one; 0: none
    PRIMARY KEY (product_class, breed_class, region)
);

-- Which series each instrument's trades count in.
CREATE TABLE price_index_instruments (
    instrument    text     PRIMARY KEY,
    product_class smallint NOT NULL,
    breed_class   smallint NOT NULL,
    region        text     NOT NULL
);

-- The declared average weight of every lot, for the value of a trade priced per kg.
CREATE TABLE price_index_lots (
    lot_id       bigint PRIMARY KEY,
    avg_weight_g bigint NOT NULL
);

-- One row per China Standard Time day and series with trades: the sums the index is computed from.
CREATE TABLE price_index_daily (
    day             integer  NOT NULL,          -- yyyymmdd, China Standard Time
    product_class   smallint NOT NULL,
    breed_class     smallint NOT NULL,
    region          text     NOT NULL,
    trades          integer  NOT NULL,
    heads           bigint   NOT NULL,
    price_heads_fen bigint   NOT NULL,          -- sum of price x heads (the quote unit x heads)
    value_fen       bigint   NOT NULL,          -- sum of each trade's value, rounded half up per trade
    PRIMARY KEY (product_class, breed_class, region, day)
);
CREATE INDEX price_index_daily_day_idx ON price_index_daily (day);

INSERT INTO projections (name, seq) VALUES ('price_index', 0);
