"""MPO: Magnetic Preference Optimization (magnetic mirror descent, refreshed magnet).

Update (one phase; MMD step towards the magnet ρ, which fills the μ slot):

    log π_{t+1} = (log π_t + η·q_t + ηα·log ρ)/(1 + ηα) + c,

i.e. a = 1/(1+ηα), b = ηα/(1+ηα), c = η/(1+ηα), opponent π_t; then
ρ ← π_{t+1} every `magnet_every` steps or, optionally (tabular only), when
the inner regularized gap has fallen to `magnet_tol` × its value after the
last refresh. Last iterate → NE of the original game.

Step size (default, ours): adaptive α_t = L̂_t, η_t = 2/α_t (α = ½, η = 4 at
step 0), magnet refreshed every 5 steps (base.py).

Paper: Wang et al. 2024, arXiv 2410.16714; MMD: Sokota et al. 2022,
arXiv 2206.05825 (code ssokota/mmd).

Deviations:
1. The paper's theory refreshes the magnet after the inner loop has
   converged (its LLM runs after a fixed number of epochs); we refresh every
   K steps or by a relative-tolerance rule (off by default).
2. The adaptive α is ours; `Hyper.adaptive=False` gives MMD with fixed η, α.

Derivation (stability for any η when α ≥ λ_max, the proximal-point outer
loop, the hand-tuned values): docs/algorithms.md#mpo
"""

from __future__ import annotations

from selfplay.algos.base import (
    LIPSCHITZ,
    MPO_ALPHA_OVER_L,
    MPO_ETA_ALPHA,
    MPO_EVERY,
    Algorithm,
    Hyper,
    check_n,
)
from selfplay.algos.plan import Phase, Refresh, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    alpha = MPO_ALPHA_OVER_L * LIPSCHITZ
    return Hyper(eta=MPO_ETA_ALPHA / alpha, alpha=alpha, magnet_every=MPO_EVERY, adaptive=True)


def adapt(h: Hyper, lip) -> Hyper:
    alpha = MPO_ALPHA_OVER_L * lip
    return h.with_(alpha=alpha, eta=MPO_ETA_ALPHA / alpha)


def plan(h: Hyper) -> StepPlan:
    ea = h.step * h.alpha
    ph = Phase(
        sample="main",
        opponents=(("main", 1.0),),
        anchor="main",
        mu="magnet",
        a=1.0 / (1.0 + ea),
        b=ea / (1.0 + ea),
        c=h.step / (1.0 + ea),
        output="main",
    )
    rf = Refresh(
        dst="magnet",
        src="main",
        when="after",
        every=h.magnet_every,
        tol=h.magnet_tol,
        tol_beta=h.alpha if h.magnet_tol is not None else None,
    )
    return StepPlan(phases=(ph,), refresh=(rf,))


ALGORITHM = Algorithm(
    name="mpo",
    paper="Wang et al. 2024, Magnetic Preference Optimization, arXiv 2410.16714; "
    "MMD: Sokota et al. 2022, arXiv 2206.05825",
    objective="nash",
    default_hyper=default_hyper,
    plan=plan,
    summary="magnetic mirror descent with a periodically refreshed magnet",
    adapt=adapt,
)
