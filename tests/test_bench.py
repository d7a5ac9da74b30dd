"""The game benchmarks' own correctness (their timings are reported, not asserted)."""

from __future__ import annotations

from selfplay.bench import games as bench_games


def test_sweep_batched_equals_numpy_loop() -> None:
    r = bench_games.sweep(games_count=6, n=12, iters=40, eta=0.5)
    assert r["max_abs_diff"] < 1e-12  # the timed loop computes the same policies
    assert r["batched_games_iters_per_s"] > 0 and r["loop_games_iters_per_s"] > 0


def test_lp_race_reports_every_algorithm() -> None:
    r = bench_games.lp_race(n=12, budget=0.5, seed=3)
    assert r["lp_gap"] < 1e-8
    assert [a["algo"] for a in r["algos"]] == list(bench_games.RACE)
    for a in r["algos"]:
        final = a["regularized_gap"] if a["target"] == "regularized_gap" else a["final_gap"]
        assert a["reached"] == (final <= bench_games.TARGET)
    text = bench_games.format_report({"race": r, "sweep": bench_games.sweep(2, 5, 5)})
    assert "LP (HiGHS IPM)" in text and "speedup" in text
