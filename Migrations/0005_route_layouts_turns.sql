-- Route layouts and multi-turn rollouts. Routes remember the model layout they were stored under: how many
-- hidden layers it has and which of them are MoE (the stored layer axis), so any reader's layout (every
-- layer, dense rows padded; or the MoE layers only) can be served. NULL: every layer is MoE (rows written
-- before this migration). Models may be registered from a Hugging Face config.json alone (source
-- 'config'), for their route layout. A rollout's loss mask marks which response tokens the policy sampled
-- (0 for tool or user tokens of later turns); NULL means all of them.

ALTER TABLE routes ADD COLUMN hidden_layers integer CHECK (hidden_layers >= layers),
                   ADD COLUMN moe_layers integer[];

ALTER TABLE models DROP CONSTRAINT models_source_check;
ALTER TABLE models ADD CONSTRAINT models_source_check CHECK (source IN ('checkpoint', 'random', 'config'));

ALTER TABLE rollouts ADD COLUMN loss_mask bytea,
                     ADD COLUMN turns integer NOT NULL DEFAULT 1 CHECK (turns >= 1);
