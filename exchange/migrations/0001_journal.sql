-- The journal is the source of truth: one row per sequenced command, written by the sequencer with
-- COPY. Kept to three columns so COPY and replay stay fast; the command is msgspec-encoded bytes.
CREATE TABLE journal (
    seq     bigint PRIMARY KEY CHECK (seq > 0),
    ts_ns   bigint NOT NULL,
    command bytea  NOT NULL
);

-- Core state at a sequence number, with the hash that replay of journal[..seq] must reproduce.
CREATE TABLE snapshots (
    seq        bigint PRIMARY KEY CHECK (seq > 0),
    state_hash text   NOT NULL,
    state      bytea  NOT NULL
);
-- Snapshots are large and written once: store them out of line without pglz, which costs more CPU
-- than the space it saves here.
ALTER TABLE snapshots ALTER COLUMN state SET STORAGE EXTERNAL;
