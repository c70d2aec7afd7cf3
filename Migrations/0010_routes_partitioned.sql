-- Routes partitioned by project, then by week, so that retention drops whole partitions instead of
-- deleting rows: routes → routes_p{project} (LIST) → routes_p{project}_w{YYYYMMDD} (RANGE on created_at,
-- weeks from Monday 00:00 UTC). A route row carries its rollout's project and created_at (the partition
-- keys), so a lookup through its rollout touches one partition. Partitions are made by
-- r3_route_partition(project, at) (CREATE … LIKE, then ATTACH, which does not block inserts and reads of
-- the parent); the service makes the current and next week's ahead of time and any other on demand.
-- Each project has a retention policy (keep N days and/or its models' last K policy versions); the
-- partitions it dropped are recorded, so a rollout whose routes expired says so.

ALTER TABLE routes RENAME TO routes_unpartitioned;
DROP TRIGGER routes_count_bytes ON routes_unpartitioned;
DROP TRIGGER rollouts_uncount_route_bytes ON rollouts;
DROP FUNCTION rollouts_uncount_route_bytes();

CREATE TABLE routes (
    project_id     bigint NOT NULL,
    created_at     timestamptz NOT NULL,          -- the rollout's
    rollout_id     uuid NOT NULL,
    rows           integer NOT NULL CHECK (rows >= 0),
    layers         integer NOT NULL CHECK (layers >= 1),
    top_k          integer NOT NULL CHECK (top_k >= 1),
    num_experts    integer NOT NULL CHECK (num_experts >= 1),
    width          smallint NOT NULL CHECK (width IN (1, 2)),
    checksum       bigint NOT NULL,               -- CRC-32C of data
    data           bytea NOT NULL,
    hidden_layers  integer CHECK (hidden_layers >= layers),
    moe_layers     integer[],
    expert_counts  bytea,
    missing_rows   integer[],
    PRIMARY KEY (rollout_id, project_id, created_at)
) PARTITION BY LIST (project_id);
-- pglz cannot compress routes and makes inserts 3-6x slower: uncompressed, out of line (partitions made
-- with LIKE … INCLUDING ALL inherit it).
ALTER TABLE routes ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE routes ALTER COLUMN expert_counts SET STORAGE EXTERNAL;

-- The week's partition of a project's routes (made when missing); returns its name.
CREATE FUNCTION r3_route_partition(project bigint, at timestamptz) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    week_start timestamptz := date_trunc('week', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    parent text := format('routes_p%s', project);
    leaf text := format('routes_p%s_w%s', project, to_char(week_start AT TIME ZONE 'UTC', 'YYYYMMDD'));
BEGIN
    IF to_regclass(leaf) IS NOT NULL THEN RETURN leaf; END IF;
    PERFORM pg_advisory_xact_lock(724000314, project::integer);
    IF to_regclass(parent) IS NULL THEN
        EXECUTE format('CREATE TABLE %I (LIKE routes INCLUDING ALL) PARTITION BY RANGE (created_at)', parent);
        EXECUTE format('ALTER TABLE routes ATTACH PARTITION %I FOR VALUES IN (%s)', parent, project);
    END IF;
    IF to_regclass(leaf) IS NULL THEN
        EXECUTE format('CREATE TABLE %I (LIKE routes INCLUDING ALL)', leaf);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, leaf,
                       week_start, week_start + interval '7 days');
    END IF;
    RETURN leaf;
END $$;

SELECT r3_route_partition(x.project_id, x.created_at)
FROM (SELECT DISTINCT r.project_id, date_trunc('week', r.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS created_at
      FROM routes_unpartitioned t JOIN rollouts r ON r.id = t.rollout_id) x;
INSERT INTO routes (project_id, created_at, rollout_id, rows, layers, top_k, num_experts, width, checksum, data, hidden_layers,
                    moe_layers, expert_counts, missing_rows)
SELECT r.project_id, r.created_at, t.rollout_id, t.rows, t.layers, t.top_k, t.num_experts, t.width, t.checksum, t.data, t.hidden_layers,
       t.moe_layers, t.expert_counts, t.missing_rows
FROM routes_unpartitioned t JOIN rollouts r ON r.id = t.rollout_id;

-- A rollout keeps the summary of its routes, so that reading or listing rollouts never plans the
-- partitioned table (that alone took 0.2 ms a query): route_shape = [rows, layers, top_k, num_experts,
-- num_hidden_layers] and the hidden index of each stored layer. routes_stored: it was stored with routes
-- (a rollout in a dropped week whose routes_stored is true has expired routes).
ALTER TABLE rollouts ADD COLUMN routes_stored boolean NOT NULL DEFAULT false,
                     ADD COLUMN route_shape integer[],
                     ADD COLUMN route_moe_layers integer[];
UPDATE rollouts r SET routes_stored = true,
       route_shape = ARRAY[t.rows, t.layers, t.top_k, t.num_experts, coalesce(t.hidden_layers, t.layers)],
       route_moe_layers = coalesce(t.moe_layers, (SELECT array_agg(i ORDER BY i) FROM generate_series(0, t.layers - 1) i))
FROM routes_unpartitioned t WHERE t.rollout_id = r.id;
DROP TABLE routes_unpartitioned;

-- a project's stored route bytes (the storage quota), kept by a trigger on the partitioned table
CREATE OR REPLACE FUNCTION routes_count_bytes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE projects SET route_bytes = route_bytes - octet_length(OLD.data) WHERE id = OLD.project_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE projects SET route_bytes = route_bytes + octet_length(NEW.data) WHERE id = NEW.project_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER routes_count_bytes AFTER INSERT OR UPDATE OF data OR DELETE ON routes
    FOR EACH ROW EXECUTE FUNCTION routes_count_bytes();
UPDATE projects p SET route_bytes = coalesce((SELECT sum(octet_length(t.data)) FROM routes t WHERE t.project_id = p.id), 0);

-- a deleted rollout takes its routes with it (by its full key: one partition)
CREATE FUNCTION rollouts_delete_routes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM routes WHERE project_id = OLD.project_id AND created_at = OLD.created_at AND rollout_id = OLD.id;
    RETURN OLD;
END $$;
CREATE TRIGGER rollouts_delete_routes BEFORE DELETE ON rollouts
    FOR EACH ROW EXECUTE FUNCTION rollouts_delete_routes();

-- retention: NULL keeps routes for ever
ALTER TABLE projects ADD COLUMN route_keep_days integer CHECK (route_keep_days >= 1),
                     ADD COLUMN route_keep_versions integer CHECK (route_keep_versions >= 1);

CREATE TABLE route_partitions_dropped (
    project_id   bigint NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    range_start  timestamptz NOT NULL,
    range_end    timestamptz NOT NULL,
    routes       bigint NOT NULL,
    bytes        bigint NOT NULL,
    policy       jsonb NOT NULL,                  -- the retention that dropped it
    dropped_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, range_start)
);
