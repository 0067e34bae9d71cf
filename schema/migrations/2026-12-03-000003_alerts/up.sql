-- Alerts (issue 16): one row per saga and reason once an alert was tried. A row with
-- acknowledged_at is never sent again; without it, the next try is due at next_try_at.
CREATE TABLE saga_alerts (
    saga_id uuid NOT NULL,
    reason text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_try_at timestamptz,
    last_error text,
    acknowledged_at timestamptz,
    PRIMARY KEY (saga_id, reason)
);
