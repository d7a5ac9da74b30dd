"""Nothing lost, no traceback, no hang: bad input and dead services through the CLI.

Every case ends in one line on stderr ("error: ..."), exit status 2, no traceback,
and nothing written: no run dir under output_dir, no plot. Most cases fail before
Ray starts and run in-process through `selfplay.cli.main`; the dead-service cases
(an MLflow server that does not answer, `runtime.address=auto` with no cluster)
run as subprocesses with a time bound.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfplay.cli import main
from selfplay.outputs import dumps

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "conf" / "quickstart.yaml")
DEAD_MLFLOW = "http://127.0.0.1:1"
BOUND_S = 30  # a dead service is reported within this many seconds


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and _has_gpu()


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _one_line(err: str, word: str) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and word in lines[0], err


def _nothing_written(out_dir: Path) -> None:
    assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.rglob("*"))


# (id, overrides, environment, word in the message, skip reason or None)
TRAIN_CASES = [
    ("seed", ["seed=-1"], {}, "seed", None),
    ("task-seed", ["task.seed=-1"], {}, "task.seed", None),
    ("seed-too-big", ["model.tiny.seed=4294967296"], {}, "model.tiny.seed", None),
    ("output-dir", ["output_dir=/proc/x"], {}, "output_dir /proc/x", None),
    ("nash-md-beta-0", ["algo.name=nash-md", "algo.beta=0"], {}, "nash-md needs beta > 0", None),
    ("ipo-beta-0", ["algo.name=online-ipo", "algo.beta=0"], {}, "online-ipo needs", None),
    ("sppo-beta-0", ["algo.name=sppo", "algo.beta=0"], {}, "sppo needs beta > 0", None),
    ("judge-timeout-inf", ["judge.timeout_s=.inf"], {}, "judge.timeout_s", None),
    ("rollout-cpus-inf", ["rollout.num_cpus=.inf"], {}, "rollout.num_cpus", None),
    ("eta-1e400", ["algo.eta=1e400"], {}, "algo.eta: Input should be a finite", None),
    ("lr-inf", ["learner.lr=.inf"], {}, "learner.lr", None),
    ("temperature-inf", ["rollout.temperature=inf"], {}, "rollout.temperature", None),
    ("train-top-p", ["rollout.top_p=0.9"], {}, "rollout.top_p=0.9", None),
    ("train-top-k", ["rollout.top_k=2"], {}, "rollout.top_k=2", None),
    ("init-std-inf", ["model.tiny.init_std=.inf"], {}, "model.tiny.init_std", None),
    ("lora-rank-0", ["model.lora.r=0"], {}, "model.lora.r", None),
    ("lora-alpha-0", ["model.lora.alpha=0"], {}, "model.lora.alpha", None),
    ("lora-no-targets", ["model.lora.target_modules=[]"], {}, "model.lora.target_modules", None),
    ("lora-unknown-target", ["model.lora.target_modules=[qproj]"], {}, "qproj name no", None),
    ("beta-nan", ["algo.beta=.nan"], {}, "algo.beta", None),
    ("resources-nan", ["rollout.resources={a: .nan}"], {}, "rollout.resources.a", None),
    ("cpus-do-not-fit", ["rollout.num_cpus=3"], {}, "but the cluster has 2", None),
    ("ray-address-env", [], {"RAY_ADDRESS": "127.0.0.1:1"}, "RAY_ADDRESS=127.0.0.1:1", None),
    ("resources-in-process", ["rollout.resources={rollout: 1}"], {}, "resource 'rollout'", None),
    (
        "vllm",
        ["rollout.backend=vllm"],
        {},
        "vLLM",
        "vLLM can run here" if _has_vllm() else None,
    ),
    (
        "learner-num-gpus",
        ["learner.num_gpus=1"],
        {},
        "GPU",
        "a GPU is visible" if _has_gpu() else None,
    ),
    (
        "mlflow-sqlite-unwritable",
        ["tracking.enabled=true", "tracking.uri=sqlite:////proc/x/mlflow.db"],
        {},
        "not writable",
        None,
    ),
    (
        "mlflow-bad-scheme",
        ["tracking.enabled=true"],
        {"MLFLOW_TRACKING_URI": "foo://bar"},
        "unknown scheme",
        None,
    ),
]


@pytest.mark.parametrize(
    "overrides, env, word, skip", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES]
)
def test_train_bad_input(tmp_path, capsys, monkeypatch, overrides, env, word, skip):
    if skip:
        pytest.skip(skip)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out_dir = tmp_path / "runs"
    args = [
        "train",
        QUICKSTART,
        "tracking.enabled=false",
        "runtime.steps=1",
        f"output_dir={out_dir}",
    ]
    code, out, err = _cli([*args, *overrides, "--no-progress"], capsys)
    assert code == 2, err
    _one_line(err, word)
    _nothing_written(out_dir)


def test_binary_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(bytes(range(256)) * 2)
    code, _, err = _cli(["train", str(bad)], capsys)
    assert code == 2
    _one_line(err, "not a YAML file")


GAME_CASES = [
    ("seed", ["--seed", "-1"], "--seed"),
    ("seed-too-big", ["--seed", str(2**32)], "--seed"),
    ("beta-0", ["--beta", "0"], "--beta must be > 0"),
    ("beta-nan", ["--beta", "nan"], "--beta must be a finite number"),
    ("eta-inf", ["--eta", "inf"], "--eta must be a finite number"),
    ("eta-word", ["--eta", "fast"], "--eta must be a number"),
    ("plot-unwritable", ["--plot", "/proc/x/g.png"], "--plot /proc/x/g.png"),
]


@pytest.mark.parametrize("args, word", [c[1:] for c in GAME_CASES], ids=[c[0] for c in GAME_CASES])
def test_game_bad_input(tmp_path, capsys, args, word):
    plot = tmp_path / "plots" / "g.png"
    base = ["game", "--generate", "rps", "--n", "3", "--no-mlflow", "--plot", str(plot)]
    code, out, err = _cli([*base, *args], capsys)
    assert code == 2 and out == "", err
    _one_line(err, word)
    assert not plot.parent.exists()


def test_game_bad_tracking_uri(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    plot = tmp_path / "g.png"
    code, out, err = _cli(["game", "--generate", "rps", "--n", "3", "--plot", str(plot)], capsys)
    assert code == 2 and out == ""
    _one_line(err, "unknown scheme")
    assert not plot.exists()


@pytest.mark.parametrize(
    "args, word",
    [
        (["game", "--seed", "abc"], "'abc' is not a valid integer"),
        (["game", "--bogus"], "No such option '--bogus'"),
        (["train", QUICKSTART, "--resume"], "--resume"),
    ],
)
def test_click_usage_errors_are_one_line(capsys, args, word):
    code, out, err = _cli(args, capsys)
    assert code == 2 and out == ""
    _one_line(err, word)


def test_bench_budget_must_be_finite(capsys):
    code, _, err = _cli(["bench", "games", "--budget", "inf"], capsys)
    assert code == 2
    _one_line(err, "--budget must be a finite number")


# Dead services: a subprocess, as a user runs it, with a time bound.


def _selfplay(
    args: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess, float]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full.pop("RAY_ADDRESS", None)
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "selfplay", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full,
        timeout=120,
    )
    return p, time.monotonic() - t0


def _no_cluster_here() -> None:
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():
        pytest.skip("a Ray cluster is running on this machine: address=auto would join it")


@pytest.mark.parametrize("stale", [False, True], ids=["no-cluster", "stale-address-file"])
def test_address_auto_without_a_cluster(tmp_path, stale):
    _no_cluster_here()
    ray_tmp = tmp_path / "raytmp"
    (ray_tmp / "ray").mkdir(parents=True)
    if stale:  # what `ray start` left behind, its cluster since stopped
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    out_dir = tmp_path / "runs"
    args = ["train", QUICKSTART, "runtime.address=auto", "tracking.enabled=false"]
    p, secs = _selfplay([*args, f"output_dir={out_dir}"], {"RAY_TMPDIR": str(ray_tmp)}, tmp_path)
    assert p.returncode == 2, p.stderr
    _one_line(p.stderr, "cannot reach the Ray cluster" if stale else "no Ray cluster is running")
    assert "ray start --head" in p.stderr
    assert secs < BOUND_S, secs
    _nothing_written(out_dir)


@pytest.mark.parametrize("stale", [False, True], ids=["no-cluster", "stale-address-file"])
def test_address_auto_without_a_cluster_in_process(tmp_path, capsys, monkeypatch, stale):
    """The same, whatever runs on this machine: Ray's process scan is made to find none."""
    import ray._private.services as services

    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    if stale:
        (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    out_dir = tmp_path / "runs"
    args = ["train", QUICKSTART, "runtime.address=auto", "tracking.enabled=false"]
    t0 = time.monotonic()
    code, out, err = _cli([*args, f"output_dir={out_dir}"], capsys)
    assert code == 2 and time.monotonic() - t0 < BOUND_S
    _one_line(err, "cannot reach the Ray cluster" if stale else "no Ray cluster is running")
    assert "ray start --head" in err
    _nothing_written(out_dir)


@pytest.mark.parametrize("command", ["train", "game"])
def test_dead_mlflow_server(tmp_path, command):
    out_dir = tmp_path / "runs"
    if command == "train":
        args = ["train", QUICKSTART, f"tracking.uri={DEAD_MLFLOW}", f"output_dir={out_dir}"]
        env = {}
    else:
        args = ["game", "--generate", "rps", "--n", "3", "--json", "--plot", str(out_dir / "g.png")]
        env = {"MLFLOW_TRACKING_URI": DEAD_MLFLOW}
    p, secs = _selfplay(args, env, tmp_path)
    assert p.returncode == 2, p.stderr
    _one_line(p.stderr, f"MLflow tracking server {DEAD_MLFLOW} does not answer")
    assert p.stdout == ""
    assert secs < BOUND_S, secs
    _nothing_written(out_dir)
    assert not (tmp_path / "mlflow.db").exists()


def test_json_outputs_are_valid_json():
    obj = {"gap": math.nan, "policy": [0.5, math.inf, -math.inf], "n": 3, "ok": 0.25}
    import numpy as np

    obj["np"] = np.array([np.nan, 1.0], dtype=np.float32)
    text = dumps(obj)
    assert json.loads(text) == {
        "gap": None,
        "policy": [0.5, None, None],
        "n": 3,
        "ok": 0.25,
        "np": [None, 1.0],
    }


def test_mlflow_failure_during_a_run_is_one_line_and_fast():
    """A server that dies mid-run: MLflow's short retries (HTTP_ENV), then a RunError
    (exit 1), not minutes of retries and a page of urllib3."""
    from selfplay.errors import RunError
    from selfplay.tracking import mlflow_run

    t0 = time.monotonic()
    with pytest.raises(RunError) as e, mlflow_run("dead", uri=DEAD_MLFLOW):
        pass
    assert time.monotonic() - t0 < BOUND_S
    msg = str(e.value)
    assert "\n" not in msg and "does not answer" in msg and DEAD_MLFLOW in msg


@pytest.mark.ray
def test_a_learner_step_that_overflows_is_one_line(tmp_path):
    """A finite but absurd lr overflows AdamW inside the learner: exit 1, one error line."""
    out_dir = tmp_path / "runs"
    args = ["train", QUICKSTART, "runtime.steps=2", "learner.lr=1e300", "tracking.enabled=false"]
    p, _ = _selfplay([*args, f"output_dir={out_dir}", "--no-progress"], {}, tmp_path)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "a learner failed at step 0" in errors[0], p.stderr
    assert "--resume" not in errors[0]  # no checkpoint was written yet: nothing to resume
