"""`selfplay bench games`: the game lab's two benchmarks, measured in one run.

1. Against the LP. On a uniform random game with n = 1000 actions, the exact
   NE from scipy HiGHS (interior point) is timed against each last-iterate
   algorithm's time to reach `gap ≤ 1e-6`, or the gap it reaches within the
   budget. (Nash-MP and EGPO converge to the β-regularized NE, so their
   unregularized gap stalls at that equilibrium's gap: reported, not raced.)
2. Batched sweep throughput: games × iterations per second of the batched
   torch runner on 256 games of n = 100, against a plain per-game NumPy loop
   of the same update (OMWU, fixed η, exact payoffs). Memory-bound: each
   iteration streams all 256 matrices.
2b. Hyperparameter sweep (`settings_sweep`): 256 settings of η on ONE game of
   n = 100, one GEMM Π Pᵀ per payoff, against a per-setting NumPy loop of the
   same update, for OMWU, MPO and Nash-MP.
3. Quality (not timing): the regularized defaults against the EGPO authors'
   own step on their tabular setting (`egpo_setting`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from selfplay import algos, games

RACE = ("mpo", "omwu", "nash-mp", "egpo")
TARGET = 1e-6


def lp_race(n: int, budget: float, seed: int = 0) -> dict:
    P = games.generate("uniform", n, seed)
    t0 = time.perf_counter()
    x = games.solve_nash(P)
    lp_s = time.perf_counter() - t0
    out = {
        "n": n,
        "lp_seconds": lp_s,
        "lp_gap": float(games.gap(P, x)),
        "lp_support": int((x > 1e-9).sum()),
        "algos": [],
    }
    Pt = torch.as_tensor(P, dtype=torch.float64)
    for name in RACE:
        probe = algos.run(name, Pt, iterations=20, record_every=20)
        per_iter = max(probe.seconds / 20, 1e-6)
        cap = max(100, int(budget / per_iter))
        tr = algos.run(name, Pt, iterations=cap, record_every=25, tol=TARGET)
        reg = tr.regularized_gap is not None  # its own target: the regularized NE
        final = float((tr.regularized_gap if reg else tr.gap)[-1, 0])
        out["algos"].append(
            {
                "algo": name,
                "iterations": int(tr.iterations),
                "seconds": float(tr.seconds),
                "final_gap": float(tr.gap[-1, 0]),
                "target": "regularized_gap" if reg else "gap",
                "reached": final <= TARGET,
                "regularized_gap": float(tr.regularized_gap[-1, 0]) if reg else None,
                "vs_lp": float(tr.seconds) / lp_s,
            }
        )
    return out


def _omwu_loop(P: np.ndarray, eta: float, iters: int) -> np.ndarray:
    """Plain per-game NumPy OMWU: π_{t+1} ∝ π_t·exp(η(2q_t − q_{t−1}))."""
    n = P.shape[0]
    logp = np.full(n, -np.log(n))
    q_prev = P @ np.exp(logp)
    for _ in range(iters):
        q = P @ np.exp(logp)
        logp = logp + eta * (2 * q - q_prev)
        logp -= logp.max() + np.log(np.exp(logp - logp.max()).sum())
        q_prev = q
    return np.exp(logp)


def sweep(games_count: int = 256, n: int = 100, iters: int = 200, eta: float = 0.5) -> dict:
    Ps = np.stack([games.generate("uniform", n, s) for s in range(games_count)])
    h = algos.get("omwu").default_hyper(n).with_(eta=eta, adaptive=False)
    t0 = time.perf_counter()
    tr = algos.run("omwu", torch.as_tensor(Ps), hyper=h, iterations=iters, record_every=iters)
    batched_s = time.perf_counter() - t0
    loop_games = min(games_count, 32)  # the loop is timed on a subset and scaled per game
    t0 = time.perf_counter()
    pis = [_omwu_loop(Ps[i], eta, iters) for i in range(loop_games)]
    loop_s = (time.perf_counter() - t0) * games_count / loop_games
    err = float(np.abs(tr.policy[:loop_games].numpy() - np.stack(pis)).max())
    return {
        "games": games_count,
        "n": n,
        "iterations": iters,
        "batched_games_iters_per_s": games_count * iters / batched_s,
        "loop_games_iters_per_s": games_count * iters / loop_s,
        "speedup": loop_s / batched_s,
        "max_abs_diff": err,
    }


def _normalise(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def _setting_loop(name: str, P: np.ndarray, eta: float, iters: int, h) -> np.ndarray:
    """One setting, plain NumPy, uniform π_0 = μ: OMWU, MPO (fixed η, α, refresh every
    K) or Nash-MP (mirror prox at β), each as its paper writes the update."""
    n = P.shape[0]
    x = np.full(n, -np.log(n))
    lmu, mag, q_prev = x.copy(), x.copy(), P @ np.exp(x)
    for t in range(iters):
        q = P @ np.exp(x)
        if name == "omwu":
            x, q_prev = _normalise(x + eta * (2 * q - q_prev)), q
        elif name == "mpo":
            ea = eta * h.alpha
            x = _normalise((x + eta * q + ea * mag) / (1 + ea))
            if (t + 1) % h.magnet_every == 0:
                mag = x
        else:
            eb = eta * h.beta
            lead = _normalise((x + eta * q + eb * lmu) / (1 + eb))
            x = _normalise((x + eta * (P @ np.exp(lead)) + eb * lmu) / (1 + eb))
    return np.exp(x)


SWEEP_ALGOS = ("omwu", "mpo", "nash-mp")


def settings_sweep(
    settings: int = 256, n: int = 100, iters: int = 200, loop_settings: int = 32, repeats: int = 3
) -> dict:
    """B settings of η (log-spaced 0.05..5) on one uniform game: batched runner vs loop
    (the loop timed on `loop_settings` of them and scaled per setting). The batched run
    is timed at 1 torch thread and at the default; `speedup` is the faster (a 2-thread
    GEMM loses badly when the other core is busy), both are in `speedup_by_threads`."""
    P = games.generate("uniform", n, 0)
    etas = np.geomspace(0.05, 5.0, settings)
    out = {"settings": settings, "n": n, "iterations": iters, "algos": []}
    for name in SWEEP_ALGOS:
        h = algos.get(name).default_hyper(n).with_(eta=torch.as_tensor(etas), adaptive=False)
        idx = np.linspace(0, settings - 1, min(settings, loop_settings)).astype(int)
        batched = {}  # torch threads -> best seconds; the box is shared, noise only adds
        loop_s = float("inf")
        default_threads = torch.get_num_threads()
        for _ in range(repeats):
            for th in sorted({1, default_threads}):
                torch.set_num_threads(th)
                t0 = time.perf_counter()
                tr = algos.run(
                    name, torch.as_tensor(P), hyper=h, iterations=iters, record_every=iters
                )
                batched[th] = min(batched.get(th, float("inf")), time.perf_counter() - t0)
            torch.set_num_threads(default_threads)
            t0 = time.perf_counter()
            pis = [_setting_loop(name, P, float(etas[i]), iters, h) for i in idx]
            loop_s = min(loop_s, (time.perf_counter() - t0) * settings / len(idx))
        th, batched_s = min(batched.items(), key=lambda kv: kv[1])
        out["algos"].append(
            {
                "algo": name,
                "batched_settings_iters_per_s": settings * iters / batched_s,
                "loop_settings_iters_per_s": settings * iters / loop_s,
                "speedup": loop_s / batched_s,
                "threads": th,
                "speedup_by_threads": {str(k): loop_s / v for k, v in sorted(batched.items())},
                "max_abs_diff": float(np.abs(tr.policy[idx].numpy() - np.stack(pis)).max()),
            }
        )
    return out


#: The EGPO authors' exact tabular runs (github zhourunlong/EGPO, simulations/):
#: SGD with lr 0.02 on the pair-mean IPO loss at β = 0.01, i.e. η = 4·lr/(n·β).
EGPO_AUTHORS_LR = 0.02


def egpo_setting(beta: float = 0.01, iterations: int = 5000, n: int = 10, count: int = 10) -> dict:
    """Median regularized gap of each regularized default against the EGPO authors' step.

    Their setting: `count` games with a U[0, 1] strict lower triangle (our
    "uniform", seeds 0..count−1), reference μ = softmax of N(0, 1) logits
    (seed 0), π_0 = μ, exact payoffs. "authors" is their step η = 4·lr/(nβ) in
    the same update (online IPO = their OMD; Nash-MD with their mixture weight
    ηβ/2; EGPO), run here on the same games; a quality target, not a timing.
    """
    P = torch.as_tensor(np.stack([games.generate("uniform", n, s) for s in range(count)]))
    z = np.random.default_rng(0).standard_normal((count, n))
    mu = torch.as_tensor(np.exp(z) / np.exp(z).sum(1, keepdims=True))
    betas = torch.full((count,), beta, dtype=torch.float64)
    eta = 4 * EGPO_AUTHORS_LR / (n * beta)
    authors = {"online-ipo": _authors_run("omd", P, mu, beta, eta, iterations)}
    authors["nash-md"] = _authors_run("nash-md", P, mu, beta, eta, iterations)
    authors["egpo"] = _authors_run("egpo", P, mu, beta, eta, iterations)
    out = {"beta": beta, "iterations": iterations, "n": n, "games": count, "authors_eta": eta}
    rows = []
    for name in algos.NAMES:
        A = algos.get(name)
        if A.objective != "regularized":
            continue
        h = A.default_hyper(n).with_(beta=beta)
        tr = algos.run(
            name, P, hyper=h, iterations=iterations, mu=mu, init=mu, record_every=iterations
        )
        ours = games.regularized_gap(P, tr.policy, betas, mu)
        theirs = authors.get(name)
        rows.append(
            {
                "algo": name,
                "median": float(ours.median()),
                "max": float(ours.max()),
                "authors_median": None if theirs is None else float(theirs.median()),
                "authors_max": None if theirs is None else float(theirs.max()),
            }
        )
    out["algos"] = rows
    return out


def _authors_run(kind: str, P, mu, beta: float, eta: float, iterations: int) -> torch.Tensor:
    """Their SGD step on logits θ: θ ← (1−ηβ)θ + ηβ·log μ + η·P π' (π' per `kind`)."""
    eb, lmu, x = eta * beta, mu.log(), mu.log()

    def q(logp):
        return torch.bmm(P, logp.exp().unsqueeze(-1)).squeeze(-1)

    for _ in range(iterations):
        if kind == "nash-md":
            opp = torch.log_softmax((1 - eb / 2) * x + eb / 2 * lmu, -1)
        elif kind == "egpo":
            opp = torch.log_softmax((1 - eb) * x + eb * lmu + eta * q(x), -1)
        else:
            opp = x
        x = torch.log_softmax((1 - eb) * x + eb * lmu + eta * q(opp), -1)
    return games.regularized_gap(
        P, x.exp(), torch.full((P.shape[0],), beta, dtype=torch.float64), mu
    )


def format_egpo(r: dict) -> str:
    lines = [
        f"EGPO authors' setting: {r['games']} uniform games n={r['n']}, β={r['beta']:g}, "
        f"{r['iterations']} iters; median (max) regularized gap, ours vs authors' "
        f"η={r['authors_eta']:g}"
    ]
    for a in r["algos"]:
        theirs = (
            f"{a['authors_median']:.1e} ({a['authors_max']:.1e})"
            if a["authors_median"] is not None
            else "-"
        )
        lines.append(f"  {a['algo']:<10} {a['median']:.1e} ({a['max']:.1e})   authors {theirs}")
    return "\n".join(lines)


def run(n: int = 1000, budget: float = 60.0) -> dict:
    return {
        "race": lp_race(n, budget),
        "sweep": sweep(),
        "settings_sweep": settings_sweep(),
        "egpo": egpo_setting(),
        "threads": torch.get_num_threads(),
    }


def format_report(r: dict) -> str:
    race, sw = r["race"], r["sweep"]
    lines = [
        f"LP (HiGHS IPM), n={race['n']}: {race['lp_seconds']:.2f}s, gap {race['lp_gap']:.1e},"
        f" support {race['lp_support']}"
    ]
    for a in race["algos"]:
        status = f"{a['target']} <= 1e-6" if a["reached"] else "budget spent"
        reg = f", reg. gap {a['regularized_gap']:.1e}" if a["regularized_gap"] is not None else ""
        lines.append(
            f"  {a['algo']:<8} {status}: {a['iterations']} iters, {a['seconds']:.2f}s "
            f"({a['vs_lp']:.2f}x LP), gap {a['final_gap']:.1e}{reg}"
        )
    lines.append(
        f"sweep {sw['games']} games x n={sw['n']} x {sw['iterations']} iters: batched "
        f"{sw['batched_games_iters_per_s']:.0f} games·iters/s, NumPy loop "
        f"{sw['loop_games_iters_per_s']:.0f}; speedup {sw['speedup']:.1f}x "
        f"(max |Δπ| {sw['max_abs_diff']:.1e})"
    )
    if "settings_sweep" in r:
        ss = r["settings_sweep"]
        lines.append(
            f"hyperparameter sweep {ss['settings']} settings of η x one game n={ss['n']} x "
            f"{ss['iterations']} iters (one GEMM per payoff) vs a per-setting NumPy loop:"
        )
        for a in ss["algos"]:
            by = ", ".join(f"{k} thread(s) {v:.1f}x" for k, v in a["speedup_by_threads"].items())
            lines.append(
                f"  {a['algo']:<8} {a['speedup']:.1f}x ({a['batched_settings_iters_per_s']:.0f} vs "
                f"{a['loop_settings_iters_per_s']:.0f} settings·iters/s; {by}; max |Δπ| "
                f"{a['max_abs_diff']:.1e})"
            )
    if "egpo" in r:
        lines.append(format_egpo(r["egpo"]))
    return "\n".join(lines)
