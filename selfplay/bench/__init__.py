"""Benchmarks behind `selfplay bench` (reported in the README, not timed tests)."""
