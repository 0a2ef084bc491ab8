-- 0014_settlement_refs: every client reference that must never take effect twice, for ever.
--
-- The core keeps idempotency keys in memory only inside a retention window (exchange/core.py,
-- "Memory"); after it, a reference is recognised here. One row per reference that took effect (a
-- retry answered from memory writes nothing), written by pgstore.LedgerWriter in the transaction of
-- the journal batch that used it: a deposit's bank reference, a withdrawal reference, a repayment
-- reference and a lot's client_lot_ref. The gateway looks a reference the core no longer holds up
-- here before submitting and answers 409 reference_expired; the primary key refuses a second use
-- even if something got past that (the batch then fails and nothing of it is applied).
--
-- kind: 1 deposit (owner_id 0: a bank reference is unique across owners), 2 withdrawal (owner),
--       3 repayment (borrower), 4 lot (seller).
CREATE TABLE settlement_refs (
    kind smallint NOT NULL,
    owner_id bigint NOT NULL,
    ref text NOT NULL,
    seq bigint NOT NULL,          -- the journal seq of the command that used it
    ts_ns bigint NOT NULL,
    CONSTRAINT settlement_refs_kind CHECK (kind BETWEEN 1 AND 4),
    PRIMARY KEY (kind, owner_id, ref)
);

CREATE FUNCTION settlement_refs_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'settlement_refs is append-only' USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER settlement_refs_append_only
    BEFORE UPDATE OR DELETE ON settlement_refs
    FOR EACH ROW EXECUTE FUNCTION settlement_refs_append_only();
