"""Nash-MP: Nash Mirror Prox (Tiapkin et al. 2025, arXiv 2505.19731).

Mirror prox on the β-regularized game (reference μ = π_ref):

    lead:   log π_{t+½} = (log π_t + η·q_{π_t}   + ηβ·log μ)/(1 + ηβ) + c
    update: log π_{t+1} = (log π_t + η·q_{π_{t+½}} + ηβ·log μ)/(1 + ηβ) + c

Both phases are anchored at π_t (the update is *not* anchored at π_{t+½}):
a = 1/(1+ηβ), b = ηβ/(1+ηβ), c = η/(1+ηβ); the second phase's opponent is
the lead policy. Two payoff vectors (rounds of preference queries) per step.
"""

from __future__ import annotations

from selfplay.algos.base import BETA, PROX_ETA, Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=PROX_ETA, beta=BETA)


def plan(h: Hyper) -> StepPlan:
    eb = h.eta * h.beta
    a, b, c = 1.0 / (1.0 + eb), eb / (1.0 + eb), h.eta / (1.0 + eb)
    lead = Phase(sample="main", opponents=(("main", 1.0),), anchor="main", mu="ref",
                 a=a, b=b, c=c, output="lead")
    upd = Phase(sample="lead", opponents=(("lead", 1.0),), anchor="main", mu="ref",
                a=a, b=b, c=c, output="main")
    return StepPlan(phases=(lead, upd))


ALGORITHM = Algorithm(
    name="nash-mp", paper="Tiapkin et al. 2025, Accelerating Nash Learning from Human Feedback "
    "via Mirror Prox, arXiv 2505.19731", objective="regularized",
    default_hyper=default_hyper, plan=plan, summary="mirror prox on the β-regularized game")
