-- 0006_ledger_transfers: one row per transfer instead of one per account side (model:
-- exchange/settlement/ledger.py, "Postings").
--
-- A row names both accounts of a transfer (or of an expiry) and moves the same amounts on the debit
-- account's and the credit account's counters of the same kind, so a batch balances by construction:
-- half a transfer cannot be written. What 0002's deferred balance trigger checked per batch, the row
-- shape now guarantees, and CHECK constraints verify every row on its own:
--   * two different accounts, both given;
--   * POSTED (1) and PENDING (2): amount_fen > 0, nothing released, no pending transfer;
--   * RELEASE (3, void or expiry): amount_fen = 0, released_fen > 0, names its pending transfer;
--   * POST_PENDING (4): releases released_fen from the pending counters and posts amount_fen, with
--     0 < amount_fen <= released_fen (a post never posts more than was held), names its pending transfer.
-- Rows are append-only and unique by (transfer_id, entry): a batch written twice is refused.
--
-- The old ledger_postings rows are converted (each debit/credit pair becomes one row; a post's
-- RELEASE and POSTED pairs become one POST_PENDING row) and the migration refuses to run if any old
-- row does not pair up exactly. ledger_postings stays as a view with its old columns (one line per
-- account side, entries 1-3), for statements; ledger_balances is rebuilt on the new table.

CREATE TABLE ledger_transfers (
    seq bigint NOT NULL,                -- the journal seq of the command that made the row
    transfer_id bigint NOT NULL,        -- for an expiry: the pending transfer's own id
    debit_account_id bigint NOT NULL,
    credit_account_id bigint NOT NULL,
    amount_fen bigint NOT NULL,         -- posted (1, 4) or pended (2); 0 for a release (3)
    released_fen bigint NOT NULL,       -- taken off the pending counters (3, 4); else 0
    pending_id bigint NOT NULL,         -- the pending transfer released (3, 4); else 0
    user_data bigint NOT NULL,          -- order id, trade id, payout id ...
    ts_ns bigint NOT NULL,
    code integer NOT NULL,              -- TransferCode: why the money moved
    entry smallint NOT NULL,            -- Entry: 1 posted, 2 pending, 3 release, 4 post of a pending
    CONSTRAINT ledger_transfers_two_accounts CHECK (debit_account_id <> credit_account_id),
    CONSTRAINT ledger_transfers_entry_shape CHECK (CASE entry
        WHEN 1 THEN amount_fen > 0 AND released_fen = 0 AND pending_id = 0
        WHEN 2 THEN amount_fen > 0 AND released_fen = 0 AND pending_id = 0
        WHEN 3 THEN amount_fen = 0 AND released_fen > 0 AND pending_id > 0
        WHEN 4 THEN amount_fen > 0 AND released_fen >= amount_fen AND pending_id > 0
        ELSE false END),
    PRIMARY KEY (transfer_id, entry)
);

-- Statements read an account's rows from either side.
CREATE INDEX ledger_transfers_by_debit ON ledger_transfers (debit_account_id);
CREATE INDEX ledger_transfers_by_credit ON ledger_transfers (credit_account_id);

COMMENT ON TABLE ledger_transfers IS
    'One row per applied transfer or expiry, both accounts on it: balanced by construction. '
    'entry 1 posted: debits/credits_posted += amount; 2 pending: debits/credits_pending += amount; '
    '3 release: debits/credits_pending -= released; 4 post of a pending: pending -= released, posted += amount.';

CREATE FUNCTION ledger_transfers_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_transfers is append-only: correct with a new transfer'
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER ledger_transfers_append_only
    BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_transfers_append_only();

-- Convert the rows of 0002's table. Every old row must belong to exactly one debit/credit pair of
-- equal amount; anything else stops the migration (and with it the upgrade) instead of losing money.
CREATE TEMPORARY TABLE ledger_pairs ON COMMIT DROP AS
SELECT d.seq, d.transfer_id, d.entry, d.account_id AS debit_account_id, c.account_id AS credit_account_id,
       d.amount_fen, d.code, d.user_data, d.pending_id, d.ts_ns
FROM ledger_postings d
JOIN ledger_postings c
    ON c.transfer_id = d.transfer_id AND c.entry = d.entry AND c.side = -1
    AND c.amount_fen = d.amount_fen AND c.seq = d.seq AND c.code = d.code AND c.user_data = d.user_data
    AND c.pending_id = d.pending_id AND c.ts_ns = d.ts_ns
WHERE d.side = 1;

DO $$
DECLARE
    old_rows bigint;
    paired_rows bigint;
BEGIN
    SELECT count(*) INTO old_rows FROM ledger_postings;
    SELECT 2 * count(*) INTO paired_rows FROM ledger_pairs;
    IF old_rows <> paired_rows THEN
        RAISE EXCEPTION 'ledger_postings: % rows, only % of them in debit/credit pairs: not converted',
            old_rows, paired_rows;
    END IF;
END
$$;

INSERT INTO ledger_transfers (seq, transfer_id, debit_account_id, credit_account_id, amount_fen, released_fen,
                              pending_id, user_data, ts_ns, code, entry)
-- posts: the RELEASE and POSTED pairs of the same transfer (a post has its own id, unlike an expiry)
SELECT r.seq, r.transfer_id, r.debit_account_id, r.credit_account_id, p.amount_fen, r.amount_fen,
       r.pending_id, r.user_data, r.ts_ns, r.code, 4
FROM ledger_pairs r
JOIN ledger_pairs p ON p.transfer_id = r.transfer_id AND p.entry = 1
WHERE r.entry = 3 AND r.transfer_id <> r.pending_id
UNION ALL
-- single-phase transfers and pending transfers
SELECT seq, transfer_id, debit_account_id, credit_account_id, amount_fen, 0, 0, user_data, ts_ns, code, entry
FROM ledger_pairs
WHERE entry = 2 OR (entry = 1 AND pending_id = 0)
UNION ALL
-- voids and expiries
SELECT r.seq, r.transfer_id, r.debit_account_id, r.credit_account_id, 0, r.amount_fen, r.pending_id,
       r.user_data, r.ts_ns, r.code, 3
FROM ledger_pairs r
WHERE r.entry = 3 AND NOT EXISTS (
    SELECT 1 FROM ledger_pairs p WHERE p.transfer_id = r.transfer_id AND p.entry = 1 AND r.transfer_id <> r.pending_id);

DO $$
DECLARE
    pairs bigint;
    converted bigint;
    posts bigint;
BEGIN
    SELECT count(*) INTO pairs FROM ledger_pairs;
    SELECT count(*), count(*) FILTER (WHERE entry = 4) INTO converted, posts FROM ledger_transfers;
    IF pairs <> converted + posts THEN  -- a post was two pairs and is one row
        RAISE EXCEPTION 'ledger_postings: % pairs became % rows (% posts): not converted', pairs, converted, posts;
    END IF;
END
$$;

DROP VIEW ledger_balances;
DROP TABLE ledger_postings;
DROP TABLE ledger_batch_imbalance;
DROP FUNCTION ledger_postings_collect_imbalance();
DROP FUNCTION ledger_batch_must_balance();
DROP FUNCTION ledger_postings_append_only();

-- The old row shape, one line per account side, for statements: a POST_PENDING row is a RELEASE line
-- and a POSTED line. Each branch reads one side, so a filter on account_id uses that side's index.
CREATE VIEW ledger_postings AS
SELECT seq, transfer_id, (CASE entry WHEN 2 THEN 2 ELSE 1 END)::smallint AS entry, 1::smallint AS side,
       debit_account_id AS account_id, amount_fen, code, user_data, pending_id, ts_ns
FROM ledger_transfers WHERE entry <> 3
UNION ALL
SELECT seq, transfer_id, (CASE entry WHEN 2 THEN 2 ELSE 1 END)::smallint, (-1)::smallint,
       credit_account_id, amount_fen, code, user_data, pending_id, ts_ns
FROM ledger_transfers WHERE entry <> 3
UNION ALL
SELECT seq, transfer_id, 3::smallint, 1::smallint, debit_account_id, released_fen, code, user_data, pending_id, ts_ns
FROM ledger_transfers WHERE entry >= 3
UNION ALL
SELECT seq, transfer_id, 3::smallint, (-1)::smallint, credit_account_id, released_fen, code, user_data, pending_id,
       ts_ns
FROM ledger_transfers WHERE entry >= 3;

COMMENT ON VIEW ledger_postings IS
    'ledger_transfers as one line per account side (entry 1 posted, 2 pending, 3 release; side +1 debit, -1 '
    'credit), the row shape of migration 0002: a post of a pending transfer shows as a release and a posting.';

-- The four TigerBeetle counters of every account, rebuilt from the rows (for audits and reconciliation
-- against the core's state; hot reads come from the core or read models).
CREATE VIEW ledger_balances AS
WITH sides AS (
    SELECT debit_account_id AS account_id,
           sum(CASE entry WHEN 2 THEN amount_fen ELSE -released_fen END) AS debits_pending_fen,
           sum(CASE WHEN entry IN (1, 4) THEN amount_fen ELSE 0 END) AS debits_posted_fen,
           0::numeric AS credits_pending_fen, 0::numeric AS credits_posted_fen
    FROM ledger_transfers GROUP BY debit_account_id
    UNION ALL
    SELECT credit_account_id, 0, 0,
           sum(CASE entry WHEN 2 THEN amount_fen ELSE -released_fen END),
           sum(CASE WHEN entry IN (1, 4) THEN amount_fen ELSE 0 END)
    FROM ledger_transfers GROUP BY credit_account_id
)
SELECT a.account_id, a.code, a.owner_id,
       coalesce(sum(s.debits_pending_fen), 0) AS debits_pending_fen,
       coalesce(sum(s.debits_posted_fen), 0) AS debits_posted_fen,
       coalesce(sum(s.credits_pending_fen), 0) AS credits_pending_fen,
       coalesce(sum(s.credits_posted_fen), 0) AS credits_posted_fen
FROM ledger_accounts a
LEFT JOIN sides s ON s.account_id = a.account_id
GROUP BY a.account_id, a.code, a.owner_id;
