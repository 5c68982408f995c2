"""Benchmark and figure scripts (run as ``python -m experiments.<name>``)."""
