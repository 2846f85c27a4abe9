"""The aggregator's I/O shell: MQTT in and out, config, metrics, and `edgewatch cloud run`."""
