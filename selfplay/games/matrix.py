"""Preference matrices: validation, loading, saving and seeded generators.

A preference matrix is a square ``P`` with ``P[y, y'] = P(y ≻ y')`` for a
finite response set ``Y = {0, ..., n-1}``. It must satisfy

* ``0 ≤ P[y, y'] ≤ 1``,
* ``P + Pᵀ = 1`` (one of the two responses always wins), hence
* ``P[y, y] = ½``.

Equivalently ``P = ½·11ᵀ + A`` with ``A`` skew-symmetric, so the game
``max_π min_π' πᵀ P π'`` is symmetric and has value ½ (Munos et al. 2023,
"Nash Learning from Human Feedback").

`validate` accepts a matrix whose ``P + Pᵀ = 1`` holds to 1e-6 and returns a
copy projected onto the constraint exactly (lower triangle averaged with
``1 − Pᵀ``, upper triangle set to one minus it, diagonal ½), because the
solvers and gap formulas rely on it holding to rounding error. A matrix that
already satisfies it exactly is returned unchanged (as float64).

Generators (`KINDS`), all seeded through ``numpy.random.default_rng(seed)``:

* ``"uniform"``: strict lower triangle i.i.d. U[0, 1], upper triangle
  ``1 − Pᵀ``, diagonal ½. This is the random game of the EGPO paper's tabular
  experiments (Zhou, Fazel, Du 2025). Its NE is unique almost surely and
  typically has support of about n/2 actions.
* ``"bt-cyclic"``: Bradley–Terry ``σ(r_y − r_y')`` with ``r ~ N(0, 1)``, plus a
  cyclic (rock–paper–scissors-like) skew-symmetric term
  ``BT_CYCLIC_WEIGHT · sin(2π(k_y − k_y')/n)`` on a random cyclic order ``k``,
  clipped to [0, 1]. Clipping ``x`` and ``1 − x`` keeps ``P + Pᵀ = 1``.
  The cyclic term is a single rank-2 "disc game" (Balduzzi et al. 2019), so
  the NE is sparse: support 1 or 3 in practice (measured for n = 5..100).
* ``"rps"`` (n ≥ 3): generalised rock–paper–scissors. Action ``i`` beats
  ``i + k (mod n)`` for ``k = 1..⌊(n−1)/2⌋`` with probability ``½ + m_k``,
  where the margins ``m_k ~ U[0.1, 0.5]`` are drawn per offset. The matrix is
  circulant, so every row of ``A`` sums to zero and the uniform policy is an
  NE for every n. For odd n the NE is unique almost surely (the circulant's
  non-trivial eigenvalues are non-zero for generic margins). For even n the
  offset n/2 is a tie, the alternating vector ``(−1)^i`` is in the kernel of
  ``A`` and the NE set is a segment that contains the uniform policy: use odd
  n when a unique full-support NE is wanted.
* ``"transitive"``: a random strict order; the ``i``-th ranked action beats
  every lower-ranked one with probability ``½ + m`` with ``m ~ U[0.05, 0.5]``
  per pair. The unique NE is the pure top-ranked action.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from selfplay.errors import InputError

KINDS = ("uniform", "bt-cyclic", "rps", "transitive")

#: Absolute tolerance on ``P + Pᵀ = 1`` and on the diagonal.
SYMMETRY_TOL = 1e-6
#: Amplitude of the cyclic term of the "bt-cyclic" generator.
BT_CYCLIC_WEIGHT = 0.25


def validate(P, *, source: str = "matrix") -> np.ndarray:
    """Check that ``P`` is a preference matrix; return a float64 copy.

    Raises `InputError` with a one-line message naming ``source`` when ``P``
    is not 2-D square with n ≥ 2, holds NaN/inf or an entry outside [0, 1],
    has a diagonal not ½, or breaks ``P + Pᵀ = 1`` by more than 1e-6.
    """
    try:
        P = np.array(P, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: not a numeric matrix ({_one_line(exc)})") from None
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise InputError(f"{source}: preference matrix must be 2-D square, got shape {P.shape}")
    n = P.shape[0]
    if n < 2:
        raise InputError(f"{source}: preference matrix needs at least 2 actions, got {n}")
    bad = ~np.isfinite(P)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(f"{source}: entry at ({i}, {j}) is {P[i, j]} (NaN or inf)")
    out = (P < 0) | (P > 1)
    if out.any():
        i, j = np.argwhere(out)[0]
        raise InputError(f"{source}: entry at ({i}, {j}) is {P[i, j]:g}, outside [0, 1]")
    diag = np.abs(np.diag(P) - 0.5)
    if diag.max() > SYMMETRY_TOL:
        i = int(diag.argmax())
        raise InputError(f"{source}: diagonal must be 1/2 (entry ({i}, {i}) is {P[i, i]:g})")
    viol = np.abs(P + P.T - 1.0)
    worst = float(viol.max())
    if worst > SYMMETRY_TOL:
        i, j = np.unravel_index(int(viol.argmax()), viol.shape)
        raise InputError(f"{source}: P + Pᵀ must equal 1 (max violation {worst:.3g} at ({i}, {j}))")
    if worst > 0:
        P = _from_lower(np.tril((P - P.T + 1.0) / 2.0, -1))
    return P


def load(path) -> np.ndarray:
    """Read a preference matrix from ``.npy`` or ``.csv`` and validate it.

    CSV is comma-separated numbers, whitespace allowed, no header. A missing,
    unreadable or unparseable file, or another extension, raises `InputError`.
    """
    p = Path(path)
    src = str(path)
    ext = p.suffix.lower()
    if ext not in (".npy", ".csv"):
        raise InputError(f"{src}: unknown matrix file extension {ext!r} (use .npy or .csv)")
    if not p.exists():
        raise InputError(f"{src}: no such file")
    if not p.is_file() or not os.access(p, os.R_OK):
        raise InputError(f"{src}: cannot read file")
    try:
        if ext == ".npy":
            P = np.load(p, allow_pickle=False)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": reported below
                P = np.loadtxt(p, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"{src}: cannot parse matrix ({_one_line(exc)})") from None
    if np.size(P) == 0:
        raise InputError(f"{src}: file holds no matrix entries")
    return validate(P, source=src)


def save(P, path) -> None:
    """Write ``P`` (validated) to ``.npy`` or ``.csv`` (full float64 precision)."""
    P = validate(P, source=str(path))
    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".npy":
        np.save(p, P)
    elif ext == ".csv":
        np.savetxt(p, P, delimiter=",", fmt="%.17g")
    else:
        raise InputError(f"{path}: unknown matrix file extension {ext!r} (use .npy or .csv)")


def generate(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """A seeded random preference matrix of the given kind (see module doc)."""
    if kind not in KINDS:
        raise InputError(f"unknown game kind {kind!r} (choose from {', '.join(KINDS)})")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise InputError(f"game size n must be an integer ≥ 2, got {n!r}")
    if kind == "rps" and n < 3:
        raise InputError(f"rps needs n ≥ 3 actions, got {n}")
    n = int(n)
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return _from_lower(np.tril(rng.uniform(size=(n, n)), -1))
    if kind == "bt-cyclic":
        r = rng.standard_normal(n)
        k = rng.permutation(n)
        bt = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))
        cyc = BT_CYCLIC_WEIGHT * np.sin(2 * np.pi * (k[:, None] - k[None, :]) / n)
        return _from_lower(np.tril(np.clip(bt + cyc, 0.0, 1.0), -1))
    if kind == "rps":
        return _rps(n, rng)
    rank = rng.permutation(n)  # rank[i]: position of action i, 0 = top
    margin = rng.uniform(0.05, 0.5, size=(n, n))
    win = np.where(rank[:, None] < rank[None, :], 0.5 + margin, 0.5 - margin.T)
    return _from_lower(np.tril(win, -1))


def _rps(n: int, rng: np.random.Generator) -> np.ndarray:
    """Circulant rock–paper–scissors: i beats i+k (mod n), k ≤ (n−1)/2."""
    half = (n - 1) // 2
    a = np.zeros(n)  # a[k] = A[i, i+k mod n]; skew-symmetry needs a[n−k] = −a[k]
    m = rng.uniform(0.1, 0.5, size=half)
    a[1 : half + 1] = m
    a[n - half :] = -m[::-1]
    idx = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n
    return _from_lower(np.tril(0.5 + a[idx], -1))


def _from_lower(lower: np.ndarray) -> np.ndarray:
    """Matrix with the given strict lower triangle, upper = 1 − lowerᵀ, diag ½."""
    n = lower.shape[0]
    P = lower + np.triu(1.0 - lower.T, 1)
    P[np.diag_indices(n)] = 0.5
    return P


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
