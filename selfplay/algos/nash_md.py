"""Nash-MD: Nash mirror descent against the geometric mixture of π_t and μ.

Update (one phase; the mixture samples and is the opponent, μ = π_ref):

    π^μ_t       ∝ π_t^{1−ηβ} · μ^{ηβ}
    log π_{t+1} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π^μ_t} + c

i.e. a = 1 − ηβ, b = ηβ, c = η.

Step size (default, ours): ηβ = 0.01 (η = 0.1 at β = 0.1).

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

from selfplay.algos.base import BETA, NASH_MD_ETA_BETA, Algorithm, Hyper, check_n
from selfplay.algos.plan import Mixture, Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=None, beta=BETA)


def resolve(h: Hyper) -> Hyper:
    """η = None -> η = 0.01/β (mixture weight ηβ = NASH_MD_ETA_BETA)."""
    return h if h.eta is not None else h.with_(eta=NASH_MD_ETA_BETA / h.beta)


def plan(h: Hyper) -> StepPlan:
    h = resolve(h)
    eb = h.eta * h.beta
    mix = Mixture(a="main", b="ref", lam=eb)
    ph = Phase(
        sample=mix,
        opponents=((mix, 1.0),),
        anchor="main",
        mu="ref",
        a=1.0 - eb,
        b=eb,
        c=h.eta,
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
)
