"""Hyperparameters, the `Algorithm` record and the registry.

Every default lives here, once: the per-algorithm modules build their
`default_hyper(n)` by replacing fields of `Hyper()` with the constants below,
and the CLI/config only override what the user names.

Hyperparameters may be Python numbers or torch tensors of shape `[B]` or
`[B, 1]` (one value per game): the tabular runner sweeps many games ×
hyperparameters in one batched call, and the plan arithmetic (`a = 1/(1+ηβ)`,
...) is written so that it works for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from selfplay.algos.plan import Num, StepPlan
from selfplay.errors import InputError

#: β of the regularized game, shared by every "regularized" algorithm (the
#: project's reference value; the CLI's --beta overrides it).
BETA = 0.1
#: L: Lipschitz constant of π ↦ P(· ≻ π) from (‖·‖₁) to (‖·‖∞ modulo
#: constants), for any P with entries in [0, 1]: |Σ_j (P_ij − ½)·v_j| ≤ ½‖v‖₁
#: when Σ v = 0. Every instance-independent step size below is a multiple of 1/L.
LIPSCHITZ = 0.5
#: Mirror prox / extragradient step η = 1/L (Nash-MP's and EGPO's theory).
PROX_ETA = 1.0 / LIPSCHITZ
#: Nash-MD's largest mixture weight ηβ: with a constant step its fixed point is
#: biased by O(η) (see nash_md.py); 0.01 trades a ~1e-6..1e-8 floor against speed.
NASH_MD_ETA_BETA = 0.01
#: ... and its largest η: the fixed point's regularized gap grows like
#: η²·Var_π(K q)/β (nash_md.py), so at small β (0.01) a step that keeps ηβ =
#: 0.01 leaves a floor above the EGPO authors' own step's; η ≤ 0.25 halves
#: their mixture weight there and leaves β ≥ 0.025 unchanged.
NASH_MD_ETA_MAX = 0.25

# Adaptive step sizes (OMWU, MPO; tabular runner). The local Lipschitz
# constant of the payoff in the KL geometry at π_t,
#     L̂_t = sqrt(Var_{π_t}(q_t − q_{t−1}) / Var_{π_t}(log π_t − log π_{t−1})),
# is what bounds the stable step (linearised at a full-support NE the
# dynamics rotate with frequencies λ ≤ L̂ ≤ L, docs/algorithms.md#omwu). It is measured
# on payoffs already queried, so it costs no queries.
ADAPT_FORGET = 0.99  # running max of L̂ forgets old peaks at this rate per step
ADAPT_GROW = 1.05  # the step may grow by at most this factor per step
ADAPT_FLOOR = 1e-4  # L̂ is clamped to [ADAPT_FLOOR, LIPSCHITZ]
#: OMWU: η·λ_max ≤ 0.57 is locally stable (0.5 is the fastest); η = 0.4/L̂.
OMWU_ETA_TIMES_L = 0.4
#: MPO: α = L̂ keeps the inner MMD loop stable for any η (|1 + iηλ| < 1 + ηα
#: when λ ≤ α); ηα = 2 and a magnet refresh every 5 steps are the original
#: hand-tuned ratios (η = 40, α = 0.05), which are this rule at L̂ = 0.05.
MPO_ALPHA_OVER_L = 1.0
MPO_ETA_ALPHA = 2.0
MPO_EVERY = 5
#: Online IPO and Nash-MD (regularized mirror descent, one payoff per step):
#: linearised at the fixed point a mode of frequency λ ≤ L̂ multiplies by
#: 1 − ηβ + iηλ (online IPO) or (1 − ηβ)(1 + iηλ) (Nash-MD). η = β/(β² + L̂²)
#: minimises the online-IPO factor at λ = L̂ (|·|² = 1 − ηβ there) and is
#: stable for both up to λ ≈ √2·L̂; at L̂ = L it is MMD's theorem step
#: η_MMD = β/L² (Sokota et al. 2022) mapped to the explicit form. Nash-MD also
#: caps ηβ at NASH_MD_ETA_BETA (its O(ηβ) bias, nash_md.py).


def md_eta(beta, lip):
    """η = β/(β² + L̂²): the regularized mirror-descent step at local Lipschitz L̂."""
    return beta / (beta * beta + lip * lip)


@dataclass(frozen=True)
class Hyper:
    """Hyperparameters of one run (or one per game, as tensors).

    eta:          step size η (the coefficient of ĝ before normalisation);
                  None = the algorithm's default rule for the given β
                  (`Algorithm.resolve`), so overriding β keeps η consistent.
    beta:         β, strength of KL(π‖μ) in the regularized game (0 = none).
    alpha:        α, MPO's magnet strength (MMD's regularisation).
    magnet_every: MPO refreshes its magnet every this many steps ...
    magnet_tol:   ... or, if set, as soon as the inner regularized gap of π_t
                  (game regularized by α towards the magnet) has fallen to
                  magnet_tol × its value right after the last refresh (tabular
                  only; the gap comes from payoffs already queried).
    adaptive:     tabular runner only: re-derive the step from the measured
                  local Lipschitz constant L̂_t every step (`Algorithm.adapt`);
                  the values above are then the step-0 values (at L̂ = L). A
                  user-given η should come with adaptive=False.
    """

    eta: Num | None = 1.0
    beta: Num = 0.0
    alpha: Num = 0.0
    magnet_every: Num = 1
    magnet_tol: Num | None = None
    adaptive: bool = False

    @property
    def step(self) -> Num:
        """η, resolved (`Algorithm.resolve` replaces None by the default rule)."""
        if self.eta is None:
            raise ValueError("η is unresolved: call Algorithm.resolve first")
        return self.eta

    def with_(self, **kw) -> Hyper:
        return replace(self, **kw)


Objective = Literal["nash", "regularized"]


@dataclass(frozen=True)
class Algorithm:
    """One NLHF algorithm: its step plan as a function of the hyperparameters.

    objective: which game's equilibrium the last iterate converges to
               ("nash": the original game; "regularized": the β-regularized
               game with reference μ).
    """

    name: str
    paper: str
    objective: Objective
    default_hyper: Callable[[int], Hyper]
    plan: Callable[[Hyper], StepPlan]
    summary: str = ""
    #: (hyper, L̂ [B, 1]) -> hyper for this step, used when hyper.adaptive.
    adapt: Callable[[Hyper, object], Hyper] | None = None
    #: fills in defaults that depend on other fields (η = None -> η(β)).
    resolve: Callable[[Hyper], Hyper] = lambda h: h


def check_n(n: int | None) -> int | None:
    """n, the number of distinct responses; None: an open response space (text)."""
    if n is None:
        return None
    if int(n) < 2:
        raise InputError(f"a game needs at least 2 actions, got n={n}")
    return int(n)
