"""Hyperparameter sweeps in the game lab: B settings of (η, β, α, K, seed) on ONE game.

Backs `selfplay game --sweep`. The B settings run as one batch of the tabular
runner on the single game `P [n, n]`: the hyperparameters are `[B, 1]`
tensors, the initial policies `[B, n]` (one per seed), and every payoff is one
matrix–matrix product `Q = Π Pᵀ` over the stacked policies
(`selfplay.algos.tabular`), not B matrix–vector products. Each algorithm's
update is its plan, written once; the sweep only stacks settings.

Settings: `--sweep KEY=V1,V2,...` (or `KEY=LO:HI:K`, K log-spaced values; for
`seed` and `magnet_every`, `LO:HI` is the integer range [LO, HI)), repeated
for several keys; the grid is their Cartesian product. Keys: eta, beta, alpha,
magnet_every, seed. A swept η is a fixed step (adaptive off, as a given
`--eta`); an η not swept keeps the algorithm's default rule. `seed` seeds
π_0 (`lab.initial_policy`); with sampled payoffs (`--queries`) the whole
batch shares one random stream seeded by the game's `--seed`, so a row's
noise is not that of a single run with its seed (exact payoffs: identical).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfplay.errors import InputError

KEYS = ("eta", "beta", "alpha", "magnet_every", "seed")
INT_KEYS = ("magnet_every", "seed")
MAX_SETTINGS = 65536


def parse(specs: list[str] | tuple[str, ...]) -> dict[str, list]:
    """`["eta=0.1:10:5", "seed=0,1"]` → {"eta": [...], "seed": [0, 1]} (ordered).

    The grid's size is known from the specs alone (a range's length, a K), so an
    oversized grid is refused before any value is made."""
    found: dict[str, tuple] = {}
    for spec in specs:
        key, sep, vals = spec.partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise InputError(f"--sweep {spec!r}: expected KEY=VALUES with KEY one of {KEYS}")
        if key in found:
            raise InputError(f"--sweep names {key} twice")
        found[key] = _axis(key, vals.strip(), spec)
    if not found:
        raise InputError("--sweep needs at least one KEY=VALUES")
    size = math.prod(_size(a) for a in found.values())  # exact: Python integers
    if size > MAX_SETTINGS:
        raise InputError(f"--sweep grid has {size} settings; at most {MAX_SETTINGS}")
    axes = {key: _values(a) for key, a in found.items()}
    for key, spec in zip(axes, specs, strict=True):
        _check_range(key, axes[key], spec)
    return axes


def _axis(key: str, vals: str, spec: str) -> tuple:
    """A spec's values, not yet made: ("list", values), ("range", lo, hi) or
    ("geom", lo, hi, k)."""
    integer = key in INT_KEYS
    try:
        if ":" in vals:
            parts = vals.split(":")
            if integer and len(parts) == 2:
                return ("range", int(parts[0]), int(parts[1]))
            if not integer and len(parts) == 3:
                lo, hi, k = float(parts[0]), float(parts[1]), int(parts[2])
                _finite(key, (lo, hi), spec)
                if lo <= 0 or hi <= 0 or k < 1:
                    raise ValueError
                return ("geom", lo, hi, k)
            raise ValueError
        out = [int(v) if integer else float(v) for v in vals.split(",")]
    except InputError:
        raise
    except ValueError:
        form = "LO:HI (integers)" if integer else "LO:HI:K (LO, HI > 0)"
        raise InputError(f"--sweep {spec!r}: values must be V1,V2,... or {form}") from None
    _finite(key, out, spec)
    return ("list", out)


def _finite(key: str, values, spec: str) -> None:
    """A value past a float's range (1e400) or NaN is no number, whatever its sign."""
    if not all(math.isfinite(v) for v in values):
        raise InputError(
            f"--sweep {spec!r}: {key} values must be finite numbers "
            f"(a float holds up to {sys.float_info.max:.3g})"
        )


def _size(axis: tuple) -> int:
    if axis[0] == "list":
        return len(axis[1])
    if axis[0] == "range":
        return max(0, axis[2] - axis[1])
    return axis[3]


def _values(axis: tuple) -> list:
    if axis[0] == "list":
        return axis[1]
    if axis[0] == "range":
        return list(range(axis[1], axis[2]))
    return np.geomspace(axis[1], axis[2], axis[3]).tolist()


def _check_range(key: str, out: list, spec: str) -> None:
    if not out:
        raise InputError(f"--sweep {spec!r}: no values")
    lowest = 0 if key == "seed" else 1 if key in INT_KEYS else None
    bound = "> 0" if lowest is None else f"≥ {lowest}"
    for v in out:
        if v <= 0 if lowest is None else v < lowest:
            raise InputError(f"--sweep {spec!r}: {key} must be {bound}")


def grid(axes: dict[str, list]) -> list[dict]:
    """Cartesian product of the axes, last key varying fastest."""
    keys = list(axes)
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in keys))
    ]


def check_used(name: str, keys) -> None:
    """InputError if the algorithm's update ignores a swept hyperparameter (its plan
    is the same whatever the value), so a sweep never plots a flat line as a result."""
    from selfplay import algos

    A = algos.get(name)
    h = A.resolve(A.default_hyper(5).with_(adaptive=False))
    for k in keys:
        if k == "seed":
            continue
        v = getattr(h, k)
        other = (v or 1) * 2 + 1
        if A.plan(A.resolve(h.with_(**{k: other}))) == A.plan(h):
            raise InputError(f"--sweep {k}: {name} does not use {k}")


def batched_hyper(name: str, n: int, rows: list[dict]):
    """The algorithm's default Hyper with each swept key a [B] tensor (η swept → fixed)."""
    import torch

    from selfplay import algos

    h = algos.get(name).default_hyper(n)
    kw = {}
    for k in rows[0]:
        if k == "seed":
            continue
        dtype = torch.long if k in INT_KEYS else torch.float64
        kw[k] = torch.tensor([r[k] for r in rows], dtype=dtype)
    if "eta" in kw:
        kw["adaptive"] = False
    return dataclasses.replace(h, **kw)


@dataclass
class SweepResult:
    algo: str
    objective: str
    settings: list[dict]
    iterations: int
    seconds: float
    gap: list[float]
    regularized_gap: list[float] | None

    @property
    def target(self) -> list[float]:
        """The gap the algorithm converges to zero (regularized for regularized ones)."""
        return self.regularized_gap if self.regularized_gap is not None else self.gap


def run(
    name: str,
    P: np.ndarray,
    rows: list[dict],
    *,
    iterations: int,
    init: str = "random",
    seed: int = 0,
    queries: int | None = None,
) -> tuple[SweepResult, object]:
    """All settings of one algorithm as one batched run; (result, its Trace)."""
    import torch

    from selfplay import algos, lab

    n = P.shape[0]
    h = batched_hyper(name, n, rows)
    init_pi = np.stack([lab.initial_policy(init, n, r.get("seed", seed)) for r in rows])
    t0 = time.perf_counter()
    tr = algos.run(
        name,
        torch.as_tensor(P, dtype=torch.float64),
        hyper=h,
        iterations=iterations,
        queries=queries,
        seed=seed,
        record_every=max(1, iterations),
        init=init_pi,
    )
    secs = time.perf_counter() - t0
    reg = tr.regularized_gap[-1].tolist() if tr.regularized_gap is not None else None
    res = SweepResult(
        algo=name,
        objective=algos.get(name).objective,
        settings=rows,
        iterations=int(tr.iterations),
        seconds=round(secs, 4),
        gap=tr.gap[-1].tolist(),
        regularized_gap=reg,
    )
    return res, tr


def format_table(results: list[SweepResult]) -> str:
    lines = []
    for r in results:
        t = np.asarray(r.target)
        best = int(np.nanargmin(t))
        what = "reg. gap" if r.regularized_gap is not None else "gap"
        lines.append(
            f"{r.algo:<11}{len(t)} settings, {r.iterations} iters, {r.seconds:.2f}s: final {what} "
            f"median {np.nanmedian(t):.2e}, best {t[best]:.2e} at {_label(r.settings[best])}"
        )
    return "\n".join(lines)


def _label(row: dict) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def plot(results: list[SweepResult], path: Path, title: str) -> Path:
    """Final (target) gap against the first swept key: one line per algorithm and per
    value of the other keys; across seeds, the median with a min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        keys = list(r.settings[0])
        x_key = keys[0]
        others = [k for k in keys[1:] if k != "seed"]
        groups: dict[tuple, dict] = {}
        for row, g in zip(r.settings, r.target, strict=True):
            gk = tuple(row[k] for k in others)
            groups.setdefault(gk, {}).setdefault(row[x_key], []).append(max(g, 1e-16))
        for gk, by_x in groups.items():
            xs = sorted(by_x)
            ys = np.array([np.median(by_x[x]) for x in xs])
            label = r.algo + "".join(f" {k}={v:g}" for k, v in zip(others, gk, strict=True))
            kind = "reg. gap" if r.regularized_gap is not None else "gap"
            (line,) = ax.plot(xs, ys, marker="o", ms=3, label=f"{label} ({kind})")
            if any(len(v) > 1 for v in by_x.values()):
                lo = [min(by_x[x]) for x in xs]
                hi = [max(by_x[x]) for x in xs]
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_yscale("log")
    if x_key != "seed" and all(min(s[x_key] for s in r.settings) > 0 for r in results):
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel("final gap of the last iterate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
