-- The SDK's tables as `barrier::install` and `initiator::install` created them before the cleanup
-- (no purge indexes): every test database starts as an existing installation, so the tests run
-- `install`'s upgrade path.
CREATE TABLE saga_barrier (
    idempotency_key text PRIMARY KEY,
    saga_id uuid NOT NULL,
    step text NOT NULL,
    kind text NOT NULL,
    origin text NOT NULL,
    outcome text NOT NULL,
    output jsonb,
    error text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE saga_initiations (
    saga_id uuid PRIMARY KEY,
    outcome text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE saga_outbox (
    id bigserial PRIMARY KEY,
    request jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    sent_at timestamptz,
    saga_id uuid,
    refused_at timestamptz
);

CREATE INDEX saga_outbox_pending ON saga_outbox (id) WHERE sent_at IS NULL AND refused_at IS NULL;
