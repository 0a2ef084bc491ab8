-- 0022_read_model_snapshots: the gateway's in-memory read model (gateway/readmodel.py) saved at a journal
-- seq, so a gateway start folds only the journal after it instead of the whole history (which archival,
-- exchange/store.py archive_journal, may have detached). Written by gateway/readmodel_snapshots.py.
--
-- Its `projections` row (gateway_read_model) is the seq of the newest snapshot: archival refuses rows
-- after it (the start needs them), exactly as for a projection that has not folded them. At 0 (no
-- gateway ever ran here) nothing is held back, and a gateway then started needs the whole journal.
CREATE TABLE read_model_snapshots (
    seq      bigint PRIMARY KEY CHECK (seq > 0),
    state    bytea  NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE read_model_snapshots ALTER COLUMN state SET STORAGE EXTERNAL;  -- pickled, already dense
INSERT INTO projections (name, seq) VALUES ('gateway_read_model', 0);
