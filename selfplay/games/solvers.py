"""Exact oracles for matrix games: the NE by LP and the regularized NE.

These are the references the learning algorithms are tested against, so they
use nothing from `selfplay.algos`.

**Nash equilibrium (LP).** With ``A = P − ½`` (skew-symmetric) the symmetric
game ``max_π min_π' πᵀ P π'`` has value ½, and its NE solves

    maximise v  subject to  (Aᵀx)_j ≥ v  for all j,  Σ_i x_i = 1,  x ≥ 0,

whose optimum is v = 0 (Munos et al. 2023 §3; any symmetric zero-sum game).
`solve_nash` hands it to SciPy's HiGHS (`scipy.optimize.linprog`); the
interior-point method (with HiGHS's crossover to a vertex) is the default
because it is faster than dual simplex on large dense games.

**Regularized NE.** The β-regularized game
``J_β(π, π') = P(π ≻ π') − β·KL(π‖μ) + β·KL(π'‖μ)`` is strongly
convex-concave, so it has a unique NE π*_β, and by symmetry it is the unique
solution of the fixed point ``π = softmax(log μ + P π / β)`` (restricted to
supp μ). `solve_regularized` solves that equation by damped Newton in log
space with continuation in β, see its docstring. The duality gap and KL live in `measures` and are
re-exported here.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize
from scipy.special import logsumexp

from selfplay.errors import InputError
from selfplay.games.matrix import validate
from selfplay.games.measures import gap, kl, regularized_gap

__all__ = ["solve_nash", "solve_regularized", "gap", "regularized_gap", "kl"]

LP_METHODS = ("highs-ipm", "highs-ds", "highs")


def solve_nash(P, *, method: str = "highs-ipm") -> np.ndarray:
    """An exact NE of the symmetric game ``P`` by linear programming.

    Returns a probability vector (tiny negatives from the solver clipped,
    then renormalised). When the NE is not unique, HiGHS returns one of them.
    """
    if method not in LP_METHODS:
        raise InputError(f"unknown LP method {method!r} (choose from {', '.join(LP_METHODS)})")
    P = validate(P, source="solve_nash")
    n = P.shape[0]
    A = P - 0.5
    # Variables (x_1..x_n, v); minimise −v.
    c = np.zeros(n + 1)
    c[-1] = -1.0
    a_ub = np.hstack([-A.T, np.ones((n, 1))])  # v − (Aᵀx)_j ≤ 0
    a_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    bounds = [(0.0, None)] * n + [(-1.0, 1.0)]
    res = scipy.optimize.linprog(
        c, A_ub=a_ub, b_ub=np.zeros(n), A_eq=a_eq, b_eq=[1.0], bounds=bounds, method=method
    )
    if res.status != 0:
        raise RuntimeError(f"NE linear program failed: {res.message}")
    x = np.clip(res.x[:n], 0.0, None)
    return x / x.sum()


def solve_regularized(
    P, beta: float, mu=None, *, tol: float = 1e-12, max_iter: int = 500
) -> np.ndarray:
    """The unique NE π*_β of the β-regularized game, to ``regularized_gap ≤ tol``.

    Method: Newton's method on the log-space fixed-point residual

        r(z) = z − log μ − P·softmax(z)/β     (defined modulo constants)

    with an Armijo backtracking line search on the merit ``m(z) = ½‖Π r(z)‖²``
    (Π removes the mean; r(z + c·1) = r(z) + c·1, so only Π r matters).

    Convergence guarantee. The Jacobian is ``J = I − P S/β`` with
    ``S = diag(π) − ππᵀ``. Since ``1ᵀS = 0`` and ``P = ½·11ᵀ + A`` with A
    skew-symmetric, ``P S = A S``, whose non-zero eigenvalues are those of
    the skew-symmetric ``S^½ A S^½``, i.e. purely imaginary; hence every
    eigenvalue of J is ``1 − iλ/β ≠ 0`` and J is nonsingular everywhere. The
    Newton direction d (``J d = −Π r``) satisfies ``∇m·d = −2m < 0``, so it is
    a descent direction, and m's only stationary points are its zeros. The
    sublevel sets of m are compact modulo shifts (``|z_i − z_j|`` is bounded by
    ``|log μ_i − log μ_j| + 1/β + O(√m)``), so J⁻¹ is bounded on them and
    damped Newton with Armijo steps converges globally from any start
    (Nocedal & Wright, Thm 3.2 and 11.6), quadratically once full steps are
    accepted.

    For efficiency only (the guarantee holds at every stage), β < 1 is reached
    by continuation, as in interior-point methods: β' = 1, 0.1, 0.01, ...
    down to β, each stage warm-started from the previous one and solved to a
    loose gap ``1e-2·β'``. (Straight from μ, small β can need hundreds of
    damped steps; measured over 400 random games with β down to 1e-4, the
    continuation needed at most 62 Newton steps in all; n = 1000 at β = 1e-3
    took 1 (rps) to 57 (transitive) steps, 0.1 s to 3 s on 2 cores.) The last stage stops
    when ``regularized_gap ≤ tol``, then takes at most three full Newton
    steps while the merit keeps falling, so that the fixed-point residual
    also reaches rounding level. A stage that does not converge within
    ``max_iter`` steps raises RuntimeError: a returned π always has a
    certified gap.

    μ may have zeros: π*_β is then supported on supp μ, and the game is
    solved on that principal sub-matrix. Unnormalised μ is normalised.
    """
    P = validate(P, source="solve_regularized")
    n = P.shape[0]
    beta = _check_beta(beta)
    mu = _check_mu(mu, n)
    support = np.flatnonzero(mu > 0)
    pi = np.zeros(n)
    if support.size == 1:
        pi[support] = 1.0
        return pi
    sub = P[np.ix_(support, support)]
    logmu = np.log(mu[support])
    z = logmu.copy()
    for stage in _stages(beta):
        last = stage == beta
        z, ok = _newton(sub, stage, logmu, z, tol if last else 1e-2 * stage, max_iter, polish=last)
        if not ok:
            raise RuntimeError(f"solve_regularized: Newton did not converge at beta={stage:g}")
    pi[support] = np.exp(z)
    final = regularized_gap(P, pi, beta, mu)
    if not final <= tol:
        raise RuntimeError(f"solve_regularized did not reach gap {tol:g} (gap {final:.3g})")
    return pi


def _stages(beta: float) -> list[float]:
    """Continuation schedule 1, 0.1, 0.01, ... (all > β), then β."""
    stages = []
    b = 1.0
    while b > beta * 1.5:  # a last step of less than 1.5x is not worth a stage
        stages.append(b)
        b *= 0.1
    return stages + [beta]


def _newton(
    P: np.ndarray,
    beta: float,
    logmu: np.ndarray,
    z: np.ndarray,
    tol: float,
    max_iter: int,
    *,
    polish: bool,
) -> tuple[np.ndarray, bool]:
    """Damped Newton on the log-space residual; returns (normalised z, converged)."""
    mu = np.exp(logmu)
    z, pi, r = _residual(P, beta, logmu, z)
    m = 0.5 * float(r @ r)
    polished = -1  # full steps taken after the gap tolerance was met
    for _ in range(max_iter):
        if polished < 0 and regularized_gap(P, pi, beta, mu) <= tol:
            polished = 0
        if polished >= (3 if polish else 0):
            return z, True
        jac = _jacobian(P, beta, pi)
        try:
            d = scipy.linalg.solve(jac, -r, check_finite=False)
        except (scipy.linalg.LinAlgError, ValueError):
            return z, polished >= 0
        step = _line_search(P, beta, logmu, z, d, m, full_only=polished >= 0)
        if step is None:  # no decrease: converged to rounding level, or stalled
            return z, polished >= 0
        z, pi, r, m = step
        if polished >= 0:
            polished += 1
    return z, polished >= 0


def _line_search(P, beta, logmu, z, d, m, *, full_only: bool):
    """Armijo backtracking on the merit ½‖Π r‖² (its slope along d is −2m)."""
    t = 1.0
    for _ in range(1 if full_only else 60):
        z2, pi2, r2 = _residual(P, beta, logmu, z + t * d)
        m2 = 0.5 * float(r2 @ r2)
        if np.isfinite(m2) and m2 <= (1.0 - 2e-4 * t) * m:
            return z2, pi2, r2, m2
        t *= 0.5
    return None


def _jacobian(P, beta, pi):
    """``I − P (diag π − ππᵀ)/β``."""
    return np.eye(P.shape[0]) - (P * pi[None, :] - np.outer(P @ pi, pi)) / beta


def _residual(P, beta, logmu, z):
    """Normalise z to log π and return (z, π, Π r(z)).

    π is flushed to 0 below 1e-200: such entries change P π by far less than
    rounding, and subnormal floats make the O(n³) solve ~100x slower.
    """
    z = z - logsumexp(z)
    pi = np.exp(z)
    pi[pi < 1e-200] = 0.0
    r = z - logmu - (P @ pi) / beta
    return z, pi, r - r.mean()


def _check_beta(beta) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise InputError(f"beta must be a positive number, got {beta!r}") from None
    if not np.isfinite(b) or b <= 0:
        raise InputError(f"beta must be a positive finite number, got {beta!r}")
    return b


def _check_mu(mu, n: int) -> np.ndarray:
    if mu is None:
        return np.full(n, 1.0 / n)
    mu = np.asarray(mu, dtype=np.float64)
    if mu.shape != (n,):
        raise InputError(f"reference policy mu must have shape ({n},), got {mu.shape}")
    if not np.all(np.isfinite(mu)) or np.any(mu < 0) or mu.sum() <= 0:
        raise InputError("reference policy mu must be finite, non-negative and not all zero")
    return mu / mu.sum()
