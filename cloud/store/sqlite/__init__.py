"""The embedded SQLite backend: one file, one writer, the default for demos and small fleets."""
