-- The agent tables of the NeuraLabs schema (PROTOCOL.md section 1), created only when missing so
-- that flowgate can run against an existing NeuraLabs database without touching its tables.
-- `agent.owner` references `user_auth` in the original; flowgate manages no users, so no FK here.

CREATE TABLE IF NOT EXISTS agent (
    agent_id      VARCHAR(64)  PRIMARY KEY,
    creation_date TIMESTAMP    NOT NULL DEFAULT now(),
    owner         VARCHAR(255) NOT NULL,
    status        VARCHAR(20)  NOT NULL CHECK (status IN ('Active', 'Not Published')),
    name          VARCHAR(255) NOT NULL,
    description   TEXT         NULL,
    tags          JSONB        NULL,
    license       VARCHAR(100) NULL,
    fork          VARCHAR(64)  NULL,
    socials       JSONB        NULL,
    chain_id      INTEGER      NULL
);

CREATE TABLE IF NOT EXISTS unpublished_agent (
    agent_id         VARCHAR(64) PRIMARY KEY REFERENCES agent (agent_id) ON DELETE CASCADE,
    last_edited_time TIMESTAMP   NOT NULL DEFAULT now(),
    workflow         JSONB       NOT NULL,
    md5              VARCHAR(32) NOT NULL
);

CREATE TABLE IF NOT EXISTS published_agent (
    agent_id         VARCHAR(64) PRIMARY KEY REFERENCES agent (agent_id) ON DELETE CASCADE,
    last_edited_time TIMESTAMP   NOT NULL DEFAULT now(),
    workflow         JSONB       NOT NULL,
    md5              VARCHAR(32) NOT NULL
);
