"""A lost node: survived like a dead worker, or a bounded wait and one line.

A cluster of several raylets on this machine (`ray.cluster_utils.Cluster`, as Ray
tests itself): a head with 2 CPUs, where the learner and the preference server
run, and a node advertising `{rollout: 1}` and 1 CPU, where the only rollout
worker runs (`rollout.num_cpus=1`, so nothing else fits there). Ray's health
checks are made fast so a removed node is noticed in a few seconds.

- The node removed at a step boundary and another added while the run waits for
  one: the run finishes, and (oracle: the batches the learner actually consumed)
  every prompt id is trained exactly once with K responses.
- The node removed and none added: `selfplay train` says what it waits for, then
  exits 1 with one line within `runtime.node_wait_s` (plus Ray's detection and
  the process's exit), its checkpoint intact.
- SIGTERM while it waits: exit 143 with one line, its checkpoint intact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import ray
from test_faults import CONF, SMALL, STEPS, check_accounting
from test_resume import ENV, QUICKSTART, ROOT, SELFPLAY
from test_resume import SMALL as CLI_SMALL

from selfplay.config import load_config
from selfplay.runtime.checkpoint import format as ck
from selfplay.runtime.driver.build import build

pytestmark = pytest.mark.ray

# A dead raylet refuses the GCS's health check at once: noticed after 5 checks, ~2.5 s
# (Ray's default: 5 × 3 s). A slow one (a loaded machine) has 5 s to answer each.
FAST_HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 5000,
    "health_check_failure_threshold": 5,
}
ROLLOUT_NODE = {"num_cpus": 1, "resources": {"rollout": 1}}
ON_NODE = ["rollout.workers=1", "rollout.num_cpus=1", "rollout.resources={rollout: 1}"]


@pytest.fixture(scope="module")
def multi():
    """A head (2 CPUs) with this process connected as a driver. Ray's cluster file
    (/tmp/ray/ray_current_cluster, read by `address=auto` elsewhere on the machine)
    is left alone."""
    from ray._common import utils as common_utils
    from ray._private import utils as private_utils
    from ray.cluster_utils import Cluster

    mp = pytest.MonkeyPatch()
    # One auth mode for the cluster and its drivers (~/.ray/auth_token may exist here).
    mp.setenv("RAY_AUTH_MODE", "disabled")
    mp.setattr(private_utils, "write_ray_address", lambda *a, **k: None)
    mp.setattr(common_utils, "reset_ray_address", lambda *a, **k: None)
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "_system_config": FAST_HEALTH},
    )
    try:
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        mp.undo()


def test_node_lost_then_another_added_the_run_finishes(multi, tmp_path, monkeypatch):
    from selfplay.runtime import waits

    node = multi.add_node(**ROLLOUT_NODE)
    cfg = load_config(
        CONF,
        [
            *SMALL,
            f"output_dir={tmp_path}",
            "runtime.max_staleness=0",
            *ON_NODE,
            "runtime.node_wait_s=60",
        ],
    )
    said, added = [], []

    def say(m: str) -> None:
        said.append(m)
        if m.startswith("waiting") and not added:  # another node, while the run waits
            added.append(multi.add_node(**ROLLOUT_NODE))

    real = waits.await_ready
    monkeypatch.setattr(waits, "await_ready", lambda actors, **kw: real(actors, **kw, say=say))
    run_ = build(cfg)
    ctl = run_.controller
    batches = []
    train = ctl.train

    def capture(pend):
        rec = train(pend)
        batches.append(ray.get(pend.batch_ref))
        return rec

    def on_step(step: int, recs) -> None:
        if step == 1:
            multi.remove_node(node)

    ctl.train = capture
    try:
        ctl.init_versions()
        ctl.run(STEPS, on_step=on_step)
        check_accounting(type("O", (), {"records": ctl.records, "batches": batches})())
        assert ctl.rollout_pool.replaced == 1
        assert [r.reissues for r in ctl.records] == [0, 0, 1, 0]
        assert len(said) == 2 and said[0].startswith("waiting up to 60 s"), said
        assert "rollout: 1" in said[0] and "started again" in said[1]
        assert added, "the run never waited for a node"
    finally:
        ctl.learners.shutdown()
        ctl.rollout_pool.kill_all()
        for j in ctl.judges:
            ray.kill(j)
        for n in added:
            multi.remove_node(n)


def _start(out: Path, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [SELFPLAY, "train", str(QUICKSTART), *CLI_SMALL, f"output_dir={out}", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**ENV, "RAY_AUTH_MODE": "disabled"},  # as the cluster's (the fixture)
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return proc, lines


def _until(cond, proc, lines, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, "".join(lines)[-3000:]
        assert time.monotonic() < deadline, f"{what}:\n" + "".join(lines)[-3000:]
        time.sleep(0.05)


def _lose_node_mid_run(multi, tmp_path, wait_s: int):
    """Start `selfplay train` on the cluster, remove its rollout node once the run has
    a checkpoint (step 2): (process, stderr lines, run dir, time of the removal)."""
    node = multi.add_node(**ROLLOUT_NODE)
    out = tmp_path / "out"
    proc, lines = _start(
        out,
        "runtime.steps=1000",
        f"runtime.address={multi.address}",
        *ON_NODE,
        f"runtime.node_wait_s={wait_s}",
    )
    try:
        _until(
            lambda: out.exists() and any(out.glob("*/checkpoints/step-*")),
            proc,
            lines,
            240,
            "no checkpoint appeared",
        )
        multi.remove_node(node)
    except BaseException:
        _end(proc, timeout=0)
        raise
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return proc, lines, d, time.monotonic()


def _end(proc, timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _intact(d: Path) -> int:
    newest = ck.list_checkpoints(d / "checkpoints")[0]
    assert ck.verify(newest) is None
    return int(newest.name.split("-")[1])


def test_node_lost_none_added_one_line_exit_1_within_the_wait(multi, tmp_path):
    proc, lines, d, removed = _lose_node_mid_run(multi, tmp_path, wait_s=3)
    _end(proc, timeout=60)
    took = time.monotonic() - removed
    err = "".join(lines)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert any(ln.startswith("waiting up to 3 s (runtime.node_wait_s)") for ln in lines), err
    last = lines[-1].strip()
    step = _intact(d)
    assert last.startswith("error: no node could host 1 rollout worker"), last
    assert "waited 3 s (runtime.node_wait_s)" in last
    assert last.endswith(
        f"its last checkpoint (step {step}) is intact: continue with `selfplay train --resume {d}`"
    ), last
    # Ray's detection (~3 s here), the wait, the reissue's start and the exit
    assert took < 3 + 15, took


def test_sigterm_while_waiting_for_a_node_exits_143(multi, tmp_path):
    proc, lines, d, _ = _lose_node_mid_run(multi, tmp_path, wait_s=120)
    try:
        _until(
            lambda: any(ln.startswith("waiting up to") for ln in lines), proc, lines, 60, "no wait"
        )
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
    finally:
        _end(proc, timeout=30)
    err = "".join(lines)
    assert proc.returncode == 143, err[-3000:]
    assert time.monotonic() - t0 < 15
    assert "Traceback" not in err, err[-3000:]
    last = lines[-1].strip()
    assert last.startswith("error: stopped by SIGTERM at step "), last
    assert "while waiting for 1 rollout worker" in last
    assert last.endswith(f"continue with `selfplay train --resume {d}`"), last
    _intact(d)
