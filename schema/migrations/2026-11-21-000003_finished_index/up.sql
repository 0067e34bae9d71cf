-- The dashboard's "finished per minute": a final saga is never written again, so its `updated_at` is
-- when it finished. Only final rows are in this index, so the hot path (unfinished sagas changing
-- state) pays for it once per saga, when it ends.
CREATE INDEX sagas_finished_at ON sagas (updated_at)
    WHERE state IN ('committed', 'compensated', 'aborted');
