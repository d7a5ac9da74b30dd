"""Resuming safely, through the CLI: nothing lost, no traceback, no hang.

Each case ends in exit 2 (bad input) or a non-zero status of a stopped run, with
one line on stderr and no traceback; a refused resume changes nothing in the run
dir (oracle: the SHA-256 of every file before and after).

- `--resume D` with a config that differs from the one stored in the checkpoint
  (an override, or config.yaml edited) outside the resumable keys: refused,
  naming every key; config.yaml is not rewritten.
- `runtime.steps` not above the checkpoint's step: refused.
- A run dir locked by a live process: refused, naming its pid; a lock left by a
  killed process does not block.
- The newest checkpoint corrupt, resumed with `checkpoint_keep=1` to a step below
  it: the checkpoint just written survives and the corrupt one goes (oracle:
  `verify` on what is left, and summary.json pointing at an existing dir).
- SIGTERM mid-run: exit 143 with one line saying how to resume, a checkpoint at
  the step boundary, and `--resume` finishes the run.
- SIGKILL of the driver: within 15 s no process of its session is left (Ray's
  agents used to linger over a minute; oracle: /proc, by session id).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resume import QUICKSTART, SMALL, run, start

from selfplay.runtime.checkpoint import format as ck

pytestmark = pytest.mark.ray

STEPS = 4  # the shared run: checkpoints step-000002 and step-000004


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    res = run(str(QUICKSTART), f"runtime.steps={STEPS}", *SMALL, f"output_dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    d = tmp_path / trained.name
    shutil.copytree(trained, d)
    return d


def snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def one_line(res: subprocess.CompletedProcess, code: int) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code and len(lines) == 1, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr
    return lines[0]


def refused(d: Path, *args: str) -> str:
    """The one-line error of a resume that must be refused with exit 2, changing nothing."""
    before = snapshot(d)
    line = one_line(run("--resume", str(d), *args, timeout=60), 2)
    assert line.startswith(f"error: --resume {d}") or line.startswith(f"error: run dir {d}"), line
    assert snapshot(d) == before
    return line


def test_resume_overrides_are_checked_against_the_checkpoint(run_dir):
    line = refused(run_dir, "algo.name=omwu", "runtime.steps=6")
    assert "step-000004 was made with another config (algo.name: 'mpo' in it, 'omwu' asked)" in line
    assert "a resume may change only runtime.steps" in line
    line = refused(run_dir, "learner.lr=0.5", "runtime.steps=6")
    assert "(learner.lr: 0.02 in it, 0.5 asked)" in line
    line = refused(run_dir, "learner.lr=0.5", "algo.name=omwu", "runtime.steps=6")
    assert "(algo.name: 'mpo' in it, 'omwu' asked; learner.lr: 0.02 in it, 0.5 asked)" in line
    # With a CONFIG file: the same check, against the checkpoint, not config.yaml.
    line = refused(run_dir, str(QUICKSTART), *SMALL, "runtime.steps=6", "learner.lr=0.5")
    assert "(learner.lr: 0.02 in it, 0.5 asked)" in line


def test_edited_config_yaml_is_refused(run_dir):
    cfg = run_dir / "config.yaml"
    text = cfg.read_text()
    assert "lr: 0.02" in text
    cfg.write_text(text.replace("lr: 0.02", "lr: 0.5"))
    line = refused(run_dir, "runtime.steps=6")
    assert "(learner.lr: 0.02 in it, 0.5 asked)" in line


def test_steps_must_exceed_the_checkpoint(run_dir):
    for args in ((), ("runtime.steps=3",)):
        line = refused(run_dir, *args)
        assert "step-000004 has 4 steps done" in line and "runtime.steps above 4" in line


_HOLD = """
import sys, time
from selfplay.runtime.driver.rundir import lock_run_dir
lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_locked_run_dir_is_refused_and_a_dead_lock_is_not(run_dir):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = refused(run_dir, "runtime.steps=6")
        assert line == f"error: run dir {run_dir} is in use by pid {holder.pid}", line
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    line = refused(run_dir, "runtime.steps=3")  # past the lock: the next check answers
    assert "runtime.steps above 4" in line


def test_pruning_keeps_the_checkpoint_just_written_not_the_corrupt_one(run_dir):
    ckpts = run_dir / "checkpoints"
    assert [p.name for p in ck.list_checkpoints(ckpts)] == ["step-000004", "step-000002"]
    victim = ckpts / "step-000004" / "learner-0.params.safetensors"  # the policy's weights
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    victim.write_bytes(bytes(data))

    res = run("--resume", str(run_dir), "runtime.steps=3", "runtime.checkpoint_keep=1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert f"warning: checkpoint {ckpts / 'step-000004'}" in res.stderr
    assert "resumed at step 2" in res.stderr
    left = ck.list_checkpoints(ckpts)
    assert [p.name for p in left] == ["step-000003"]  # the corrupt step-000004 is gone
    assert ck.verify(left[0]) is None
    summary = json.loads((run_dir / "summary.json").read_text())
    assert Path(summary["checkpoint"]) == left[0] and left[0].is_dir()
    assert ck.load_latest(ckpts).step == 3  # the next resume has a checkpoint


def test_sigterm_stops_at_a_step_boundary_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    proc = start(str(QUICKSTART), "runtime.steps=100000", *SMALL, f"output_dir={out}")
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and any(out.glob("*/checkpoints/step-*"))):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        (d,) = list(out.iterdir())
        # A second process on the same run dir is refused while this one runs.
        second = run("--resume", str(d), "runtime.steps=100001", timeout=60)
        assert one_line(second, 2) == f"error: run dir {d} is in use by pid {proc.pid}"
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "Aborted" not in err and "SIGABRT" not in err, err
    last = err.strip().splitlines()[-1]
    prefix = "error: stopped by SIGTERM after step "
    assert last.startswith(prefix), last
    assert last.endswith(f"checkpoint written; continue with `selfplay train --resume {d}`")
    done = int(last.removeprefix(prefix).split()[0])
    newest = ck.list_checkpoints(d / "checkpoints")[0]
    assert newest.name == f"step-{done:06d}" and ck.verify(newest) is None

    res = run("--resume", str(d), f"runtime.steps={done + 1}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed at step {done}" in res.stderr
    assert ck.list_checkpoints(d / "checkpoints")[0].name == f"step-{done + 1:06d}"


def _session(sid: int) -> dict[int, str]:
    """pid -> cmdline of every live process in session `sid`."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ProcessLookupError):
                continue
    return out


def test_driver_sigkill_leaves_no_process_behind(tmp_path):
    out = tmp_path / "run"
    proc = start(str(QUICKSTART), "runtime.steps=100000", *SMALL, f"output_dir={out}")
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and any(out.glob("*/checkpoints/step-*"))):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        assert any("DashboardAgent" in c for c in _session(proc.pid).values())
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 30  # without the reaper the agents stay over 60 s
        while (left := _session(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, left
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
