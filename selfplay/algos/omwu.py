"""OMWU: optimistic multiplicative weights self-play.

Update (one phase; q_{t−1} is the payoff already queried at the previous step):

    π_{t+1}(y) ∝ π_t(y) · exp(η·(2·q_t(y) − q_{t−1}(y))),   q_t = P(· ≻ π_t),

i.e. opponents ((main, 2), (prev, −1)), anchor main, a = 1, b = 0, c = η,
and `prev ← main` copied before the update (π_{−1} = π_0). Last iterate →
NE of the original game when a full-support NE exists.

Step size (default, ours): adaptive η_t = 0.4/L̂_t (η_0 = 0.8), L̂_t the
local Lipschitz estimate of base.py (no extra queries).

Paper: Daskalakis & Panageas 2019 (single-sequence form); Wei, Lee, Zhang,
Luo 2021 (ICLR), arXiv 2006.09517; in NLHF: Chen, Zhou, Zhang, Fazel, Du
2025, arXiv 2512.24818.

Deviations:
1. The theory's instance-independent step (η ≤ 1/8, Wei et al.) is far too
   slow; the adaptive rule is ours (`Hyper.adaptive=False` gives plain OMWU
   with a fixed η).
2. Wei et al. analyse the two-sequence OMWU; we use the single-sequence
   form, as the NLHF papers do.

Derivation (stability edge ηλ ≈ 0.57, why no fixed η suits all sizes):
docs/algorithms.md#omwu
"""

from __future__ import annotations

from selfplay.algos.base import LIPSCHITZ, OMWU_ETA_TIMES_L, Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, Refresh, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=OMWU_ETA_TIMES_L / LIPSCHITZ, adaptive=True)


def adapt(h: Hyper, lip) -> Hyper:
    return h.with_(eta=OMWU_ETA_TIMES_L / lip)


def plan(h: Hyper) -> StepPlan:
    ph = Phase(
        sample="main",
        opponents=(("main", 2.0), ("prev", -1.0)),
        anchor="main",
        mu=None,
        a=1.0,
        b=0.0,
        c=h.step,
        output="main",
    )
    return StepPlan(phases=(ph,), refresh=(Refresh(dst="prev", src="main", when="before"),))


ALGORITHM = Algorithm(
    name="omwu",
    paper="Wei et al. 2021 (ICLR), arXiv 2006.09517; NLHF: Chen et al. 2025, arXiv 2512.24818",
    objective="nash",
    default_hyper=default_hyper,
    plan=plan,
    summary="π_{t+1} ∝ π_t·exp(η(2q_t − q_{t−1}))",
    adapt=adapt,
)
