"""A league of policies: win rates with intervals, exploitability, league NE, Elo.

Pure numpy/scipy; the statistics behind `selfplay eval`. Derivations
and the calibration evidence: docs/evaluation.md#statistics.

Input: ``pairs = {(i, j): p}`` with ``p`` [U, S] the judge's ``P(y_i ≻ y_j)``
(probabilities or 0/1 outcomes; NaN masks a comparison). Rows are the U
clustering units (prompts; for the token and sequence games, each independent
draw of the single prompt), the same units in the same order for every pair;
columns are the S sample pairs judged on that unit.

* **Win rate.** ``W[i, j]`` = the mean over units of the per-unit mean (units with
  no unmasked comparison are dropped from that cell), ``W[j, i] = 1 − W[i, j]``,
  diagonal exactly ½.
* **Interval** (cluster-robust): the t-interval on the per-unit means,
  ``W ± t_{U−1, (1+level)/2} · sd/√U``, clipped to [0, 1]; the samples of one
  prompt are correlated, their prompt is the unit. Degenerate cells: U = 1 gives
  [0, 1] (no between-unit variance to estimate); sd = 0 (every unit's mean equal,
  e.g. a policy that wins every comparison) gives the Wilson interval at n = U
  instead of a zero-width interval (the t-interval's width would be 0).
* **Exploitability** of policy i in the league: ``2·max_{j≠i} W[j, i] − 1``. The
  issue writes ``2·max_j W[j][i] − 1``; with j = i allowed that is
  ``max(0, ours)``, ≥ 0 by construction since W[i, i] = ½, so it cannot show a
  policy that beats every other member (ours is then negative). Interval: a
  simultaneous (sup-t) band over the cells ``W[j, i], j ≠ i``, from a bootstrap
  over units that resamples prompts jointly for all cells (they share prompts):
  ``c`` is the ``level`` quantile of ``max_{j≠i} |W*[j, i] − W[j, i]| / se[j, i]``
  (never below the cells' own t critical values), and the interval is
  ``[2·max_j L_j − 1, 2·max_j U_j − 1]`` with ``L_j, U_j = W[j, i] ∓ c·se[j, i]``.
  Since max is monotone, the band covering every cell implies the interval covers
  the true exploitability: coverage ≥ level, also when several cells tie at the
  max (the NE case), where a percentile bootstrap of the max undercovers (it is
  biased up). The point estimate is the plug-in max, biased upward by noise.
* **League NE**: the LP NE (`selfplay.games.solve_nash`) of the symmetric game W.
* **Elo** and **length control**: `selfplay.games.ratings`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from selfplay.errors import InputError
from selfplay.games.matrix import validate
from selfplay.games.ratings import (
    bradley_terry,
    check_level,
    length_controlled,
    t_crit,
    wilson,
)
from selfplay.games.solvers import solve_nash

__all__ = [
    "WinRates",
    "win_rates",
    "exploitability",
    "league_nash",
    "bradley_terry",
    "length_controlled",
    "exact_win_rates",
    "league_report",
]


@dataclass(frozen=True)
class WinRates:
    """Arrays [m, m] (``unit_means`` [m, m, U], NaN where a unit has no comparison;
    its lower triangle is 1 − the upper, its diagonal ½). ``se`` is the standard
    error behind each interval (the Wilson half-width / z for sd = 0 cells, inf
    for U < 2, 0 on the diagonal)."""

    win_rate: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    units: np.ndarray
    se: np.ndarray
    unit_means: np.ndarray
    level: float


def win_rates(pairs, m: int, level: float = 0.95) -> WinRates:
    """The win-rate table with a cluster-robust interval per cell (module doc)."""
    level = check_level(level)
    M = _unit_means(pairs, m)
    n = np.isfinite(M).sum(axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty cells: NaN on purpose
        W = np.nanmean(M, axis=2)
        sd = np.nanstd(M, axis=2, ddof=1) if M.shape[2] > 1 else np.full((m, m), np.nan)
    se = np.where(n >= 2, sd / np.sqrt(np.maximum(n, 1)), np.inf)
    crit = t_crit(n - 1, level)
    low, high = np.clip(W - crit * se, 0, 1), np.clip(W + crit * se, 0, 1)
    z = float(norm.ppf(0.5 + level / 2))
    for i, j in np.argwhere((n >= 2) & (sd < 1e-12)):
        low[i, j], high[i, j] = wilson(W[i, j], int(n[i, j]), level)
        se[i, j] = (high[i, j] - low[i, j]) / (2 * z)
    low[n == 0] = high[n == 0] = np.nan
    eye = np.eye(m, dtype=bool)
    W[eye], low[eye], high[eye], se[eye], n[eye] = 0.5, 0.5, 0.5, 0.0, 0
    return WinRates(W, low, high, n, se, M, level)


def _unit_means(pairs, m: int) -> np.ndarray:
    """[m, m, U] per-unit means; checks the pairs."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise InputError(f"win_rates: m must be a positive integer, got {m!r}")
    M, seen = np.full((m, m, 0), np.nan), set()
    for key, p in dict(pairs).items():
        try:
            i, j = (int(k) for k in key)
        except (TypeError, ValueError):
            raise InputError(f"win_rates: a pair key must be (i, j), got {key!r}") from None
        if not (0 <= i < m and 0 <= j < m) or i == j:
            raise InputError(f"win_rates: bad pair {key!r} for a league of {m}")
        if (min(i, j), max(i, j)) in seen:
            raise InputError(f"win_rates: pair ({min(i, j)}, {max(i, j)}) given twice")
        seen.add((min(i, j), max(i, j)))
        try:
            p = np.asarray(p, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"win_rates: pair {key!r} is not numeric") from None
        p = p[:, None] if p.ndim == 1 else p
        if p.ndim != 2:
            raise InputError(f"win_rates: pair {key!r} must be [units, samples], got {p.shape}")
        if np.any((p < 0) | (p > 1)):
            raise InputError(f"win_rates: pair {key!r} has preferences outside [0, 1]")
        if len(seen) == 1:
            M = np.full((m, m, p.shape[0]), np.nan)
            M[np.arange(m), np.arange(m)] = 0.5
        elif p.shape[0] != M.shape[2]:
            raise InputError(f"win_rates: pair {key!r} has {p.shape[0]} units, others {M.shape[2]}")
        if i > j:
            i, j, p = j, i, 1.0 - p
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN unit is NaN
            u = np.nanmean(p, axis=1) if p.shape[1] else np.full(p.shape[0], np.nan)
        M[i, j], M[j, i] = u, 1.0 - u
    missing = [(i, j) for i in range(m) for j in range(i + 1, m) if (i, j) not in seen]
    if missing:
        raise InputError(f"win_rates: no comparisons given for pair {missing[0]}")
    return M


def exploitability(wr: WinRates, level: float = 0.95, boot: int = 2000, seed: int = 0):
    """(estimate, low, high), arrays [m]: ``2·max_{j≠i} W[j, i] − 1`` and its sup-t
    bootstrap interval (module doc). NaN for a league of one or an all-NaN column."""
    level = check_level(level)
    if isinstance(boot, bool) or not isinstance(boot, (int, np.integer)) or boot < 1:
        raise InputError(f"exploitability: boot must be a positive integer, got {boot!r}")
    W, se, M = wr.win_rate, wr.se, wr.unit_means
    m, U = M.shape[0], M.shape[2]
    est, low, high = (np.full(m, np.nan) for _ in range(3))
    if m < 2:
        return est, low, high
    if U == 0:
        return est, low, high
    # counts[b, u]: how often replicate b drew unit u (U draws with replacement)
    draws = np.random.default_rng(seed).integers(0, U, size=(boot, U))
    counts = np.bincount((np.arange(boot)[:, None] * U + draws).ravel(), minlength=boot * U)
    counts = counts.reshape(boot, U).astype(np.float64)
    finite = np.isfinite(M).reshape(m * m, U)
    sums = counts @ np.nan_to_num(M).reshape(m * m, U).T
    drawn = counts @ finite.T.astype(np.float64) if not finite.all() else U
    with np.errstate(invalid="ignore", divide="ignore"):
        Wb = (sums / drawn).reshape(boot, m, m)
        dev = np.abs(Wb - W) / se
    dev[~np.isfinite(dev)] = 0.0  # se = 0 (diagonal), se = inf (U < 2), empty replicates
    crit = t_crit(wr.units - 1, level)
    for i in range(m):
        others = [j for j in range(m) if j != i and np.isfinite(W[j, i])]
        if not others:
            continue
        col = W[others, i]
        c = max(np.quantile(dev[:, others, i].max(axis=1), level), crit[others, i].max())
        with np.errstate(invalid="ignore"):
            lo = np.clip(np.nan_to_num(col - c * se[others, i], nan=0.0, neginf=0.0), 0, 1)
            hi = np.clip(np.nan_to_num(col + c * se[others, i], nan=1.0, posinf=1.0), 0, 1)
        est[i], low[i], high[i] = 2 * col.max() - 1, 2 * lo.max() - 1, 2 * hi.max() - 1
    return est, low, high


def league_nash(W) -> np.ndarray:
    """The NE of the symmetric zero-sum game with payoff ``W − ½`` (LP, `solve_nash`)."""
    W = np.asarray(W, dtype=np.float64)
    if W.shape == (1, 1):
        return np.ones(1)
    if not np.all(np.isfinite(W)):
        raise InputError("league_nash: the win-rate table has an empty cell")
    return solve_nash(validate(W, source="league win rates"))


def exact_win_rates(policies, P) -> np.ndarray:
    """``W[i, j] = π_iᵀ P π_j`` for policies [m, n] over the n responses of ``P``."""
    P = validate(P, source="exact_win_rates")
    pi = np.asarray(policies, dtype=np.float64)
    if pi.ndim != 2 or pi.shape[1] != P.shape[0]:
        raise InputError(f"exact_win_rates: policies must be [m, {P.shape[0]}], got {pi.shape}")
    if np.any(pi < 0) or np.any(np.abs(pi.sum(axis=1) - 1) > 1e-6):
        raise InputError("exact_win_rates: each policy must be a probability vector")
    W = pi @ P @ pi.T
    W = (W - W.T + 1) / 2  # exact P + Pᵀ = 1 up to rounding
    np.fill_diagonal(W, 0.5)
    return W


def league_report(
    names,
    pairs,
    lengths=None,
    *,
    level: float = 0.95,
    boot: int = 2000,
    seed: int = 0,
) -> dict:
    """JSON-safe report (NaN → None): ``policies, win_rate, ci_low, ci_high,
    exploitability, exploitability_low, exploitability_high, league_nash, elo,
    units`` and, with ``lengths = {(i, j): len(y_i) − len(y_j)}`` [U, S] aligned
    with ``pairs``, ``lc_win_rate, lc_ci_low, lc_ci_high`` [m, m] (None where no
    lengths were given). ``league_nash`` is None when a cell is empty (every
    comparison masked); Elo fits the cells there are."""
    names = [str(x) for x in names]
    m = len(names)
    wr = win_rates(pairs, m, level)
    est, lo, hi = exploitability(wr, level, boot, seed)
    complete = bool(np.all(np.isfinite(wr.win_rate)))
    report = {
        "policies": names,
        "win_rate": _json(wr.win_rate),
        "ci_low": _json(wr.ci_low),
        "ci_high": _json(wr.ci_high),
        "exploitability": _json(est),
        "exploitability_low": _json(lo),
        "exploitability_high": _json(hi),
        "league_nash": _json(league_nash(wr.win_rate)) if complete else None,
        "elo": _json(bradley_terry(wr.win_rate, wr.units)),
        "units": wr.units.astype(int).tolist(),
        "level": level,
    }
    if lengths is not None:
        lc = np.full((3, m, m), np.nan)
        lc[:, np.arange(m), np.arange(m)] = 0.5
        for (i, j), d in dict(lengths).items():
            p = pairs[(i, j)] if (i, j) in pairs else 1.0 - np.asarray(pairs[(j, i)])
            r, a, b = length_controlled(p, d, level)
            lc[:, i, j], lc[:, j, i] = (r, a, b), (1 - r, 1 - b, 1 - a)
        report.update(lc_win_rate=_json(lc[0]), lc_ci_low=_json(lc[1]), lc_ci_high=_json(lc[2]))
    return report


def _json(a):
    """Nested lists of floats, NaN and ±inf as None."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return float(a) if np.isfinite(a) else None
    return [_json(x) for x in a]
