DROP TABLE bulk_action_sagas;
DROP TABLE bulk_actions;
