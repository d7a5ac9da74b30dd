"""`selfplay game`: JSON contract, plot, MLflow run, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selfplay import games
from selfplay.cli import main

EXE = [sys.executable, "-m", "selfplay.cli"]


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_plot_and_mlflow(tmp_path: Path) -> None:
    plot = tmp_path / "gap.png"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    r = subprocess.run(
        [
            *EXE,
            "game",
            "--generate",
            "uniform",
            "--n",
            "6",
            "--seed",
            "2",
            "--algos",
            "omwu,nash-mp,mwu",
            "--iterations",
            "300",
            "--json",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # stdout is exactly one JSON object
    assert doc["n"] == 6 and [x["algo"] for x in doc["results"]] == ["omwu", "nash-mp", "mwu"]
    P = games.generate("uniform", 6, 2)
    for res in doc["results"]:
        pi = np.asarray(res["policy"])
        assert pi.shape == (6,) and abs(pi.sum() - 1) < 1e-9
        # reported gaps agree with an independent recomputation from the policy
        assert res["gap"] == pytest.approx(float(games.gap(P, pi)), abs=1e-9)
        assert res["iterations"] == 300 and res["reference"] == "uniform"
        if res["algo"] == "nash-mp":
            assert res["beta"] == pytest.approx(0.1)
            assert res["regularized_gap"] == pytest.approx(
                float(games.regularized_gap(P, pi, 0.1)), abs=1e-9
            )
        else:
            assert res["regularized_gap"] is None and res["beta"] is None
    # exact payoffs: n·n queries per payoff vector; Nash-MP queries two per iteration
    q = {x["algo"]: x["preference_queries"] for x in doc["results"]}
    assert q["nash-mp"] == 2 * q["omwu"] > 0
    assert plot.stat().st_size > 10_000

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("selfplay")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    hist = client.get_metric_history(runs[0].info.run_id, "omwu.gap")
    assert len(hist) > 10 and hist[-1].value == pytest.approx(doc["results"][0]["gap"], abs=1e-12)
    assert "gap.png" in [a.path for a in client.list_artifacts(runs[0].info.run_id)]


def _write(tmp: Path, name: str, P) -> str:
    p = tmp / name
    if name.endswith(".npy"):
        np.save(p, np.asarray(P, dtype=float))
    else:
        np.savetxt(p, np.asarray(P, dtype=float), delimiter=",")
    return str(p)


@pytest.mark.parametrize(
    "name,matrix,word",
    [
        ("rect.npy", np.full((2, 3), 0.5), "square"),
        ("nan.csv", [[0.5, np.nan], [0.5, 0.5]], "NaN"),
        ("inf.npy", [[0.5, np.inf], [0.0, 0.5]], "inf"),
        ("range.csv", [[0.5, 1.5], [-0.5, 0.5]], "[0"),
        ("asym.csv", [[0.5, 0.9], [0.9, 0.5]], "P + P"),
    ],
)
def test_bad_matrix_is_one_line_exit_2(tmp_path, capsys, name, matrix, word) -> None:
    code, out, err = _cli(
        [
            "game",
            "--matrix",
            _write(tmp_path, name, matrix),
            "--no-mlflow",
            "--plot",
            str(tmp_path / "p.png"),
        ],
        capsys,
    )
    assert code == 2 and out == ""
    assert err.startswith("error:") and err.count("\n") == 1 and word in err
    assert not (tmp_path / "p.png").exists()  # nothing half-written


def test_unreadable_and_missing_files(tmp_path, capsys) -> None:
    bad = tmp_path / "garbage.npy"
    bad.write_bytes(b"\x00\x01 not a numpy file")
    for path in (str(bad), str(tmp_path / "missing.csv")):
        code, _, err = _cli(["game", "--matrix", path, "--no-mlflow"], capsys)
        assert code == 2 and err.startswith("error:") and err.count("\n") == 1


@pytest.mark.parametrize(
    "args,word",
    [
        (["--generate", "uniform", "--n", "4", "--algos", "mpo,bogus"], "bogus"),
        (["--generate", "nope", "--n", "4"], "nope"),
        (["--generate", "uniform"], "--n"),
        (["--generate", "uniform", "--n", "4", "--iterations", "0"], "--iterations"),
    ],
)
def test_bad_arguments(capsys, args, word) -> None:
    code, _, err = _cli(["game", *args, "--no-mlflow"], capsys)
    assert code == 2 and err.startswith("error:") and word in err


def test_help_is_light() -> None:
    code = (
        "import sys, selfplay.cli; heavy = {'torch', 'ray', 'mlflow', 'transformers'}; "
        "assert not heavy & {m.split('.')[0] for m in sys.modules}, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _game_json(tmp_path, capsys, *extra: str) -> dict:
    args = ["game", "--generate", "rps", "--n", "3", "--algos", "mwu,mpo", "--json"]
    code, out, err = _cli([*args, "--no-mlflow", "--plot", str(tmp_path / "g.png"), *extra], capsys)
    assert code == 0, err
    return {r["algo"]: r for r in json.loads(out)["results"]}


def test_default_init_shows_mwu_cycling_and_mpo_converging(tmp_path, capsys) -> None:
    """rps's NE is uniform: the default π_0 is a seeded non-uniform point instead."""
    res = _game_json(tmp_path, capsys)
    assert res["mwu"]["gap"] > 0.01  # MWU's last iterate cycles away from the NE
    assert res["mpo"]["gap"] < 1e-6  # MPO's converges
    assert res["mwu"]["init"] == res["mpo"]["init"] == "random"
    P = games.generate("rps", 3, 0)
    for r in res.values():  # gaps agree with a recomputation from the reported policy
        assert r["gap"] == pytest.approx(float(games.gap(P, np.asarray(r["policy"]))), abs=1e-9)
    # started at the uniform policy (the NE) nothing moves: the old, uninformative default
    uni = _game_json(tmp_path, capsys, "--init", "uniform")
    assert uni["mwu"]["gap"] < 1e-12 and uni["mpo"]["gap"] < 1e-12
    code, _, err = _cli(
        ["game", "--generate", "rps", "--n", "3", "--init", "bogus", "--no-mlflow"], capsys
    )
    assert code == 2 and err.startswith("error:") and "bogus" in err


def test_rows_that_run_the_same_update_are_marked(tmp_path, capsys) -> None:
    """Default EGPO is mirror prox and default SPPO is MWU: the table says so."""
    args = ["game", "--generate", "uniform", "--n", "5", "--seed", "14", "--iterations", "200"]
    args += ["--no-mlflow", "--plot", str(tmp_path / "g.png"), "--algos"]
    code, out, err = _cli([*args, "nash-mp,egpo,sppo,mwu,omwu"], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[2:7]}
    assert set(rows) == {"nash-mp", "egpo*", "sppo", "mwu*", "omwu"}
    assert "egpo ran the same update as nash-mp" in out and "mwu ran the same update as sppo" in out
    code, out, err = _cli([*args, "nash-mp,egpo,omwu", "--json"], capsys)
    same = {r["algo"]: r["same_as"] for r in json.loads(out)["results"]}
    assert same == {"nash-mp": None, "egpo": "nash-mp", "omwu": None}
    # with a given η the two mirror-prox forms differ (η_MP = η/(1 − ηβ)): no mark
    code, out, err = _cli([*args, "nash-mp,egpo", "--eta", "0.5"], capsys)
    assert "*" not in out
