"""Fits on judged comparisons: Bradley–Terry/Elo and the length-controlled win rate.

Pure numpy/scipy (no torch, no ray); `selfplay.games.league` re-exports both
functions. The formulas and why: docs/evaluation.md#statistics.

**Bradley–Terry.** ``P(i ≻ j) = s_i / (s_i + s_j)``, fitted to a win-rate table
``W`` with ``n_ij`` comparisons per pair by Hunter's (2004) MM algorithm,

    s_i ← (Σ_j w_ij) / Σ_{j≠i} n_ij / (s_i + s_j),     w_ij = W_ij · n_ij,

and reported as Elo, ``400·log10 s_i`` (so a 400-point gap is 10:1 odds), shifted
to mean 1000 (or to put policy ``anchor`` at 1000). ``prior`` adds that many
virtual wins to each side of every pair (a Beta(prior, prior) smoothing of each
cell): the MLE does not exist when a policy wins or loses every comparison, and
with ``prior > 0`` it always does. ``prior = 0`` is the plain MLE.

**Length control** (AlpacaEval 2.0's idea, Dubois et al. 2024). A logistic
regression of the preference ``y`` (a 0/1 outcome or the judge's probability,
used as a soft label) on the standardised length difference
``x = (len(y_i) − len(y_j)) / sd(len diff)``,

    y ~ σ(a + b·x),

fitted by Newton's method (IRLS); the length-controlled win rate is ``σ(a)``, the
win rate at zero length difference. Interval: the delta method on ``a`` with the
cluster-robust (sandwich) variance over units (prompts), a t quantile with
U − 1 degrees of freedom, mapped through σ. Deviations from AlpacaEval: the length
term is linear in x (AlpacaEval uses tanh(x) and adds instruction and model terms).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from scipy.stats import norm, t

from selfplay.errors import InputError

#: Elo points per natural-log unit of strength: 400 / ln 10.
ELO_SCALE = 400.0 / np.log(10.0)


def check_level(level) -> float:
    """A confidence level in (0, 1), else a one-line `InputError`."""
    try:
        x = float(level)
    except (TypeError, ValueError):
        raise InputError(f"confidence level must be a number in (0, 1), got {level!r}") from None
    if not 0.0 < x < 1.0:
        raise InputError(f"confidence level must be in (0, 1), got {level!r}")
    return x


def wilson(rate: float, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval for a proportion ``rate`` out of ``n``."""
    if n < 1:
        return 0.0, 1.0
    z = float(norm.ppf(0.5 + level / 2))
    d = 1.0 + z * z / n
    centre = (rate + z * z / (2 * n)) / d
    half = z / d * np.sqrt(max(rate * (1 - rate), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def t_crit(dof, level: float):
    """Two-sided t critical value (inf for dof < 1)."""
    dof = np.asarray(dof, dtype=np.float64)
    out = np.full(dof.shape, np.inf)
    ok = dof >= 1
    out[ok] = t.ppf(0.5 + level / 2, dof[ok])
    return out if out.ndim else float(out)


def bradley_terry(
    W,
    units,
    *,
    prior: float = 0.5,
    anchor: int | None = None,
    tol: float = 1e-10,
    max_iter: int = 100_000,
) -> np.ndarray:
    """Elo ratings [m] from the MM fit of Bradley–Terry to ``W`` (module doc).

    ``units[i, j]`` is the number of comparisons behind ``W[i, j]`` (its diagonal
    and NaN cells are ignored). Mean 1000, or ``anchor``'s rating 1000.
    """
    W = np.asarray(W, dtype=np.float64)
    n = np.asarray(units, dtype=np.float64)
    m = W.shape[0]
    if W.shape != (m, m) or n.shape != (m, m):
        raise InputError(
            f"bradley_terry: W and units must be square and alike, got {W.shape}, {n.shape}"
        )
    if m == 1:
        return np.array([1000.0])
    off = ~np.eye(m, dtype=bool) & np.isfinite(W)
    n = np.where(off, (n + n.T) / 2, 0.0)  # a pair's comparisons, counted once per side
    wins = np.where(off, np.nan_to_num(W) * n, 0.0) + prior * (~np.eye(m, dtype=bool))
    n = n + 2 * prior * (~np.eye(m, dtype=bool))
    if not _strongly_connected(wins > 0):
        raise InputError(
            "bradley_terry: a policy wins or loses every comparison, the MLE does not exist "
            "(use prior > 0)"
        )
    total = wins.sum(axis=1)
    s = np.ones(m)
    for _ in range(max_iter):
        denom = (n / (s[:, None] + s[None, :])).sum(axis=1)
        new = total / denom
        new /= np.exp(np.log(new).mean())
        done = np.max(np.abs(np.log(new) - np.log(s))) < tol
        s = new
        if done:
            break
    elo = ELO_SCALE * np.log(s)
    return elo - (elo[anchor] if anchor is not None else elo.mean()) + 1000.0


def _strongly_connected(adj: np.ndarray) -> bool:
    """Every node reaches every other through edges i → j where adj[i, j]."""
    m = adj.shape[0]
    for a in (adj, adj.T):
        seen = np.zeros(m, dtype=bool)
        seen[0] = True
        frontier = seen.copy()
        while frontier.any():
            frontier = a[frontier].any(axis=0) & ~seen
            seen |= frontier
        if not seen.all():
            return False
    return True


def length_controlled(p, len_diff, level: float = 0.95) -> tuple[float, float, float]:
    """Length-controlled win rate ``σ(a)`` and its interval (module doc).

    ``p`` and ``len_diff`` are [U, S] (units × samples; a 1-D array is [U, 1]);
    a NaN in either masks the comparison. Edge cases: when every label is equal,
    the fit is at the boundary and this returns that rate with the Wilson interval
    at n = units; when every length difference is equal (sd 0) the model is the
    intercept alone (σ(a) = the pooled win rate); one unit gives the interval [0, 1].
    """
    level = check_level(level)
    y, d = _as_units(p, "p"), _as_units(len_diff, "len_diff")
    if y.shape != d.shape:
        raise InputError(f"length_controlled: p is {y.shape}, len_diff is {d.shape}")
    ok = np.isfinite(y) & np.isfinite(d)
    if np.any((y[ok] < 0) | (y[ok] > 1)):
        raise InputError("length_controlled: preferences must lie in [0, 1]")
    unit = np.broadcast_to(np.arange(y.shape[0])[:, None], y.shape)[ok]
    y, d = y[ok], d[ok]
    groups = np.unique(unit).size
    if y.size == 0:
        return float("nan"), float("nan"), float("nan")
    if np.ptp(y) < 1e-12:
        return (float(y[0]), *wilson(float(y[0]), groups, level))
    sd = d.std()
    X = np.column_stack([np.ones_like(d), d / sd]) if sd > 1e-12 else np.ones((d.size, 1))
    beta, H = _logistic_fit(X, y)
    if groups < 2:
        return float(expit(beta[0])), 0.0, 1.0
    resid = (y - expit(X @ beta))[:, None] * X
    scores = np.zeros((groups, X.shape[1]))
    np.add.at(scores, np.unique(unit, return_inverse=True)[1], resid)
    Hinv = np.linalg.inv(H)
    V = Hinv @ scores.T @ scores @ Hinv * groups / (groups - 1)
    half = t_crit(groups - 1, level) * np.sqrt(max(V[0, 0], 0.0))
    a = beta[0]
    return float(expit(a)), float(expit(a - half)), float(expit(a + half))


def _logistic_fit(X, y, *, ridge: float = 1e-8, max_iter: int = 100):
    """Newton/IRLS for the soft-label logistic likelihood Σ y log μ + (1−y) log(1−μ).

    A ridge of 1e-8 keeps the Hessian invertible under separation. Returns
    (β, Hessian of the negative log-likelihood at β).
    """
    beta = np.zeros(X.shape[1])
    reg = ridge * np.eye(X.shape[1])

    def nll(b):
        z = X @ b
        return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5 * ridge * b @ b)

    cur = nll(beta)
    for _ in range(max_iter):
        mu = expit(X @ beta)
        g = X.T @ (y - mu) - ridge * beta
        H = (X * (mu * (1 - mu))[:, None]).T @ X + reg
        step = np.linalg.solve(H, g)
        tstep = 1.0
        while tstep > 1e-8:
            new = nll(beta + tstep * step)
            if new <= cur + 1e-12:
                break
            tstep /= 2
        beta = beta + tstep * step
        done = abs(cur - new) < 1e-12 * max(1.0, abs(cur)) and np.max(np.abs(tstep * step)) < 1e-10
        cur = new
        if done:
            break
    mu = expit(X @ beta)
    return beta, (X * (mu * (1 - mu))[:, None]).T @ X + reg


def _as_units(a, name: str) -> np.ndarray:
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name}: not a numeric array") from None
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise InputError(f"{name}: expected [units, samples], got shape {a.shape}")
    return a
