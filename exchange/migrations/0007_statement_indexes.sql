-- 0007_statement_indexes: the statement indexes of ledger_transfers cover participants' accounts only.
--
-- The house accounts (ids below 1000, numbered by their codes: bank settlement 100, escrow 200, fee
-- income 300, poverty subsidy fund 310) are on one side of nearly every transfer: in the ledger
-- benchmark's market day they are 44 % of the entries of the two account indexes (escrow alone is on
-- 58 % of the rows). Keeping those entries cost about a quarter of the database's work per row written,
-- on the path every acknowledged order waits for, and served badly the one reader they had: a busy
-- account's statement read every entry of the account to sort one page. A house account's statement
-- now walks the primary key, which is in transfer order, keeping its rows: the rows it wants are most
-- rows, so a page costs about its own length (pgstore.statement). A participant's statement uses
-- these indexes; its query says `account_id >= 1000`, so the planner may use them in a generic plan.
DROP INDEX ledger_transfers_by_debit;
DROP INDEX ledger_transfers_by_credit;
CREATE INDEX ledger_transfers_by_debit ON ledger_transfers (debit_account_id) WHERE debit_account_id >= 1000;
CREATE INDEX ledger_transfers_by_credit ON ledger_transfers (credit_account_id) WHERE credit_account_id >= 1000;
