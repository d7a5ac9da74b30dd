"""Online IPO / online mirror descent on the β-regularized game.

Update (one phase; opponent and anchor π_t, μ = π_ref):

    log π_{t+1} = (1−ηβ)·log π_t + ηβ·log μ + η·q_{π_t} + c

i.e. a = 1 − ηβ, b = ηβ, c = η: EGPO's lead phase alone, one IPO gradient
step (learning rate n·η·β/4 in the tabular analysis). Also MMD with the
magnet fixed at μ, α = β and η_MMD = η/(1 − ηβ). Last iterate → π*_β.

Step size (default, Sokota et al. 2022): MMD's theorem η_MMD ≤ α/L² =
4β (L = ½), i.e. η = 4β/(1 + 4β²) — linear convergence at rate
≈ 1/(1 + 4β²) per iteration (a few hundred iterations to 1e-8 at β = 0.1;
a larger step is unstable on games whose local frequencies λ exceed β,
since a mode multiplies by (1 + iη_MMD·λ)/(1 + η_MMD·β)). That is
η = β/(β² + L²); the tabular default replaces L by the measured L̂_t
(`adapt`, base.md_eta), which is what makes small β (0.01) converge.

Paper: Calandriello et al. 2024, arXiv 2403.08635 (EGPO's baseline).

Deviations:
1. The paper samples y, y' from π_t and runs many gradient steps on a replay
   of online data; here one exact step per round.

Derivation: docs/algorithms.md#online-ipo
"""

from __future__ import annotations

from selfplay.algos.base import BETA, LIPSCHITZ, Algorithm, Hyper, check_n, md_eta
from selfplay.algos.plan import Phase, StepPlan


def default_hyper(n: int) -> Hyper:
    check_n(n)
    return Hyper(eta=None, beta=BETA, adaptive=True)


def resolve(h: Hyper) -> Hyper:
    """η = None -> η = β/(β² + L²) = η_MMD/(1 + η_MMD·β), η_MMD = α/L² = 4β (MMD's theorem)."""
    return h if h.eta is not None else h.with_(eta=md_eta(h.beta, LIPSCHITZ))


def adapt(h: Hyper, lip) -> Hyper:
    """Tabular default: η_t = β/(β² + L̂_t²) (base.md_eta)."""
    return h.with_(eta=md_eta(h.beta, lip))


def plan(h: Hyper) -> StepPlan:
    h = resolve(h)
    eb = h.step * h.beta
    ph = Phase(
        sample="main",
        opponents=(("main", 1.0),),
        anchor="main",
        mu="ref",
        a=1.0 - eb,
        b=eb,
        c=h.step,
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
    adapt=adapt,
)
