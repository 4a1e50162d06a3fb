"""Shared infrastructure: atomic writes, code digests, devices and dtypes, offload settings, float64 blocks, the log type."""
