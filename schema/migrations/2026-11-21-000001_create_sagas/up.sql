-- Sagas, their steps, their event log, and the outbox of commands not yet confirmed by RabbitMQ.
-- State names are the contract's (section 1); the engine owns the transitions.

CREATE TABLE sagas (
    id              uuid        PRIMARY KEY,          -- UUIDv7: ordering by id is ordering by creation
    name            text        NOT NULL,
    idempotency_key text,
    definition      jsonb       NOT NULL,             -- the validated submission, defaults applied
    state           text        NOT NULL,
    deadline        timestamptz,
    check_back_at   timestamptz,
    traceparent     text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL DEFAULT 0    -- optimistic lock: one writer per saga
);
CREATE UNIQUE INDEX sagas_idempotency ON sagas (name, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX sagas_unfinished ON sagas (id) WHERE state NOT IN ('committed', 'compensated', 'aborted');
CREATE INDEX sagas_by_state ON sagas (state, id DESC);
CREATE INDEX sagas_by_name ON sagas (name, id DESC);

CREATE TABLE saga_steps (
    saga_id                    uuid    NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    position                   integer NOT NULL,
    name                       text    NOT NULL,
    state                      text    NOT NULL,
    attempts                   integer NOT NULL,
    compensation_attempts      integer NOT NULL,
    compensation_attempt_limit integer NOT NULL,
    output                     jsonb,
    error                      text,
    timer_due_at               timestamptz,           -- durable timer: re-armed after a restart
    timer_purpose              text,
    refused                    boolean NOT NULL,
    PRIMARY KEY (saga_id, position)
);

CREATE TABLE saga_events (
    seq     bigserial   PRIMARY KEY,
    saga_id uuid        NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    at      timestamptz NOT NULL,
    kind    text        NOT NULL,
    step    text,
    attempt integer,
    detail  jsonb       NOT NULL
);
CREATE INDEX saga_events_by_saga ON saga_events (saga_id, seq);

CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    saga_id     uuid        NOT NULL,
    message_id  uuid        NOT NULL,
    participant text        NOT NULL,
    kind        text        NOT NULL,
    body        bytea       NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL
);
