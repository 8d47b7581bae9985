"""Benchmarks for eGmina Hub (run from the repository root, e.g. ``python -m bench.fanout``)."""
