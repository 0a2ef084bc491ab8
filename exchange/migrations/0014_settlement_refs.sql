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

-- settlement_history: the clearing's final records once it forgot them (Clearing.forget: a settled or
-- rejected trade, a confirmed or returned payout, a paid or failed withdrawal, a deposit, a bank file
-- sent), written by pgstore.LedgerWriter in the transaction of the clock tick that forgot them, so what
-- memory no longer holds is here from the same commit on. The API reads a record from memory first, then
-- here (gateway/settlement.py, "history"). A reference that is free again after the window (a bank file's)
-- may be forgotten twice: rows are unique by the tick's seq too, and a read takes the latest.
--
-- kind: model.FinalKind (1 trade, 2 payout, 3 deposit, 4 withdrawal, 7 bank file sent); id: the trade or
-- payout id (else 0); ref: the deposit, withdrawal or file reference (else ''); party_a / party_b: buyer
-- and seller, payee, owner (else 0); state: the record's final state (TradeState, PayoutState,
-- WithdrawalState; else 0); final_at_ns: when it became final (a trade's settlement, a payout's last change,
-- a deposit or withdrawal request; 0 for a file); record: the record as the clearing held it (msgpack,
-- exchange/settlement/model.py).
CREATE TABLE settlement_history (
    kind smallint NOT NULL,
    id bigint NOT NULL,
    ref text NOT NULL,
    party_a bigint NOT NULL,
    party_b bigint NOT NULL,
    state smallint NOT NULL,
    final_at_ns bigint NOT NULL,
    seq bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (kind, id, ref, seq)
);
CREATE INDEX settlement_history_by_party_a ON settlement_history (kind, party_a, id);
CREATE INDEX settlement_history_by_party_b ON settlement_history (kind, party_b, id);
CREATE INDEX settlement_history_by_time ON settlement_history (kind, final_at_ns);

CREATE TRIGGER settlement_history_append_only
    BEFORE UPDATE OR DELETE ON settlement_history
    FOR EACH ROW EXECUTE FUNCTION settlement_refs_append_only();
