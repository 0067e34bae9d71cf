DROP TABLE outbox;
DROP TABLE saga_events;
DROP TABLE saga_steps;
DROP TABLE sagas;
