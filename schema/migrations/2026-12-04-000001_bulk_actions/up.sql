-- Bulk actions (issue 16): one operator's action applied to every saga a filter matched, as a
-- durable job. The sagas are taken when the job is created (a snapshot), so that the job ends and
-- its progress has a total; each is applied by its partition's owner.
CREATE TABLE bulk_actions (
    id uuid PRIMARY KEY,
    -- abort | retry | resolve | pause | resume | retry-now
    action text NOT NULL,
    -- The list API's filters it was created with: {"state": [...], "name": ...}.
    filter jsonb NOT NULL,
    -- The resolve note; NULL for the other actions.
    note text,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set when no saga is left to do, or when cancelled.
    finished_at timestamptz,
    cancelled_at timestamptz
);
CREATE INDEX bulk_actions_open ON bulk_actions (created_at) WHERE finished_at IS NULL;

-- One row per saga of a bulk action. `outcome` is NULL until the saga is done:
--   applied   - the action changed the saga; written in the same statement as the saga's
--               transition, so a crash can neither lose it nor apply the action twice;
--   unchanged - the saga already was as asked (pausing a paused saga);
--   skipped   - the action does not apply to the saga (`reason` says why, as a 409 would).
-- No foreign key to sagas: history retention may delete a saga before its bulk action.
CREATE TABLE bulk_action_sagas (
    bulk_action_id uuid NOT NULL REFERENCES bulk_actions (id) ON DELETE CASCADE,
    saga_id uuid NOT NULL,
    partition integer NOT NULL,
    outcome text,
    reason text,
    done_at timestamptz,
    PRIMARY KEY (bulk_action_id, saga_id)
);
-- What each partition's owner has left to do.
CREATE INDEX bulk_action_sagas_pending ON bulk_action_sagas (bulk_action_id, partition, saga_id)
    WHERE outcome IS NULL;
