"""The game lab: run last-iterate algorithms on a matrix preference game.

Backs `selfplay game`. Each algorithm runs its exact (or query-sampled)
tabular update from π_0 (`initial_policy`; the reference μ of the
regularized algorithms is uniform) for a fixed number of iterations; we
record the duality gap `2·max_y P(y ≻ π_t) − 1` of the last iterate π_t and,
for algorithms that solve the β-regularized game, its regularized gap.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from selfplay.errors import InputError


@dataclass
class LabResult:
    algo: str
    iterations: int
    preference_queries: int
    seconds: float
    policy: list[float]
    gap: float
    regularized_gap: float | None
    beta: float | None
    reference: str
    curve_iters: list[int]
    curve_gap: list[float]
    curve_reg_gap: list[float] | None
    init: str = "uniform"
    #: the earlier algorithm of the same run whose iterates these equal (same update
    #: under these hyperparameters, e.g. EGPO = Nash-MP, SPPO = MWU), else None.
    same_as: str | None = None

    def summary(self) -> dict:
        d = asdict(self)
        for k in ("curve_iters", "curve_gap", "curve_reg_gap"):
            d.pop(k)
        return d


def parse_algos(spec: str) -> list[str]:
    from selfplay import algos

    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise InputError("--algos is empty; choose from " + ", ".join(algos.NAMES))
    for n in names:
        algos.get(n)  # raises InputError naming the valid choices
    return names


INITS = ("random", "uniform")


def initial_policy(kind: str, n: int, seed: int) -> np.ndarray:
    """π_0 of `selfplay game`: "uniform", or "random" = softmax of N(0, 1) logits.

    "random" is seeded (its own stream of `seed`, independent of the game's)
    and has full support. It is the default because the uniform policy is
    the NE of every circulant game (`rps`): started there, every algorithm,
    MWU included, sits at gap 0 and the comparison shows nothing.
    """
    if kind == "uniform":
        return np.full(n, 1.0 / n)
    if kind == "random":
        z = np.random.default_rng([int(seed), 1]).standard_normal(n)
        p = np.exp(z - z.max())
        return p / p.sum()
    raise InputError(f"unknown --init {kind!r}; choose from {', '.join(INITS)}")


def _record_every(iterations: int) -> int:
    # ~400 points per curve keeps plots and MLflow light at any length.
    return max(1, iterations // 400)


def run_algo(
    name: str,
    P: np.ndarray,
    *,
    iterations: int,
    beta: float | None,
    eta: float | None,
    queries: int | None,
    seed: int,
    init: str = "uniform",
) -> LabResult:
    import torch

    from selfplay import algos

    algo = algos.get(name)
    hyper = algo.default_hyper(P.shape[0])
    if eta is not None:
        hyper = dataclasses.replace(hyper, eta=eta, adaptive=False)  # a given η is fixed
    if beta is not None:
        hyper = dataclasses.replace(hyper, beta=beta)
    Pt = torch.as_tensor(P, dtype=torch.float64).unsqueeze(0)
    t0 = time.perf_counter()
    tr = algos.run(
        algo,
        Pt,
        hyper=hyper,
        iterations=iterations,
        queries=queries,
        seed=seed,
        record_every=_record_every(iterations),
        init=initial_policy(init, P.shape[0], seed),
    )
    secs = time.perf_counter() - t0
    regularized = algo.objective == "regularized"
    reg = tr.regularized_gap[:, 0].tolist() if regularized else None
    return LabResult(
        algo=name,
        iterations=int(tr.iterations),
        preference_queries=int(tr.preference_queries[0]),
        seconds=round(secs, 4),
        policy=tr.policy[0].tolist(),
        gap=float(tr.gap[-1, 0]),
        regularized_gap=float(reg[-1]) if reg else None,
        beta=float(hyper.beta) if regularized else None,
        reference="uniform",
        curve_iters=[int(i) for i in tr.recorded],
        curve_gap=tr.gap[:, 0].tolist(),
        curve_reg_gap=reg,
        init=init,
    )


def mark_same_updates(results: list[LabResult], tol: float = 1e-10) -> list[LabResult]:
    """Set `same_as` on each result whose whole trajectory equals an earlier one's.

    Under the defaults the tabular EGPO is mirror prox (egpo.py) and SPPO is
    MWU with η = 1/β (sppo.py), so their rows would otherwise read as an
    independent comparison. Compared on the recorded gap curves, the final
    policy and the query count, so a different --eta or --beta unmarks them.
    """
    for i, r in enumerate(results):
        for s in results[:i]:
            if s.same_as is None and _same_run(r, s, tol):
                r.same_as = s.algo
                break
    return results


def _same_run(a: LabResult, b: LabResult, tol: float) -> bool:
    if a.curve_iters != b.curve_iters or a.preference_queries != b.preference_queries:
        return False
    if np.ptp(a.curve_gap) <= tol:  # nothing moved (e.g. started at the NE): nothing to tell
        return False
    curves = [(a.curve_gap, b.curve_gap), (a.policy, b.policy)]
    if (a.curve_reg_gap is None) != (b.curve_reg_gap is None):
        return False
    if a.curve_reg_gap is not None:
        curves.append((a.curve_reg_gap, b.curve_reg_gap))
    return all(np.allclose(x, y, rtol=0, atol=tol) for x, y in curves)


def plot_gaps(results: list[LabResult], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        (line,) = ax.plot(r.curve_iters, np.maximum(r.curve_gap, 1e-16), label=f"{r.algo} gap")
        if r.curve_reg_gap is not None:
            ax.plot(
                r.curve_iters,
                np.maximum(r.curve_reg_gap, 1e-16),
                ls="--",
                color=line.get_color(),
                label=f"{r.algo} reg. gap (β={r.beta:g})",
            )
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("duality gap of last iterate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(results: list[LabResult]) -> str:
    head = f"{'algo':<11}{'iters':>8}{'queries':>14}{'gap':>12}{'reg_gap':>12}{'seconds':>9}"
    rows = [head, "-" * len(head)]
    notes = []
    for r in results:
        reg = f"{r.regularized_gap:.3e}" if r.regularized_gap is not None else "-"
        name = r.algo if r.same_as is None else f"{r.algo}*"
        rows.append(
            f"{name:<11}{r.iterations:>8}{r.preference_queries:>14}"
            f"{r.gap:>12.3e}{reg:>12}{r.seconds:>9.2f}"
        )
        if r.same_as is not None:
            notes.append(
                f"* {r.algo} ran the same update as {r.same_as} here (identical iterates): "
                "not an independent comparison"
            )
    return "\n".join(rows + notes)
