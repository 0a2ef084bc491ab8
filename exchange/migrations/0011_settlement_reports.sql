-- 0011_settlement_reports: the daily settlement report's rows, as history (exchange/history.py).
--
-- One row per settlement fact, projected from the journal's events only (the facts as they were when
-- the trade settled, carried on the settlement events), so a row never changes and the table can always
-- be rebuilt from the journal: delete its rows, set its watermark in `projections` back to 0, restart.
-- The API answers the report from here, not from the exchange's memory. Columns after `advance_financier_id`
-- are exchange.settlement.views.SettlementReportRow's, in its order (the report's columns).
CREATE TABLE settlement_report_rows (
    seq                    bigint   NOT NULL,   -- the journal command whose events made the row
    ord                    integer  NOT NULL,   -- the event's position among that command's events
    day                    integer  NOT NULL,   -- CST day number (days since 1970-01-01 in China Standard Time)
    advance_financier_id   bigint   NOT NULL,   -- TRADE: who advanced the seller against the trade (0: nobody)
    date                   text     NOT NULL,   -- the day as YYYY-MM-DD
    trade_id               bigint   NOT NULL,
    instrument             text     NOT NULL,
    state                  text     NOT NULL,   -- TRADE rows: SETTLED or REJECTED
    buyer_id               bigint   NOT NULL,
    seller_id              bigint   NOT NULL,
    seller_poor_household  boolean,
    heads_traded           integer  NOT NULL,
    heads_delivered        integer  NOT NULL,
    total_weight_g         bigint   NOT NULL,
    avg_weight_g           bigint   NOT NULL,
    grade                  text     NOT NULL,
    price_fen              bigint   NOT NULL,
    discount_fen_per_kg    bigint   NOT NULL,
    obligation_fen         bigint   NOT NULL,
    amount_fen             bigint   NOT NULL,
    refund_fen             bigint   NOT NULL,
    fee_fen                bigint,
    fee_subsidy_fen        bigint,
    fee_forgone_fen        bigint,
    interest_paid_fen      bigint,
    principal_repaid_fen   bigint,
    payable_fen            bigint,
    funded_by_financier_id bigint,
    kind                   text     NOT NULL
        CHECK (kind IN ('TRADE', 'MEMBER_SHARE', 'LOAN_REPAYMENT', 'INTEREST_ACCRUAL')),
    participant_id         bigint   NOT NULL,   -- MEMBER_SHARE: the member; loan rows: the borrower
    advance_loan_id        bigint,
    share_fen              bigint,
    member_poor_household  boolean,
    financier_id           bigint   NOT NULL,   -- loan rows: the lender
    loan_id                bigint   NOT NULL,
    paid_by                text     NOT NULL,
    interest_accrued_fen   bigint   NOT NULL,
    PRIMARY KEY (seq, ord)
);
-- A day's report (a participant's rows are picked from the day's).
CREATE INDEX settlement_report_rows_day_idx ON settlement_report_rows (day);

CREATE FUNCTION settlement_report_rows_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'settlement_report_rows state the facts as of settlement and never change'
        USING ERRCODE = 'restrict_violation';
END
$$;

-- Rows are never changed; deleting them (to rebuild the table from the journal) stays possible.
CREATE TRIGGER settlement_report_rows_append_only
    BEFORE UPDATE ON settlement_report_rows
    FOR EACH ROW EXECUTE FUNCTION settlement_report_rows_append_only();

INSERT INTO projections (name, seq) VALUES ('settlement_reports', 0);
