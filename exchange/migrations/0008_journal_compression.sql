-- 0008_journal_compression: cheaper journal writes for the database, the same guarantees.
--
-- Measured on the ledger benchmark's market day (PostgreSQL 15, callgrind of the writer's backend):
-- * journal.events: the few large values (a clock tick that settles a few hundred trades carries their
--   events; about 1 % of rows) are compressed when written, and pglz spent about 10 % of the backend's
--   CPU per committed command on them. lz4 compresses them as well for a sixth of the CPU. Values
--   written before stay pglz and readable. A server built without lz4 (the embedded one) keeps pglz.
-- * The journal's and the ledger's primary keys only ever grow at their right end (seq; transfer ids
--   taken in order) and their rows never change, so index pages need no room for later inserts:
--   fillfactor 100 makes the keys about a tenth smaller and writes less WAL.
DO $$
BEGIN
    ALTER TABLE journal ALTER COLUMN events SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server is built without lz4: journal.events stays compressed with pglz';
END
$$;

ALTER INDEX journal_pkey SET (fillfactor = 100);
ALTER INDEX ledger_transfers_pkey SET (fillfactor = 100);
