"""LLM losses against the tabular rules they stand for.

For a softmax policy over n responses with exact expectations, the minimiser
of each phase's target-regression loss is that phase's update as the paper
writes it (`_published`, plain numpy, independent of the plans); for
EGPO and online IPO, one gradient step on the IPO loss with learning rate
n·η·β/4 is; and the policy-gradient form has zero expected gradient there.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from selfplay import algos
from selfplay.algos import losses
from selfplay.algos.payoffs import Payoffs
from selfplay.algos.plan import ROLES, Mixture, StepPlan
from selfplay.algos.tabular import Executor
from selfplay.games import generate

N = 6


def _setup(seed: int = 0):
    P = generate("uniform", N, seed)
    rng = np.random.default_rng(seed)
    state = {r: torch.as_tensor(np.log(rng.dirichlet(np.ones(N))))[None] for r in ROLES}
    return P, state


def _source_probs(src, state) -> np.ndarray:
    """Independent (numpy) evaluation of a plan source's policy."""
    if isinstance(src, Mixture):
        la, lb = state[src.a][0].numpy(), state[src.b][0].numpy()
        w = np.exp((1 - src.lam) * la + src.lam * lb)
        return w / w.sum()
    return np.exp(state[src][0].numpy())


def _g(P, ph, state) -> torch.Tensor:
    return torch.as_tensor(sum(w * (P @ _source_probs(s, state)) for s, w in ph.opponents))


def _tabular(P, ph, state) -> torch.Tensor:
    ex = Executor(
        StepPlan(phases=(ph,)),
        Payoffs(torch.as_tensor(P)[None], None, torch.Generator()),
        dict(state),
    )
    ex.step(0)
    return ex.state[ph.output][0]


def _lsm(x: np.ndarray) -> np.ndarray:
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def _published(name: str, k: int, P: np.ndarray, state) -> torch.Tensor:
    """Phase k of each algorithm's update as its paper writes it (plain numpy, the
    default hyperparameters' numbers; no plan coefficients): the loss oracle."""
    A = algos.get(name)
    h = A.resolve(A.default_hyper(N))
    lp = {r: state[r][0].numpy() for r in ROLES}
    x, lmu, lead = lp["main"], lp["ref"], lp["lead"]

    def q(logp):
        return P @ np.exp(logp)

    eta, beta = float(h.eta), float(h.beta)
    if name == "mwu":  # π' ∝ π·exp(η q_π)
        out = x + eta * q(x)
    elif name == "sppo":  # π' ∝ π·exp(q_π/β)
        out = x + q(x) / beta
    elif name == "omwu":  # π' ∝ π·exp(η(2q_t − q_{t−1}))
        out = x + eta * (2 * q(x) - q(lp["prev"]))
    elif name == "mpo":  # MMD: (log π + ηq + ηα log ρ)/(1 + ηα)
        ea = eta * float(h.alpha)
        out = (x + eta * q(x) + ea * lp["magnet"]) / (1 + ea)
    elif name == "nash-mp":  # mirror prox, both phases anchored at π_t
        out = (x + eta * q(x if k == 0 else lead) + eta * beta * lmu) / (1 + eta * beta)
    elif name == "egpo":  # θ − lr·∇L_IPO: (1−ηβ)θ + ηβ log μ + η q, opponent π_t then π_{t+½}
        out = (1 - eta * beta) * x + eta * beta * lmu + eta * q(x if k == 0 else lead)
    elif name == "nash-md":  # π^μ ∝ π^{1−ηβ}μ^{ηβ}; π' ∝ π^μ·exp(η q_{π^μ})
        mix = _lsm((1 - eta * beta) * x + eta * beta * lmu)
        out = mix + eta * q(mix)
    elif name == "online-ipo":  # one online-IPO step: (1−ηβ)θ + ηβ log μ + η q_π
        out = (1 - eta * beta) * x + eta * beta * lmu + eta * q(x)
    else:
        raise AssertionError(name)
    return torch.as_tensor(_lsm(out))


def _phases():
    for name in algos.NAMES:
        A = algos.get(name)
        for k, ph in enumerate(A.plan(A.default_hyper(N)).phases):
            yield pytest.param(name, k, ph, id=f"{name}-phase{k}")


def _all_pairs(diagonal: bool = False) -> torch.Tensor:
    return torch.tensor(
        [(i, j) for i, j in itertools.product(range(N), repeat=2) if diagonal or i != j]
    )


def _sampled_pairs(seed: int, m: int = 300) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    w = 0.3 / N + 0.7 * rng.dirichlet(np.ones(N))  # an arbitrary full-support behaviour
    pairs = torch.as_tensor(rng.choice(N, size=(m, 2), p=w))
    design = torch.zeros(m, N, dtype=torch.float64)
    design[torch.arange(m), pairs[:, 0]] += 1
    design[torch.arange(m), pairs[:, 1]] -= 1
    assert torch.linalg.matrix_rank(design) == N - 1  # pair graph connected
    return pairs


def _minimise(loss_fn) -> torch.Tensor:
    """Exact minimiser of a loss that is quadratic in the logits (one Newton step)."""
    theta0 = torch.zeros(N, dtype=torch.float64)
    grad = torch.autograd.functional.jacobian(loss_fn, theta0)
    hess = torch.autograd.functional.hessian(loss_fn, theta0)
    theta = theta0 - torch.linalg.pinv(hess, hermitian=True) @ grad
    return torch.log_softmax(theta, -1)


@pytest.mark.parametrize("pairs", ["all", "sampled"])
@pytest.mark.parametrize("name,k,ph", list(_phases()))
def test_regression_minimiser_is_tabular_update(name, k, ph, pairs):
    P, state = _setup(seed=k + 3)
    g = _g(P, ph, state)
    anc = state[ph.anchor][0]
    mu = state[ph.mu][0] if ph.mu is not None else None
    pr = _all_pairs() if pairs == "all" else _sampled_pairs(k)

    def loss_fn(theta):
        return losses.phase_loss(ph, "regression", torch.log_softmax(theta, -1), anc, mu, g, pr)

    got = _minimise(loss_fn)
    want = _published(name, k, P, state)
    assert torch.allclose(got, want, atol=1e-8, rtol=0)
    assert torch.allclose(_tabular(P, ph, state), want, atol=1e-12, rtol=0)
    assert not torch.allclose(want, anc, atol=1e-3)  # the update does move


def test_regression_minimiser_ignores_the_behaviour_policy():
    """Different pair distributions, same minimiser (robustness to stale samplers)."""
    P, state = _setup(1)
    ph = algos.get("nash-mp").plan(algos.get("nash-mp").default_hyper(N)).phases[0]
    g, anc, mu = _g(P, ph, state), state["main"][0], state["ref"][0]
    sols = [
        _minimise(
            lambda th, pr=pr: losses.target_regression_loss(
                torch.log_softmax(th, -1), anc, mu, g, pr, ph.a, ph.b, ph.c, reduction="sum"
            )
        )
        for pr in (_sampled_pairs(5), _sampled_pairs(6), _all_pairs())
    ]
    assert all(torch.allclose(s, sols[0], atol=1e-9) for s in sols)


@pytest.mark.parametrize("name", ["egpo", "online-ipo"])
def test_one_ipo_gradient_step_is_tabular_update(name):
    P, state = _setup(2)
    A = algos.get(name)
    h = A.resolve(A.default_hyper(N))  # η = None means "the default rule in β"
    for k, ph in enumerate(A.plan(h).phases):
        g = _g(P, ph, state)
        theta = state[ph.anchor][0].clone().requires_grad_(True)
        loss = losses.ipo_loss(
            torch.log_softmax(theta, -1),
            state["ref"][0],
            g,
            _all_pairs(diagonal=True),
            h.beta,
            "mean",
        )
        (grad,) = torch.autograd.grad(loss, theta)
        lr = N * h.eta * h.beta / 4  # the step-size mapping in egpo.py
        got = torch.log_softmax(theta.detach() - lr * grad, -1)
        assert torch.allclose(got, _published(name, k, P, state), atol=1e-12, rtol=0)
        # the dispatcher's IPO form is the same loss (β recovered as b/c)
        same = losses.phase_loss(
            ph,
            "ipo",
            torch.log_softmax(theta, -1),
            state[ph.anchor][0],
            state["ref"][0],
            g,
            _all_pairs(diagonal=True),
        )
        assert torch.allclose(same, loss, atol=1e-12)


@pytest.mark.parametrize("name,k,ph", list(_phases()))
def test_policy_gradient_form_is_stationary_at_tabular_update(name, k, ph):
    P, state = _setup(seed=k + 7)
    g = _g(P, ph, state)
    anc = state[ph.anchor][0]
    mu = state[ph.mu][0] if ph.mu is not None else None

    def expected_grad(logits: torch.Tensor) -> torch.Tensor:
        theta = logits.clone().requires_grad_(True)
        logp = torch.log_softmax(theta, -1)
        w = logp.exp().detach()  # exact expectation over on-policy samples
        total = sum(
            w[y]
            * losses.phase_loss(
                ph,
                "pg",
                logp[y : y + 1],
                anc[y : y + 1],
                None if mu is None else mu[y : y + 1],
                g[y : y + 1],
                None,
            )
            for y in range(N)
        )
        (grad,) = torch.autograd.grad(total, theta)
        return grad

    assert expected_grad(_published(name, k, P, state)).abs().max() < 1e-10
    assert expected_grad(anc).abs().max() > 1e-4


def test_sequence_logprob_sum_and_mean():
    tok = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert torch.allclose(losses.sequence_logprob(tok, mask, False), torch.tensor([-6.0, -1.0]))
    assert torch.allclose(losses.sequence_logprob(tok, mask, True), torch.tensor([-2.0, -0.5]))


def test_reductions_and_pair_indexing():
    logp = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [2, 0]])
    # differences are −1 and 3; target 0 -> squared errors 1 and 9
    s = losses.target_regression_loss(logp, zero, None, zero, pairs, 1.0, 0.0, 1.0, "sum")
    m = losses.target_regression_loss(logp, zero, None, zero, pairs, 1.0, 0.0, 1.0, "mean")
    assert float(s) == 10.0 and float(m) == 5.0
    with pytest.raises(ValueError):
        losses.target_regression_loss(logp, zero, None, zero, pairs, 1, 0, 1, "none")


def test_g_hat_weights_sources():
    pref_now = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    pref_prev = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    g = losses.g_hat([pref_now, pref_prev], [2.0, -1.0])  # OMWU's 2·q_t − q_{t−1}
    assert torch.allclose(g, torch.tensor([2 * 0.75 - 0.5, 2 * 0.25 - 0.5]))
    stacked = torch.stack([pref_now[:, :2], pref_prev], dim=1)  # [N, S=2, K=2]
    assert torch.allclose(
        losses.g_hat(stacked, [2.0, -1.0]), 2 * pref_now[:, :2].mean(-1) - pref_prev.mean(-1)
    )
    mask = [torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]), torch.ones(2, 2)]
    gm = losses.g_hat([pref_now, pref_prev], [1.0, 0.0], mask=mask)
    assert torch.allclose(gm, torch.tensor([0.5, 0.25]))


def test_k3_kl_is_unbiased_for_kl_policy_to_reference_on_long_responses():
    """k3 on rows drawn from π_θ estimates KL(π_θ‖π_ref) of whole sequences.

    Oracle: a token-independent policy over 4 tokens, so for responses of length L the
    sequence KL is L·KL_token, and the variance of one row's term
    f = r − 1 − log r (r = π_ref(y)/π_θ(y)) is exact:
        E f² = E r² − 2 E[r(1 + log r)] + E(1 + log r)²,
        E_θ r² = (Σ ref²/θ)^L,  E_θ[r log r] = E_ref log r = L·KL(ref‖θ),
        E_θ log r = −L·KL(θ‖ref),  Var_θ log r = L·Var_token.
    Median of K = 128 group means: a group mean is off by more than 2σ/√n with
    probability ≤ 1/4 (Chebyshev), so the median is with probability ≤ exp(−K/8) < 1e-6.
    The reversed ratio π_θ/π_ref has mean (Σ θ²/ref)^L − 1 − KL ≈ 3.0 here, not 0.92.
    """
    L, K, n = 20, 128, 2000
    theta = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    ref = torch.tensor([0.3, 0.3, 0.2, 0.2], dtype=torch.float64)
    lt, lf = theta.log(), ref.log()
    kl_tok = float((theta * (lt - lf)).sum())
    kl = L * kl_tok
    d = lf - lt  # per-token log r under θ
    m_log = -kl
    var_log = L * float((theta * d**2).sum() - kl_tok**2)
    e_r2 = float((ref**2 / theta).sum()) ** L
    e_rlog = L * float((ref * (lf - lt)).sum())  # E_ref log r = L·KL(ref‖θ)
    e_f2 = e_r2 - 2 * (1 + e_rlog) + (1 + 2 * m_log + var_log + m_log**2)
    sigma = (e_f2 - kl**2) ** 0.5
    gen = torch.Generator().manual_seed(0)
    y = torch.multinomial(theta.expand(K * n * L, 4), 1, generator=gen).view(K, n, L)
    means = [losses.k3_kl([lt[y[k]].sum(-1)], [lf[y[k]].sum(-1)]) / n for k in range(K)]
    est = float(np.median(means))
    tol = 2 * sigma / n**0.5
    assert kl == pytest.approx(0.916, abs=1e-3) and tol < 0.25
    assert abs(est - kl) <= tol, (est, kl, tol)
    assert losses.k3_kl([torch.zeros(3)], None) == 0.0


@pytest.mark.parametrize("allowed", [None, (1, 3, 4, 7)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_is_the_tempered_restricted_log_softmax_with_its_gradient(
    allowed, temperature
):
    """Chunked (3 positions a chunk here) against the plain formula
    z(y)/T − logsumexp_{v ∈ A} z(v)/T, values and gradients (float64)."""
    from selfplay.algos.logprobs import token_logprobs

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    ids = None if allowed is None else torch.tensor(allowed)
    pool = torch.arange(9) if ids is None else ids
    tgt = pool[torch.randint(0, len(pool), (2, 7), generator=gen)]
    w = torch.randn(2, 7, dtype=torch.float64, generator=gen)
    got = token_logprobs(x, tgt, temperature=temperature, allowed=ids, chunk_elements=2 * 3 * 9)
    (g_got,) = torch.autograd.grad((got * w).sum(), x)
    z = x / temperature
    lse = torch.logsumexp(z if ids is None else z[..., ids], -1)
    want = z.gather(-1, tgt[..., None]).squeeze(-1) - lse
    (g_want,) = torch.autograd.grad((want * w).sum(), x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-12)
    if temperature != 1.0:  # the temperature changes the answer
        plain = x.gather(-1, tgt[..., None]).squeeze(-1) - torch.logsumexp(
            x if ids is None else x[..., ids], -1
        )
        assert (got - plain).abs().max() > 0.01
