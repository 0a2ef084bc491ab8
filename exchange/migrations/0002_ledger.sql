-- 0002_ledger: the double-entry ledger's rows (model: exchange/settlement/ledger.py).
--
-- The core is the authority; PostgreSQL checks again what must never be wrong:
--   * every posting amount is positive, every side is a debit (+1) or a credit (-1);
--   * every batch balances: for each journal batch (seq) and entry kind, the signed sum
--     side * amount_fen of the rows inserted is zero. Rows written behind the core's back that do
--     not balance make the whole transaction fail at COMMIT (deferred constraint trigger);
--   * postings are append-only: a correction is a new transfer, never an edit.
-- Account balances are derived from the postings (view ledger_balances), so the sequencer only
-- appends rows: no counter row is updated on the hot path.

CREATE TABLE ledger_accounts (
    account_id bigint PRIMARY KEY CHECK (account_id > 0),
    code integer NOT NULL,                      -- AccountCode: the chart of accounts
    owner_id bigint NOT NULL CHECK (owner_id >= 0),  -- participant; 0 for house accounts
    ledger integer NOT NULL CHECK (ledger > 0),  -- 1 = CNY in fen
    flags integer NOT NULL CHECK (flags & 6 <> 6),  -- 2 debits<=credits, 4 credits<=debits: not both
    user_data bigint NOT NULL,
    ts_ns bigint NOT NULL
);

CREATE TABLE ledger_postings (
    seq bigint NOT NULL,          -- the journal batch whose transaction wrote the row
    transfer_id bigint NOT NULL,
    entry smallint NOT NULL CHECK (entry IN (1, 2, 3)),  -- 1 posted, 2 pending, 3 release of pending
    side smallint NOT NULL CHECK (side IN (1, -1)),      -- +1 debit, -1 credit
    account_id bigint NOT NULL,
    amount_fen bigint NOT NULL CHECK (amount_fen > 0),
    code integer NOT NULL,        -- TransferCode: why the money moved
    user_data bigint NOT NULL,    -- order id, trade id, payout id ...
    pending_id bigint NOT NULL,   -- for posts, voids and expiries: the pending transfer resolved
    ts_ns bigint NOT NULL,
    PRIMARY KEY (transfer_id, entry, side)
);

CREATE INDEX ledger_postings_by_account ON ledger_postings (account_id, seq);

COMMENT ON TABLE ledger_postings IS
    'One row per account counter change; each transfer writes debit/credit pairs of equal amount. '
    'entry 1 posted: debits/credits_posted += amount; 2 pending: debits/credits_pending += amount; '
    '3 release: debits/credits_pending -= amount (post, void or expiry of a pending transfer).';

-- Balance check. A statement-level trigger sums the rows each INSERT (or COPY) added per (seq, entry)
-- and records only the groups that do not net to zero; a deferred constraint trigger on that record
-- refuses the COMMIT unless later statements of the same transaction brought every group back to
-- zero. A balanced batch written in one statement costs one aggregate and nothing else.
CREATE UNLOGGED TABLE ledger_batch_imbalance (
    seq bigint NOT NULL,
    entry smallint NOT NULL,
    imbalance_fen numeric NOT NULL,  -- numeric: a sum of bigints must not overflow
    PRIMARY KEY (seq, entry)
);

CREATE FUNCTION ledger_postings_collect_imbalance() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_batch_imbalance AS b (seq, entry, imbalance_fen)
    SELECT seq, entry, sum(side * amount_fen::numeric)
    FROM new_postings
    GROUP BY seq, entry
    HAVING sum(side * amount_fen::numeric) <> 0
    ON CONFLICT (seq, entry) DO UPDATE SET imbalance_fen = b.imbalance_fen + excluded.imbalance_fen;
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_postings_collect_imbalance
    AFTER INSERT ON ledger_postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_collect_imbalance();

CREATE FUNCTION ledger_batch_must_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    off_fen numeric;
BEGIN
    SELECT imbalance_fen INTO off_fen FROM ledger_batch_imbalance
    WHERE seq = NEW.seq AND entry = NEW.entry;
    IF NOT FOUND THEN
        RETURN NULL;  -- already checked and cleared by an earlier event of this transaction
    END IF;
    IF off_fen <> 0 THEN
        RAISE EXCEPTION 'ledger batch % does not balance: entry % debits minus credits = % fen',
            NEW.seq, NEW.entry, off_fen
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_batch_balances';
    END IF;
    DELETE FROM ledger_batch_imbalance WHERE seq = NEW.seq AND entry = NEW.entry;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER ledger_batch_balances
    AFTER INSERT OR UPDATE ON ledger_batch_imbalance
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_batch_must_balance();

CREATE FUNCTION ledger_postings_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_postings is append-only: correct with a new transfer'
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER ledger_postings_append_only
    BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_postings_append_only();

-- The four TigerBeetle counters of every account, rebuilt from its postings (for audits and
-- reconciliation against the core's state; hot reads come from the core or read models).
CREATE VIEW ledger_balances AS
SELECT
    a.account_id,
    a.code,
    a.owner_id,
    coalesce(sum(p.amount_fen) FILTER (WHERE p.side = 1 AND p.entry = 2), 0)
        - coalesce(sum(p.amount_fen) FILTER (WHERE p.side = 1 AND p.entry = 3), 0) AS debits_pending_fen,
    coalesce(sum(p.amount_fen) FILTER (WHERE p.side = 1 AND p.entry = 1), 0) AS debits_posted_fen,
    coalesce(sum(p.amount_fen) FILTER (WHERE p.side = -1 AND p.entry = 2), 0)
        - coalesce(sum(p.amount_fen) FILTER (WHERE p.side = -1 AND p.entry = 3), 0) AS credits_pending_fen,
    coalesce(sum(p.amount_fen) FILTER (WHERE p.side = -1 AND p.entry = 1), 0) AS credits_posted_fen
FROM ledger_accounts a
LEFT JOIN ledger_postings p ON p.account_id = a.account_id
GROUP BY a.account_id, a.code, a.owner_id;
