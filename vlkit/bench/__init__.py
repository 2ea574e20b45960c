"""Benchmarks: vlkit against its peers in the same run (see docs/benchmarks.md)."""
