-- 0021_registration_refs: a participant registration's reference is recorded for ever, like the others.
--
-- The clearing keeps a registration_ref (and the participant and key it made) in memory for the
-- retention window only (exchange/core.py, "Memory"); after it the gateway finds the reference here and
-- answers 409 registration_expired instead of registering a second participant under it. Written by
-- pgstore.LedgerWriter in the transaction of the journal batch that made the registration.
--
-- kind 5: registration (owner_id 0: a registration reference is unique across operators).
ALTER TABLE settlement_refs DROP CONSTRAINT settlement_refs_kind;
ALTER TABLE settlement_refs ADD CONSTRAINT settlement_refs_kind CHECK (kind BETWEEN 1 AND 5);
