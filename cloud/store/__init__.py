"""The aggregator's store: readings exactly once, dead letters, the fleet, alerts, checkpoints."""
