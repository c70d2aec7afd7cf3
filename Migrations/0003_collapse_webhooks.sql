-- Collapse outcomes for jobs, and webhooks: endpoints, the outbox of events (written in the same
-- transaction as the state change that caused them), deliveries and every attempt.

ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled', 'collapsed'));

CREATE TABLE webhook_endpoints (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq                   bigserial UNIQUE,
    project_id            bigint NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    url                   text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events                text[] NOT NULL,
    description           text NOT NULL DEFAULT '' CHECK (length(description) <= 1000),
    enabled               boolean NOT NULL DEFAULT true,
    disabled_reason       text,
    -- The signing secret (whsec_…) must be usable to sign, so it is kept, and shown to the client once.
    secret                text NOT NULL,
    previous_secret       text,                -- during a rotation both signatures are sent ...
    previous_expires_at   timestamptz,         -- ... until this time
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_project ON webhook_endpoints (project_id, seq);

CREATE TABLE webhook_events (
    id          text PRIMARY KEY,              -- msg_…: the webhook-id header, stable across retries
    project_id  bigint NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    type        text NOT NULL,
    body        text NOT NULL,                 -- the exact signed payload {type, timestamp, data}
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq              bigserial UNIQUE,
    event_id         text NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    retry_base       integer NOT NULL DEFAULT 0,           -- attempts before the last redeliver: the schedule restarts there
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),   -- also the in-flight lease while a worker sends
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, seq);

CREATE TABLE webhook_attempts (
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    status_code  integer,
    latency_ms   double precision NOT NULL,
    error        text,
    PRIMARY KEY (delivery_id, attempt)
);
