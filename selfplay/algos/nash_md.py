"""Nash-MD: Nash mirror descent against the geometric mixture of π_t and μ.

Update (one phase; the mixture samples and is the opponent, μ = π_ref):

    π^μ_t       ∝ π_t^{1−ηβ} · μ^{ηβ}
    log π_{t+1} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π^μ_t} + c

i.e. a = 1 − ηβ, b = ηβ, c = η.

Step size, default (tabular): η = min(β/(β² + L̂_t²), 0.01/β, 0.25) (adaptive, base.md_eta;
L̂ = L without the tabular runner): ηβ ≤ 0.01 and η ≤ 0.25 bound the bias
(η = 0.1 at β = 0.1, floor ~1e-6..1e-8 reached in a few thousand
iterations; the floor grows like η²/β, base.NASH_MD_ETA_MAX) and the first
term keeps small β stable ((1 − ηβ)(1 + iηλ) is a contraction only for
η ≲ 2β/λ²).

Paper: Munos et al. 2023, arXiv 2312.00886.

Deviations:
1. Constant step instead of the paper's decreasing η_t ∝ 1/(βt). With a
   constant step the fixed point is π ∝ μ·exp(q_{π^μ}/β), not π*_β: the
   regularized gap floors at O(η²), ~1e-6 at ηβ = 0.01
   (tests/test_algos_fixed_points.py), so Nash-MD does not reach 1e-8.
2. The mixture is sampled per token (rollout/hf.py), which equals the
   sequence-level mixture only up to normalisation.

Derivation: docs/algorithms.md#nash-md

"""

from __future__ import annotations

import torch

from selfplay.algos.base import (
    BETA,
    LIPSCHITZ,
    NASH_MD_ETA_BETA,
    NASH_MD_ETA_MAX,
    Algorithm,
    Hyper,
    check_n,
    md_eta,
)
from selfplay.algos.plan import Mixture, Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=None, beta=BETA, adaptive=True)


def _eta(beta, lip):
    """min(β/(β² + L̂²), 0.01/β, 0.25): stable, and a bounded bias (ηβ ≤ 0.01, η ≤ 0.25)."""
    e, cap = md_eta(beta, lip), NASH_MD_ETA_BETA / beta
    cap = (
        cap.clamp(max=NASH_MD_ETA_MAX)
        if isinstance(cap, torch.Tensor)
        else min(cap, NASH_MD_ETA_MAX)
    )
    if isinstance(e, torch.Tensor) or isinstance(cap, torch.Tensor):
        f64 = torch.float64
        return torch.minimum(torch.as_tensor(e, dtype=f64), torch.as_tensor(cap, dtype=f64))
    return min(e, cap)


def resolve(h: Hyper) -> Hyper:
    """η = None -> η = min(β/(β² + L²), 0.01/β, 0.25) (the adaptive rule at L̂ = L)."""
    return h if h.eta is not None else h.with_(eta=_eta(h.beta, LIPSCHITZ))


def adapt(h: Hyper, lip) -> Hyper:
    """Tabular default: η_t = min(β/(β² + L̂_t²), 0.01/β, 0.25)."""
    return h.with_(eta=_eta(h.beta, lip))


def plan(h: Hyper) -> StepPlan:
    h = resolve(h)
    eb = h.step * h.beta
    mix = Mixture(a="main", b="ref", lam=eb)
    ph = Phase(
        sample=mix,
        opponents=((mix, 1.0),),
        anchor="main",
        mu="ref",
        a=1.0 - eb,
        b=eb,
        c=h.step,
        output="main",
    )
    return StepPlan(phases=(ph,))


ALGORITHM = Algorithm(
    name="nash-md",
    paper="Munos et al. 2023, Nash Learning from Human Feedback, arXiv 2312.00886",
    objective="regularized",
    default_hyper=default_hyper,
    plan=plan,
    resolve=resolve,
    summary="mirror descent against the geometric mixture of π_t and μ",
    adapt=adapt,
)
