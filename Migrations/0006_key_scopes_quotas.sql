-- Key lifecycle and tenant quotas. A key has scopes (what it may do), an optional expiry, a name, and
-- the time it was last used; revoked_at already exists. A project has quotas (NULL: unlimited): bytes of
-- stored routes, jobs queued or running at once, and requests per second with a burst. The stored route
-- bytes are counted by a trigger in the same transaction as the write, so the count never drifts.

ALTER TABLE api_keys ADD COLUMN name text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
                     ADD COLUMN scopes text[] NOT NULL DEFAULT '{routes:read,routes:write,jobs,admin}',
                     ADD COLUMN expires_at timestamptz,
                     ADD COLUMN last_used_at timestamptz,
                     ADD COLUMN replaced_by bigint REFERENCES api_keys(id) ON DELETE SET NULL;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
    CHECK (scopes <@ ARRAY['routes:read', 'routes:write', 'jobs', 'admin']::text[] AND cardinality(scopes) >= 1);

ALTER TABLE projects ADD COLUMN max_route_bytes bigint CHECK (max_route_bytes >= 0),
                     ADD COLUMN max_active_jobs integer CHECK (max_active_jobs >= 0),
                     ADD COLUMN requests_per_second double precision CHECK (requests_per_second > 0),
                     ADD COLUMN request_burst integer CHECK (request_burst >= 1),
                     ADD COLUMN route_bytes bigint NOT NULL DEFAULT 0;

-- route_bytes: the packed bytes of every stored route of the project's rollouts
UPDATE projects p SET route_bytes = coalesce((SELECT sum(octet_length(t.data)) FROM routes t JOIN rollouts r ON r.id = t.rollout_id
                                              WHERE r.project_id = p.id), 0);

CREATE FUNCTION routes_count_bytes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE projects SET route_bytes = route_bytes - octet_length(OLD.data)
        WHERE id = (SELECT project_id FROM rollouts WHERE id = OLD.rollout_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE projects SET route_bytes = route_bytes + octet_length(NEW.data)
        WHERE id = (SELECT project_id FROM rollouts WHERE id = NEW.rollout_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER routes_count_bytes AFTER INSERT OR UPDATE OF data OR DELETE ON routes
    FOR EACH ROW EXECUTE FUNCTION routes_count_bytes();

-- Deleting a rollout deletes its routes by cascade after the rollout row is gone, when the trigger above
-- can no longer find the project: take the bytes off before the rollout goes.
CREATE FUNCTION rollouts_uncount_route_bytes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE projects SET route_bytes = route_bytes - coalesce((SELECT octet_length(data) FROM routes WHERE rollout_id = OLD.id), 0)
    WHERE id = OLD.project_id;
    RETURN OLD;
END $$;
CREATE TRIGGER rollouts_uncount_route_bytes BEFORE DELETE ON rollouts
    FOR EACH ROW EXECUTE FUNCTION rollouts_uncount_route_bytes();
