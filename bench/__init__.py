"""Benchmarks: the gateway's own cost next to a direct call and a bare proxy (issue #9).

Run `python -m bench --help`; docs/benchmarks.md holds the latest figures.
"""
