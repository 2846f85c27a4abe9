-- edgewatch store, schema version 4: several aggregators sharing partitions (cloud/partitions).
-- Times are unix seconds of the database's clock (clock_timestamp()), the one clock every
-- member agrees on.

-- Members heartbeat here; one is live while expires_at is in the future.
CREATE TABLE cluster_members (
    member        text PRIMARY KEY,
    started_at    double precision NOT NULL,
    heartbeat_at  double precision NOT NULL,
    expires_at    double precision NOT NULL
);

-- One row per partition once first taken. `epoch` grows by one on every takeover: a batch's
-- transaction checks (owner, epoch, expiry) under FOR SHARE, so a paused member that lost its
-- lease writes nothing (fencing).
CREATE TABLE partition_leases (
    partition    integer PRIMARY KEY,
    owner        text,
    epoch        bigint NOT NULL DEFAULT 0,
    expires_at   double precision NOT NULL DEFAULT 0,
    acquired_at  double precision
);

-- When the ownership of any partition last changed (`edgewatch cloud status`).
CREATE TABLE cluster_events (
    at         double precision NOT NULL,
    member     text NOT NULL,
    event      text NOT NULL,    -- acquired, released
    partition  integer NOT NULL,
    epoch      bigint NOT NULL
);
CREATE INDEX cluster_events_at ON cluster_events (at);
