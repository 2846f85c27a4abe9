"""edgewatch: IoT edge telemetry with a no-loss outbox and online anomaly detection."""

__version__ = "0.1.0"
