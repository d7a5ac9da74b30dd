"""Tests for selfplay.games against independent oracles.

Oracles: closed forms (rps uniform NE, transitive pure NE, all-½ game,
2×2 regularized NE by bisection), brute-force support enumeration, plain
Python loops for the gaps, and a direct evaluation of
max_π' J_β(π', π) − min_π' J_β(π, π') at the Gibbs maximisers/minimisers.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import logsumexp, softmax

from selfplay.errors import InputError
from selfplay.games import (
    KINDS,
    gap,
    generate,
    kl,
    regularized_gap,
    solve_nash,
    solve_regularized,
    validate,
)

# ---------------------------------------------------------------- oracles


def _fixed_point_residual(P, pi, beta, mu):
    with np.errstate(divide="ignore"):
        target = softmax(np.log(mu) + P @ pi / beta)
    return np.abs(target - pi).max()


def _support_enumeration(P):
    """All NE of the symmetric game by enumerating supports (small n only).

    x is an NE iff (A x)_i ≤ 0 for all i with A = P − ½; since xᵀAx = 0 it
    holds with equality on supp x, so solve A_SS x_S = 0, Σ x_S = 1.
    """
    A = P - 0.5
    n = P.shape[0]
    found = []
    for k in range(1, n + 1):
        for S in itertools.combinations(range(n), k):
            S = list(S)
            M = np.vstack([A[np.ix_(S, S)], np.ones((1, k))])
            rhs = np.concatenate([np.zeros(k), [1.0]])
            xs, *_ = np.linalg.lstsq(M, rhs, rcond=None)
            if np.abs(M @ xs - rhs).max() > 1e-10 or xs.min() < -1e-12:
                continue
            x = np.zeros(n)
            x[S] = xs
            if (A @ x).max() <= 1e-10:
                found.append(x)
    return found


def _brute_regularized_gap(P, pi, beta, mu):
    """max_π' J_β(π', π) − min_π' J_β(π, π'), each at its Gibbs optimiser.

    J_β(a, b) = aᵀ P b − β KL(a‖μ) + β KL(b‖μ), evaluated term by term. The
    minimiser of J_β(π, ·) is ∝ μ exp(−Pᵀπ/β); this does not use P + Pᵀ = 1.
    """

    def klv(a, b):
        return sum(ai * np.log(ai / bi) for ai, bi in zip(a, b, strict=True) if ai > 0)

    def J(a, b):
        return a @ P @ b - beta * klv(a, mu) + beta * klv(b, mu)

    best = softmax(np.log(mu) + P @ pi / beta)
    worst = softmax(np.log(mu) - P.T @ pi / beta)
    return J(best, pi) - J(pi, worst), best, worst, J


def _loop_gap(P, pi):
    n = len(pi)
    return 2 * max(sum(P[y, j] * pi[j] for j in range(n)) for y in range(n)) - 1


# ---------------------------------------------------------------- generators


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [5, 8])
def test_generators_are_valid_and_seeded(kind, n):
    P = generate(kind, n, seed=3)
    assert P.shape == (n, n) and P.dtype == np.float64
    assert np.abs(P + P.T - 1).max() <= 1e-15
    assert np.all(np.diag(P) == 0.5)
    assert P.min() >= 0 and P.max() <= 1
    np.testing.assert_array_equal(P, generate(kind, n, seed=3))
    assert not np.array_equal(P, generate(kind, n, seed=4))
    validate(P)  # must not raise


def test_uniform_generator_lower_triangle_is_uniform():
    P = generate("uniform", 300, seed=0)
    low = P[np.tril_indices(300, -1)]
    # n = 44850 draws: sd of the mean 0.0014 (0.01 is 7 sd), of the variance 3.5e-4
    # (0.005 is 14 sd), of the fraction below ¼ 0.0020 (0.012 is 5.9 sd: 4e-9)
    assert abs(low.mean() - 0.5) < 0.01 and abs(low.var() - 1 / 12) < 0.005
    assert abs(np.mean(low < 0.25) - 0.25) < 0.012


def test_generate_rejects_bad_arguments():
    for args in [("nope", 5), ("uniform", 1), ("uniform", 0), ("rps", 2), ("uniform", 2.5)]:
        with pytest.raises(InputError):
            generate(*args)


# ---------------------------------------------------------------- exact NE by LP


@pytest.mark.parametrize("n,seed", [(3, 0), (5, 1), (7, 2), (11, 3)])
def test_rps_nash_is_uniform(n, seed):
    P = generate("rps", n, seed)
    np.testing.assert_allclose(solve_nash(P), np.full(n, 1 / n), atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_transitive_nash_is_top_action(seed):
    P = generate("transitive", 9, seed)
    # Condorcet winner by a plain loop: beats every other action.
    top = [i for i in range(9) if all(P[i, j] > 0.5 for j in range(9) if j != i)]
    assert len(top) == 1
    x = solve_nash(P)
    np.testing.assert_allclose(x, np.eye(9)[top[0]], atol=1e-7)


@pytest.mark.parametrize("method", ["highs-ipm", "highs-ds"])
def test_lp_nash_has_zero_gap_on_random_game(method):
    P = generate("uniform", 60, seed=5)
    x = solve_nash(P, method=method)
    assert abs(x.sum() - 1) < 1e-12 and x.min() >= 0
    assert gap(P, x) <= 1e-7


@pytest.mark.parametrize(
    "kind,n,seed",
    [("uniform", 3, s) for s in range(4)]
    + [("uniform", 4, s) for s in range(4)]
    + [("bt-cyclic", 4, 0), ("uniform", 5, 7)],
)
def test_lp_nash_matches_support_enumeration(kind, n, seed):
    P = generate(kind, n, seed)
    ne = _support_enumeration(P)
    assert len(ne) == 1  # generic games have a unique NE
    np.testing.assert_allclose(solve_nash(P), ne[0], atol=1e-7)


def test_lp_nash_2x2_closed_form():
    for p in [0.2, 0.7]:
        P = np.array([[0.5, p], [1 - p, 0.5]])
        winner = 0 if p > 0.5 else 1
        np.testing.assert_allclose(solve_nash(P), np.eye(2)[winner], atol=1e-9)


# ---------------------------------------------------------------- regularized NE


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta", [1.0, 0.1, 0.01, 0.001])
def test_regularized_nash_fixed_point_and_gap(kind, beta):
    P = generate(kind, 25, seed=11)
    mu = np.full(25, 1 / 25)
    pi = solve_regularized(P, beta)
    assert _fixed_point_residual(P, pi, beta, mu) <= 1e-10
    assert regularized_gap(P, pi, beta) <= 1e-12
    # Unregularized gap bound: max_y q(y) − ½ ≤ β·max_y log(1/μ(y)).
    assert gap(P, pi) <= 2 * beta * np.log(25) + 1e-12


def test_regularized_nash_with_nonuniform_mu_and_zero_entry():
    rng = np.random.default_rng(0)
    P = generate("uniform", 12, seed=2)
    mu = rng.dirichlet(np.full(12, 0.5))
    mu[3] = 0.0
    mu /= mu.sum()
    for beta in [0.5, 0.02, 0.001]:
        pi = solve_regularized(P, beta, mu)
        assert pi[3] == 0.0
        assert _fixed_point_residual(P, pi, beta, mu) <= 1e-10
        assert regularized_gap(P, pi, beta, mu) <= 1e-12


def test_regularized_nash_with_one_hot_mu_is_that_action():
    P = generate("rps", 5, seed=0)
    np.testing.assert_array_equal(solve_regularized(P, 0.1, np.eye(5)[2]), np.eye(5)[2])


@pytest.mark.parametrize(
    "kind,beta,dirichlet", [("transitive", 1e-3, None), ("uniform", 2e-4, 0.3)]
)
def test_regularized_nash_hard_cases(kind, beta, dirichlet):
    """Near-pure solutions and tiny β: where plain damped Newton from μ crawls."""
    n = 150
    P = generate(kind, n, seed=7)
    rng = np.random.default_rng(7)
    mu = np.full(n, 1 / n) if dirichlet is None else rng.dirichlet(np.full(n, dirichlet))
    pi = solve_regularized(P, beta, mu)
    assert _fixed_point_residual(P, pi, beta, mu) <= 1e-10
    assert regularized_gap(P, pi, beta, mu) <= 1e-12


def test_regularized_nash_of_all_half_game_is_mu():
    mu = np.random.default_rng(1).dirichlet(np.ones(6))
    P = np.full((6, 6), 0.5)
    for beta in [0.01, 1.0]:
        np.testing.assert_allclose(solve_regularized(P, beta, mu), mu, atol=1e-12)


def test_regularized_nash_2x2_matches_bisection():
    P = np.array([[0.5, 0.8], [0.2, 0.5]])
    mu = np.array([0.3, 0.7])
    for beta in [0.05, 0.4, 3.0]:
        # π = (p, 1−p): log(p/(1−p)) = log(μ0/μ1) + (q0 − q1)/β.
        def f(p, beta=beta):
            q = P @ np.array([p, 1 - p])
            return np.log(p / (1 - p)) - np.log(mu[0] / mu[1]) - (q[0] - q[1]) / beta

        p = brentq(f, 1e-300, 1 - 1e-16, xtol=1e-15)
        np.testing.assert_allclose(solve_regularized(P, beta, mu), [p, 1 - p], atol=1e-10)


def test_regularized_nash_tends_to_mu_for_large_beta():
    P = generate("uniform", 10, seed=4)
    mu = np.random.default_rng(4).dirichlet(np.ones(10))
    dists = [np.abs(solve_regularized(P, b, mu) - mu).max() for b in [10.0, 100.0, 1e3, 1e4]]
    assert all(d2 < d1 / 5 for d1, d2 in zip(dists[:-1], dists[1:], strict=True))
    assert dists[-1] < 1e-4


def test_regularized_nash_tends_to_nash_for_small_beta():
    P = generate("uniform", 8, seed=6)
    ne = solve_nash(P)
    errs = [np.abs(solve_regularized(P, b) - ne).sum() for b in [0.1, 0.01, 0.001]]
    assert errs[-1] < 0.05 and errs[2] < errs[0]


def test_regularized_gap_positive_away_from_solution():
    P = generate("bt-cyclic", 15, seed=2)
    rng = np.random.default_rng(0)
    beta = 0.05
    star = solve_regularized(P, beta)
    for _ in range(20):
        pi = rng.dirichlet(np.ones(15))
        assert regularized_gap(P, pi, beta) > 1e-6
    d = rng.dirichlet(np.ones(15))
    vals = [regularized_gap(P, (1 - e) * star + e * d, beta) for e in [1e-1, 1e-2, 1e-3]]
    assert vals[0] > vals[1] > vals[2] > 0  # quadratic growth near the unique zero
    assert vals[2] < 1e-4


def test_solve_regularized_rejects_bad_arguments():
    P = generate("uniform", 4)
    for beta in [0.0, -1.0, float("nan"), "x"]:
        with pytest.raises(InputError):
            solve_regularized(P, beta)
    with pytest.raises(InputError):
        solve_regularized(P, 0.1, mu=np.ones(3))
    with pytest.raises(InputError):
        solve_regularized(P, 0.1, mu=-np.ones(4))
    with pytest.raises(InputError):
        solve_nash(P, method="simplex-magic")


# ---------------------------------------------------------------- gap measures


def test_gap_matches_loop_and_is_nonnegative():
    rng = np.random.default_rng(0)
    P = generate("uniform", 9, seed=1)
    for _ in range(20):
        pi = rng.dirichlet(np.ones(9) * 0.5)
        g = gap(P, pi)
        assert isinstance(g, float)
        assert g >= -1e-15
        assert abs(g - _loop_gap(P, pi)) <= 1e-14
    assert abs(gap(P, solve_nash(P))) <= 1e-7


@pytest.mark.parametrize("beta", [0.05, 0.3, 2.0])
def test_regularized_gap_matches_brute_force_max_min(beta):
    rng = np.random.default_rng(7)
    P = generate("uniform", 7, seed=3)
    for _ in range(5):
        pi = rng.dirichlet(np.ones(7))
        mu = rng.dirichlet(np.ones(7))
        brute, best, worst, J = _brute_regularized_gap(P, pi, beta, mu)
        assert abs(regularized_gap(P, pi, beta, mu) - brute) <= 1e-12
        # The Gibbs optimisers are optimal: random challengers do no better.
        for _ in range(10):
            other = rng.dirichlet(np.ones(7))
            assert J(other, pi) <= J(best, pi) + 1e-12
            assert J(pi, other) >= J(pi, worst) - 1e-12
        # And the written formula agrees (naive evaluation).
        naive = (
            2 * (beta * logsumexp(np.log(mu) + P @ pi / beta) + beta * np.sum(pi * np.log(pi / mu)))
            - 1
        )
        assert abs(naive - brute) <= 1e-12


def test_measures_torch_batched_match_numpy_loop():
    rng = np.random.default_rng(3)
    B, n = 6, 10
    Ps = np.stack([generate("uniform", n, seed=s) for s in range(B)])
    pis = rng.dirichlet(np.ones(n), size=B)
    mus = rng.dirichlet(np.ones(n), size=B)
    betas = rng.uniform(0.01, 1.0, size=B)
    tP, tpi, tmu, tb = (torch.from_numpy(a) for a in (Ps, pis, mus, betas))
    g = gap(tP, tpi)
    rg = regularized_gap(tP, tpi, tb, tmu)
    rg_scalar = regularized_gap(tP[0], tpi, 0.1)  # one P, batch of policies
    k = kl(tpi, tmu)
    for t in (g, rg, rg_scalar, k):
        assert isinstance(t, torch.Tensor) and t.shape == (B,) and t.dtype == torch.float64
    for b in range(B):
        assert abs(g[b].item() - _loop_gap(Ps[b], pis[b])) <= 1e-14
        brute = _brute_regularized_gap(Ps[b], pis[b], betas[b], mus[b])[0]
        assert abs(rg[b].item() - brute) <= 1e-12
        uniform = np.full(n, 1 / n)
        assert (
            abs(rg_scalar[b].item() - _brute_regularized_gap(Ps[0], pis[b], 0.1, uniform)[0])
            <= 1e-12
        )
        assert (
            abs(k[b].item() - sum(p * np.log(p / q) for p, q in zip(pis[b], mus[b], strict=True)))
            <= 1e-14
        )
    # numpy batched input gives a numpy array of the same values
    np.testing.assert_allclose(regularized_gap(Ps, pis, betas, mus), rg.numpy(), atol=0)


def test_kl_conventions():
    assert kl(np.array([0.0, 1.0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2), abs=1e-15)
    assert kl(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == np.inf
    assert kl(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0
    p = np.array([0.3, 0.7])
    assert kl(p, p) == 0.0
