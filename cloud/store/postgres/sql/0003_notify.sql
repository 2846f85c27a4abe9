-- The delivery queue of alert notifications (cloud.notify), one row per (sink, transition).
CREATE TABLE notify_queue (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink           text NOT NULL,
    transition_id  text NOT NULL,
    alert_id       text NOT NULL,
    device         text NOT NULL,
    notice         text NOT NULL,
    created_at     double precision NOT NULL,
    due_at         double precision NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    state          text NOT NULL DEFAULT 'pending',
    last_error     text NOT NULL DEFAULT '',
    response       text NOT NULL DEFAULT '',
    dead_at        double precision,
    UNIQUE (sink, transition_id)
);
-- The oldest due delivery, its device's others, and the earlier ones of its alert.
CREATE INDEX notify_queue_sink_state_id ON notify_queue (sink, state, id);
CREATE INDEX notify_queue_sink_device ON notify_queue (sink, device, state, id);
CREATE INDEX notify_queue_sink_alert ON notify_queue (sink, alert_id, state, id);

CREATE TABLE notify_sinks (
    sink             text PRIMARY KEY,
    delivered        bigint NOT NULL DEFAULT 0,
    retried          bigint NOT NULL DEFAULT 0,
    failed           bigint NOT NULL DEFAULT 0,
    last_success_at  double precision,
    last_error_at    double precision,
    last_error       text NOT NULL DEFAULT ''
);
