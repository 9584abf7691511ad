-- Pigeon's PostgreSQL schema, version 1. Ids and seqs are BIGINT (the
-- store converts from u64; no id reaches 2^63). Events and messages are
-- stored as their protobuf encoding (BYTEA); what SQL filters or counts on
-- has its own column.

-- Cluster-wide counters: 'user' and 'group' (the last id handed out) and
-- 'stream' (the newest position of the shared stream of large groups).
-- Each is bumped inside the writing transaction, so its row lock orders
-- the writers and a rolled-back write leaves no gap.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('user', 0), ('group', 0), ('stream', 0);

CREATE TABLE users (
    id            BIGINT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE
);

-- The last device id handed out per user.
CREATE TABLE devices (
    user_id BIGINT PRIMARY KEY,
    last    BIGINT NOT NULL
);

CREATE TABLE sessions (
    token_hash    TEXT PRIMARY KEY,
    user_id       BIGINT NOT NULL,
    device_id     BIGINT NOT NULL,
    device_name   TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    revoked       BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX sessions_live_by_user ON sessions (user_id, token_hash) WHERE NOT revoked;

-- One row per sync log: `head` is the newest seq, also the allocator (a
-- writer bumps it inside its transaction and holds the row lock until
-- commit), `trimmed_through` the highest seq deleted by retention.
CREATE TABLE logs (
    user_id         BIGINT PRIMARY KEY,
    head            BIGINT NOT NULL,
    trimmed_through BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE log_events (
    user_id BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    event   BYTEA NOT NULL,
    PRIMARY KEY (user_id, seq)
);

-- One row per conversation timeline: `head` is the newest conv_seq and its
-- allocator, as for logs.
CREATE TABLE conversations (
    id   TEXT PRIMARY KEY,
    head BIGINT NOT NULL
);

-- The timeline; counts are the delivered and read receipts of large-group
-- messages.
CREATE TABLE messages (
    conversation_id TEXT NOT NULL,
    conv_seq        BIGINT NOT NULL,
    sender_id       BIGINT NOT NULL,
    message         BYTEA NOT NULL,
    delivered_count INTEGER NOT NULL DEFAULT 0,
    read_count      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, conv_seq)
);

-- Idempotent sends: the first transaction to insert (sender, client id)
-- owns the send; a retry finds the row (or waits for its owner's commit).
CREATE TABLE sends (
    sender_id       BIGINT NOT NULL,
    client_msg_id   TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    conv_seq        BIGINT NOT NULL,
    sent_at_ms      BIGINT NOT NULL,
    PRIMARY KEY (sender_id, client_msg_id)
);

-- Per-user conversation summaries (ConversationSummary without the parts
-- filled in at read time).
CREATE TABLE conv_states (
    user_id         BIGINT NOT NULL,
    conversation_id TEXT NOT NULL,
    peer_user_id    BIGINT NOT NULL DEFAULT 0,
    peer_username   TEXT NOT NULL DEFAULT '',
    last_message    BYTEA,
    last_conv_seq   BIGINT NOT NULL DEFAULT 0,
    unread_count    BIGINT NOT NULL DEFAULT 0,
    read_up_to      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conversation_id)
);

CREATE TABLE groups (
    id             BIGINT PRIMARY KEY,
    name           TEXT NOT NULL,
    description    TEXT NOT NULL,
    post_policy    INTEGER NOT NULL,
    add_policy     INTEGER NOT NULL,
    max_members    BIGINT NOT NULL,
    owner_id       BIGINT NOT NULL,
    owner_username TEXT NOT NULL,
    member_count   BIGINT NOT NULL,
    large          BOOLEAN NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    dissolved      BOOLEAN NOT NULL DEFAULT FALSE
);

-- Memberships, kept after leaving (role 0) for the membership windows.
CREATE TABLE group_members (
    group_id            BIGINT NOT NULL,
    user_id             BIGINT NOT NULL,
    username            TEXT NOT NULL,
    role                INTEGER NOT NULL,
    joined_at_ms        BIGINT NOT NULL,
    joined_after_conv   BIGINT NOT NULL,
    left_conv           BIGINT NOT NULL,
    joined_after_stream BIGINT NOT NULL,
    left_stream         BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_by_user ON group_members (user_id, group_id);

-- The shared stream of large groups (group 0: the system stream of flag
-- changes); `seq` is a position of the one cluster-wide stream.
CREATE TABLE stream_events (
    group_id BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    event    BYTEA NOT NULL,
    PRIMARY KEY (group_id, seq)
);

CREATE TABLE hidden (
    user_id         BIGINT NOT NULL,
    conversation_id TEXT NOT NULL,
    conv_seq        BIGINT NOT NULL,
    PRIMARY KEY (user_id, conversation_id, conv_seq)
);

CREATE TABLE blocks (
    blocker BIGINT NOT NULL,
    blocked BIGINT NOT NULL,
    PRIMARY KEY (blocker, blocked)
);

-- Delivered and read positions, for receipts.
CREATE TABLE positions (
    conversation_id TEXT NOT NULL,
    user_id         BIGINT NOT NULL,
    delivered       BIGINT NOT NULL DEFAULT 0,
    read            BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);

CREATE TABLE prefs (
    user_id       BIGINT PRIMARY KEY,
    hide_presence BOOLEAN NOT NULL,
    last_seen_ms  BIGINT NOT NULL
);

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE flags (
    name TEXT PRIMARY KEY,
    flag TEXT NOT NULL
);

-- Webhook deliveries, written in the transaction of the message.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    endpoint        TEXT NOT NULL,
    kind            TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    conv_seq        BIGINT NOT NULL,
    recipient       BIGINT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    failed          BOOLEAN NOT NULL DEFAULT FALSE,
    last_error      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX outbox_due ON outbox (next_attempt_ms, id) WHERE NOT failed;
