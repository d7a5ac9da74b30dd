"""SPPO: Self-Play Preference Optimization (MWU with step 1/β).

Update (one phase; π_t samples, is the opponent and the anchor):

    π_{t+1}(y) ∝ π_t(y) · exp(P(y ≻ π_t) / β)     (a = 1, b = 0, c = 1/β)

Only the average iterate converges to the NE of the original game.

Step size (default, ours): β = 1 (η = 1, as MWU), chosen for exact tabular
payoffs.

Paper: Wu et al. 2024, arXiv 2405.00675, Eq. (3.3)/(4.2).

Deviations:
1. β is a step size, not the strength of a KL to π_ref: `Hyper.beta` is the
   paper's β and `Hyper.eta` is ignored.
2. The paper regresses single responses with a ½ baseline; we regress pair
   differences (same tabular minimiser).

Derivation: docs/algorithms.md#sppo
"""

from __future__ import annotations

from selfplay.algos.base import Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, StepPlan

BETA = 1.0


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(beta=BETA)


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
                c=1.0 / h.beta,
                output="main",
            ),
        )
    )


ALGORITHM = Algorithm(
    name="sppo",
    paper="Wu et al. 2024, Self-Play Preference Optimization, arXiv 2405.00675",
    objective="nash",
    default_hyper=default_hyper,
    plan=plan,
    summary="MWU with η = 1/β",
)
