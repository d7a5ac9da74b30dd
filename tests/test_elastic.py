"""Elastic rollout workers: grow 1→3→1 during a run, `selfplay scale`, autoscale.

The run is a tiny MPO token-game run with `max_staleness: 1`, so the batch of
step t+1 is already sampled (by the pool of that moment) while step t trains;
shrinking then has to keep a worker alive until a batch it sampled is
trained. The oracle is the plain schedule worked out by hand below (which
pool sampled which step, from which version), checked against every row of
every batch the learner consumed, not against the controller's own counters.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
STEPS, PPS, K = 8, 4, 2
TINY = [
    f"runtime.steps={STEPS}",
    f"rollout.prompts_per_step={PPS}",
    f"rollout.k={K}",
    "rollout.opponents_k=2",
    "learner.updates_per_phase=2",
    "model.tiny.hidden=8",
    "model.tiny.layers=1",
    "tracking.enabled=false",
    "rollout.num_cpus=0.25",
]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)  # loopback: conftest's use_loopback()
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _cfg(tmp_path, *extra: str):
    from selfplay.config import load_config

    return load_config(ROOT / "conf" / "quickstart.yaml", [*TINY, f"output_dir={tmp_path}", *extra])


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # As from a user's shell: `ray.init` above set RAY_AUTH_MODE=token in this process only,
    # and conftest the loopback switch, which `selfplay scale` must set itself.
    drop = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-m", "selfplay.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _alive(w) -> bool:
    import ray

    try:
        return ray.get(w.ready.remote(), timeout=30)
    except ray.exceptions.RayActorError:
        return False


def test_grow_then_shrink_loses_nothing(ray_cluster, tmp_path):
    import ray

    from selfplay.runtime.driver.build import build
    from selfplay.runtime.driver.controller import Resize
    from selfplay.runtime.workers import control
    from selfplay.types import Version

    ctl = build(_cfg(tmp_path, "runtime.max_staleness=1")).controller
    ctl.init_versions()
    ctl.open_control("elastic-a")
    batches, seen = [], {}
    train = ctl.train

    def capture(pend):  # what the learner consumes, row by row
        batches.append(ray.get(pend.batch_ref))
        return train(pend)

    def on_step(t: int, recs) -> None:
        if t == 1:  # through the real CLI, as a user does
            r = _cli("scale", "elastic-a", "--rollout-workers", "3", "--address", ray_cluster)
            assert r.returncode == 0, r.stderr
            assert r.stdout.startswith("elastic-a: rollout workers 1 -> 3"), r.stdout
        if t == 2:  # (2, 0) read the poll sent at (1, 0), before the CLI: nothing started
            assert len(ctl.rollout) == 1 and not ctl.starting
        if t == 3:  # started at this step's safe point; training did not wait for them
            assert len(ctl.rollout) == 1 and len(ctl.starting) == 2
            ray.get([w.ready.remote() for w in ctl.starting])
        if t == 4:  # joined at (4, 0); they loaded only the version their first batch needs
            seen["new"] = ctl.rollout[1:]
            seen["held"] = [ray.get(w.versions.remote()) for w in seen["new"]]
            seen["pool"] = list(ctl.rollout)
            assert control.scale("elastic-a", 1)[0] == 3
        # The safe point reads the poll it sent last time once answered (never waits):
        # waiting for the answer here makes the schedule below exact.
        ray.wait([ctl.rollout_pool.poll])

    ctl.train = capture
    try:
        ctl.run(STEPS, on_step=on_step)
        state = ray.get(ctl.control.state.remote())
        end = ctl.rollout_pool.end_state()  # what the summary records
    finally:  # free the module cluster's CPUs for the next test
        ctl.close_control()
        ctl.learners.shutdown()
        for a in [*ctl.judges, *ctl.rollout[1:]]:
            ray.kill(a)

    # Schedule by hand: from step 2 on, step t's batch is prefetched while t−1 trains,
    # sampled from main@t−1 by the pool of safe point (t−1, 0). Step 1's batch is main@0's
    # prefetch or, where π_0's publish index makes that 2 versions stale, sampled at (1, 0)
    # from main@1; pool 1 either way. A target set during step t is read at (t+2, 0) (the
    # poll sent at (t+1, 0) answers it): the pool is 3 from (4, 0) (the CLI asked at the
    # end of step 1; started at (3, 0)) until (6, 0) (asked at the end of step 4).
    sampled_from = [(0,), (0, 1), (1,), (2,), (3,), (4,), (5,), (6,)]
    pools = [1, 1, 1, 1, 1, 3, 3, 1]
    assert ctl.resizes == [Resize(4, 1, 3), Resize(6, 3, 1)]
    assert [r.workers for r in ctl.records] == pools
    assert (state.target, state.active, state.retiring) == (1, 1, 0)
    assert end == {"target": 1, "serving": 1, "starting": 0}
    assert seen["held"] == [[Version(4, "main")]] * 2
    ids = np.concatenate([b.prompt_ids for b in batches])
    for t, (b, rec) in enumerate(zip(batches, ctl.records, strict=True)):
        (v,) = set(b.versions)  # every row of a batch from one sampler
        assert v.role == "main" and v.step in sampled_from[t] and rec.sampler_versions == [v]
        assert np.array_equal(np.unique(b.prompt_ids), np.arange(t * PPS, (t + 1) * PPS))
        assert np.bincount(b.prompt_ids - t * PPS).tolist() == [K] * PPS
        assert np.array_equal(rec.prompt_ids, np.arange(t * PPS, (t + 1) * PPS))
    # Every prompt trained exactly once with K responses: no gap, no duplicate.
    assert np.bincount(ids).tolist() == [K] * (STEPS * PPS)
    # The two workers retired at (6, 0) sampled step 6's batch, then were killed.
    assert [_alive(w) for w in seen["pool"]] == [True, False, False]
    assert seen["pool"][1:] == seen["new"]


def test_scale_cli_errors_are_one_line_exit_2(ray_cluster):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    cases = [
        (["nope", "--rollout-workers", "0"], "--rollout-workers must be >= 1, got 0"),
        (
            ["nope", "--rollout-workers", "2", "--address", ray_cluster],
            "no running run named 'nope' on this Ray cluster",
        ),
        (
            ["nope", "--rollout-workers", "2", "--address", closed],
            f"cannot reach the Ray cluster at {closed}",
        ),
        (
            ["nope", "--rollout-workers", "2", "--address", "http://127.0.0.1:8265"],
            "address must be the Ray GCS",
        ),
    ]
    for args, message in cases:
        r = _cli("scale", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stdout == ""
        (line,) = r.stderr.splitlines()
        assert line.startswith(f"error: {message}"), line


def _requested_bundles() -> list[dict]:
    """What the Ray autoscaler was asked for (v1 keeps it in the GCS key-value store)."""
    import json

    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


def test_autoscale_grows_to_max_and_asks_ray(ray_cluster, tmp_path):
    """Synchronous runs have no batch waiting (depth 0 < target): one worker more per window,
    up to max_workers; each target goes to `request_resources`, cleared at the end."""
    import ray
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    from selfplay.runtime.driver import trainer

    if is_autoscaler_v2():
        pytest.skip("reads the v1 autoscaler's request from the GCS key-value store")
    asks, done = [], threading.Event()

    def watch() -> None:  # the request persists while the run goes on
        while not done.wait(0.02):
            if (b := _requested_bundles()) and b not in asks:
                asks.append(b)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        res = trainer.train(
            _cfg(
                tmp_path,
                "runtime.steps=3",
                "rollout.join_wait_s=60",
                "rollout.autoscale.max_workers=2",
                "rollout.autoscale.window=2",
            ),
            progress=False,
        )
    finally:
        done.set()
        th.join()
    # window 2: the first decision is at step 1's safe point (1→2); at step 3 it would be
    # 2→3, but max_workers is 2 and the run has 3 steps.
    assert [h["rollout_workers"] for h in res.history[1:]] == [1, 2, 2]
    one = {"CPU": 0.25}  # a worker's bundle; the first ask (1) lasts ~1 step, may be missed
    assert asks in ([[one], [one] * 2], [[one] * 2])
    assert _requested_bundles() == []
    with pytest.raises(ValueError):  # the run's control actor died with the run
        ray.get_actor(res.run_dir.name, namespace="selfplay")


def test_autoscale_policy_steps_one_worker_per_window():
    from selfplay.runtime.workers.control import Autoscaler

    a = Autoscaler(min_workers=2, max_workers=3, target_queue_depth=0.5, bundle={}, window=2)
    depths = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    got, n = [], 2
    for d in depths:
        n = a.decide(n, d)
        got.append(n)
    # Windows of 2 have means 0, .5, 1, 1, 1: +1, stay, −1, then −1 twice clamped at 2.
    assert got == [2, 3, 3, 3, 3, 2, 2, 2, 2, 2]
    assert Autoscaler(1, 4, 0.5, {}).clamp(9) == 4 and Autoscaler(2, 4, 0.5, {}).clamp(0) == 2


def test_scale_against_live_actor_rejects_out_of_bounds(ray_cluster):
    import ray

    from selfplay.errors import InputError
    from selfplay.runtime.workers import control

    h = control.start_control("elastic-b", 2, bounds=(1, 3))
    try:
        with pytest.raises(InputError, match="already runs"):
            control.start_control("elastic-b", 2)
        assert control.scale("elastic-b", 3)[0] == 2
        with pytest.raises(InputError, match=r"must lie in \[1, 3\], got 4"):
            control.scale("elastic-b", 4)
            assert ray.get(h.target.remote()) == 3
    finally:
        ray.kill(h)


def test_scale_beyond_the_cluster_is_refused_in_one_line(ray_cluster, tmp_path):
    """The module cluster has 2 CPUs; learner 0.5 + judge 0.25 + 0.25 per rollout worker:
    at most (2 − 0.75) / 0.25 = 5 workers fit. The in-process cluster cannot grow, so
    more is refused (exit 2, the target left alone); a cluster that may grow takes it."""
    import ray

    from selfplay.errors import InputError
    from selfplay.runtime.resources import run_needs
    from selfplay.runtime.workers import control

    needs = run_needs(_cfg(tmp_path), 1)
    fixed = control.start_control("elastic-c", 1, needs=needs)
    grows = control.start_control("elastic-d", 1, needs=needs, grows=True)
    try:
        r = _cli("scale", "elastic-c", "--rollout-workers", "1000", "--address", ray_cluster)
        assert r.returncode == 2 and r.stdout == "", r.stderr
        assert r.stderr.splitlines() == [
            "error: --rollout-workers 1000: the run needs 250.75 CPUs (1 learner shard × 0.5, "
            "1000 rollout workers × 0.25, 1 judge server × 0.25) but the cluster has 2; at most "
            "5 rollout workers fit (run elastic-c has 1; its in-process cluster cannot grow)"
        ]
        assert ray.get(fixed.state.remote()).target == 1
        assert control.scale("elastic-c", 5)[1].target == 5
        with pytest.raises(InputError, match="at most 5 rollout workers fit"):
            control.scale("elastic-c", 6)
        notes = []
        assert control.scale("elastic-d", 7, say=notes.append)[1].target == 7
        assert len(notes) == 1 and "at most 5 rollout workers fit now" in notes[0], notes
    finally:
        ray.kill(fixed)
        ray.kill(grows)
