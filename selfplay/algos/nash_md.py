"""Nash-MD: Nash mirror descent (Munos et al. 2023, arXiv 2312.00886).

    π^μ_t     ∝ π_t^{1−ηβ} · μ^{ηβ}                   (geometric mixture)
    π_{t+1}   ∝ π^μ_t · exp(η·q_{π^μ_t})
    log π_{t+1} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π^μ_t} + c
"""

from __future__ import annotations

from selfplay.algos.base import BETA, NASH_MD_ETA_BETA, Algorithm, Hyper, check_n
from selfplay.algos.plan import Mixture, Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=NASH_MD_ETA_BETA / BETA, beta=BETA)


def plan(h: Hyper) -> StepPlan:
    eb = h.eta * h.beta
    mix = Mixture(a="main", b="ref", lam=eb)
    ph = Phase(sample=mix, opponents=((mix, 1.0),), anchor="main", mu="ref",
               a=1.0 - eb, b=eb, c=h.eta, output="main")
    return StepPlan(phases=(ph,))


ALGORITHM = Algorithm(
    name="nash-md", paper="Munos et al. 2023, Nash Learning from Human Feedback, arXiv 2312.00886",
    objective="regularized", default_hyper=default_hyper, plan=plan,
    summary="mirror descent against the geometric mixture of π_t and μ")
