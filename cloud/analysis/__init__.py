"""Offline use of the aggregator's path: detect on files, replay stored history, evaluate alerts."""
