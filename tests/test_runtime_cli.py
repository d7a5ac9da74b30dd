"""`selfplay train` as a user runs it: a subprocess, bad input and the JSON summary.

Bad input must fail before Ray starts, with exit status 2 and one line on
stderr starting with "error:". `--json` must print the run summary as the
last stdout line; its numbers are checked against closed forms (the gap of
the reported policy, the query count of the configured batch sizes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selfplay.config import load_config
from selfplay.tasks.token_game import from_config

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "conf" / "quickstart.yaml"
SELFPLAY = [str(Path(sys.executable).with_name("selfplay"))]  # the console script


def selfplay(*args: str, timeout: float = 60, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [*SELFPLAY, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


@pytest.mark.parametrize(
    "args, names",
    [
        ([str(QUICKSTART), "algo.name=foo"], "algo.name"),
        ([str(QUICKSTART), "rollout.prompts_per_step=0"], "rollout.prompts_per_step"),
        ([str(QUICKSTART), "runtime.max_staleness=-1"], "runtime.max_staleness"),
        ([str(ROOT / "conf" / "no-such-config.yaml")], "no-such-config.yaml"),
        (
            [str(QUICKSTART), "runtime.address=127.0.0.1:1"],
            "cannot reach the Ray cluster at 127.0.0.1:1",
        ),
        ([str(QUICKSTART), "runtime.address=http://127.0.0.1:8265"], "not the job server URL"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(args, names):
    p = selfplay("train", *args, "tracking.enabled=false")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error:") and names in lines[0]
    assert "Started a local Ray instance" not in p.stderr + p.stdout


@pytest.mark.ray
def test_json_summary_is_the_last_stdout_line(tmp_path):
    prompts, k, opp, steps = 4, 4, 8, 2
    over = [
        f"runtime.steps={steps}",
        f"rollout.prompts_per_step={prompts}",
        f"rollout.k={k}",
        f"rollout.opponents_k={opp}",
        "learner.updates_per_phase=2",
        "tracking.enabled=false",
        "runtime.eval_every=2",
        f"output_dir={tmp_path}",
    ]
    p = selfplay("train", str(QUICKSTART), *over, "--json", "--no-progress", timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads(p.stdout.strip().splitlines()[-1])
    assert {"gap", "regularized_gap", "policy", "steps", "preference_queries"} <= set(s)
    cfg = load_config(QUICKSTART, over)
    P = from_config(cfg.task).P
    pi = np.array(s["policy"])
    assert pi.shape == (P.shape[0],) and pi.min() >= 0 and pi.sum() == pytest.approx(1.0)
    assert s["gap"] == pytest.approx(2 * np.max(P @ pi) - 1, abs=1e-6)
    assert cfg.algo.name == "mpo" and s["regularized_gap"] is None  # β = 0: no regularized gap
    assert s["steps"] == steps
    # MPO judges each trained response against `opp` opponents from one source.
    assert s["preference_queries"] == steps * prompts * k * opp
    # eval_every=2: the task evaluates π_0 and step 2, not step 1 (training metrics every step)
    hist = json.loads((Path(s["run_dir"]) / "history.json").read_text())
    assert [h["step"] for h in hist] == [0, 1, 2]
    assert ["gap" in h for h in hist] == [True, False, True] and "loss" in hist[1]
    assert hist[2]["gap"] == pytest.approx(s["gap"])
