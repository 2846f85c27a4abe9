-- edgewatch store, schema version 2 (PostgreSQL): alerts say why (see cloud.store.api.AlertRecord),
-- the same columns as the SQLite store's migration _v4_alert_reasons. Older rows get '' and NULL.

ALTER TABLE alerts
    ADD COLUMN anomaly_kind      text NOT NULL DEFAULT '',
    ADD COLUMN evidence          text NOT NULL DEFAULT '',
    ADD COLUMN opening_evidence  text NOT NULL DEFAULT '',
    ADD COLUMN peak_ts           double precision;
