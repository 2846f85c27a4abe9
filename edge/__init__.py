"""The edge agent: sensors -> SQLite outbox -> MQTT. Never imports cloud/."""
