"""MWU self-play (multiplicative weights / Hedge on the preference game).

Update [paper: SPPO, Wu et al. 2024, arXiv 2405.00675, tabular form; Freund &
Schapire 1999 for MWU in games]:

    π_{t+1}(y) ∝ π_t(y) · exp(η · P(y ≻ π_t)),
    i.e. log π_{t+1} = log π_t + η·q_t + c   (a = 1, b = 0, c = η).

One phase: π_t samples, is the opponent and is the anchor.

Convergence: the *average* iterate converges to a Nash equilibrium (no-regret,
gap of the average O(log n/(ηT) + η)); the *last* iterate does not — on
rock–paper–scissors it spirals outwards towards the boundary of the simplex
(KL(π*‖π_t) is non-decreasing for the continuous-time flow and strictly
increasing for the discrete one). tests/test_algos_tabular.py asserts this.

Deviations: none. The default η = 1 is not from a paper (MWU has no
anytime step size that makes its last iterate converge; the average iterate's
guarantee wants η ≈ √(log n / T)).
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
                c=h.eta,
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
