-- Issue 19: every event (about eight per three-step saga) went into two indexes: the primary key on
-- `seq`, which nothing reads, and saga_events_by_saga (saga_id, seq), which every read uses. One
-- index serves both now: the primary key is (saga_id, seq). A primary key stays, for tools that
-- need one (logical replication of deletes, once retention deletes events).
ALTER TABLE saga_events DROP CONSTRAINT saga_events_pkey;
DROP INDEX saga_events_by_saga;
ALTER TABLE saga_events ADD PRIMARY KEY (saga_id, seq);
