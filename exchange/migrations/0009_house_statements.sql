-- 0009_house_statements: a house account's statement over a time window costs about its page, not the
-- whole ledger.
--
-- The house accounts (escrow, fee income, bank settlement, subsidy fund) are on one side of nearly every
-- transfer and have no account index (0007), and ledger_transfers has no index on time: every extra
-- index is paid on the write path each acknowledged order waits for. A statement page walked the whole
-- ledger and sorted it (measured: 0.4 s a page at 2M rows, in parallel workers that share the database
-- with the sequencer's commits). But time only grows with transfer ids: transfer ids are taken in
-- journal order and the journal's times never go back (the sequencer). The one exception is the expiry
-- of a timed-out pending transfer, which keeps its pending transfer's (older) id.
--
-- ledger_first_transfer_at(t) is the smallest transfer id from which on every row other than an expiry
-- is at t or later: a binary search over the primary key, one index probe per halving (about 30 at a
-- billion rows). A window [from, until) is then the key range [first_at(from), first_at(until)) plus
-- the expiries of older pending transfers, found by a partial index that holds only expiry rows (the
-- clearing never sets a timeout, so it stays empty and costs the write path nothing).
CREATE FUNCTION ledger_first_transfer_at(at_ns bigint) RETURNS bigint
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    lo bigint := 0;
    hi bigint;
    mid bigint;
    probe_id bigint;
    probe_ts bigint;
BEGIN
    IF at_ns <= 0 THEN
        RETURN 0;
    END IF;
    SELECT coalesce(max(transfer_id), 0) + 1 INTO hi FROM ledger_transfers;
    WHILE lo < hi LOOP
        mid := lo + (hi - lo) / 2;
        probe_id := NULL;
        SELECT transfer_id, ts_ns INTO probe_id, probe_ts FROM ledger_transfers
        WHERE transfer_id >= mid AND NOT (entry = 3 AND transfer_id = pending_id)
        ORDER BY transfer_id, entry LIMIT 1;
        IF probe_id IS NULL OR probe_ts >= at_ns THEN
            hi := mid;
        ELSE
            lo := probe_id + 1;
        END IF;
    END LOOP;
    RETURN lo;
END
$$;

COMMENT ON FUNCTION ledger_first_transfer_at(bigint) IS
    'The smallest transfer id from which on every ledger_transfers row except an expiry (entry 3 under '
    'its pending transfer''s id) has ts_ns >= at_ns: binary search over the primary key.';

CREATE INDEX ledger_transfers_expiries ON ledger_transfers (ts_ns) WHERE entry = 3 AND transfer_id = pending_id;
