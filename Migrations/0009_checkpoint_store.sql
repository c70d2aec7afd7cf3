-- Checkpoints in the database: model weights and every training checkpoint (weights + AdamW state), so
-- that a worker on any machine can load any policy version and resume any job. A checkpoint is a set
-- of files (config.json, model*.safetensors, optimizer.safetensors, trainer_state.json) cut into chunks
-- of at most 8 MiB; each file has its size and SHA-256 in the manifest, and the checkpoint the SHA-256
-- of its manifest: the content hash that machines' local disk caches are keyed by. Rows refer to a
-- checkpoint by id, never by a path. Chunks are stored uncompressed out of line (safetensors do not
-- compress; pglz would only cost time), as routes are.
--
-- A checkpoint uploaded by a training step is written in its own transaction before the step commits;
-- job_id and lease_token say which attempt wrote it, so that one no policy version or job refers to,
-- whose attempt is gone, can be collected.

CREATE TABLE checkpoints (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    model_id     uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    bytes        bigint NOT NULL CHECK (bytes >= 0),
    files        jsonb NOT NULL,               -- [{"name", "size", "sha256", "chunks"}] in name order
    job_id       uuid REFERENCES jobs(id) ON DELETE SET NULL,
    lease_token  uuid,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX checkpoints_model ON checkpoints (model_id);
CREATE INDEX checkpoints_job ON checkpoints (job_id) WHERE job_id IS NOT NULL;

CREATE TABLE checkpoint_chunks (
    checkpoint_id  uuid NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    file           integer NOT NULL CHECK (file >= 0),
    seq            integer NOT NULL CHECK (seq >= 0),
    data           bytea NOT NULL,
    PRIMARY KEY (checkpoint_id, file, seq)
);
ALTER TABLE checkpoint_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- checkpoint_path stays only for installations whose files are still on disk: the service moves them
-- into the store when it starts (on the machine that has them) and clears the path.
ALTER TABLE policy_versions ADD COLUMN checkpoint_id uuid REFERENCES checkpoints(id);
CREATE INDEX policy_versions_checkpoint ON policy_versions (checkpoint_id) WHERE checkpoint_id IS NOT NULL;
