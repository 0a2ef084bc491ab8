-- The sequencer's additions to the journal and the snapshots.
--
-- journal.events: the msgspec-encoded list of events the command produced, written in the same COPY
-- row as the command. It answers an idempotent retry with the original events (also after a restart)
-- and feeds the read-model projection, without re-running the core. Measured against a separate
-- results table written in the same transaction: one wider COPY is about twice as fast as two COPYs.
-- NULL only for rows written by tools that journal bare commands (store.append_journal with 3 columns).
ALTER TABLE journal ADD COLUMN events bytea;

-- snapshots.client_orders: the sequencer's idempotency index at the snapshot's seq, msgspec-encoded
-- [[participant_id, client_order_id, seq], ...], so a retry of an order placed before the snapshot is
-- still recognised after recovery replays only the tail.
ALTER TABLE snapshots ADD COLUMN client_orders bytea;
ALTER TABLE snapshots ALTER COLUMN client_orders SET STORAGE EXTERNAL;
