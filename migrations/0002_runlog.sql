-- The run log (src/runlog): one row per gateway instance (heartbeat), one per run, one per frame.
-- No foreign keys: the log is written asynchronously and best-effort, so an event row may land
-- before (or without) its run row; nothing here may make a write of the others fail.

CREATE TABLE IF NOT EXISTS flowgate_instance (
    instance_id  UUID        PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS flowgate_run (
    run_id         UUID         PRIMARY KEY,
    agent_id       VARCHAR(64)  NOT NULL,
    user_id        VARCHAR(255) NOT NULL,
    version        VARCHAR(16)  NOT NULL,
    workflow_hash  TEXT         NULL,
    status         VARCHAR(16)  NOT NULL
                   CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    instance_id    UUID         NOT NULL,
    started_at     TIMESTAMPTZ  NOT NULL DEFAULT now(),
    ended_at       TIMESTAMPTZ  NULL,
    error_code     TEXT         NULL,
    error_message  TEXT         NULL,
    last_seq       BIGINT       NOT NULL DEFAULT 0,
    -- Frames of this run that were not logged (buffer full, per-run cap): replay is incomplete.
    events_dropped BIGINT       NOT NULL DEFAULT 0
);

-- The sweep looks for running runs by instance.
CREATE INDEX IF NOT EXISTS flowgate_run_running_by_instance
    ON flowgate_run (instance_id) WHERE status = 'running';

CREATE TABLE IF NOT EXISTS flowgate_run_event (
    run_id UUID   NOT NULL,
    seq    BIGINT NOT NULL,
    frame  TEXT   NOT NULL,
    PRIMARY KEY (run_id, seq)
);
