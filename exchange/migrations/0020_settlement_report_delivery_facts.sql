-- 0020_settlement_report_delivery_facts: the deliveries' facts in the daily settlement report (issue 11).
--
-- TRADE rows (and the MEMBER_SHARE rows copied from them) state the heads refused or dead on arrival,
-- the unfasted shrink and a seller's dispute's raise, as the settlement events carry them
-- (exchange.events.TradeFacts); columns of exchange.settlement.views.SettlementReportRow, appended.
-- Rows written before this migration, and rows of journals written before those facts were carried,
-- state 0 (what those trades had): rebuilding the table from the journal gives the same rows.
ALTER TABLE settlement_report_rows
    ADD COLUMN heads_refused integer NOT NULL DEFAULT 0,  -- paid nothing, their hold refunded
    ADD COLUMN shrink_g      bigint  NOT NULL DEFAULT 0,  -- taken off total_weight_g before grading and pricing
    ADD COLUMN raised_fen    bigint  NOT NULL DEFAULT 0;  -- amount + refund = obligation + raised
