"""MPO: Magnetic Preference Optimization (Wang et al. 2024, arXiv 2410.16714).

Inner loop: magnetic mirror descent [paper: Sokota et al. 2022, `ssokota/mmd`]

    π_{t+1} = argmax_π η⟨π, q_t⟩ − ηα·KL(π‖ρ) − KL(π‖π_t),
    log π_{t+1} = (log π_t + η·q_t + ηα·log ρ)/(1 + ηα) + c,

i.e. a = 1/(1+ηα), b = ηα/(1+ηα) with μ = magnet ρ, c = η/(1+ηα). Its fixed
point is π ∝ ρ·exp(q_π/α), the α-regularized NE with reference ρ.

Outer loop: the magnet ρ ← π_t is refreshed every `magnet_every` steps or,
optionally, as soon as the inner regularized gap has fallen to `magnet_tol`
× its value right after the last refresh (`Refresh.tol`). With an exact
inner solve the outer loop is the proximal point method
π_{k+1} ∝ π_k·exp(q_{π_{k+1}}/α), whose last iterate converges to a NE of
the original game (each mode of the linearised dynamics contracts by
|α/(α − iλ)| per refresh, unconditionally).

Step sizes (default, ours): adaptive α_t = L̂_t (tabular.LipschitzEstimate),
η_t = 2/α_t, magnet refreshed every 5 steps. Linearised at a full-support
NE, one inner step multiplies a mode of frequency λ by (1 + iηλ)/(1 + ηα),
which is a contraction for every η exactly when λ < α·sqrt(1 + 2/(ηα)) — so
α ≥ λ_max makes the inner loop stable whatever η is, and a larger α only
slows the outer loop. The issue's hand-tuned η = 40, α = 0.05, every 5 is
this rule at λ_max ≈ 0.05 (its 21/51-action games); at n = 5 the same values
are unstable because λ_max ≈ 0.2 there. Measured: K = 5 with ηα = 2 is as
fast as OMWU at its best step in the linear model, and the tolerance rule
(magnet_tol = 0.01) is no better than K = 5 on our game sets, so it is off.

Deviations: the paper's theory refreshes the magnet after the inner loop has
converged and its LLM runs after a fixed number of epochs; the adaptive α
and the relative-tolerance rule are ours (`Hyper.adaptive=False` gives MMD
with fixed η, α).
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
    ea = h.eta * h.alpha
    ph = Phase(
        sample="main",
        opponents=(("main", 1.0),),
        anchor="main",
        mu="magnet",
        a=1.0 / (1.0 + ea),
        b=ea / (1.0 + ea),
        c=h.eta / (1.0 + ea),
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
