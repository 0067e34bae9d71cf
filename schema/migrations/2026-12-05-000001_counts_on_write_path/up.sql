-- Issue 19: the write path had become dearer with two pieces of issue 15, each paid by every batch.
--
-- 1. The counts per state came from statement-level triggers with transition tables: Postgres copied
--    every row a batch inserted or updated (the whole saga, its definition too) into tuplestores and
--    ran a plpgsql function over them. The batch statement now appends its own net change per state
--    (it knows each changed saga's state before the change), and so do retention's purge and the
--    bench's seed. Every writer of `sagas` must do the same: ARCHITECTURE.md, "Counts".
--    Alongside, the started and finished sagas per minute (the overview's chart), which scanned the
--    sagas of the last half hour on every refresh, are appended the same way and folded with them.
-- 2. The participant and step terms were an expression index over the definition: an SQL function
--    run for every new saga. The writer now computes them once and stores them in a column.

DROP TRIGGER saga_states_truncated ON sagas;
DROP TRIGGER saga_states_deleted ON sagas;
DROP TRIGGER saga_states_changed ON sagas;
DROP TRIGGER saga_states_inserted ON sagas;
DROP FUNCTION saga_states_truncated();
DROP FUNCTION saga_states_deleted();
DROP FUNCTION saga_states_changed();
DROP FUNCTION saga_states_inserted();

-- Started and finished per minute (UTC minutes), for the recent past only: the fold drops minutes
-- older than two days. Appended to without an index, folded like the counts per state.
CREATE TABLE saga_minute_counts (
    minute timestamptz PRIMARY KEY,
    started bigint NOT NULL,
    finished bigint NOT NULL
);
CREATE TABLE saga_minute_count_changes (
    minute timestamptz NOT NULL,
    started bigint NOT NULL,
    finished bigint NOT NULL
);
INSERT INTO saga_minute_counts (minute, started, finished)
SELECT minute, sum(started), sum(finished) FROM (
    SELECT date_trunc('minute', created_at, 'UTC') AS minute, 1 AS started, 0 AS finished
      FROM sagas WHERE created_at >= now() - interval '2 days'
    UNION ALL
    SELECT date_trunc('minute', finished_at, 'UTC'), 0, 1
      FROM sagas WHERE finished_at >= now() - interval '2 days'
) AS happened
GROUP BY minute;

-- The terms, as `saga_step_terms` (kept: it says what the terms are, and fills old rows) computes
-- them. Filling rewrites every saga once: minutes at ten million, in this migration.
ALTER TABLE sagas ADD COLUMN step_terms jsonb;
UPDATE sagas SET step_terms = saga_step_terms(definition);
ALTER TABLE sagas ALTER COLUMN step_terms SET NOT NULL;
DROP INDEX sagas_step_terms;
CREATE INDEX sagas_step_terms ON sagas USING gin (step_terms jsonb_path_ops);
