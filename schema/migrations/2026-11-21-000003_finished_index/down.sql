DROP INDEX sagas_finished_at;
