DROP TABLE paused_saga_names;
DROP INDEX sagas_held_by_name;
ALTER TABLE sagas DROP COLUMN paused_by;
ALTER TABLE sagas DROP COLUMN paused_at;
