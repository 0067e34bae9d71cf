ALTER TABLE saga_events DROP CONSTRAINT saga_events_pkey;
ALTER TABLE saga_events ADD PRIMARY KEY (seq);
CREATE INDEX saga_events_by_saga ON saga_events (saga_id, seq);
