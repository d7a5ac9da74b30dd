"""Which (algorithm, loss form) pairs the runtime runs, and why the others are refused.

In short: target regression, for every algorithm (OMWU only synchronously).

Pure: no Ray, torch or transformers. `selfplay.config.Config` calls `check_config`
when a config is validated, so a refused pair is a one-line `InputError` before
anything starts. The tabular runner and `selfplay.algos.losses` are unaffected:
every form stays available there (`tests/test_algos_losses.py`).

The rule (docs/algorithms.md#llm-loss-forms, docs/asynchrony.md):

- regression: every algorithm (OMWU: see below). Its minimiser is the plan's update for any
  full-support behaviour policy, so tempered, stale, lead- or mixture-sampled
  responses do not move it.
- pg: refused. The learner weights each sample by π_θ(y)/π_b(y) (π_b: the
  sampler as sampled: explore temperature, stale version, lead or mixture), so
  every update's gradient is the on-policy one in expectation and the
  surrogate's maximiser is the plan's update (`tests/test_learner.py` reaches
  it with 400 updates). But the runtime takes `updates_per_phase` AdamW steps on
  one sampled batch, which do not reach that maximiser, and the shortfall is not
  a smaller step of the same algorithm: measured on the token game (30 steps),
  OMWU ends at gap 0.39 (regression: 0.005) and online IPO 0.07 from π*_β
  (regression: 0.025), MPO 0.050 (regression: 0.036).
- omwu with max_staleness ≥ 1: refused, whatever the form. Stale opponents
  make its ĝ = 2q_{t−1} − q_{t−2} ≈ q_t, i.e. plain MWU: linearised at the
  NE a mode obeys r³ = r² + iθ(2r − 1), whose largest root has |r| > 1 for
  every θ = ηλ > 0 (docs/asynchrony.md).
- ipo: refused. It is the update only as ONE plain gradient step at
  lr = n·η·β/4 on a softmax over n responses with all n² pairs; the LM learner
  takes `updates_per_phase` AdamW steps, which drift towards the IPO loss's
  minimiser (log π = log μ + ĝ/β, a best response), not the update.

`runtime_notes` lists what the runtime does differently from the tabular
runner for a resolved hyperparameter set (adaptive steps, tolerance refreshes).
"""

from __future__ import annotations

from typing import Any

from selfplay.algos.names import FORMS
from selfplay.algos.names import NAMES as ALGORITHMS

IPO_REASON = (
    "algo.loss=ipo is the update only as one plain gradient step at lr = n·η·β/4 "
    "on a tabular softmax; the LM learner takes updates_per_phase AdamW steps, which "
    "drift towards the IPO minimiser (a best response). Use algo.loss=regression"
)
OMWU_STALE_REASON = (
    "algo.name=omwu needs runtime.max_staleness=0: with stale opponents its "
    "ĝ = 2q_{t−1} − q_{t−2} ≈ q_t is plain MWU, whose last iterate diverges for "
    "every step size (docs/asynchrony.md)"
)
PG_REASON = (
    "algo.loss=pg is the update only when its surrogate is optimised to convergence; "
    "updates_per_phase AdamW steps on one batch are not (OMWU diverges, online IPO "
    "ends 0.07 from its fixed point). Use algo.loss=regression"
)


def refusal(algo: str, loss: str, *, max_staleness: int = 0) -> str | None:
    """Why the runtime refuses `algo` trained with loss form `loss` (one line), or None."""
    if algo not in ALGORITHMS:
        return f"unknown algorithm {algo!r}; expected one of {ALGORITHMS}"
    if loss not in FORMS:
        return f"unknown loss form {loss!r}; expected one of {FORMS}"
    if loss == "ipo":
        return IPO_REASON
    if loss == "pg":
        return PG_REASON
    if algo == "omwu" and max_staleness > 0:
        return OMWU_STALE_REASON
    return None


def accepted(**settings: Any) -> list[tuple[str, str]]:
    """Every (algorithm, loss form) pair the runtime runs under `settings`
    (`max_staleness`)."""
    return [(a, f) for a in ALGORITHMS for f in FORMS if refusal(a, f, **settings) is None]


def check_config(cfg: Any) -> None:
    """Raise ValueError with the one-line reason when `cfg` (a Config) is refused."""
    why = refusal(
        cfg.algo.name,
        cfg.algo.loss,
        max_staleness=cfg.runtime.max_staleness,
    )
    if why is not None:
        raise ValueError(why)


def runtime_notes(algo: str, hyper: Any) -> list[str]:
    """One line per thing the runtime runs differently from the tabular runner."""
    notes = []
    if getattr(hyper, "adaptive", False):
        steps = f"η = {hyper.eta:.4g}" + (
            f", α = {hyper.alpha:.4g}" if getattr(hyper, "alpha", None) else ""
        )
        notes.append(
            f"note: {algo}'s adaptive step size is tabular-only; the runtime runs the "
            f"fixed initial step ({steps})"
        )
    if getattr(hyper, "magnet_tol", None) is not None:
        notes.append(
            f"note: {algo}'s magnet_tol refresh is tabular-only; the runtime refreshes "
            f"every {hyper.magnet_every} steps"
        )
    return notes
