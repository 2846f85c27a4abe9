"""Alerts: the one episode state machine, device silence, and deterministic alert ids."""
