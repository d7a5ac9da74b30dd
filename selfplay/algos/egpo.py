"""EGPO: Extragradient Preference Optimization (extragradient on the online-IPO loss).

Update (two phases, both anchored at π_t, μ = π_ref):

    lead:   log π_{t+½} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π_t}     + c
    update: log π_{t+1} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π_{t+½}} + c

i.e. a = 1 − ηβ, b = ηβ, c = η. In the LLM, each phase is one IPO gradient
step from θ_t (θ_t and the optimiser state are restored before the second),
with learning rate n·η·β/4 in the tabular analysis. Last iterate → π*_β.

Step size: η = 2/(1+2β), i.e. Nash-MP's η_MP = 1/L = 2 under the mapping
η_MP = η/(1 − ηβ): in tabular form EGPO is Nash-MP reparametrised. Needs
ηβ < 1.

Paper: Zhou, Fazel, Du 2025, arXiv 2503.08942 (code zhourunlong/EGPO; the
tabular form is ours).

Deviations:
1. The paper's theory uses its own step condition in β and the payoff
   bound; we use the Nash-MP mapping instead.
2. The paper's code length-normalises sequence log-probs; that is an option
   here (losses.sequence_logprob), off by default.

Derivation (why this is extragradient on IPO, the mapping to Nash-MP):
docs/algorithms.md#egpo
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
    eb = h.step * h.beta
    lead = Phase(
        sample="main",
        opponents=(("main", 1.0),),
        anchor="main",
        mu="ref",
        a=1.0 - eb,
        b=eb,
        c=h.step,
        output="lead",
    )
    upd = Phase(
        sample="lead",
        opponents=(("lead", 1.0),),
        anchor="main",
        mu="ref",
        a=1.0 - eb,
        b=eb,
        c=h.step,
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
