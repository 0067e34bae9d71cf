-- Issue 19: commands are no longer stored. A committed transition's commands are published from
-- memory, and a coordinator taking a saga over sends again every command the saga's steps await
-- (`saga::machine::awaited_commands`), which covers whatever an older coordinator left here.
-- Older coordinators still write this table: stop them before migrating (README, "Upgrading").
DROP TABLE outbox;
