"""EGPO: Extragradient Preference Optimization (Zhou, Fazel, Du 2025).

Extragradient on the online-IPO loss (see online_ipo.py) with a softmax
policy. Tabular form:

    lead:   log π_{t+½} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π_t}   + c
    update: log π_{t+1} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π_{t+½}} + c

i.e. a = 1 − ηβ, b = ηβ (μ = π_ref), c = η, both phases anchored at π_t.

Why this is extragradient on the online-IPO loss [derived, checked in
tests/test_algos_losses.py]: with logits θ of a softmax over n responses,
all n² ordered pairs weighted uniformly and the loss averaged over pairs,
∇_θ L_IPO(θ; opponent π) = (4/n)·(d − mean d), d = θ − log μ − q_π/β. One
gradient step with learning rate γ = n·η·β/4 from θ_t is therefore exactly
the update above with opponent π. EGPO steps once from θ_t against π_t
(lead), samples and judges against π_{t+½}, restores θ_t (and the optimiser
state) and steps again: the gradient of the second step is taken at θ_t, so
only the opponent is extrapolated — the form above, not textbook
extragradient, which would also evaluate the KL part at θ_{t+½}.

Step size: the update above with η equals Nash-MP's with
η_MP = η/(1 − ηβ) (match a = 1/(1+η_MPβ) and c = η_MP/(1+η_MPβ)), so in the
tabular case EGPO *is* mirror prox. The default η = 2/(1+2β) is Nash-MP's
η_MP = 1/L = 2; needs ηβ < 1. With an LLM the two differ: EGPO takes one
IPO gradient step anchored at π_ref (lr ↔ η as above), Nash-MP regresses
onto the closed-form target anchored at π_t.

Deviations: the paper's theory uses its own step condition in terms of β
and the payoff bound; we use the mapping above instead. Sequence log-probs
are length-normalised in the paper's LLM code (losses.sequence_logprob).
"""

from __future__ import annotations

from selfplay.algos.base import BETA, PROX_ETA, Algorithm, Hyper, check_n
from selfplay.algos.plan import Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=None, beta=BETA)


def resolve(h: Hyper) -> Hyper:
    """η = None -> η = η_MP/(1 + η_MP·β) with η_MP = 1/L = 2 (mirror prox's step)."""
    return h if h.eta is not None else h.with_(eta=PROX_ETA / (1.0 + PROX_ETA * h.beta))


def plan(h: Hyper) -> StepPlan:
    h = resolve(h)
    eb = h.eta * h.beta
    lead = Phase(
        sample="main",
        opponents=(("main", 1.0),),
        anchor="main",
        mu="ref",
        a=1.0 - eb,
        b=eb,
        c=h.eta,
        output="lead",
    )
    upd = Phase(
        sample="lead",
        opponents=(("lead", 1.0),),
        anchor="main",
        mu="ref",
        a=1.0 - eb,
        b=eb,
        c=h.eta,
        output="main",
    )
    return StepPlan(phases=(lead, upd))


ALGORITHM = Algorithm(
    name="egpo",
    paper="Zhou, Fazel, Du 2025, Extragradient Preference Optimization (EGPO), "
    "arXiv 2503.08942; code zhourunlong/EGPO",
    objective="regularized",
    default_hyper=default_hyper,
    plan=plan,
    resolve=resolve,
    summary="extragradient on the online-IPO loss",
)
