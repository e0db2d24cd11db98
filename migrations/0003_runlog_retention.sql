-- Pruning of the run log (src/runlog/postgres.rs `prune`) deletes the oldest finished runs first.
CREATE INDEX IF NOT EXISTS flowgate_run_ended_at ON flowgate_run (ended_at) WHERE ended_at IS NOT NULL;
