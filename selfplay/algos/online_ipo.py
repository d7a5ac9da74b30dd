"""Online IPO / online mirror descent on the β-regularized game.

One gradient step on the online-IPO loss per iteration (Calandriello et al.
2024, arXiv 2403.08635; EGPO's baseline):

    log π_{t+1} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π_t} + c
"""

from __future__ import annotations

from selfplay.algos.base import BETA, MD_ETA_OVER_BETA, Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    e = MD_ETA_OVER_BETA * BETA
    return Hyper(eta=e / (1.0 + e * BETA), beta=BETA)


def plan(h: Hyper) -> StepPlan:
    eb = h.eta * h.beta
    ph = Phase(sample="main", opponents=(("main", 1.0),), anchor="main", mu="ref",
               a=1.0 - eb, b=eb, c=h.eta, output="main")
    return StepPlan(phases=(ph,))


ALGORITHM = Algorithm(
    name="online-ipo", paper="Calandriello et al. 2024, Human Alignment of Large Language Models "
    "through Online Preference Optimisation, arXiv 2403.08635", objective="regularized",
    default_hyper=default_hyper, plan=plan, summary="one online-IPO gradient step per iteration")
