"""The cluster a command talks to: resources a run can never get, and loopback clusters.

Through the CLI (subprocesses, as a user runs it): a run whose actors the
cluster can never place ends in one line and a non-zero exit, within a time
bound, instead of waiting forever; `selfplay scale` reaches a loopback-only
`selfplay train` at the address it printed. The resource arithmetic itself is
checked without Ray.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import stop_server

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "rollout.prompts_per_step=4",
    "rollout.k=2",
    "rollout.opponents_k=2",
    "learner.updates_per_phase=2",
    "model.tiny.hidden=8",
    "model.tiny.layers=1",
    "tracking.enabled=false",
]


def _env(**extra: str) -> dict[str, str]:
    """A user's shell: no Ray address, auth mode or loopback switch (conftest sets it here)."""
    drop = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, **extra}


def _cli(*args: str, env: dict | None = None, timeout: float = 120):
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "selfplay", *args],
        cwd=ROOT,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return r, time.monotonic() - t0


def _one_line_error(r, code: int) -> str:
    assert r.returncode == code, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


# --- the arithmetic, without Ray --------------------------------------------------------


def _needs(*overrides: str, workers: int | None = None):
    from selfplay.config import load_config
    from selfplay.runtime.resources import run_needs

    return run_needs(load_config(ROOT / "conf" / "quickstart.yaml", list(overrides)), workers)


def test_needs_follow_the_config():
    needs = _needs("learner.shards=2", "learner.num_gpus=1", "rollout.resources={rollout: 1}")
    assert [(n.what, n.count, n.bundle) for n in needs] == [
        ("learner shard", 2, {"CPU": 0.5, "GPU": 1.0}),
        ("rollout worker", 1, {"CPU": 0.5, "rollout": 1.0}),
        ("judge server", 1, {"CPU": 0.25}),
    ]
    assert _needs(workers=3)[1].count == 3  # a resumed run's own pool


def test_shortfall_names_what_is_missing():
    from selfplay.runtime.resources import IN_PROCESS_REMEDIES, shortfall

    two = {"CPU": 2.0}
    assert shortfall(_needs(), two, [two]) is None  # 1.25 CPUs
    assert shortfall(_needs("rollout.workers=4", "learner.shards=2"), two, [two]) == (
        "the run needs 3.25 CPUs (2 learner shards × 0.5, 4 rollout workers × 0.5, "
        "1 judge server × 0.25) but the cluster has 2; lower learner.shards, rollout.workers "
        "or judge.servers (or their num_cpus)"
    )
    msg = shortfall(_needs("learner.shards=3"), two, [two], IN_PROCESS_REMEDIES)
    assert msg.endswith("(or their num_cpus), or raise runtime.num_cpus")
    assert shortfall(_needs("rollout.num_gpus=1"), two, [two]) == (
        "the run needs 1 GPU (1 rollout worker × 1) but the cluster has none; "
        "lower rollout.num_gpus"
    )
    # Two GPUs in all, but one per node: an actor needing 2 fits on no node.
    nodes = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    msg = shortfall(_needs("learner.num_gpus=2"), {"CPU": 4.0, "GPU": 2.0}, nodes)
    assert msg == (
        "a learner shard needs 0.5 CPUs, 2 GPUs on one node, but no node has that "
        "(the most on one node: 1 GPU); lower learner.num_gpus"
    )
    assert shortfall(_needs("learner.num_gpus=1"), {"CPU": 4.0, "GPU": 2.0}, nodes) is None
    msg = shortfall(_needs("rollout.resources={rollout: 1}"), two, [two], {"*": "add nodes"})
    assert msg == (
        "the run needs 1 of resource 'rollout' (1 rollout worker × 1) but the cluster has "
        "none; lower rollout.resources.rollout, or add nodes"
    )


def test_wait_for_a_growing_cluster_is_bounded():
    from selfplay.errors import RunError
    from selfplay.runtime.resources import check_resources

    needs = _needs("rollout.workers=4")  # 2.75 CPUs
    small, big = {"CPU": 2.0}, {"CPU": 4.0}
    views = iter([(small, [small]), (small, [small]), (big, [small, {"CPU": 2.0}])])
    said, asked = [], []
    check_resources(
        needs, wait_s=10, view=lambda: next(views), say=said.append, ask=asked.append, poll_s=0
    )
    assert len(said) == 1 and said[0].startswith("waiting up to 10 s for the cluster to grow")
    assert asked == [[{"CPU": 0.5}] + [{"CPU": 0.5}] * 4 + [{"CPU": 0.25}], []]

    t0 = time.monotonic()
    with pytest.raises(RunError, match=r"^the run needs 2.75 CPUs .* \(waited 0.2 s"):
        check_resources(
            needs, wait_s=0.2, view=lambda: (small, [small]), say=said.append, ask=asked.append
        )
    assert time.monotonic() - t0 < 2 and asked[-1] == []


# --- through the CLI ----------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize(
    "override, message",
    [
        ("learner.shards=3", "the run needs 2.25 CPUs (3 learner shards × 0.5, "),
        ("rollout.workers=4", "the run needs 2.75 CPUs (1 learner shard × 0.5, 4 rollout"),
        ("rollout.num_gpus=1", "the run needs 1 GPU (1 rollout worker × 1) but the cluster"),
        ("rollout.resources={rollout: 1}", "the run needs 1 of resource 'rollout'"),
    ],
)
def test_in_process_cluster_refuses_what_it_cannot_give(tmp_path, override, message):
    """The default in-process cluster (2 CPUs, no GPU here, no custom resources)."""
    import torch

    if "gpus" in override and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r, took = _cli("train", "conf/quickstart.yaml", override, f"output_dir={tmp_path}", *TINY)
    line = _one_line_error(r, 2)
    assert line.startswith(f"error: {message}"), line
    print(f"{override}: exit {r.returncode} in {took:.1f} s")
    assert took < 30, took
    assert not list(tmp_path.iterdir())  # no run dir: nothing started


@pytest.mark.ray
def test_existing_cluster_waits_then_fails(cluster, tmp_path):
    """On a cluster joined by address, the run waits (bounded) for an autoscaler that
    this cluster does not have, then fails in one line with exit status 1."""
    env = _env(SELFPLAY_RESOURCE_WAIT_S="3")
    r, took = _cli(
        "train",
        "conf/quickstart.yaml",
        "rollout.resources={rollout: 1}",
        f"runtime.address={cluster}",
        f"output_dir={tmp_path}",
        *TINY,
        env=env,
    )
    line = _one_line_error(r, 1)
    assert line == (
        "error: the run needs 1 of resource 'rollout' (1 rollout worker × 1) but the "
        "cluster has none; lower rollout.resources.rollout, or add nodes that have them "
        "(waited 3 s for the cluster to grow)"
    )
    assert "waiting up to 3 s for the cluster to grow" in r.stderr
    print(f"existing cluster: exit {r.returncode} in {took:.1f} s")
    assert took < 60, took


@pytest.mark.ray
def test_scale_reaches_a_loopback_train_at_its_printed_address(tmp_path):
    """`selfplay train` (in-process cluster, loopback only) prints its address; `selfplay
    scale` from a plain shell reaches it there and returns within a time bound."""
    log = tmp_path / "train.err"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "selfplay",
                "train",
                "conf/quickstart.yaml",
                "runtime.steps=100000",
                f"output_dir={tmp_path}",
                "--no-progress",
                *TINY,
            ],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 150
        while not (m := re.search(r"run (\S+) \(Ray at (\S+)\)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        name, address = m.groups()
        assert address.startswith("127.0.0.1:"), address
        r, took = _cli("scale", name, "--rollout-workers", "2", "--address", address, timeout=90)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.startswith(f"{name}: rollout workers 1 -> 2"), r.stdout
        print(f"scale took {took:.1f} s")
        assert took < 45, took
    finally:
        stop_server(proc, group=True, timeout=30)
