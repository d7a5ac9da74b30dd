"""MWU self-play (multiplicative weights / Hedge on the preference game).

Update (one phase; π_t samples, is the opponent and the anchor):

    log π_{t+1} = log π_t + η·P(· ≻ π_t) + c      (a = 1, b = 0, c = η)

The average iterate converges to an NE; the last iterate does not (on
rock–paper–scissors it spirals out; tests/test_algos_convergence.py).

Step size (default, ours): η = 1; no constant step makes the last iterate
converge.

Paper: Freund & Schapire 1999 (MWU in games); tabular SPPO, Wu et al. 2024,
arXiv 2405.00675.

Deviations: none.

Derivation: docs/algorithms.md#mwu
"""

from __future__ import annotations

from selfplay.algos.base import Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, StepPlan

ETA = 1.0


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=ETA)


def plan(h: Hyper) -> StepPlan:
    return StepPlan(
        phases=(
            Phase(
                sample="main",
                opponents=(("main", 1.0),),
                anchor="main",
                mu=None,
                a=1.0,
                b=0.0,
                c=h.step,
                output="main",
            ),
        )
    )


ALGORITHM = Algorithm(
    name="mwu",
    paper="Freund & Schapire 1999; tabular SPPO (Wu et al. 2024, arXiv 2405.00675)",
    objective="nash",
    default_hyper=default_hyper,
    plan=plan,
    summary="π_{t+1} ∝ π_t·exp(η·P(·≻π_t)); average iterate converges, last iterate cycles",
)
