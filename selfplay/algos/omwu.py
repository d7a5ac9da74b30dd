"""OMWU: optimistic multiplicative weights self-play.

Update [paper: Daskalakis & Panageas 2019 (single-sequence form); Wei, Lee,
Zhang, Luo 2021 "Linear last-iterate convergence in constrained saddle-point
optimization" (ICLR); in NLHF: Chen, Zhou, Zhang, Fazel, Du 2025,
arXiv 2512.24818]:

    π_{t+1}(y) ∝ π_t(y) · exp(η·(2·q_t(y) − q_{t−1}(y))),   q_t = P(· ≻ π_t),

i.e. one phase with opponents ((main, 2), (prev, −1)), anchor main, a = 1,
b = 0, c = η, and `prev ← main` refreshed with the pre-update policy. q_{t−1}
is the payoff already queried at the previous step (no extra queries).
At t = 0, π_{−1} = π_0 (the first step is an MWU step).

Convergence: linear last-iterate convergence to the NE of the original game
after a burn-in, when an NE with full support exists (Wei et al. for a unique
NE; Chen et al. 2025 without uniqueness).

Deviations: the theory's step is η ≤ 1/8 (for payoffs in [0, 1]); that is
instance-independent but very slow (see `default_hyper`). Wei et al. analyse
the two-sequence OMWU; the single-sequence form above is the one
ALGORITHMS.md and the NLHF papers use (they coincide up to a re-indexing of
the optimistic prediction for bilinear games).
"""

from __future__ import annotations

from selfplay.algos.base import Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, Refresh, StepPlan

ETA = 1.0


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=ETA)


def plan(h: Hyper) -> StepPlan:
    ph = Phase(sample="main", opponents=(("main", 2.0), ("prev", -1.0)), anchor="main",
               mu=None, a=1.0, b=0.0, c=h.eta, output="main")
    return StepPlan(phases=(ph,), refresh=(Refresh(dst="prev", src="main", when="before"),))


ALGORITHM = Algorithm(
    name="omwu", paper="Wei et al. 2021 (ICLR), arXiv 2006.09517; NLHF: Chen et al. 2025, "
    "arXiv 2512.24818", objective="nash", default_hyper=default_hyper, plan=plan,
    summary="π_{t+1} ∝ π_t·exp(η(2q_t − q_{t−1}))")
