-- Models and their policy versions, the job queue (leases, fencing, retries, idempotency), job events
-- (the SSE stream) and per-step metrics; rollouts remember the job step that produced them.

CREATE TABLE models (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id  bigint NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    config      jsonb NOT NULL,                -- the Qwen3-MoE config.json
    source      text NOT NULL CHECK (source IN ('checkpoint', 'random')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

CREATE TABLE jobs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq               bigserial UNIQUE,        -- creation order, for cursor pagination
    project_id        bigint NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    type              text NOT NULL CHECK (type IN ('rollout', 'sft', 'train')),
    model_id          uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    params            jsonb NOT NULL,
    state             text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress          jsonb NOT NULL DEFAULT '{}',
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 20),
    run_after         timestamptz NOT NULL DEFAULT now(),
    lease_token       uuid,                    -- the claim; every write of a running job is fenced on it
    lease_expires_at  timestamptz,
    worker            text,
    cancel_requested  boolean NOT NULL DEFAULT false,
    error             text,
    result            jsonb,
    checkpoint        jsonb,                   -- {"step", "path", "version"}: where a resumed attempt starts
    idempotency_key   text,
    request_hash      text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queued ON jobs (run_after, seq) WHERE state = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_project_seq ON jobs (project_id, seq);

-- Version 0 is the model as registered; each training step adds one. checkpoint_path is set for the
-- versions whose weights were saved (every K steps and the last).
CREATE TABLE policy_versions (
    model_id         uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    version          integer NOT NULL CHECK (version >= 0),
    job_id           uuid REFERENCES jobs(id) ON DELETE SET NULL,
    job_step         integer,
    checkpoint_path  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, version)
);

CREATE TABLE job_events (
    id          bigserial PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    type        text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job ON job_events (job_id, id);

CREATE TABLE job_metrics (
    job_id      uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step        integer NOT NULL CHECK (step >= 0),
    metrics     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, step)
);

ALTER TABLE rollouts ADD COLUMN job_id uuid REFERENCES jobs(id) ON DELETE SET NULL,
                     ADD COLUMN job_step integer,
                     ADD COLUMN sample_index integer;
-- A job step's samples are written once: a resumed step replaces them, never duplicates them.
CREATE UNIQUE INDEX rollouts_job_sample ON rollouts (job_id, job_step, sample_index) WHERE job_id IS NOT NULL;
