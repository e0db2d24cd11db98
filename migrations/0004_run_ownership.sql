-- Several gateways (issue 16, docs/scaling.md): a run's owner is its `instance_id`; a gateway
-- that takes over a run of a lost one bumps `epoch` and becomes its owner (the lease is the
-- owner's heartbeat row in flowgate_instance).
ALTER TABLE flowgate_run ADD COLUMN IF NOT EXISTS epoch BIGINT NOT NULL DEFAULT 0;
-- A client asked (on any gateway) to cancel the run: recorded before the owner is asked.
ALTER TABLE flowgate_run ADD COLUMN IF NOT EXISTS cancel_requested_at TIMESTAMPTZ NULL;
