"""Several aggregators sharing one fleet through a partitioned NATS JetStream stream.

The NATS servers map each device's telemetry, backfill and status into one of `PARTITIONS`
partitions by a hash of its device id (`layout.subject_mappings`), so every reading of a device
lands in one partition of one stream, in order. Imports nats-py only where it talks to NATS.
"""
