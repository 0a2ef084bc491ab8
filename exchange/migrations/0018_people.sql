-- People who sign in to the web app: each acts for one participant with the participant's role (a
-- cooperative may have several clerks). API keys stay for programs. Only hashes of invitation tokens
-- and session ids are stored, so a copy of this table lets nobody in.
CREATE TABLE people (
    person_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    participant_id  bigint      NOT NULL REFERENCES participants (participant_id),
    phone           text        NOT NULL UNIQUE CHECK (phone ~ '^\+?[0-9]{6,15}$'),
    display_name    text        NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    password_salt   bytea       NOT NULL CHECK (length(password_salt) = 16),
    password_hash   bytea       NOT NULL CHECK (length(password_hash) = 32),
    failed_signins  integer     NOT NULL DEFAULT 0 CHECK (failed_signins >= 0),
    locked          boolean     NOT NULL DEFAULT false,
    revoked         boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX people_participant_idx ON people (participant_id);

CREATE TABLE invitations (
    token_hash      bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    participant_id  bigint      NOT NULL REFERENCES participants (participant_id),
    created_by      bigint      NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_by         bigint      REFERENCES people (person_id),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE web_sessions (
    session_hash    bytea       PRIMARY KEY CHECK (length(session_hash) = 32),
    person_id       bigint      NOT NULL REFERENCES people (person_id),
    csrf_token      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    ended_at        timestamptz
);

CREATE INDEX web_sessions_person_idx ON web_sessions (person_id) WHERE ended_at IS NULL;
