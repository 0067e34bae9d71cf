ALTER TABLE saga_events ADD CONSTRAINT saga_events_saga_id_fkey
    FOREIGN KEY (saga_id) REFERENCES sagas (id) ON DELETE CASCADE;
ALTER TABLE saga_steps ADD CONSTRAINT saga_steps_saga_id_fkey
    FOREIGN KEY (saga_id) REFERENCES sagas (id) ON DELETE CASCADE;
ALTER TABLE saga_steps RESET (fillfactor);
ALTER TABLE sagas RESET (fillfactor);
DROP INDEX sagas_finished_at;
ALTER TABLE sagas DROP COLUMN finished_at;
CREATE INDEX sagas_finished_at ON sagas (updated_at)
    WHERE state IN ('committed', 'compensated', 'aborted');
