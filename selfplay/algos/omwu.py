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

Step size (default, ours): adaptive, η_t = 0.4 / L̂_t with L̂_t the local
Lipschitz constant of q in the KL geometry measured on the last two payoffs
(base.py, tabular.LipschitzEstimate; no extra queries). Why: linearised at a
full-support NE π*, e = log π − log π* evolves by e_{t+1} = e_t + ηK(2e_t −
e_{t−1}) with K = P·(diag π* − π*π*ᵀ), whose eigenvalues are iλ with
0 ≤ λ ≤ L = ½. Each mode contracts by the largest root of
r² − (1 + 2iηλ)r + iηλ = 0: ≈ 1 − (ηλ)²/2 for small ηλ, fastest (0.71) at
ηλ = 0.5, unstable beyond ηλ ≈ 0.57. So η must track 1/λ_max of the
instance: λ_max is 0.2–0.29 on small rock–paper–scissors games but 0.02–0.06
on 21–201-action full-support games, which is why the issue's hand-tuned η = 10
works at n = 21/51 and oscillates at n = 5 ("near 0.3"), and why no fixed η
suits all sizes. L̂ starts at L (η_0 = 0.8, stable on every game) and is never
above L, so the adaptive step is never below the instance-independent one.
With sampled preferences (`queries`), the noise inflates L̂ and the step
falls back to η = 0.8.

Deviations: the theory's instance-independent step (η ≤ 1/8 for payoffs in
[0, 1], Wei et al.) is far too slow, and its constants are not what limits
the step in practice; the adaptive rule is ours (`Hyper.adaptive=False`
gives plain OMWU with a fixed η). Wei et al. analyse the two-sequence OMWU;
the single-sequence form above is the one ALGORITHMS.md and the NLHF papers
use.
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
        c=h.eta,
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
