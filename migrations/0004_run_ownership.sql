-- Several gateways (issue 16, docs/scaling.md): a run's owner is its `instance_id`; a gateway
-- that takes over a run of a lost one bumps `epoch` and becomes its owner (the lease is the
-- owner's heartbeat row in flowgate_instance).
ALTER TABLE flowgate_run ADD COLUMN IF NOT EXISTS epoch BIGINT NOT NULL DEFAULT 0;
-- A client asked (on any gateway) to cancel the run: recorded before the owner is asked.
ALTER TABLE flowgate_run ADD COLUMN IF NOT EXISTS cancel_requested_at TIMESTAMPTZ NULL;
-- The `vercel` dialect's chats (per user): the run a chat started last, so that any gateway can
-- resume or stop it.
CREATE TABLE IF NOT EXISTS flowgate_chat (
    user_id    VARCHAR(255) NOT NULL,
    chat_id    VARCHAR(128) NOT NULL,
    run_id     UUID         NOT NULL,
    started_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, chat_id)
);
