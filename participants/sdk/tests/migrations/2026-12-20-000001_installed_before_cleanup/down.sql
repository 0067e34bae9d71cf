DROP TABLE saga_outbox;
DROP TABLE saga_initiations;
DROP TABLE saga_barrier;
