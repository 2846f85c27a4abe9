-- edgewatch store, schema version 1 (PostgreSQL). Applied once, in one transaction, by
-- cloud.store.postgres.store; later versions are new files (0002_*.sql ...), never edits.
-- Timestamps are unix seconds (double precision), as in the SQLite store.

CREATE TABLE sources (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device      text NOT NULL,
    epoch       text NOT NULL,
    first_seq   bigint,
    last_seq    bigint,
    received    bigint NOT NULL DEFAULT 0,
    rejected    bigint NOT NULL DEFAULT 0,
    first_seen  double precision,
    last_seen   double precision,
    pruned      boolean NOT NULL DEFAULT false,
    UNIQUE (device, epoch)
);

CREATE TABLE series (
    id      integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device  text NOT NULL,
    sensor  text NOT NULL,
    metric  text NOT NULL,
    unit    text NOT NULL DEFAULT '',
    UNIQUE (device, sensor, metric)
);

-- Message ids come from this sequence, a batch's worth per round trip.
CREATE SEQUENCE message_ids AS bigint;

CREATE TABLE messages (
    id           bigint PRIMARY KEY,
    msg_id       text NOT NULL,
    device       text NOT NULL,
    epoch        text NOT NULL,
    kind         text NOT NULL,
    received_at  double precision NOT NULL,
    sent_at      double precision,
    readings     integer NOT NULL,
    stored       integer NOT NULL,
    duplicates   integer NOT NULL,
    rejected     integer NOT NULL,
    source_id    bigint,            -- with [lo_seq, hi_seq] and readings.message_id: its readings
    lo_seq       bigint,
    hi_seq       bigint,
    min_ts       double precision,
    max_ts       double precision
);
CREATE INDEX messages_msg_id ON messages (msg_id);
CREATE INDEX messages_device_max_ts ON messages (device, max_ts);
CREATE INDEX messages_received_at ON messages (received_at);

-- Partitioned by ts (one partition a day, created on first use, dropped by retention). A
-- partitioned table's unique key must include the partition key: (source_id, seq, ts). A
-- resent reading carries the same ts by construction (it is the agent's outbox row, sent
-- again), so the key still stores each (device, epoch, seq) once.
CREATE TABLE readings (
    source_id   bigint NOT NULL,
    seq         bigint NOT NULL,
    ts          double precision NOT NULL,
    series_id   integer NOT NULL,
    value       double precision NOT NULL,
    message_id  bigint NOT NULL,
    pos         integer NOT NULL,   -- order within its message: replay runs in processed order
    late        boolean NOT NULL,
    PRIMARY KEY (source_id, seq, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE dead_letter (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  double precision NOT NULL,
    topic        text NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL,
    device       text,
    epoch        text,
    seq          bigint,
    msg_id       text,
    payload      bytea
);
CREATE INDEX dead_letter_reason ON dead_letter (reason);
CREATE INDEX dead_letter_received_at ON dead_letter (received_at);
-- One row per rejected reading identity: a resent bad reading is not counted twice.
CREATE UNIQUE INDEX dead_letter_key ON dead_letter (device, epoch, seq) WHERE seq IS NOT NULL;

CREATE TABLE devices (
    device               text PRIMARY KEY,
    first_seen           double precision,
    last_seen            double precision,
    online               boolean NOT NULL DEFAULT false,
    status_event         text NOT NULL DEFAULT '',
    status_ts            double precision,
    agent_version        text NOT NULL DEFAULT '',
    epoch                text NOT NULL DEFAULT '',
    backlog              double precision,
    dropped              double precision,
    dropped_unconfirmed  double precision,
    sampled              double precision,
    published            double precision,
    counters             text NOT NULL DEFAULT '{}',
    messages             bigint NOT NULL DEFAULT 0,
    readings             bigint NOT NULL DEFAULT 0
);

CREATE TABLE alerts (
    alert_id       text PRIMARY KEY,
    device         text NOT NULL,
    sensor         text NOT NULL,
    metric         text NOT NULL,
    kind           text NOT NULL,
    state          text NOT NULL,
    start          double precision NOT NULL,
    "end"          double precision,
    peak_score     double precision NOT NULL,
    value          double precision,
    expected_low   double precision,
    expected_high  double precision,
    severity       text NOT NULL,
    late           boolean NOT NULL,
    detector       text NOT NULL,
    msg_id         text NOT NULL,
    opened_at      double precision NOT NULL,
    closed_at      double precision,
    acked_at       double precision,
    acked_by       text NOT NULL DEFAULT '',
    note           text NOT NULL DEFAULT ''
);
CREATE INDEX alerts_device_start ON alerts (device, start);
CREATE INDEX alerts_state_start ON alerts (state, start);

CREATE TABLE alert_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device      text NOT NULL,
    payload     bytea NOT NULL,
    created_at  double precision NOT NULL
);

CREATE TABLE detector_state (
    series_id   integer PRIMARY KEY,
    detector    text NOT NULL,
    blob        bytea NOT NULL,
    tracker     text NOT NULL,
    updated_at  double precision NOT NULL,
    watermark   bigint NOT NULL DEFAULT 0
);

-- Checkpoints that could not be restored, kept for inspection instead of stopping the start.
CREATE TABLE rejected_checkpoints (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    series_id    integer NOT NULL,
    detector     text NOT NULL,
    blob         bytea NOT NULL,
    tracker      text NOT NULL,
    reason       text NOT NULL,
    rejected_at  double precision NOT NULL
);

CREATE TABLE checkpoint (
    key    text PRIMARY KEY,
    value  double precision
);

CREATE TABLE replay_alerts (
    run            text NOT NULL,
    alert_id       text NOT NULL,
    device         text NOT NULL,
    sensor         text NOT NULL,
    metric         text NOT NULL,
    detector       text NOT NULL,
    start          double precision NOT NULL,
    "end"          double precision,
    peak_score     double precision NOT NULL,
    value          double precision,
    expected_low   double precision,
    expected_high  double precision,
    created_at     double precision NOT NULL,
    PRIMARY KEY (run, alert_id)
);
