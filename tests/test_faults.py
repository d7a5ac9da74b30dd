"""Fault tolerance: a SIGKILLed rollout worker or preference server mid-run.

Short MPO runs on the token game (`run.build` + `Controller.run`, so the test
reaches the actors). Mid-run the test SIGKILLs the OS process of rollout
worker 0 or of the only preference server: at a step boundary, or (with
prefetching) right after a batch was issued to it. The controller must replace
the dead actor in its slot, issue the lost batches again, and finish the run.

Oracles, none of them the controller's own bookkeeping:
- per-prompt accounting from the batches the learner actually consumed
  (`TrainBatch.prompt_ids`, row by row): every prompt id 0 .. steps·P−1 is
  trained exactly once, with exactly K responses — nothing lost, nothing doubled;
- the killed pid is not among the live actors' pids afterwards;
- with `max_staleness: 0` a reissue draws the same prompts with the same seeds
  on a healed pool of the same size, so the interrupted run must train bitwise
  the same batches and end at bitwise the same policy as an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import ray

from selfplay.config import load_config
from selfplay.errors import RunError
from selfplay.runtime.driver.build import build

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "tests" / "converge.yaml"
STEPS, P, K = 4, 4, 4
KILL_AT = 1  # on_step of this step, i.e. at the boundary before step 2
SMALL = [
    "tracking.enabled=false",
    f"task.matrix={CONF.with_name('weighted_rps.csv')}",
    "algo.name=mpo",
    f"runtime.steps={STEPS}",
    f"rollout.prompts_per_step={P}",
    f"rollout.k={K}",
    "rollout.opponents_k=8",
    "learner.updates_per_phase=2",
    "model.tiny.hidden=8",
    "model.tiny.layers=1",
    "rollout.workers=2",
    # Small shares of the 2 CPUs, so a replacement can be scheduled next to the rest.
    "rollout.num_cpus=0.25",
    "judge.num_cpus=0.25",
    "learner.num_cpus=0.5",
]


@dataclass
class Outcome:
    records: list
    batches: list  # the TrainBatch each record trained on, fetched after training
    policy: np.ndarray
    killed: int | None = None  # the SIGKILLed pid
    rollout_pids: list[int] = field(default_factory=list)  # live workers at the end
    judge_pids: list[int] = field(default_factory=list)
    rollout_replaced: int = 0
    judges_replaced: int = 0


def run(tmp_path: Path, victim: str | None, *overrides: str, when: str = "step") -> Outcome:
    """One run; victim: None, "rollout" (worker 0) or "judge" (server 0), SIGKILLed
    when="step": at the end of step KILL_AT (`on_step`), or when="request": right after
    step KILL_AT+1's batch was issued, while its tasks are still queued on the victim."""
    cfg = load_config(CONF, [*SMALL, f"output_dir={tmp_path}", *overrides])
    run_ = build(cfg)
    ctl, ev = run_.controller, run_.evaluator.probe
    killed, batches = [], []
    train, request = ctl.train, ctl.request
    # Asked now: once a batch is queued on the actor, a pid() call would wait behind it.
    pid = (
        None
        if victim is None
        else ray.get((ctl.rollout[0] if victim == "rollout" else ctl.judges[0]).pid.remote())
    )

    def kill() -> None:
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    def capture(pend):  # train first: a lost batch is reissued inside, pend then holds the new refs
        rec = train(pend)
        batches.append(ray.get(pend.batch_ref))
        return rec

    def issue(step: int, phase: int):
        pend = request(step, phase)
        if when == "request" and step == KILL_AT + 1 and pid is not None and not killed:
            kill()
        return pend

    def on_step(step: int, recs) -> None:
        if when == "step" and step == KILL_AT and pid is not None:
            kill()

    ctl.train, ctl.request = capture, issue
    try:
        ctl.init_versions()
        ctl.run(STEPS, on_step=on_step)
        return Outcome(
            ctl.records,
            batches,
            ev.policy(ctl.learners),
            killed[0] if killed else None,
            ray.get([w.pid.remote() for w in ctl.rollout]),
            ray.get([j.pid.remote() for j in ctl.judges]),
            ctl.rollout_pool.replaced,
            ctl.judges_replaced,
        )
    finally:  # free the module cluster's CPUs for the next run
        ctl.learners.shutdown()
        ctl.rollout_pool.kill_all()
        for j in ctl.judges:
            ray.kill(j)


def check_accounting(out: Outcome) -> None:
    """Every prompt trained once, with K responses; records agree with the batches."""
    assert [r.step for r in out.records] == list(range(STEPS))
    assert len(out.batches) == STEPS
    for t, (rec, b) in enumerate(zip(out.records, out.batches, strict=True)):
        assert rec.rows == P * K == len(b.prompt_ids)
        assert np.bincount(b.prompt_ids - t * P, minlength=P).tolist() == [K] * P
        assert np.array_equal(np.sort(rec.prompt_ids), np.arange(t * P, (t + 1) * P))
    ids = np.concatenate([b.prompt_ids for b in out.batches])
    assert np.bincount(ids).tolist() == [K] * (STEPS * P)
    ids = np.concatenate([r.prompt_ids for r in out.records])
    assert sorted(ids.tolist()) == list(range(STEPS * P))


def test_rollout_worker_killed_async(cluster, tmp_path):
    # max_staleness 1: step t's batch is requested (prefetched) before step t−1 trains.
    # Worker 0 dies just after step 2's batch was issued to it, so that batch is lost in
    # flight; step 3's batch is then requested before step 2's loss is seen, and goes to
    # the dead worker too. (Killed at the end of step 1 instead, the tiny model has always
    # finished step 2's batch already, and only step 3's is lost: the same path as the
    # max_staleness 0 tests below.)
    out = run(tmp_path, "rollout", "runtime.max_staleness=1", when="request")
    check_accounting(out)
    assert out.rollout_replaced == 1 and out.judges_replaced == 0
    # Step 3's batch is lost in any case; step 2's too unless worker 0 finished it in
    # the moment between its issue and the kill. No batch is redone twice.
    assert [r.reissues for r in out.records] in ([0, 0, 1, 1], [0, 0, 0, 1])
    assert [r.staleness for r in out.records] == [0, 1, 1, 1]  # reissues keep their versions
    assert len(out.rollout_pids) == 2 and out.killed not in out.rollout_pids
    assert [r.workers for r in out.records] == [2] * STEPS


def test_judge_killed(cluster, tmp_path):
    out = run(tmp_path, "judge", "runtime.max_staleness=0", "judge.servers=1", "rollout.workers=1")
    check_accounting(out)
    assert out.judges_replaced == 1 and out.rollout_replaced == 0
    # Staleness 0: nothing in flight at the kill, so step 2's batch is the one lost, once.
    assert [r.reissues for r in out.records] == [0, 0, 1, 0]
    assert len(out.judge_pids) == 1 and out.killed not in out.judge_pids


def test_reissue_reproduces_uninterrupted_run(cluster, tmp_path):
    clean = run(tmp_path / "clean", None, "runtime.max_staleness=0")
    hurt = run(tmp_path / "hurt", "rollout", "runtime.max_staleness=0")
    check_accounting(hurt)
    assert hurt.rollout_replaced == 1
    assert [r.reissues for r in hurt.records] == [0, 0, 1, 0]
    assert [r.reissues for r in clean.records] == [0] * STEPS
    for a, b in zip(clean.batches, hurt.batches, strict=True):
        for name in (
            "input_ids",
            "attention_mask",
            "response_mask",
            "g",
            "group",
            "prompt_ids",
        ):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert a.versions == b.versions
    assert np.array_equal(clean.policy, hurt.policy)


def test_max_reissues_zero_fails_with_one_line(cluster, tmp_path):
    with pytest.raises(RunError) as e:
        run(
            tmp_path,
            "rollout",
            "runtime.max_staleness=0",
            "runtime.max_reissues=0",
            "rollout.workers=1",
        )
    msg = str(e.value)
    assert "lost" in msg and "\n" not in msg
    assert "step 2 phase 0" in msg
