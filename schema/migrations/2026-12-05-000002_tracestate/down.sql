ALTER TABLE outbox DROP COLUMN tracestate;
ALTER TABLE sagas DROP COLUMN tracestate;
