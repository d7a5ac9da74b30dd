"""Nash-MP: Nash Mirror Prox on the β-regularized game (reference μ = π_ref).

Update (two phases, both anchored at π_t):

    lead:   log π_{t+½} = (log π_t + η·q_{π_t}     + ηβ·log μ)/(1 + ηβ) + c
    update: log π_{t+1} = (log π_t + η·q_{π_{t+½}} + ηβ·log μ)/(1 + ηβ) + c

i.e. a = 1/(1+ηβ), b = ηβ/(1+ηβ), c = η/(1+ηβ); the second phase's sampler
and opponent is the lead policy. Two rounds of preference queries per step.
Last iterate → π*_β.

Step size: η = 1/L = 2 (mirror prox's condition η ≤ 1/L, L = ½ for every P
with entries in [0, 1]).

Paper: Tiapkin et al. 2025, arXiv 2505.19731 (the two-phase form is ours).

Rate: KL(π*_β‖π) contracts asymptotically by 1/(1+ηβ)² per iteration,
(1+2β)^{−N} in N queries; 1/(1+2β) per iteration is only the worst-case
bound (tests/test_algos_rates.py).

Deviations:
1. None in the update; the paper's LLM version takes several
   policy-gradient steps per prox step, ours regresses onto the target
   (losses.py).

Derivation: docs/algorithms.md#nash-mp
"""

from __future__ import annotations

from selfplay.algos.base import BETA, PROX_ETA, Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=PROX_ETA, beta=BETA)


def plan(h: Hyper) -> StepPlan:
    eb = h.step * h.beta
    a, b, c = 1.0 / (1.0 + eb), eb / (1.0 + eb), h.step / (1.0 + eb)
    lead = Phase(
        sample="main",
        opponents=(("main", 1.0),),
        anchor="main",
        mu="ref",
        a=a,
        b=b,
        c=c,
        output="lead",
    )
    upd = Phase(
        sample="lead",
        opponents=(("lead", 1.0),),
        anchor="main",
        mu="ref",
        a=a,
        b=b,
        c=c,
        output="main",
    )
    return StepPlan(phases=(lead, upd))


ALGORITHM = Algorithm(
    name="nash-mp",
    paper="Tiapkin et al. 2025, Accelerating Nash Learning from Human Feedback "
    "via Mirror Prox, arXiv 2505.19731",
    objective="regularized",
    default_hyper=default_hyper,
    plan=plan,
    summary="mirror prox on the β-regularized game",
)
