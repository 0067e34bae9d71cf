-- Search over the saga list (issue 15): what each of its filters needs to stay an index lookup at ten
-- million sagas. Creation and finish windows need nothing new (the primary key, as ids are UUIDv7,
-- and sagas_finished_at); state and name have their (state, id) and (name, id) indexes.

-- The key without its name: the unique index led by the name could only be read whole for it. Led by
-- the key it serves both, so the write path keeps one index for keys, not two.
DROP INDEX sagas_idempotency;
CREATE UNIQUE INDEX sagas_idempotency ON sagas (idempotency_key, name) WHERE idempotency_key IS NOT NULL;

-- Participants and step names, as terms `participant:{name}` and `step:{name}`. A step row has no
-- participant (the definition has it), and one index over the definition serves both filters. The
-- terms are a sorted jsonb array rather than text[]: Postgres estimates `jsonb @>` from whole values
-- (sagas of one name share theirs), so a term few or no sagas have is estimated as rare and found
-- through this index, where text[]'s estimate of an unknown element (0.5%) had it scan the whole
-- primary key instead (8 s at a million sagas). The definition never changes, so updates of a saga
-- stay HOT; a new saga adds one GIN entry per term.
CREATE FUNCTION saga_step_terms(definition jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_agg(DISTINCT term ORDER BY term) FILTER (WHERE term IS NOT NULL), '[]')
    FROM jsonb_array_elements(definition -> 'steps') AS step,
         LATERAL (VALUES ('participant:' || (step ->> 'participant')),
                         ('step:' || (step ->> 'name'))) AS terms(term)
$$;
CREATE INDEX sagas_step_terms ON sagas USING gin (saga_step_terms(definition) jsonb_path_ops);

-- Text in a step's error, in any case (`ILIKE '%...%'`): trigrams. Only steps with an error are in
-- it, so a step that succeeds costs it nothing, and the error changes only when a step fails.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX saga_steps_error ON saga_steps USING gin (error gin_trgm_ops) WHERE error IS NOT NULL;
