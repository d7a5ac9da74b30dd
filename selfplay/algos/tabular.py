"""Batched exact tabular execution of a `StepPlan` on matrix games.

Games are `P: [B, n, n]` (float64), or one game `P: [n, n]` run under B
settings (hyperparameters, init, μ given per setting): the state is one
log-probability vector `[B, n]` per role, and with one game every payoff is a
single matrix–matrix product `Q = Π Pᵀ` over the stacked policies `Π [B, n]`.
Every phase computes

    ĝ            = Σ_k w_k · q_{source_k},   q_π = P(· ≻ π) = P π,
    log π_out    = log_softmax(a·log π_anchor + b·log μ + c·ĝ),

which is every update in docs/algorithms.md (the normaliser c is the log-softmax).
Work stays in log space so that probabilities of 1e-300 neither underflow to
0 in the update nor produce NaNs: only `q = P·exp(log π)` leaves log space, and
an underflowed exp there contributes exactly what it should (nothing).

Hyperparameters may be per-game (per-setting) tensors `[B]`/`[B, 1]`, so one
call sweeps many games × hyperparameters, or one game × B settings.

`queries=Q` replaces each exact `q_π(y)` by the mean of Q Bernoulli(P(y, y''))
outcomes with y'' ~ π drawn independently for every action y (unbiased);
each such payoff vector costs n·Q preference queries. With exact payoffs a
payoff vector is counted as n·n queries (every pair, once). A payoff vector is
evaluated once per version and reused (OMWU's q_{t−1} is the q_t of the
previous step), so OMWU, MWU, MPO and Nash-MD query once per iteration and
Nash-MP, EGPO twice.

With `hyper.adaptive` (the default for OMWU, MPO, online IPO and Nash-MD)
the plan is rebuilt every step from `Algorithm.adapt(hyper, L̂_t)`, with L̂_t
the local Lipschitz estimate of `LipschitzEstimate` (base.py explains the
rule; Nash-MD measures it on its mixtures); `Trace.hyper` holds the last
step's values.

MPO's adaptive magnet (`Refresh.tol`) is checked at the start of a step on
the payoff of π_t that the step queries anyway, so it costs no queries: that
is the same as an "after" refresh at the end of the previous step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from selfplay.algos.base import (
    Algorithm,
    Hyper,
)
from selfplay.algos.batching import as_batch, as_games, batch_hyper, batch_size
from selfplay.algos.payoffs import LipschitzEstimate, Payoffs, mixture_logp
from selfplay.algos.plan import ROLES, Mixture, Refresh, Source, StepPlan
from selfplay.errors import InputError


@dataclass
class Trace:
    """What one `run` produced (B games).

    policy:             last iterate π_T, [B, n].
    average:            mean of π_1..π_T, [B, n] (MWU/SPPO's convergent iterate).
    recorded:           iterations at which gaps were recorded, [T] (0 = init).
    gap:                `2·max_y q_π(y) − 1` of the last iterate, [T, B].
    regularized_gap:    gap in the β-regularized game w.r.t. μ, [T, B]; None
                        for algorithms whose objective is the original game.
    beta:               [B] β used for regularized_gap (None with it).
    iterations:         iterations run (less than asked on early stop).
    preference_queries: per game, [B] (n·Q per sampled payoff vector, n·n exact).
    oracle_calls:       payoff vectors evaluated (the paper's "queries" unit).
    seconds:            wall time of the iterations (gap recording included).
    hyper:              hyperparameters of the last step (the adapted ones
                        when `hyper.adaptive`; tensors are [B, 1]).
    magnet_refreshes:   per game, [B] (MPO), else None.
    """

    algo: str
    policy: torch.Tensor
    average: torch.Tensor
    recorded: torch.Tensor
    gap: torch.Tensor
    regularized_gap: torch.Tensor | None
    beta: torch.Tensor | None
    iterations: int
    preference_queries: torch.Tensor
    oracle_calls: int
    seconds: float
    hyper: Hyper
    magnet_refreshes: torch.Tensor | None = None


class Executor:
    """Runs one StepPlan step at a time on a batch of games.

    Payoffs are cached per policy *tensor* (not per role): a refresh that
    copies a role shares its tensor, so its payoff is never queried twice.
    """

    def __init__(
        self,
        plan: StepPlan,
        payoffs: Payoffs,
        state: dict[str, torch.Tensor],
        adapt: Callable[[torch.Tensor], StepPlan] | None = None,
    ):
        self.plan, self.payoffs, self.state, self.adapt = plan, payoffs, state, adapt
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._probs: list[tuple[torch.Tensor, torch.Tensor]] = []
        B = next(iter(state.values())).shape[0]
        self.refreshes = torch.zeros(B, dtype=torch.long)
        self.lipschitz = LipschitzEstimate(B) if adapt is not None else None
        self._inner_start: dict[str, torch.Tensor] = {}
        self._last_mixture: tuple[torch.Tensor, torch.Tensor] | None = None

    def prob(self, logp: torch.Tensor) -> torch.Tensor:
        """exp(log π), computed once per policy tensor (the payoff and the run's
        average iterate share it)."""
        for t, pi in self._probs:
            if t is logp:
                return pi
        pi = logp.exp()
        self._probs.append((logp, pi))
        return pi

    def q(self, src: Source) -> torch.Tensor:
        if isinstance(src, Mixture):
            logp = mixture_logp(self.state, src)
            q = self.payoffs(logp)
            self._last_mixture = (logp, q)
            return q
        logp = self.state[src]
        for t, q in self._cache:
            if t is logp:
                return q
        q = self.payoffs(logp, self.prob(logp))
        self._cache.append((logp, q))
        return q

    def step(self, t: int) -> None:
        if self.adapt is not None:
            self.plan = self.adapt(self._lipschitz())
        for rf in self.plan.refresh:
            if rf.tol is not None:
                self._refresh(rf, self._inner_converged(rf), self.state)
        before = dict(self.state)
        for ph in self.plan.phases:
            g = _scaled_sum((w, self.q(src)) for src, w in ph.opponents)
            terms = [(ph.a, self.state[ph.anchor]), (ph.c, g)]
            if ph.mu is not None:
                terms.append((ph.b, self.state[ph.mu]))
            logits = _scaled_sum(terms)
            self.state[ph.output] = torch.log_softmax(logits, dim=-1)
        for rf in self.plan.refresh:
            due = _due(rf, t, self.state[rf.dst])
            self._refresh(rf, due, before if rf.when == "before" else self.state)
        live = {id(v) for v in self.state.values()}
        self._cache = [(t_, q) for t_, q in self._cache if id(t_) in live]
        self._probs = [(t_, p) for t_, p in self._probs if id(t_) in live]

    def _lipschitz(self) -> torch.Tensor:
        """L̂_t from payoffs the plan queries anyway: π_t's (queried by this step)
        or, when the first opponent is a mixture (Nash-MD), the last two mixtures'
        (queried by the previous steps; the mixture of this step depends on η_t)."""
        src = self.plan.phases[0].opponents[0][0]
        assert self.lipschitz is not None  # made with `adapt`
        if not isinstance(src, Mixture):
            return self.lipschitz.update(self.state[src], self.q(src))
        if self._last_mixture is None:
            return self.lipschitz.L
        pair, self._last_mixture = self._last_mixture, None
        return self.lipschitz.update(*pair)

    def _refresh(self, rf: Refresh, due: torch.Tensor, src_state) -> None:
        if rf.dst == "magnet":
            self.refreshes += due.view(-1).long()
        if bool(due.all()):
            self.state[rf.dst] = src_state[rf.src]
        elif bool(due.any()):
            self.state[rf.dst] = torch.where(due, src_state[rf.src], self.state[rf.dst])

    def _inner_converged(self, rf: Refresh) -> torch.Tensor:
        """[B, 1]: inner regularized gap of src (α = tol_beta, μ = dst) has fallen
        to tol × its value right after the last refresh (inexact proximal point)."""
        q = self.q(rf.src)
        lp, lm = self.state[rf.src], self.state[rf.dst]
        alpha, tol = rf.tol_beta, rf.tol
        assert alpha is not None and tol is not None  # a tolerance refresh names both
        # regularized gap = 2α·KL(π ‖ softmax(log ρ + q/α)) (games/measures.py docstring)
        target = torch.log_softmax(lm + q / alpha, dim=-1)
        inner = 2 * alpha * (lp.exp() * (lp - target)).sum(-1, keepdim=True)
        start = self._inner_start.get(rf.dst)
        if start is None:
            start = inner
        due = inner <= tol * start
        # after a refresh the new inner problem starts at ρ = π: its gap is `inner_at_rho`
        inner_at_rho = (
            2
            * alpha
            * (lp.exp() * (lp - torch.log_softmax(lp + q / alpha, -1))).sum(-1, keepdim=True)
        )
        self._inner_start[rf.dst] = torch.where(due, inner_at_rho, start)
        return due


def _scaled_sum(terms) -> torch.Tensor:
    """Σ w·x over (w, x), each further term one fused multiply-add pass (torch.add with
    alpha for a number, addcmul for a [B, 1] tensor); a first weight of 1 is not multiplied."""
    out = None
    for w, x in terms:
        number = not isinstance(w, torch.Tensor)
        if out is None:
            out = x if number and w == 1 else w * x
        elif number:
            out = torch.add(out, x, alpha=w)
        else:
            out = torch.addcmul(out, w, x)
    if out is None:
        raise ValueError("no terms to sum")
    return out


def _due(rf: Refresh, t: int, like: torch.Tensor) -> torch.Tensor:
    """`Refresh.due` as a [B, 1] mask (`every` an int, or per-game periods)."""
    if isinstance(rf.every, torch.Tensor):
        return replace(rf, every=rf.every.reshape(-1, 1).to(torch.long)).due(t)
    return torch.full((like.shape[0], 1), bool(rf.due(t)), dtype=torch.bool)


def step(
    algo: str | Algorithm,
    P,
    state: dict[str, torch.Tensor],
    *,
    hyper: Hyper | None = None,
    t: int = 0,
) -> dict[str, torch.Tensor]:
    """One exact step of the plan from an explicit state (role → log-probs [B, n]).

    Roles the plan reads must be present; returns the new state (refreshes
    applied as at step t). Used to check fixed points from a given state.
    """
    from selfplay import algos

    A = algos.get(algo) if isinstance(algo, str) else algo
    P = as_games(P)
    B = batch_size(P, hyper, *state.values())
    h = A.resolve(batch_hyper(hyper if hyper is not None else A.default_hyper(P.shape[-1]), B))
    ex = Executor(A.plan(h), Payoffs(P, None, torch.Generator()), dict(state))
    ex.step(t)
    return ex.state


def initial_state(init: torch.Tensor, mu: torch.Tensor) -> dict[str, torch.Tensor]:
    logp = init.log()
    state: dict[str, torch.Tensor] = {
        r: logp for r in ROLES
    }  # one tensor: roles equal at t = 0 share payoffs
    state["ref"] = mu.log()
    return state


class _Planner:
    """Re-plans each step from the measured L̂ (adaptive hyperparameters)."""

    def __init__(self, A: Algorithm, h: Hyper):
        self.A, self.h, self.current = A, h, h

    def __call__(self, lip: torch.Tensor) -> StepPlan:
        if self.A.adapt is None:
            raise ValueError(f"{self.A.name} has no adaptive step")
        self.current = self.A.adapt(self.h, lip)
        return self.A.plan(self.current)


class _Recorder:
    """Gaps of the last iterate at recorded iterations (oracle: selfplay.games)."""

    def __init__(
        self, P: torch.Tensor, beta: torch.Tensor | None, mu: torch.Tensor, tol: float | None
    ):
        self.P, self.beta, self.mu, self.tol = P, beta, mu, tol
        self.iters: list[int] = []
        self.gaps: list[torch.Tensor] = []
        self.rgaps: list[torch.Tensor] = []

    def __call__(self, t: int, logp: torch.Tensor) -> bool:
        """Record iteration t; True when every game has reached the target."""
        from selfplay.games import gap, regularized_gap

        pi = logp.exp()
        self.iters.append(t)
        self.gaps.append(gap(self.P, pi))
        if self.beta is not None:
            self.rgaps.append(regularized_gap(self.P, pi, self.beta, self.mu))
        target = self.rgaps[-1] if self.beta is not None else self.gaps[-1]
        return self.tol is not None and bool((target <= self.tol).all())


def run(
    algo: str | Algorithm,
    P,
    *,
    hyper: Hyper | None = None,
    iterations: int,
    queries: int | None = None,
    seed: int = 0,
    record_every: int = 1,
    mu=None,
    init=None,
    tol: float | None = None,
) -> Trace:
    """Run `iterations` steps of an algorithm on every game of `P` ([B, n, n]), or on one
    game `P [n, n]` under every setting (B = the leading size of the per-setting
    hyperparameter tensors, init and μ; 1 if none is batched).

    mu:   reference policy ([n] or [B, n]); uniform if None.
    init: initial π_0 (all roles but `ref`); μ if None.
    tol:  stop early once every game's target gap (regularized for
          "regularized" algorithms) is ≤ tol at a recorded iteration.
    """
    from selfplay import algos

    A = algos.get(algo) if isinstance(algo, str) else algo
    P = as_games(P)
    B, n = batch_size(P, hyper, mu, init), P.shape[-1]
    if iterations < 0 or record_every < 1 or (queries is not None and queries < 1):
        raise InputError("iterations must be ≥ 0, record_every ≥ 1 and queries ≥ 1")
    h = A.resolve(batch_hyper(hyper if hyper is not None else A.default_hyper(n), B))
    mu_t = as_batch(torch.full((n,), 1.0 / n) if mu is None else mu, B, n, "mu")
    init_t = mu_t.clone() if init is None else as_batch(init, B, n, "init")
    payoffs = Payoffs(P, queries, torch.Generator().manual_seed(int(seed)))
    planner = _Planner(A, h) if h.adaptive and A.adapt is not None else None
    ex = Executor(A.plan(h), payoffs, initial_state(init_t, mu_t), planner)
    beta = (
        torch.as_tensor(h.beta, dtype=torch.float64).reshape(-1).expand(B)
        if A.objective == "regularized"
        else None
    )
    record = _Recorder(P, beta, mu_t, tol)

    t0 = time.perf_counter()
    total = torch.zeros(B, n, dtype=torch.float64)
    done, t = record(0, ex.state["main"]), 0
    while t < iterations and not done:
        ex.step(t)
        t += 1
        total += ex.prob(ex.state["main"])
        if t % record_every == 0 or t == iterations:
            done = record(t, ex.state["main"])
    if record.iters[-1] != t:
        record(t, ex.state["main"])
    has_magnet = any(rf.dst == "magnet" for rf in ex.plan.refresh)
    return Trace(
        algo=A.name,
        policy=ex.state["main"].exp(),
        average=total / max(t, 1),
        recorded=torch.tensor(record.iters),
        gap=torch.stack(record.gaps),
        regularized_gap=torch.stack(record.rgaps) if beta is not None else None,
        beta=beta,
        iterations=t,
        preference_queries=torch.full((B,), payoffs.calls * payoffs.queries_per_call(n)),
        oracle_calls=payoffs.calls,
        seconds=time.perf_counter() - t0,
        hyper=planner.current if planner is not None else h,
        magnet_refreshes=ex.refreshes if has_magnet else None,
    )
