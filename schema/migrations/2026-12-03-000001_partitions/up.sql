-- Partitioned ownership (issue 13): several coordinators on one database, no saga driven by two.
--
-- Every saga belongs to one of a fixed number of partitions, from its id (the last two bytes of the
-- UUID, which are random in a UUIDv7, modulo the partition count). A partition has at most one owner
-- at a time: its lease row names the owner, the epoch it took the lease with (the fencing token,
-- one more for every new owner) and when the lease expires by this database's clock.

CREATE TABLE partition_leases (
    partition  integer     PRIMARY KEY,
    owner      text,
    epoch      bigint      NOT NULL DEFAULT 0,
    expires_at timestamptz
);
-- 64 unless `SAGA_PARTITIONS` says otherwise when the database is first used (store/leases.rs).
INSERT INTO partition_leases (partition) SELECT generate_series(0, 63);

-- Live coordinators: their heartbeat, and where the others forward requests for their partitions.
CREATE TABLE coordinator_instances (
    id           text        PRIMARY KEY,
    url          text        NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);

-- A saga's partition never changes. Existing sagas get theirs from the same formula.
ALTER TABLE sagas ADD COLUMN partition integer NOT NULL DEFAULT 0;
UPDATE sagas SET partition = (get_byte(uuid_send(id), 14) * 256 + get_byte(uuid_send(id), 15)) % 64;
ALTER TABLE sagas ALTER COLUMN partition DROP DEFAULT;
-- What a new owner loads when it takes a partition.
CREATE INDEX sagas_unfinished_by_partition ON sagas (partition)
    WHERE state NOT IN ('committed', 'compensated', 'aborted');
DROP INDEX sagas_unfinished;

-- The epoch under which each entry's transition was written: who wrote what, provably.
ALTER TABLE saga_events ADD COLUMN epoch bigint;

-- The fence of every write. Called once per batch statement: it takes a shared advisory lock on each
-- partition the batch writes (a new owner takes it exclusively, so a takeover waits for writes under
-- way and a write waits for a takeover under way), then reads the leases with a snapshot of its own,
-- taken after those locks, and answers the partitions the writer still holds with the epoch it
-- believes, unexpired by this database's clock. A VOLATILE function's queries see what committed
-- before them, not what the calling statement's snapshot saw: that is what makes the check exact.
CREATE FUNCTION saga_fence(writer text, parts integer[], epochs bigint[])
RETURNS SETOF integer LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1935762279, p) FROM unnest(parts) AS p ORDER BY p;
    RETURN QUERY
        SELECT l.partition FROM partition_leases l
        JOIN unnest(parts, epochs) AS held(partition, epoch) ON held.partition = l.partition
        WHERE l.owner = writer AND l.epoch = held.epoch AND l.expires_at > clock_timestamp();
END
$$;
