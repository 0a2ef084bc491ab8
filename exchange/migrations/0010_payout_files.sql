-- 0010_payout_files: a payout file, once generated, is the bytes that were sent, forever.
--
-- The gateway renders a file, stores it here, then journals MarkPayoutsSent naming the file's SHA-256;
-- the clearing records that digest with the file. A download serves the row whose digest the clearing
-- recorded, never a new rendering (profiles change afterwards). A rendering whose command never became
-- durable (a crash, a lost race for the same file_ref) leaves a row no digest names: harmless, and
-- never served. Rows are never updated or deleted.
CREATE TABLE payout_files (
    file_ref   text        NOT NULL CHECK (length(file_ref) BETWEEN 1 AND 64),
    sha256     text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    content    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (file_ref, sha256),
    CHECK (encode(sha256(content), 'hex') = sha256)
);
