"""The benchmarks' own correctness (their timings are reported, not asserted)."""

from __future__ import annotations

import pytest

from selfplay.bench import games as bench_games
from selfplay.bench import orchestration
from selfplay.bench.simulate import Stages
from selfplay.errors import InputError


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


# ---------------------------------------------------------------- orchestration (simulated)
# The simulated benches run the real controller, store and actors with stages that sleep
# (selfplay/bench/simulate.py). Their rates are reported, not asserted; the schedule is
# checked against the hand-worked plan, and the ratios only with wide margins.


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_stages_parse() -> None:
    assert Stages.parse("gen=0.1,judge=0.2,learn=0.3") == Stages(0.1, 0.2, 0.3)
    for bad in ("gen=0.1,judge=0.2", "gen=x,judge=0,learn=0", "gen=-1,judge=0,learn=0", ""):
        with pytest.raises(InputError):
            Stages.parse(bad)


@pytest.mark.ray
def test_simulated_pipeline_order_and_overlap(ray_cluster) -> None:
    steps = 5
    r = orchestration.pipeline(Stages(gen=0.05, judge=0.05, learn=0.1), steps=steps)
    sync = [(x["step"], x["sampler"], x["output"], x["staleness"]) for x in r["sync"]["records"]]
    # max_staleness 0: strictly in order, each batch sampled from the version just published.
    assert sync == [(t, f"main@{t}", f"main@{t + 1}", 0) for t in range(steps)]
    asyn = [(x["step"], x["sampler"], x["staleness"]) for x in r["async"]["records"]]
    # max_staleness 1: step t's batch sampled while t−1 trains, from main@t−1 (step 0: π_0).
    assert asyn == [(0, "main@0", 0)] + [(t, f"main@{t - 1}", 1) for t in range(1, steps)]
    for run in (r["sync"], r["async"]):
        # on_step(t) sees main@t+1 published (the hook an overlapped evaluation reads)
        assert run["published_at_step_end"] == [f"main@{t + 1}" for t in range(steps)]
        assert run["samples_per_s"] > 0 and run["driver_s_per_step"] > 0
        assert all(0 < u <= 1.05 for u in run["utilisation"].values())
    assert r["limit"] == pytest.approx(2.0)
    assert 1.25 < r["speedup"] < 2.1  # the limit is 2×; a loaded box lands well above 1.25×
    j = orchestration.pipeline_json(r)
    assert {"sync_samples_per_s", "async_samples_per_s", "driver_s_per_step"} <= j.keys()
    assert "async speedup" in orchestration.format_pipeline(r)


@pytest.mark.ray
def test_scale_bench_small_pools(ray_cluster) -> None:
    r = orchestration.scale((1, 4), steps=4, stages=Stages(gen=0.4, judge=0.01, learn=0.01))
    assert r["workers"] == [1, 4] and r["vs_linear"][0] == pytest.approx(1.0)
    assert len(r["samples_per_s"]) == len(r["driver_s_per_step"]) == 2
    assert all(x > 0 for x in r["samples_per_s"] + r["driver_s_per_step"])
    assert r["samples_per_s"][1] > 1.5 * r["samples_per_s"][0]  # 4× when generation-bound
    assert set(orchestration.scale_json(r)) >= {"workers", "samples_per_s", "driver_s_per_step"}
