ALTER TABLE sagas
    DROP COLUMN check_back_purpose,
    DROP COLUMN check_attempts,
    DROP COLUMN check_attempt_limit;
