"""Each algorithm's equilibrium is a fixed point of one update.

Oracles come from selfplay.games (LP for the original game, damped Newton
for the regularized one), never from the algorithm itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfplay import algos
from selfplay.algos.tabular import step
from selfplay.games import generate, solve_nash, solve_regularized

NASH_ALGOS = [a for a in algos.NAMES if algos.get(a).objective == "nash"]
REG_ALGOS = [a for a in algos.NAMES if algos.get(a).objective == "regularized"]


def _full_support_game() -> np.ndarray:
    P = generate("uniform", 5, 30)
    assert solve_nash(P).min() > 0.1  # the LP NE has full support
    return P


def _state(**roles: np.ndarray) -> dict[str, torch.Tensor]:
    return {r: torch.as_tensor(np.log(p))[None] for r, p in roles.items()}


def test_objectives_cover_every_algorithm():
    assert set(NASH_ALGOS) == {"mpo", "omwu", "mwu", "sppo"}
    assert set(REG_ALGOS) == {"nash-mp", "egpo", "nash-md", "online-ipo"}


@pytest.mark.parametrize("name", NASH_ALGOS)
def test_lp_nash_is_fixed_point(name):
    P = _full_support_game()
    ne = solve_nash(P)
    A = algos.get(name)
    h = A.default_hyper(5).with_(adaptive=False)
    # every role at the NE (for MPO: the magnet too, so the NE is the fixed point of MPO)
    st = _state(main=ne, prev=ne, magnet=ne, lead=ne, ref=np.full(5, 0.2))
    out = step(name, P, st, hyper=h)
    assert np.abs(out["main"].exp()[0].numpy() - ne).max() < 1e-10
    # and a non-equilibrium policy does move (the check can fail)
    x = np.full(5, 0.2)
    moved = step(name, P, _state(main=x, prev=x, magnet=x, lead=x, ref=x), hyper=h)
    assert np.abs(moved["main"].exp()[0].numpy() - x).max() > 1e-4


def _published_gain(name: str, h) -> float:
    """c in log π' = log π + c·P(·≻π) + const, when every role equals π: each paper's
    rule written out (mwu.py, sppo.py, omwu.py, mpo.py docstrings), not the plan."""
    if name == "mwu":
        return h.eta  # π' ∝ π·exp(η q)
    if name == "sppo":
        return 1.0 / h.beta  # π' ∝ π·exp(q/β)
    if name == "omwu":
        return h.eta  # π' ∝ π·exp(η(2q_t − q_{t−1})) with π_{t−1} = π_t
    if name == "mpo":
        return h.eta / (1 + h.eta * h.alpha)  # (log π + ηq + ηα log ρ)/(1 + ηα), ρ = π
    raise AssertionError(name)


@pytest.mark.parametrize("name", NASH_ALGOS)
def test_step_off_equilibrium_follows_the_published_direction(name):
    """Off the NE, one step moves log π by +c·q (c > 0): a flipped payoff sign, which
    leaves the full-support NE fixed, fails here."""
    P = _full_support_game()
    x = np.random.default_rng(3).dirichlet(np.ones(5))
    h = algos.get(name).default_hyper(5).with_(adaptive=False)
    out = step(name, P, _state(main=x, prev=x, magnet=x, lead=x, ref=np.full(5, 0.2)), hyper=h)
    delta = out["main"][0].numpy() - np.log(x)
    want = _published_gain(name, h) * (P @ x)
    assert _published_gain(name, h) > 0
    np.testing.assert_allclose(delta - delta.mean(), want - want.mean(), atol=1e-12)
    # with a small step, π moves towards the actions that beat it (⟨q, π_1⟩ > ⟨q, π⟩)
    small = h.with_(eta=1e-3, beta=1e3) if name == "sppo" else h.with_(eta=1e-3)
    out = step(name, P, _state(main=x, prev=x, magnet=x, lead=x, ref=x), hyper=small)
    pi1 = out["main"].exp()[0].numpy()
    assert (P @ x) @ pi1 > (P @ x) @ x  # moved towards actions that beat π


def test_mmd_fixed_point_is_magnet_regularized_nash():
    """MPO's inner step (MMD) fixes the α-regularized NE with the magnet as reference."""
    P = _full_support_game()
    rng = np.random.default_rng(0)
    magnet = rng.dirichlet(np.ones(5))
    alpha = 0.3
    pi = solve_regularized(P, alpha, magnet)
    h = (
        algos.get("mpo")
        .default_hyper(5)
        .with_(alpha=alpha, eta=5.0, adaptive=False, magnet_every=10**9)
    )
    out = step("mpo", P, _state(main=pi, magnet=magnet, ref=magnet), hyper=h)
    assert np.abs(out["main"].exp()[0].numpy() - pi).max() < 1e-10
    assert np.allclose(out["magnet"].exp()[0].numpy(), magnet)  # not refreshed
    # the *unregularized* NE is not the fixed point for this magnet
    ne = solve_nash(P)
    out = step("mpo", P, _state(main=ne, magnet=magnet, ref=magnet), hyper=h)
    assert np.abs(out["main"].exp()[0].numpy() - ne).max() > 1e-4


@pytest.mark.parametrize("name", ["nash-mp", "egpo", "online-ipo"])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_regularized_nash_is_fixed_point(name, beta):
    P = generate("uniform", 7, 2)
    mu = np.random.default_rng(1).dirichlet(np.ones(7))
    pi = solve_regularized(P, beta, mu)
    h = algos.get(name).default_hyper(7).with_(beta=beta)
    out = step(name, P, _state(main=pi, lead=pi, ref=mu), hyper=h)
    assert np.abs(out["main"].exp()[0].numpy() - pi).max() < 1e-10
    # μ itself is not a fixed point
    out = step(name, P, _state(main=mu, lead=mu, ref=mu), hyper=h)
    assert np.abs(out["main"].exp()[0].numpy() - mu).max() > 1e-4


def test_nash_md_constant_step_is_biased_by_order_eta():
    """Nash-MD's fixed point is π ∝ μ·exp(q_{π^μ}/β), not π*_β (docs/algorithms.md#nash-md).

    One step from π*_β moves it by η·(q_{π^μ} − q_{π*}) = O(η²β); the limit of
    the iterates is O(η) away from π*_β and satisfies the biased equation.
    """
    P = generate("uniform", 7, 2)
    mu = np.random.default_rng(1).dirichlet(np.ones(7))
    beta = 1.0
    pi = solve_regularized(P, beta, mu)
    moves, offsets = [], []
    for eta in (0.1, 0.01):
        h = algos.get("nash-md").default_hyper(7).with_(eta=eta, beta=beta, adaptive=False)
        out = step("nash-md", P, _state(main=pi, ref=mu), hyper=h)
        moves.append(np.abs(out["main"].exp()[0].numpy() - pi).max())
        tr = algos.run(
            "nash-md", P, hyper=h, mu=mu, iterations=int(40 / (eta * beta)), record_every=10**6
        )
        lim = tr.policy[0].numpy()
        offsets.append(np.abs(lim - pi).max())
        # the limit solves the biased fixed-point equation log π = log μ + q_{π^μ}/β + c
        lam = eta * beta
        mix = np.exp((1 - lam) * np.log(lim) + lam * np.log(mu))
        mix /= mix.sum()
        resid = np.log(lim) - np.log(mu) - P @ mix / beta
        assert np.ptp(resid) < 1e-9
    assert moves[0] > 1e-6 and offsets[0] > 1e-5
    assert 80 < moves[0] / moves[1] < 120  # one-step move is quadratic in η
    assert 8 < offsets[0] / offsets[1] < 12  # the fixed point's bias is linear in η
    # with μ uniform and the uniform NE of a circulant game, π*_β = μ and there is no bias
    R = generate("rps", 5, 0)
    u = np.full(5, 0.2)
    out = step("nash-md", R, _state(main=u, ref=u))
    assert np.abs(out["main"].exp()[0].numpy() - u).max() < 1e-12
