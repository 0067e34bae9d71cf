DROP INDEX sagas_step_terms;
ALTER TABLE sagas DROP COLUMN step_terms;
CREATE INDEX sagas_step_terms ON sagas USING gin (saga_step_terms(definition) jsonb_path_ops);
DROP TABLE saga_minute_count_changes;
DROP TABLE saga_minute_counts;

CREATE FUNCTION saga_states_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO saga_state_count_changes (state, sagas)
    SELECT state, count(*) FROM inserted GROUP BY state;
    RETURN NULL;
END $$;
CREATE FUNCTION saga_states_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO saga_state_count_changes (state, sagas)
    SELECT state, sum(change) FROM (
        SELECT state, 1 AS change FROM changed
        UNION ALL
        SELECT state, -1 FROM before_change
    ) AS c
    GROUP BY state HAVING sum(change) <> 0;
    RETURN NULL;
END $$;
CREATE FUNCTION saga_states_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO saga_state_count_changes (state, sagas)
    SELECT state, -count(*) FROM deleted GROUP BY state;
    RETURN NULL;
END $$;
CREATE FUNCTION saga_states_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM saga_state_count_changes;
    DELETE FROM saga_state_counts;
    RETURN NULL;
END $$;
CREATE TRIGGER saga_states_inserted AFTER INSERT ON sagas
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION saga_states_inserted();
CREATE TRIGGER saga_states_changed AFTER UPDATE ON sagas
    REFERENCING OLD TABLE AS before_change NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION saga_states_changed();
CREATE TRIGGER saga_states_deleted AFTER DELETE ON sagas
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION saga_states_deleted();
CREATE TRIGGER saga_states_truncated AFTER TRUNCATE ON sagas
    FOR EACH STATEMENT EXECUTE FUNCTION saga_states_truncated();
-- What the write path counted while the triggers were gone is kept; a recount makes it exact.
DELETE FROM saga_state_count_changes;
DELETE FROM saga_state_counts;
INSERT INTO saga_state_counts (state, sagas) SELECT state, count(*) FROM sagas GROUP BY state;
