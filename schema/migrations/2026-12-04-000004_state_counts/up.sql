-- Issue 15: the overview's counts per state scanned the whole table, seconds at ten million sagas.
-- Postgres keeps them now, for every writer (old builds in a rolling deploy, bench seed, retention):
-- each statement that inserts, changes the state of, or deletes sagas appends its net change per
-- state to saga_state_count_changes (append only, no index: concurrent writers never wait on each
-- other), and each coordinator folds the changes into saga_state_counts every few seconds. The
-- count of a state is its folded count plus its unfolded changes, exact in any one snapshot.
CREATE TABLE saga_state_counts (
    state text PRIMARY KEY,
    sagas bigint NOT NULL
);
CREATE TABLE saga_state_count_changes (
    state text NOT NULL,
    sagas bigint NOT NULL
);

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

-- The triggers first: creating them waits for writers in progress and holds off new ones until this
-- migration commits, so the count below misses no write and no write is counted twice.
CREATE TRIGGER saga_states_inserted AFTER INSERT ON sagas
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION saga_states_inserted();
CREATE TRIGGER saga_states_changed AFTER UPDATE ON sagas
    REFERENCING OLD TABLE AS before_change NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION saga_states_changed();
CREATE TRIGGER saga_states_deleted AFTER DELETE ON sagas
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION saga_states_deleted();
CREATE TRIGGER saga_states_truncated AFTER TRUNCATE ON sagas
    FOR EACH STATEMENT EXECUTE FUNCTION saga_states_truncated();

-- One scan of the existing sagas (seconds at ten million, once).
INSERT INTO saga_state_counts (state, sagas) SELECT state, count(*) FROM sagas GROUP BY state;
