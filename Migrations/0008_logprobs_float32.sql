-- Log-probs as float32 bytes (big-endian, as float4send writes them; NaN where a token has none) instead of
-- real[]: reading a step's million log-probs from real[] costs PostgreSQL a function call per element
-- (about 100 ms for 256 rollouts × 4,096 tokens, binary or text); bytes are copied out as they are. They
-- do not compress, so they are stored uncompressed, out of line. A NULL element becomes NaN (as the old reader read it).

ALTER TABLE rollouts ADD COLUMN logprobs_f32 bytea;
UPDATE rollouts r SET logprobs_f32 = coalesce(
    (SELECT string_agg(coalesce(float4send(x), '\x7fc00000'::bytea), ''::bytea ORDER BY i) FROM unnest(r.logprobs) WITH ORDINALITY AS u(x, i)), ''::bytea)
WHERE r.logprobs IS NOT NULL;
ALTER TABLE rollouts DROP COLUMN logprobs;
ALTER TABLE rollouts RENAME COLUMN logprobs_f32 TO logprobs;
ALTER TABLE rollouts ALTER COLUMN logprobs SET STORAGE EXTERNAL;
