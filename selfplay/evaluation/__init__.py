"""Evaluation: win rates with confidence intervals, a league of policies and its
exploitability (`selfplay eval`, and the evaluation during `selfplay train`).

The statistics are pure functions in `selfplay.games.league`; this package samples
the policies on the Ray runtime, judges them, caches the samples and reports.
"""
