"""EGPO: Extragradient Preference Optimization (Zhou, Fazel, Du 2025).

Extragradient on the online-IPO loss (see online_ipo.py) with a softmax
policy. Tabular form:

    lead:   log π_{t+½} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π_t}   + c
    update: log π_{t+1} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π_{t+½}} + c
"""

from __future__ import annotations

from selfplay.algos.base import BETA, PROX_ETA, Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=PROX_ETA / (1.0 + PROX_ETA * BETA), beta=BETA)


def plan(h: Hyper) -> StepPlan:
    eb = h.eta * h.beta
    lead = Phase(sample="main", opponents=(("main", 1.0),), anchor="main", mu="ref",
                 a=1.0 - eb, b=eb, c=h.eta, output="lead")
    upd = Phase(sample="lead", opponents=(("lead", 1.0),), anchor="main", mu="ref",
                a=1.0 - eb, b=eb, c=h.eta, output="main")
    return StepPlan(phases=(lead, upd))


ALGORITHM = Algorithm(
    name="egpo", paper="Zhou, Fazel, Du 2025, Extragradient Preference Optimization (EGPO), "
    "arXiv 2503.08942; code zhourunlong/EGPO", objective="regularized",
    default_hyper=default_hyper, plan=plan,
    summary="extragradient on the online-IPO loss")
