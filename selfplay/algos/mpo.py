"""MPO: Magnetic Preference Optimization (Wang et al. 2024, arXiv 2410.16714).

Inner loop: magnetic mirror descent [paper: Sokota et al. 2022, `ssokota/mmd`]

    π_{t+1} = argmax_π η⟨π, q_t⟩ − ηα·KL(π‖ρ) − KL(π‖π_t),
    log π_{t+1} = (log π_t + η·q_t + ηα·log ρ)/(1 + ηα) + c,

i.e. a = 1/(1+ηα), b = ηα/(1+ηα) with μ = magnet ρ, c = η/(1+ηα). Its fixed
point is π ∝ ρ·exp(q_π/α), the α-regularized NE with reference ρ.

Outer loop: the magnet ρ ← π_t is refreshed every `magnet_every` steps or,
adaptively, as soon as the inner regularized gap is at most
`magnet_tol`·gap(π_t) (`Refresh.tol`). With an exact inner solve, the outer
loop is the proximal point method π_{k+1} ∝ π_k·exp(q_{π_{k+1}}/α), whose
last iterate converges to a NE of the original game.

Deviations: the paper refreshes the magnet after the inner loop has
converged (theory) or after a fixed number of epochs (LLM runs); the
relative-tolerance rule is ours (it is the inexact-proximal-point criterion:
solve each prox step to an accuracy proportional to the current gap).
"""

from __future__ import annotations

from selfplay.algos.base import Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, Refresh, StepPlan

ETA = 40.0
ALPHA = 0.05
EVERY = 5
TOL = None


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=ETA, alpha=ALPHA, magnet_every=EVERY, magnet_tol=TOL)


def plan(h: Hyper) -> StepPlan:
    ea = h.eta * h.alpha
    ph = Phase(sample="main", opponents=(("main", 1.0),), anchor="main", mu="magnet",
               a=1.0 / (1.0 + ea), b=ea / (1.0 + ea), c=h.eta / (1.0 + ea), output="main")
    rf = Refresh(dst="magnet", src="main", when="after", every=h.magnet_every,
                 tol=h.magnet_tol, tol_beta=h.alpha if h.magnet_tol is not None else None)
    return StepPlan(phases=(ph,), refresh=(rf,))


ALGORITHM = Algorithm(
    name="mpo", paper="Wang et al. 2024, Magnetic Preference Optimization, arXiv 2410.16714; "
    "MMD: Sokota et al. 2022, arXiv 2206.05825", objective="nash",
    default_hyper=default_hyper, plan=plan,
    summary="magnetic mirror descent with a periodically refreshed magnet")
