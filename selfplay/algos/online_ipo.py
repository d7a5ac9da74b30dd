"""Online IPO / online mirror descent on the β-regularized game.

One gradient step on the online-IPO loss per iteration (Calandriello et al.
2024, arXiv 2403.08635; EGPO's baseline):

    log π_{t+1} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π_t} + c

i.e. a = 1 − ηβ, b = ηβ with μ = π_ref, c = η, opponent and anchor π_t: one
EGPO phase (the lead step alone). The gradient-step ↔ η mapping is EGPO's
(egpo.py): learning rate n·η·β/4 for the pair-mean IPO loss over softmax
logits. Its fixed point is π*_β.

It is also MMD with the magnet fixed at μ and α = β (Sokota et al. 2022),
with η_MMD = η/(1 − ηβ). Step size (default): MMD's theorem η_MMD ≤ α/L² =
4β (L = ½), i.e. η = 4β/(1 + 4β²) — linear convergence at rate
≈ 1/(1 + 4β²) per iteration (a few hundred iterations to 1e-8 at β = 0.1;
a larger step is unstable on games whose local frequencies λ exceed β,
since a mode multiplies by (1 + iη_MMD·λ)/(1 + η_MMD·β)).

Deviations: Calandriello et al. sample y, y' from π_t and run many
gradient steps on a replay of online data; here one exact step per round.
"""

from __future__ import annotations

from selfplay.algos.base import BETA, MD_ETA_OVER_BETA, Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=None, beta=BETA)


def resolve(h: Hyper) -> Hyper:
    """η = None -> η = η_MMD/(1 + η_MMD·β) with η_MMD = α/L² = 4β (MMD's theorem)."""
    if h.eta is not None:
        return h
    e = MD_ETA_OVER_BETA * h.beta
    return h.with_(eta=e / (1.0 + e * h.beta))


def plan(h: Hyper) -> StepPlan:
    h = resolve(h)
    eb = h.eta * h.beta
    ph = Phase(
        sample="main",
        opponents=(("main", 1.0),),
        anchor="main",
        mu="ref",
        a=1.0 - eb,
        b=eb,
        c=h.eta,
        output="main",
    )
    return StepPlan(phases=(ph,))


ALGORITHM = Algorithm(
    name="online-ipo",
    paper="Calandriello et al. 2024, Human Alignment of Large Language Models "
    "through Online Preference Optimisation, arXiv 2403.08635",
    objective="regularized",
    default_hyper=default_hyper,
    plan=plan,
    resolve=resolve,
    summary="one online-IPO gradient step per iteration",
)
