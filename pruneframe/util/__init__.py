"""Shared infrastructure: atomic writes, code digests, devices and dtypes."""
