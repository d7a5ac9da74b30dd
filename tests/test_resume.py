"""Checkpoint and resume, as a user meets them: `selfplay train` killed and `--resume`d.

- SIGKILL the driver mid-run, corrupt its newest checkpoint, resume: the
  corrupt one is reported and the previous one used, and with
  `max_staleness: 0` the final weights, optimizer state and every role equal
  an uninterrupted run's bit for bit (oracle: the uninterrupted run).
- The same with async on (`max_staleness: 1`): the checkpoint holds the
  prefetched batch, and accounting by prompt id over the whole run shows every
  prompt trained on exactly once (oracle: the prompt ids 0..steps·P−1).
- A learner killed mid-run fails the run with one line (exit 1); `--resume`
  finishes it.
- Bad `--resume` input: one line, exit 2, nothing written (more cases, config
  checks, locking, pruning and SIGTERM, in test_resume_safety.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from selfplay.runtime.checkpoint.format import list_checkpoints

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "conf" / "quickstart.yaml"
SELFPLAY = str(Path(sys.executable).with_name("selfplay"))
P, K = 4, 4
SMALL = [
    "tracking.enabled=false",
    f"rollout.prompts_per_step={P}",
    f"rollout.k={K}",
    "rollout.opponents_k=8",
    "learner.updates_per_phase=2",
    "model.tiny.hidden=8",
    "model.tiny.layers=1",
    "runtime.checkpoint_every=2",
    "--no-progress",
]
ENV = {**os.environ, "RAY_DEDUP_LOGS": "0", "TOKENIZERS_PARALLELISM": "false"}


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SELFPLAY, "train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=ENV,
    )


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [SELFPLAY, "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=ENV,
        start_new_session=True,
    )


def the_run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def wait_for_checkpoint(out: Path, proc: subprocess.Popen, step: int) -> Path:
    """The run dir, once a checkpoint of at least `step` steps exists."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        dirs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
        if dirs and any(
            int(c.name.split("-")[1]) >= step for c in list_checkpoints(dirs[0] / "checkpoints")
        ):
            return dirs[0]
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL the driver only; then clear what is left of its session's processes."""
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL  # killed mid-run, not finished
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """Rank 0's tensors, merged from its part files (learner-0.<part>.safetensors)."""
    newest = list_checkpoints(run_dir / "checkpoints")[0]
    out: dict[str, torch.Tensor] = {}
    for f in sorted(newest.glob("learner-0.*.safetensors")):
        out.update(load_file(f))
    assert out, list(newest.iterdir())
    return out


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_driver_sigkill_then_resume_is_bitwise_at_staleness_0(tmp_path, lora):
    steps = 14
    # Under LoRA the checkpoint holds adapters, and π_ref is republished as the base.
    over = [str(QUICKSTART), f"runtime.steps={steps}", *SMALL, *(["model.lora.r=2"] * lora)]
    full = run(*over, f"output_dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-3000:]

    out = tmp_path / "killed"
    proc = start(*over, f"output_dir={out}")
    run_dir = wait_for_checkpoint(out, proc, 4)
    kill_driver(proc)
    ckpts = list_checkpoints(run_dir / "checkpoints")
    assert len(ckpts) == 2, ckpts
    newest, older = ckpts
    victim = newest / "learner-0.params.safetensors"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated

    res = run("--resume", str(run_dir))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"warning: checkpoint {newest}" in res.stderr and "using an older one" in res.stderr
    assert f"resumed at step {int(older.name.split('-')[1])}" in res.stderr

    a, b = final_state(the_run_dir(tmp_path / "full")), final_state(run_dir)
    assert a.keys() == b.keys() and len(a) > 10  # params, AdamW state and every role
    # adapters only: rank 2 × the widest layer (intermediate 16), no 8-wide embedding rows
    assert not lora or max(t.numel() for t in a.values()) <= 2 * 16
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa = json.loads((the_run_dir(tmp_path / "full") / "summary.json").read_text())
    sb = json.loads((run_dir / "summary.json").read_text())
    assert sa["policy"] == sb["policy"] and sb["steps"] == steps
    assert sa["preference_queries"] == sb["preference_queries"]


def test_async_resume_trains_every_prompt_exactly_once(tmp_path):
    steps = 14
    over = [
        str(QUICKSTART),
        "algo.name=mwu",  # omwu is refused with max_staleness >= 1 (algos/compat.py)
        "algo.eta=1",
        "runtime.max_staleness=1",
        f"runtime.steps={steps}",
        *SMALL,
    ]
    out = tmp_path / "run"
    proc = start(*over, f"output_dir={out}")
    run_dir = wait_for_checkpoint(out, proc, 4)
    kill_driver(proc)
    newest = list_checkpoints(run_dir / "checkpoints")[0]
    meta = json.loads((newest / "meta.json").read_text())
    queued = meta["controller"]["queue"]
    done = meta["controller"]["next_step"]
    # The prefetched batch was sampled (and its prompts drawn) but not trained on.
    assert [(q["step"], q["phase"]) for q in queued] == [(done, 0)]
    assert meta["controller"]["cursor"] == (done + 1) * P

    res = run("--resume", str(run_dir))
    assert res.returncode == 0, res.stderr[-3000:]
    records = json.loads((run_dir / "records.json").read_text())
    assert [(r["step"], r["phase"]) for r in records] == [(t, 0) for t in range(steps)]
    ids = np.sort(np.concatenate([r["prompt_ids"] for r in records]))
    np.testing.assert_array_equal(ids, np.arange(steps * P))  # none lost, none twice
    assert all(r["rows"] == P * K for r in records)
    assert max(r["staleness"] for r in records) == 1  # it did run ahead
    # The rollout files too: the prefetched batch's rows came back from the checkpoint.
    import pyarrow.parquet as pq

    files = sorted((run_dir / "rollouts").glob("step-*.parquet"))
    assert [f.name for f in files] == [f"step-{t:06d}.parquet" for t in range(1, steps + 1)]
    trained = [
        r["prompt_id"]
        for f in files
        for r in pq.read_table(f).to_pylist()
        if r["role"] == "trained"
    ]
    np.testing.assert_array_equal(np.sort(trained), np.repeat(np.arange(steps * P), K))


def _descendants(pid: int) -> dict[int, str]:
    """pid -> cmdline of every live descendant of `pid` (from /proc)."""
    parent, cmd = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                cmd[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError, ValueError):
                continue
    out = {}
    for p in parent:
        q = p
        while q in parent and q != pid and q > 1:
            q = parent[q]
        if q == pid and p != pid:
            out[p] = cmd[p]
    return out


def test_learner_death_fails_cleanly_and_resume_finishes(tmp_path):
    steps = 10
    over = [str(QUICKSTART), "algo.name=nash-mp", f"runtime.steps={steps}", *SMALL]
    out = tmp_path / "run"
    proc = start(*over, f"output_dir={out}")
    run_dir = wait_for_checkpoint(out, proc, 2)
    learners = [p for p, c in _descendants(proc.pid).items() if "LearnerActor" in c]
    assert len(learners) == 1, _descendants(proc.pid)
    os.kill(learners[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: a learner died") and f"--resume {run_dir}" in last, last
    assert "Traceback" not in err

    res = run("--resume", str(run_dir))
    assert res.returncode == 0, res.stderr[-3000:]
    records = json.loads((run_dir / "records.json").read_text())
    assert [(r["step"], r["phase"]) for r in records] == [
        (t, p) for t in range(steps) for p in (0, 1)
    ]
    ids = np.sort(np.concatenate([r["prompt_ids"] for r in records]))
    np.testing.assert_array_equal(ids, np.arange(2 * steps * P))


def test_bad_resume_is_one_line_exit_2_and_writes_nothing(tmp_path):
    res = run("--resume", str(tmp_path / "nope"))
    assert (
        res.returncode == 2
        and res.stderr.strip() == f"error: --resume {tmp_path / 'nope'}: no such run directory"
    )
    # A run dir with no checkpoint yet, resumed with its own config or another: refused
    # before anything starts. (Refusals of another config are in test_resume_safety.py.)
    d = tmp_path / "other"
    d.mkdir()
    (d / "config.yaml").write_text(QUICKSTART.read_text().replace("name: mpo", "name: omwu"))
    before = sorted(p.name for p in d.rglob("*"))
    for args in ((str(QUICKSTART),), ()):
        res = run(*args, "--resume", str(d))
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert "no usable checkpoint" in lines[0], lines[0]
    # Nothing written but the (empty) lock file a run dir made before locking gains.
    assert sorted(p.name for p in d.rglob("*")) == sorted([*before, ".lock"])
    assert (d / ".lock").stat().st_size == 0
