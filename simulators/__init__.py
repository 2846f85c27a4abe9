"""Simulated devices with labelled faults; they run the real agent code."""
