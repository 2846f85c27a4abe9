"""From MQTT message to stored history: decode, validate, store, detect, alert, confirm."""
