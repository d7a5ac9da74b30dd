"""Hyperparameter sweeps on one game: the batched GEMM path equals the per-setting runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfplay import algos, lab, lab_sweep
from selfplay.algos.payoffs import Payoffs
from selfplay.bench import games as bench_games
from selfplay.errors import InputError
from selfplay.games import gap, generate

AXES = {
    "omwu": {"eta": [0.3, 1.0, 4.0], "seed": [0, 1]},
    "mpo": {"eta": [2.0, 20.0], "alpha": [0.1, 0.5], "magnet_every": [1, 5], "seed": [3]},
    "nash-mp": {"eta": [0.5, 2.0], "beta": [0.05, 0.3], "seed": [0, 2]},
}


@pytest.mark.parametrize("name", sorted(AXES))
def test_batched_sweep_equals_per_setting_runs(name):
    P = generate("uniform", 9, 4)
    rows = lab_sweep.grid(AXES[name])
    res, tr = lab_sweep.run(name, P, rows, iterations=150, seed=0)
    assert tr.policy.shape == (len(rows), 9) and len(res.gap) == len(rows)
    A = algos.get(name)
    finals = []
    for b, row in enumerate(rows):
        h = A.default_hyper(9).with_(
            **{k: v for k, v in row.items() if k != "seed"}, adaptive=False
        )
        one = algos.run(
            name, P, hyper=h, iterations=150, init=lab.initial_policy("random", 9, row["seed"])
        )
        np.testing.assert_allclose(tr.policy[b].numpy(), one.policy[0].numpy(), atol=1e-12, rtol=0)
        assert res.gap[b] == pytest.approx(float(gap(P, one.policy[0].numpy())), abs=1e-12)
        finals.append(res.target[b])
    assert np.ptp(finals) > 1e-6  # the settings do differ: the comparison is not vacuous


def test_sweep_rows_equal_plain_numpy_loops():
    """Independent oracle: the per-setting NumPy updates of the benchmark (uniform π_0)."""
    r = bench_games.settings_sweep(settings=5, n=8, iters=60, loop_settings=5, repeats=1)
    assert [a["algo"] for a in r["algos"]] == list(bench_games.SWEEP_ALGOS)
    for a in r["algos"]:
        assert a["max_abs_diff"] < 1e-12, a


@pytest.mark.parametrize("queries", [None, 4])
def test_one_game_payoffs_equal_the_stacked_games_path(queries):
    P = torch.as_tensor(generate("uniform", 6, 1))
    logp = torch.log_softmax(torch.randn(5, 6, dtype=torch.float64), -1)
    one = Payoffs(P, queries, torch.Generator().manual_seed(3))(logp)
    stacked = Payoffs(P.expand(5, 6, 6), queries, torch.Generator().manual_seed(3))(logp)
    torch.testing.assert_close(one, stacked, atol=1e-15, rtol=0)
    if queries is None:
        torch.testing.assert_close(one, (P @ logp.exp().T).T, atol=1e-15, rtol=0)


def test_parse_and_grid():
    axes = lab_sweep.parse(["eta=0.1:10:3", "seed=0:2", "magnet_every=1,5"])
    assert axes["eta"] == pytest.approx([0.1, 1.0, 10.0]) and axes["seed"] == [0, 1]
    rows = lab_sweep.grid(axes)
    assert len(rows) == 12 and rows[1] == {"eta": 0.1, "seed": 0, "magnet_every": 5}


@pytest.mark.parametrize(
    "specs,word",
    [
        (["gamma=1"], "KEY=VALUES"),
        (["eta"], "KEY=VALUES"),
        (["eta=0:1:3"], "LO:HI:K"),
        (["eta=-1"], "> 0"),
        (["seed=a"], "LO:HI"),
        (["eta=1", "eta=2"], "twice"),
        (["seed=0:100000", "eta=1:2:10"], "at most"),
    ],
)
def test_bad_specs_are_one_line_input_errors(specs, word):
    with pytest.raises(InputError, match=word.replace("+", r"\+")) as e:
        lab_sweep.parse(specs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "spec, size",
    [
        ("eta=1:2:10000000000", 10**10),  # np.geomspace would need 80 GB
        ("seed=0:10000000000", 10**10),
        ("seed=0:30000000", 3 * 10**7),  # fits in memory, but is built before the check
    ],
)
def test_an_oversized_grid_is_refused_before_it_is_built(capsys, spec, size):
    """Through the CLI: one line, exit 2, at once (the size is known from the spec)."""
    import time
    import tracemalloc

    from selfplay.cli import main

    args = ["game", "--generate", "rps", "--n", "3", "--no-mlflow", "--sweep", spec]
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main([*args, "--sweep", "magnet_every=1,2"])
    seconds, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err == f"error: --sweep grid has {2 * size} settings; at most {lab_sweep.MAX_SETTINGS}\n"
    assert seconds < 5 and peak < 50e6, (seconds, peak)


@pytest.mark.parametrize("spec", ["alpha=1e400", "eta=nan", "beta=1e-3:1e400:4", "eta=-inf"])
def test_a_value_that_is_no_finite_number_says_so(spec):
    with pytest.raises(InputError, match="values must be finite numbers") as e:
        lab_sweep.parse([spec])
    assert "> 0" not in str(e.value)


def test_unused_key_is_refused():
    with pytest.raises(InputError, match="omwu does not use beta"):
        lab_sweep.check_used("omwu", ["beta"])
    lab_sweep.check_used("nash-mp", ["eta", "beta", "seed"])
    lab_sweep.check_used("mpo", ["alpha", "magnet_every"])


def test_cli_sweep_json_and_plot(tmp_path: Path):
    plot = tmp_path / "sweep.png"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = ["game", "--generate", "rps", "--n", "7", "--algos", "omwu,mpo", "--iterations", "200"]
    args += ["--sweep", "eta=0.5:8:4", "--sweep", "seed=0,1", "--json", "--plot", str(plot)]
    r = subprocess.run(
        [sys.executable, "-m", "selfplay.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["sweep"]["seed"] == [0, 1] and [x["algo"] for x in doc["results"]] == ["omwu", "mpo"]
    for res in doc["results"]:
        assert len(res["settings"]) == 8 and len(res["gap"]) == 8
    assert plot.stat().st_size > 10_000
    bad = subprocess.run(
        [sys.executable, "-m", "selfplay.cli", *args[:9], "--sweep", "beta=0.1", "--no-mlflow"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "does not use beta" in bad.stderr


def test_one_game_settings_must_agree_on_their_count():
    P = generate("uniform", 5, 0)
    h = algos.get("omwu").default_hyper(5).with_(eta=torch.tensor([0.1, 0.2, 0.3]), adaptive=False)
    init = np.full((2, 5), 0.2)
    with pytest.raises(InputError, match="disagree on the number of settings"):
        algos.run("omwu", P, hyper=h, iterations=2, init=init)
    tr = algos.run("omwu", P, hyper=h, iterations=2, init=np.full(5, 0.2))  # [n] broadcasts
    assert tr.policy.shape == (3, 5)
