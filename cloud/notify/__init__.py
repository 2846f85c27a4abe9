"""Alerts pushed to people: Alertmanager and webhooks, delivered at least once, never lost.

    pipeline._record --Router.enqueue (same transaction)--> DeliveryQueue (queue.py; SQLite in
    cloud/store/sqlite/delivery.py) --SinkLane.take (delivery.py, pure)--> Sink.render (sinks/,
    pure) --Courier (shell.py, httpx)--> receiver --Answer--> SinkLane.settle: delivered,
    retry at (jittered backoff, Retry-After), or dead letter with the response.

Configuration is the `[notify]` table of cloud.toml (config.py); `edgewatch notify test` and
`edgewatch notify status` are in cli.py.
"""
