-- The table as the migrations before this one left it (empty: commands follow from the steps).
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    saga_id     uuid        NOT NULL,
    message_id  uuid        NOT NULL,
    participant text        NOT NULL,
    kind        text        NOT NULL,
    body        bytea       NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL,
    tracestate  text
);
