"""Nash-MP: Nash Mirror Prox (Tiapkin et al. 2025, arXiv 2505.19731).

Mirror prox on the β-regularized game (reference μ = π_ref):

    lead:   log π_{t+½} = (log π_t + η·q_{π_t}   + ηβ·log μ)/(1 + ηβ) + c
    update: log π_{t+1} = (log π_t + η·q_{π_{t+½}} + ηβ·log μ)/(1 + ηβ) + c

Both phases are anchored at π_t (the update is *not* anchored at π_{t+½}):
a = 1/(1+ηβ), b = ηβ/(1+ηβ), c = η/(1+ηβ); the second phase's opponent is
the lead policy. Two payoff vectors (rounds of preference queries) per step.

Step size: η = 1/L = 2 [paper's condition η ≤ 1/L for mirror prox], with
L = ½ the Lipschitz constant of π ↦ P(· ≻ π) from ‖·‖₁ to ‖·‖∞ modulo
constants, for any P with entries in [0, 1]: instance- and size-independent.

Rate. The abstract's claim, KL(π*_β‖π) decreasing like (1+2β)^{−N/2} in N
preference queries, reads (N = 2 rounds per iteration, η = 2) as a KL
contraction of 1/(1+ηβ) = 1/(1+2β) per iteration. That reading is right as a
worst-case bound — measured, every iteration satisfies it — but it is not the
rate one observes: asymptotically KL contracts by 1/(1+ηβ)² per iteration,
i.e. like (1+2β)^{−N}. Derivation: linearise at π*_β with e = log π −
log π*_β and K = P·(diag π*_β − π*_β π*_βᵀ), whose eigenvalues are iλ with
0 ≤ λ ≤ ½. One iteration maps a mode to m(λ)·e with
m = [1 + (iηλ − η²λ²)/s]/s, s = 1 + ηβ, and
|m|²s² = 1 − θ²(2s−1)/s² + θ⁴/s² ≤ 1 for θ = ηλ ≤ 1, so |m| ≤ 1/s, with
equality as λ → 0. Log-probabilities therefore contract by 1/(1+ηβ) and
KL(π*_β‖π) ≈ ½·Var_{π*}(e), being quadratic in e, by 1/(1+ηβ)².
tests/test_algos_rates.py checks both statements.

Deviations: none in the update; the paper's LLM version replaces each prox
step by several policy-gradient steps, ours (losses.py) by target regression.
"""

from __future__ import annotations

from selfplay.algos.base import BETA, PROX_ETA, Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=PROX_ETA, beta=BETA)


def plan(h: Hyper) -> StepPlan:
    eb = h.eta * h.beta
    a, b, c = 1.0 / (1.0 + eb), eb / (1.0 + eb), h.eta / (1.0 + eb)
    lead = Phase(
        sample="main",
        opponents=(("main", 1.0),),
        anchor="main",
        mu="ref",
        a=a,
        b=b,
        c=c,
        output="lead",
    )
    upd = Phase(
        sample="lead",
        opponents=(("lead", 1.0),),
        anchor="main",
        mu="ref",
        a=a,
        b=b,
        c=c,
        output="main",
    )
    return StepPlan(phases=(lead, upd))


ALGORITHM = Algorithm(
    name="nash-mp",
    paper="Tiapkin et al. 2025, Accelerating Nash Learning from Human Feedback "
    "via Mirror Prox, arXiv 2505.19731",
    objective="regularized",
    default_hyper=default_hyper,
    plan=plan,
    summary="mirror prox on the β-regularized game",
)
