"""The cloud side: ingest, store, detect, alert. Never imports edge/."""
