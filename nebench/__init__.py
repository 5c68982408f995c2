"""nebench: the harness (datasets, runner, results table, plots, reports)."""
