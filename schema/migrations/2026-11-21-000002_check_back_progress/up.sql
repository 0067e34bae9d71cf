-- Check-backs of prepared sagas (contract, section 5) are durable timers like a step's:
-- `check_back_at` is when the timer is due, `check_back_purpose` what it is for
-- ('backoff': ask then; 'reply_timeout': the attempt out counts as unanswered then).
ALTER TABLE sagas
    ADD COLUMN check_back_purpose  text,
    ADD COLUMN check_attempts      integer NOT NULL DEFAULT 0,
    ADD COLUMN check_attempt_limit integer NOT NULL DEFAULT 0;
