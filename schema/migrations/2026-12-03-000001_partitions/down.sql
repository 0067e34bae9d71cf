DROP FUNCTION saga_fence(text, integer[], bigint[]);
ALTER TABLE saga_events DROP COLUMN epoch;
CREATE INDEX sagas_unfinished ON sagas (id) WHERE state NOT IN ('committed', 'compensated', 'aborted');
DROP INDEX sagas_unfinished_by_partition;
ALTER TABLE sagas DROP COLUMN partition;
DROP TABLE coordinator_instances;
DROP TABLE partition_leases;
