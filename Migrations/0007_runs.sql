-- Runs: training that happens elsewhere (verl, slime, NeMo-RL, Megatron on GPUs) reporting each step here.
-- A run has collapse rules and an action like a train job; each step report is stored with the metrics the
-- service computed from its own stored rollouts (inference log-probs, routes) and the trainer's numbers,
-- and the reply it gave, with the step's expert load (a retry with the same body gets the same reply). Run events feed SSE and the
-- webhook outbox. Routes keep their expert-load histogram, counted once when written.

CREATE TABLE runs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq          bigserial UNIQUE,             -- creation order, for cursor pagination
    project_id   bigint NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    model_id     uuid REFERENCES models(id) ON DELETE SET NULL,
    params       jsonb NOT NULL,               -- the run as created: settings, rules, action, trainer parameters
    state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'collapsed', 'finished')),
    last_step    integer,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    UNIQUE (project_id, name)
);
CREATE INDEX runs_project_seq ON runs (project_id, seq);
CREATE INDEX runs_active ON runs (state) WHERE state IN ('active', 'paused');

CREATE TABLE run_steps (
    run_id          uuid NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step            integer NOT NULL CHECK (step >= 0),
    policy_version  bigint,
    request_hash    text NOT NULL,             -- SHA-256 of the report body: the same body replays, another is 409
    metrics         jsonb NOT NULL,            -- the trainer's and the computed ones; null for non-finite
    watched         jsonb NOT NULL,            -- the collapse detector's inputs, NaN and ±Inf as strings
    reply           jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step)
);

CREATE TABLE run_events (
    id          bigserial PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    type        text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_events_run ON run_events (run_id, id);

-- int32 little-endian [layers, num_experts] tokens per expert, and the rows without a route; NULL for
-- routes written before this migration (counted from the data when read).
ALTER TABLE routes ADD COLUMN expert_counts bytea,
                   ADD COLUMN missing_rows integer[];
ALTER TABLE routes ALTER COLUMN expert_counts SET STORAGE EXTERNAL;
