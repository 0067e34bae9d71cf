DROP INDEX saga_steps_error;
-- pg_trgm stays: it may have been there before, and other objects may use it.
DROP INDEX sagas_step_terms;
DROP FUNCTION saga_step_terms(jsonb);
DROP INDEX sagas_idempotency;
CREATE UNIQUE INDEX sagas_idempotency ON sagas (name, idempotency_key) WHERE idempotency_key IS NOT NULL;
