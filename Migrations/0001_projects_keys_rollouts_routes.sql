-- Projects, their API keys (stored as SHA-256 hashes only), rollouts and their packed routes.

CREATE TABLE projects (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          bigserial PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    prefix      text NOT NULL,                 -- first characters, to tell keys apart in listings
    key_hash    bytea NOT NULL UNIQUE,         -- sha256 of the whole key; the key itself is never stored
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE rollouts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq             bigserial UNIQUE,          -- insertion order, for cursor pagination
    project_id      bigint NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    model           text NOT NULL,
    policy_version  bigint NOT NULL DEFAULT 0,
    token_ids       integer[] NOT NULL,
    prompt_length   integer NOT NULL CHECK (prompt_length >= 0),
    logprobs        real[],
    reward          double precision,
    group_id        text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollouts_project_seq ON rollouts (project_id, seq);
CREATE INDEX rollouts_project_model ON rollouts (project_id, model, policy_version, seq);

-- Packed routes: uint8 per expert id when the experts fit a byte, else uint16 little-endian.
CREATE TABLE routes (
    rollout_id   uuid PRIMARY KEY REFERENCES rollouts(id) ON DELETE CASCADE,
    rows         integer NOT NULL CHECK (rows >= 0),
    layers       integer NOT NULL CHECK (layers >= 1),
    top_k        integer NOT NULL CHECK (top_k >= 1),
    num_experts  integer NOT NULL CHECK (num_experts >= 1),
    width        smallint NOT NULL CHECK (width IN (1, 2)),
    checksum     bigint NOT NULL,              -- CRC-32C of data
    data         bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- pglz cannot compress routes and makes inserts 3-6x slower: store them uncompressed, out of line.
ALTER TABLE routes ALTER COLUMN data SET STORAGE EXTERNAL;
