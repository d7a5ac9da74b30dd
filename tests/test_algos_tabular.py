"""The batched tabular runner against plain per-game NumPy loops, and its options."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from selfplay import algos
from selfplay.algos.base import ADAPT_FLOOR, ADAPT_FORGET, ADAPT_GROW, LIPSCHITZ
from selfplay.algos.payoffs import Payoffs
from selfplay.errors import InputError
from selfplay.games import gap, generate


def lsm(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def _var(pi, v):
    return float(pi @ (v - pi @ v) ** 2)


class LipschitzLoop:
    """The L̂ rule of base.py, written out for one game."""

    def __init__(self):
        self.L, self.peak, self.last = LIPSCHITZ, 0.0, None

    def __call__(self, x, q):
        if self.last is not None:
            pi = np.exp(x)
            vx, vq = _var(pi, x - self.last[0]), _var(pi, q - self.last[1])
            ratio = np.sqrt(vq / vx) if vx > 1e-24 else 0.0
            self.peak = max(ratio, ADAPT_FORGET * self.peak)
            self.L = min(max(self.peak, self.L / ADAPT_GROW, ADAPT_FLOOR), LIPSCHITZ)
        self.last = (x, q)
        return self.L


def loop(name: str, P: np.ndarray, h: dict, T: int, mu: np.ndarray, init: np.ndarray):
    """Each rule as its paper writes it, one game at a time (no plans involved)."""
    x, lmu = np.log(init), np.log(mu)
    eta, beta = h.get("eta"), h.get("beta")

    def q(z):
        return P @ np.exp(z)

    x_prev, mag, lip, last_mix = x, x, LipschitzLoop(), None
    for t in range(T):
        if name == "mwu":
            x = lsm(x + eta * q(x))
        elif name == "sppo":
            x = lsm(x + q(x) / beta)
        elif name == "omwu":
            if h.get("adaptive"):
                eta = 0.4 / lip(x, q(x))
            x, x_prev = lsm(x + eta * (2 * q(x) - q(x_prev))), x
        elif name == "mpo":
            alpha = h["alpha"]
            if h.get("adaptive"):
                alpha = lip(x, q(x))
                eta = 2.0 / alpha
            x = lsm((x + eta * q(x) + eta * alpha * mag) / (1 + eta * alpha))
            if (t + 1) % h["every"] == 0:
                mag = x
        elif name == "nash-mp":
            s = 1 + eta * beta
            lead = lsm((x + eta * q(x) + eta * beta * lmu) / s)
            x = lsm((x + eta * q(lead) + eta * beta * lmu) / s)
        elif name == "egpo":
            eb = eta * beta
            lead = lsm((1 - eb) * x + eb * lmu + eta * q(x))
            x = lsm((1 - eb) * x + eb * lmu + eta * q(lead))
        elif name == "nash-md":  # π^μ ∝ π^{1−ηβ}μ^{ηβ}; π' ∝ π^μ·exp(η·P(·≻π^μ))
            if h.get("adaptive"):  # L̂ from the two previous mixtures (no extra query)
                lhat = lip(*last_mix) if last_mix is not None else lip.L
                eta, last_mix = min(beta / (beta**2 + lhat**2), 0.01 / beta, 0.25), None
            mix = lsm((1 - eta * beta) * x + eta * beta * lmu)
            qm = q(mix)
            last_mix = (mix, qm)
            x = lsm(mix + eta * qm)
        elif name == "online-ipo":
            if h.get("adaptive"):
                lhat = lip(x, q(x))
                eta = beta / (beta**2 + lhat**2)
            eb = eta * beta
            x = lsm((1 - eb) * x + eb * lmu + eta * q(x))
    return np.exp(x)


GRID = {
    "mwu": [dict(eta=e) for e in (0.3, 1.0, 2.0, 5.0)],
    "sppo": [dict(beta=b) for b in (0.2, 0.5, 1.0, 3.0)],
    "omwu": [dict(eta=e) for e in (0.3, 1.0, 2.0, 5.0)],
    "mpo": [
        dict(eta=e, alpha=a, every=k)
        for e, a, k in ((1.0, 0.5, 1), (40.0, 0.05, 5), (4.0, 0.5, 3), (10.0, 0.1, 7))
    ],
    "nash-mp": [dict(eta=e, beta=b) for e, b in ((2.0, 0.1), (1.0, 0.5), (4.0, 0.01), (2.0, 1.0))],
    "egpo": [dict(eta=e, beta=b) for e, b in ((1.5, 0.1), (0.5, 0.5), (3.0, 0.01), (0.9, 1.0))],
    "nash-md": [dict(eta=e, beta=b) for e, b in ((0.1, 0.1), (1.0, 0.5), (3.0, 0.01), (0.5, 1.0))],
    "online-ipo": [dict(eta=e, beta=b) for e, b in ((0.4, 0.1), (1.0, 0.5), (3.0, 0.01), (0.5, 1))],
}


def _tensor_hyper(grid: list[dict]) -> algos.Hyper:
    col = {k: torch.tensor([float(g[k]) for g in grid], dtype=torch.float64) for k in grid[0]}
    if "every" in col:
        col["magnet_every"] = col.pop("every")
    return algos.Hyper(**col)


@pytest.mark.parametrize("name", algos.NAMES)
def test_batched_equals_numpy_loop(name):
    n, T = 6, 40
    games = [
        generate(k, n, s) for k, s in (("uniform", 0), ("bt-cyclic", 1), ("rps", 2), ("uniform", 3))
    ]
    rng = np.random.default_rng(0)
    mu, init = rng.dirichlet(np.ones(n), 4), rng.dirichlet(np.ones(n), 4)
    tr = algos.run(
        name,
        np.stack(games),
        hyper=_tensor_hyper(GRID[name]),
        iterations=T,
        mu=mu,
        init=init,
        record_every=T,
    )
    for b, (P, h) in enumerate(zip(games, GRID[name], strict=True)):
        want = loop(name, P, h, T, mu[b], init[b])
        np.testing.assert_allclose(tr.policy[b].numpy(), want, atol=1e-11, rtol=0)
        assert abs(float(tr.gap[-1, b]) - gap(P, want)) < 1e-10


@pytest.mark.parametrize("name", ["omwu", "mpo", "online-ipo", "nash-md"])
def test_adaptive_step_equals_numpy_loop(name):
    n, T = 5, 300
    games = [generate("uniform", n, s) for s in (14, 21, 30)]
    beta = 0.01  # small β: where the adaptive rule matters for online IPO and Nash-MD
    hyper = algos.get(name).default_hyper(n)
    hyper = hyper.with_(beta=beta) if algos.get(name).objective == "regularized" else hyper
    tr = algos.run(name, np.stack(games), hyper=hyper, iterations=T, record_every=T)
    assert tr.hyper.adaptive
    h = {"adaptive": True, "alpha": None, "every": 5, "beta": beta}
    for b, P in enumerate(games):
        want = loop(name, P, h, T, np.full(n, 1 / n), np.full(n, 1 / n))
        np.testing.assert_allclose(tr.policy[b].numpy(), want, atol=1e-9, rtol=0)


def test_sampled_payoffs_are_unbiased():
    n, B, Q = 5, 4000, 20
    P = torch.as_tensor(generate("uniform", n, 3))
    pi = torch.as_tensor(np.random.default_rng(0).dirichlet(np.ones(n)))
    exact = P @ pi
    est = Payoffs(P.expand(B, n, n), Q, torch.Generator().manual_seed(1))(pi.log().expand(B, n))
    sd = 0.5 / np.sqrt(B * Q)  # per-query variance ≤ ¼
    # 6 sd: P(|Z| > 6) = 2e-9 per move, 1e-8 for the 5 (5 sd would be 3e-6); a bias
    # above 6·sd ≈ 0.011 still fails
    assert (est.mean(0) - exact).abs().max() < 6 * sd
    assert est.std(0).min() > 0.01  # it is an estimate, not the exact value
    again = Payoffs(P.expand(B, n, n), Q, torch.Generator().manual_seed(1))(pi.log().expand(B, n))
    assert torch.equal(est, again)  # seeded


@pytest.mark.parametrize(
    "name,calls_per_iter",
    [("omwu", 1), ("mpo", 1), ("mwu", 1), ("nash-md", 1), ("nash-mp", 2), ("egpo", 2)],
)
def test_query_counts(name, calls_per_iter):
    n, T, Q = 5, 10, 7
    P = generate("uniform", n, 0)
    tr = algos.run(name, P, iterations=T, queries=Q, seed=3)
    assert int(tr.preference_queries[0]) == T * calls_per_iter * n * Q
    assert torch.isfinite(tr.policy).all()
    exact = algos.run(name, P, iterations=T)
    assert int(exact.preference_queries[0]) == T * calls_per_iter * n * n
    assert exact.oracle_calls == T * calls_per_iter


def test_early_stop_and_recording():
    P = generate("uniform", 9, 1)
    tr = algos.run("nash-mp", P, iterations=1000, tol=1e-10, record_every=5)
    assert tr.iterations < 1000 and tr.iterations % 5 == 0
    assert float(tr.regularized_gap[-1, 0]) <= 1e-10
    assert tr.recorded.tolist() == list(range(0, tr.iterations + 1, 5))
    assert tr.gap.shape == tr.regularized_gap.shape == (len(tr.recorded), 1)
    nash = algos.run("omwu", P, iterations=7, record_every=3)
    assert nash.regularized_gap is None and nash.recorded.tolist() == [0, 3, 6, 7]


@pytest.mark.parametrize("name", algos.NAMES)
def test_log_space_survives_tiny_probabilities(name):
    P = generate("rps", 5, 1)
    init = np.array([1e-300, 0.25, 0.25, 0.25, 0.25 - 1e-300])
    mu = np.array([0.1, 0.15, 0.2, 0.25, 0.3])  # non-uniform: π*_β of P and Pᵀ differ
    tr = algos.run(name, P, iterations=200, init=init, mu=mu, record_every=200)
    assert torch.isfinite(tr.policy).all() and torch.isfinite(tr.gap).all()
    assert abs(float(tr.policy.sum()) - 1) < 1e-12
    # the same trajectory as the log-space NumPy loop of each paper's rule, where the
    # 1e-300 action has log-probability −690.8 and still moves by η·q per step
    A = algos.get(name)
    d = A.resolve(A.default_hyper(5))
    h = dict(eta=d.eta, beta=d.beta, alpha=d.alpha, every=d.magnet_every, adaptive=d.adaptive)
    want = loop(name, P, h, 200, mu, init)
    np.testing.assert_allclose(tr.policy[0].numpy(), want, atol=1e-9, rtol=0)
    logp = torch.log(tr.policy[0, 0]).item()
    assert np.isfinite(logp) and abs(logp - np.log(want[0])) < 1e-6 * max(1.0, abs(logp))


def test_registry_and_errors():
    assert algos.NAMES == ("mpo", "nash-mp", "omwu", "egpo", "nash-md", "online-ipo", "sppo", "mwu")
    for name in algos.NAMES:
        A = algos.get(name)
        assert A.name == name and A.paper and A.objective in ("nash", "regularized")
        assert A.plan(A.default_hyper(10)).phases
    with pytest.raises(InputError, match="nash-mp"):
        algos.get("nash_mp")
    with pytest.raises(InputError):
        algos.run("omwu", np.ones((3, 4)), iterations=1)
    with pytest.raises(InputError):
        algos.run("omwu", generate("uniform", 3, 0), iterations=1, init=[0.0, 0.5, 0.5])
    with pytest.raises(InputError):
        algos.run(
            "omwu",
            np.stack([generate("uniform", 3, 0)] * 2),
            iterations=1,
            hyper=algos.Hyper(eta=torch.ones(3)),
        )


def test_import_boundary():
    code = (
        "import selfplay.algos, selfplay.games, sys; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'ray', 'vllm', 'transformers', 'mlflow'}]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
