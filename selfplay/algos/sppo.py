"""SPPO: Self-Play Preference Optimization (Wu et al. 2024, arXiv 2405.00675).

Tabular update [paper, Eq. (3.3)/(4.2)]: MWU with step η = 1/β,

    π_{t+1}(y) ∝ π_t(y) · exp(P(y ≻ π_t) / β)     (a = 1, b = 0, c = 1/β).

The LLM loss is the paper's square loss, which is our target regression with
this plan: (log π_θ(y)/π_t(y) − (P(y ≻ π_t) − ½)/β)²; the ½ is a constant
that the pairwise difference removes (the paper regresses single responses
with a baseline ½ instead of pairs — same minimiser in the tabular case).

Convergence: as MWU, only the average iterate converges to the NE of the
original game (so `objective = "nash"`); β here is a step size, not the
strength of a KL to π_ref (SPPO's fixed-point analysis has no reference
regularisation).

Deviations: the paper's β is in the denominator; our `Hyper.beta` is that β
and `Hyper.eta` is ignored. The default β = 1 (η = 1, as MWU) is ours, chosen
for exact tabular payoffs, not taken from the paper's LLM runs.
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
