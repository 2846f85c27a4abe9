"""The operator's view: `alerts` and `devices` commands, tables, JSON, plots, the live feed."""
