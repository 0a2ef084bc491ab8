-- 0013_journal_partitions: the journal partitioned by day of its time stamp, so old days can be archived.
--
-- journal is now PARTITION BY RANGE (ts_ns), one partition per UTC day of exchange time
-- (journal_YYYYMMDD, [day start, next day start) in ns), created ahead of need by the store
-- (exchange/store.py, ensure_journal_partitions: at the sequencer's start and on the first commit of
-- each day, for that day and the next two). There is no default partition: DETACH ... CONCURRENTLY,
-- which archival uses so the writer is never blocked, is refused while one exists; the writer checks
-- before each COPY that its rows' days have partitions instead (one comparison a batch).
--
-- Why the time stamp and not seq: a day's seq range is known only once the day is over, and a range
-- partition's bounds cannot change. The sequencer stamps ts_ns and never lets it go back, so each
-- partition holds one contiguous run of seqs, and appends always go to the newest partition.
--
-- Keys: a primary key of the partitioned table must contain ts_ns, and (seq, ts_ns) would no longer
-- refuse a second row with the same seq. Each partition has PRIMARY KEY (seq) instead: a duplicate seq
-- in a day is refused, as before, with one 8-byte key per row. Across days the writer's advisory lock
-- (one writer) and recovery's count check (a page of n seqs must hold n rows) are the guards.
--
-- An existing journal is kept as it is, attached whole as the partition journal_legacy covering the
-- days of its rows (a CHECK scan, no rewrite); an empty one is dropped.
ALTER TABLE journal RENAME TO journal_legacy;
ALTER TABLE journal_legacy RENAME CONSTRAINT journal_pkey TO journal_legacy_pkey;

CREATE TABLE journal (
    seq     bigint NOT NULL CONSTRAINT journal_seq_check CHECK (seq > 0),  -- the name journal_legacy has
    ts_ns   bigint NOT NULL,
    command bytea  NOT NULL,
    events  bytea
) PARTITION BY RANGE (ts_ns);

DO $$
BEGIN
    ALTER TABLE journal ALTER COLUMN events SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server is built without lz4: journal.events stays compressed with pglz';
END
$$;

DO $$
DECLARE
    day_ns CONSTANT bigint := 86400000000000;
    lo bigint;
    hi bigint;
BEGIN
    SELECT min(ts_ns), max(ts_ns) INTO lo, hi FROM journal_legacy;
    IF lo IS NULL THEN
        DROP TABLE journal_legacy;
        RETURN;
    END IF;
    lo := lo - (((lo % day_ns) + day_ns) % day_ns);           -- the start of the first row's day
    hi := hi - (((hi % day_ns) + day_ns) % day_ns) + day_ns;  -- the start of the day after the last row's
    EXECUTE format('ALTER TABLE journal_legacy ADD CONSTRAINT journal_legacy_day CHECK (ts_ns >= %s AND ts_ns < %s)',
                   lo, hi);
    EXECUTE format('ALTER TABLE journal ATTACH PARTITION journal_legacy FOR VALUES FROM (%s) TO (%s)', lo, hi);
END
$$;
