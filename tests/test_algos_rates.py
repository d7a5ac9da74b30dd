"""Nash-MP's contraction of KL(π*_β‖π_t), measured against the paper's claim.

Claim (abstract of arXiv 2505.19731): KL(π*_β‖π) ≤ C·(1+2β)^{−N/2} after N
preference queries. Nash-MP makes two rounds of queries per iteration at
η = 2, so the claim reads as a contraction of 1/(1+ηβ) per iteration. We find
(docs/algorithms.md#nash-mp, derivation there) that this holds at every iteration,
and that asymptotically the contraction is the square, 1/(1+ηβ)² per
iteration, i.e. (1+2β)^{−N}: the log-probabilities contract by 1/(1+ηβ) and
KL is quadratic in them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfplay import algos
from selfplay.algos.tabular import step
from selfplay.games import generate, kl, solve_regularized

GAMES = [("uniform", 5, 0), ("rps", 7, 0), ("bt-cyclic", 21, 2), ("uniform", 51, 1)]


def _kl_curve(P: np.ndarray, beta: float, init: np.ndarray, iters: int) -> np.ndarray:
    ps = solve_regularized(P, beta)
    h = algos.get("nash-mp").default_hyper(P.shape[0]).with_(beta=beta)
    logp = torch.as_tensor(np.log(init))[None]
    ref = torch.full_like(logp, -np.log(P.shape[0]))
    ks = [kl(ps, init)]
    for _ in range(iters):
        logp = step("nash-mp", P, {"main": logp, "lead": logp, "ref": ref}, hyper=h)["main"]
        ks.append(kl(ps, logp.exp()[0].numpy()))
    return np.array(ks)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("kind,n,seed", GAMES)
def test_nash_mp_kl_contraction(kind, n, seed, beta):
    P = generate(kind, n, seed)
    init = np.random.default_rng(seed).dirichlet(np.ones(n))
    eta = algos.get("nash-mp").default_hyper(n).eta
    assert eta == 2.0  # η = 1/L, the step the claim is made for
    iters = {0.01: 400, 0.1: 60, 1.0: 12}[beta]
    ks = _kl_curve(P, beta, init, iters)
    valid = ks[:-1] > 1e-10  # below that, KL is at rounding level
    ratios = ks[1:][valid] / ks[:-1][valid]
    # the paper's rate, read per iteration, holds at every iteration ...
    assert ratios.max() <= 1 / (1 + eta * beta) + 1e-9
    # ... and the late contraction is at least as good as the derived 1/(1+ηβ)²
    late = ratios[-5:]
    assert late.max() <= (1 + eta * beta) ** -2 * (1 + 1e-3)
    # (which is strictly better than the per-iteration reading: the claim is loose)
    assert late.max() < 1 / (1 + eta * beta) - 0.1 * beta / (1 + beta)


def test_derived_rate_is_attained():
    """On a game with a slow mode the asymptotic contraction is ≈ 1/(1+ηβ)²."""
    P = generate("bt-cyclic", 21, 2)
    init = np.random.default_rng(0).dirichlet(np.ones(21))
    ks = _kl_curve(P, 0.1, init, 60)
    ratio = ks[-1] / ks[-2]
    assert abs(ratio - 1.2**-2) < 2e-3
