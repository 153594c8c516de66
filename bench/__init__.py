"""Benchmarks: how fast sendwise decides, against the floor the trees set, and what it holds in memory.

`python -m bench` (or `make bench`) runs them all and prints one table; see bench/README.md. Nothing here runs
on import, and nothing here is a test: the figures are measured and printed, never asserted.
"""
