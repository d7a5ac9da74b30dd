"""Policy versions and staleness of the runtime, on a real local Ray cluster.

Short runs of `selfplay.runtime.driver.trainer.train` on the token game; what is
checked is the controller's record of each trained batch (`RunResult.records`):
which versions sampled it, which versions the learner anchored at and
published, and how stale the batch was when it was trained on.

Oracles: the version schedule of docs/algorithms.md ("Versions each algorithm
needs") written out by hand, and, for a one-phase algorithm, staleness
recomputed as (step being trained) − (step of the version that sampled it),
since exactly one `main` version is published per step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selfplay.config import load_config
from selfplay.runtime.driver.trainer import train
from selfplay.types import Version

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "tests" / "converge.yaml"
# Small batches: these tests are about bookkeeping, not convergence.
SMALL = [
    "tracking.enabled=false",
    f"task.matrix={CONF.with_name('weighted_rps.csv')}",
    "rollout.workers=1",
    "rollout.prompts_per_step=4",
    "rollout.k=4",
    "rollout.opponents_k=8",
    "learner.updates_per_phase=2",
]


def run(tmp_path: Path, *overrides: str):
    cfg = load_config(CONF, [*SMALL, f"output_dir={tmp_path}", *overrides])
    return cfg, train(cfg, progress=False)


def check_nash_mp_versions(recs, steps: int) -> None:
    """The version schedule of Nash-MP (docs/algorithms.md), step by step."""
    assert [(r.step, r.phase) for r in recs] == [(t, p) for t in range(steps) for p in (0, 1)]
    for t in range(steps):
        lead, upd = recs[2 * t], recs[2 * t + 1]
        pi_t = Version(t, "main")
        # Phase 1: π_t against π_t, anchored at π_t, published as π_{t+½}.
        assert lead.anchor == pi_t and lead.output == Version(t, "lead")
        assert lead.sampler_versions == [pi_t] and lead.opponent_versions == [pi_t]
        # Phase 2: responses and opponents from π_{t+½}, the update anchored at π_t.
        assert upd.sampler_versions == [Version(t, "lead")]
        assert upd.opponent_versions == [Version(t, "lead")]
        assert upd.anchor == pi_t != Version(t, "lead")
        assert upd.output == Version(t + 1, "main")
        assert lead.staleness == upd.staleness == 0


def test_prefetch_respects_max_staleness_one(cluster, tmp_path):
    steps = 6
    _, res = run(tmp_path, "algo.name=mpo", f"runtime.steps={steps}", "runtime.max_staleness=1")
    recs = res.records
    assert [r.step for r in recs] == list(range(steps))
    for r in recs:
        (sampler,) = r.sampler_versions
        assert sampler.role == "main"
        assert r.opponent_versions == [sampler]
        assert r.anchor == Version(r.step, "main")  # the learner always starts from π_t
        assert r.staleness == r.step - sampler.step
        assert r.staleness <= 1
    # The rollout worker sampled ahead: every batch after the first was generated while
    # the learner trained the previous step, from the version then current.
    assert [r.staleness for r in recs] == [0] + [1] * (steps - 1)
    assert res.summary["max_staleness_seen"] == 1


def test_nash_mp_versions_and_bitwise_reproducible_sync_runs(cluster, tmp_path):
    """max_staleness=0: two runs with one seed are identical, bit for bit, and each
    follows Nash-MP's versions (phase 2 samples the lead, anchors at π_t)."""
    steps = 3
    over = ["algo.name=nash-mp", f"runtime.steps={steps}", "runtime.max_staleness=0", "seed=7"]
    _, a = run(tmp_path / "a", *over)
    _, b = run(tmp_path / "b", *over)
    check_nash_mp_versions(a.records, steps)
    check_nash_mp_versions(b.records, steps)
    assert a.summary["max_staleness_seen"] == 0
    assert a.summary["policy"] == b.summary["policy"]  # exact float equality
    keys = (
        "gap",
        "regularized_gap",
        "policy",
        "loss",
        "loss_initial",
        "grad_norm",
        "kl_anchor",
        "kl_ref",
    )
    # repr: exact, and NaN equals NaN
    assert [repr([h.get(k) for k in keys]) for h in a.history] == [
        repr([h.get(k) for k in keys]) for h in b.history
    ]
    # ... and the run moved at all (a frozen policy would be trivially reproducible).
    assert not np.allclose(a.history[0]["policy"], a.summary["policy"], atol=1e-4)
