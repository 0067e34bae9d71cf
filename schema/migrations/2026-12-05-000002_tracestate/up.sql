-- Issue 17: the caller's W3C `tracestate` travels with its `traceparent`: kept with the saga and
-- with each command in the outbox, sent as the `tracestate` header.
ALTER TABLE sagas ADD COLUMN tracestate text;
ALTER TABLE outbox ADD COLUMN tracestate text;
