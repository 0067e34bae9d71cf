-- Pause (issue 16): a paused saga dispatches nothing and fires no timer until resumed. NULL when it
-- runs. `paused_by` says whose hold it is: 'operator' (this saga) or 'name' (every saga of its name,
-- as listed in paused_saga_names).
ALTER TABLE sagas ADD COLUMN paused_at timestamptz;
ALTER TABLE sagas ADD COLUMN paused_by text;
-- What a name's resume releases: few rows (only sagas a name's pause holds), so the partial index
-- costs an ordinary transition nothing. What a name's pause must hold is found through
-- sagas_by_name and sagas_unfinished_by_partition.
CREATE INDEX sagas_held_by_name ON sagas (partition) WHERE paused_by = 'name';

-- Names whose sagas are held: new ones start paused, running ones are paused by their owner.
CREATE TABLE paused_saga_names (
    name text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);
