"""Sampled evaluation during training: the policy against π_ref.

Before step 1 the trainer calls `SampledEval.prepare(ctl)`: it draws π_ref's S
responses to each held-out prompt (identity `reference`; and, with `eval.exploiter`,
π_ref's N candidates, identity `reference#candidates`), waits for them and caches them
in RUN_DIR/eval/cache, so every evaluation, a rerun and a resumed run reuse them and
no evaluation queues them ahead of a training step. Every `eval.every` steps, and at
the last step, the trainer's `on_step(t)` calls `SampledEval.issue(t, ctl)`. From the
driver's thread, and without waiting, it

1. has each rollout worker load π_t (the `main` version step t published), and π_ref
   while its draws are still missing (a draw lost with a dead actor), through the
   pool's own bookkeeping (`RolloutPool.lend`), so the next training call still drops
   what the store released; π_ref is dropped again after its draws where training
   does not use it;
2. draws S = `eval.samples` responses of π_t to each of U = `eval.prompts` held-out
   prompts, in one batched call per rollout worker (`_issue_batched`, seeds from the
   identity `step-t`), and whatever of π_ref's is missing;
3. has the preference servers judge π_t's sample r against π_ref's sample r on each
   prompt (`sampling.issue_compare`, the run's judge and truncation rule), and the
   learners score π_t's responses under π_ref (`sequence_logprobs`, every rank).

An actor runs one caller's calls in order, so these queue between the training calls
on the same actors while the driver goes on with the next step. `poll()` at each
later step finishes the evaluations whose results are all in; `drain()` waits for
the rest (before a checkpoint and at the end of the run). An evaluation whose actor
died is reported and skipped; training goes on.

Metrics of step t, prefixed `eval/` (docs/evaluation.md):

- `win_rate`, `win_rate_low`, `win_rate_high`: P(π_t ≻ π_ref), the mean over prompts
  of each prompt's mean judgment (ties ½), with the 95% t-interval over prompts
  (`selfplay.games.league.win_rates`);
- `win_rate_lc`: the length-controlled win rate (`selfplay.games.ratings.length_controlled`);
- `length`, `length_ref`, `truncated`, `truncated_ref`: mean response tokens and the
  truncated fractions of both policies;
- `kl_ref`: KL(q‖π_ref) ≈ mean over π_t's samples of log q(y) − log π_ref(y), with q the
  distribution sampled (π_t at `rollout.temperature`, after top-p/top-k), whose
  log-probs the rollout worker returns, and π_ref scored by the learner at the same
  temperature; it is KL(π_t‖π_ref) of the tempered policies without top-p/top-k
  (always, in training);
- `win_rate_exact`, `kl_ref_exact` (token and sequence games): π_t P π_ref and
  Σ π_t log(π_t/π_ref), the task evaluator's exact `win_rate_ref` and `kl_ref_exact`
  when it evaluated the same step (`runtime.eval_every`; the same policy when
  `max_staleness` is 0), added by the trainer (`with_exact`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray

from selfplay.evaluation.sampling import (
    SampleCache,
    issue_compare,
    issue_draws,
    lookup,
    prompt_keys,
    settings_key,
    unit_seed,
)
from selfplay.runtime import waits
from selfplay.types import Prompts, Samples

REFERENCE = "reference"  # π_ref's identity in the cache (one run dir, one π_ref)
CANDIDATES = "reference#candidates"  # the exploiter's draws of π_ref: their own seeds


@dataclass
class _Pending:
    step: int
    cur: list  # per prompt, the ref of π_t's Samples
    ref: list  # per prompt, π_ref's Samples (cached) or its ref
    judged: list  # [(prompts in the call, ref of its [prompts·S] P(y_t ≻ y_ref))]
    logp_ref: object  # rank 0's ref of [per prompt [S] log π_ref(y_t)]
    cand: list = field(default_factory=list)  # the exploiter's candidates (Samples or refs)
    exploit: list | None = None  # [(prompts, ref of [prompts·N·S])], issued once cur is in

    def refs(self) -> list:
        out = [*self.cur, *(r for _, r in self.judged), self.logp_ref]
        out += [r for _, r in self.exploit or ()]
        return out + [r for r in (*self.ref, *self.cand) if isinstance(r, ray.ObjectRef)]

    def exploit_due(self) -> bool:
        """The exploiter's judgments are still to be issued (it has candidates)."""
        return bool(self.cand) and self.exploit is None


@dataclass
class SampledEval:
    """The evaluations of one run (module docstring)."""

    prompts: Prompts
    samples: int
    seed: int
    cache: SampleCache
    pending: list[_Pending] = field(default_factory=list)
    _ref: list | None = None  # π_ref's draws once known (Samples or refs)
    cand_cache: SampleCache | None = None  # the exploiter's N candidates per prompt, or None
    _cand: list | None = None  # the candidates once known (Samples or refs)

    @classmethod
    def create(cls, cfg, prompts: Prompts, sampling, run_dir: Path) -> SampledEval:
        root = Path(run_dir) / "eval" / "cache"
        key = settings_key(sampling, cfg.eval.samples, cfg.model.dtype)
        cache = SampleCache(root, key, k=cfg.eval.samples)
        out = cls(prompts, cfg.eval.samples, cfg.seed, cache)
        if cfg.eval.exploiter is not None:
            from selfplay.evaluation.exploiter import parse_kind

            n = parse_kind(cfg.eval.exploiter)
            out.cand_cache = SampleCache(root, settings_key(sampling, n, cfg.model.dtype), k=n)
        return out

    def _seeds(self, identity: str) -> list[int]:
        return [unit_seed(self.seed, identity, k) for k in prompt_keys(self.prompts)]

    def prepare(self, ctl) -> None:
        """Draw π_ref's responses (and the exploiter's candidates) before training starts
        and wait for them: they are the same for every evaluation, so no evaluation
        queues them ahead of a training step. Cached: a rerun or a resume draws nothing."""
        missing, lacking = self._missing()
        if not missing and not lacking:
            return
        pool = ctl.rollout_pool
        ref_v, _ = ctl.published("ref")
        workers = list(pool.workers)
        lent = [pool.lend(w, {ref_v}, ctl.store.refs) for w in workers]
        self._issue_missing(workers, ref_v, missing, lacking)
        for w, got in zip(workers, lent, strict=True):
            pool.unload(w, [x for x in got if x == ref_v])  # training does not sample it
        fetch = lambda held: [waits.get(x) if isinstance(x, ray.ObjectRef) else x for x in held]  # noqa: E731
        self._ref = self._keep(self._ref, fetch(self._ref), self.cache, REFERENCE)
        if self.cand_cache is not None:
            self._cand = self._keep(self._cand, fetch(self._cand), self.cand_cache, CANDIDATES)

    def issue(self, step: int, ctl) -> None:
        """Start the evaluation of π_step (`ctl.published("main")`); nothing waits."""
        pool = ctl.rollout_pool
        v, _ = ctl.published("main")
        ref_v, _ = ctl.published("ref")  # π_ref, published once at the start
        workers = list(pool.workers)
        missing, lacking = self._missing()  # none, unless an actor died with them
        need = {v, ref_v} if missing or lacking else {v}
        lent = [pool.lend(w, need, ctl.store.refs) for w in workers]
        self._issue_missing(workers, ref_v, missing, lacking)
        cur = self._issue_batched(workers, v, f"step-{step}")
        for w, got in zip(workers, lent, strict=True):
            # π_ref stays only where training samples it (Nash-MD's mixture): a model copy
            pool.unload(w, [x for x in got if x == ref_v])
        judged = issue_compare(ctl.judges, cur, self._ref)
        logp = ctl.learners.issue("sequence_logprobs", "ref", *cur)[0]
        cand = list(self._cand or [])
        self.pending.append(_Pending(step, cur, list(self._ref), judged, logp, cand))

    def _missing(self) -> tuple[list[int], list[int]]:
        """(prompts without π_ref's draws, prompts without the exploiter's candidates),
        after looking in the cache the first time."""
        if self._ref is None:
            self._ref = lookup(self.cache, REFERENCE, self.prompts, self.seed)
        if self.cand_cache is not None and self._cand is None:
            self._cand = lookup(self.cand_cache, CANDIDATES, self.prompts, self.seed)
        missing = [u for u, s in enumerate(self._ref) if s is None]
        return missing, [u for u, s in enumerate(self._cand or ()) if s is None]

    def _issue_missing(self, workers, ref_v, missing: list[int], lacking: list[int]) -> None:
        """π_ref's S draws of `missing`, and its N candidates of `lacking` (not waited on)."""
        if missing:
            self._issue_reference(workers, ref_v, missing, self._ref, REFERENCE, self.samples)
        if lacking:
            assert self._cand is not None and self.cand_cache is not None
            n = self.cand_cache.k or 1
            self._issue_reference(workers, ref_v, lacking, self._cand, CANDIDATES, n)

    def _issue_batched(self, workers, v, who: str) -> list:
        """π_t's S responses to every prompt: one batched generate call per worker (its
        share of the prompts, seeded by `who` and the share), handed back per prompt
        (`RolloutActor.generate_each`); the refs, one per prompt, in order. Batched, an
        evaluation's draws cost about one training step's generation, not one call per
        prompt (π_ref's, drawn once by `prepare` and cached, keep one call per prompt)."""
        U, W, S = len(self.prompts), len(workers), self.samples
        shares = [list(range(U))[i::W] for i in range(W)]
        out: list = [None] * U
        for i, (w, rows) in enumerate(zip(workers, shares, strict=True)):
            if not rows:
                continue
            seed = unit_seed(self.seed, who, f"share-{i}-of-{W}")
            got = w.generate_each.options(num_returns=len(rows)).remote(
                self.prompts.take(rows), v, S, seed
            )
            for u, r in zip(rows, got if len(rows) > 1 else [got], strict=True):
                out[u] = r
        return out

    def _issue_reference(self, workers, ref_v, rows: list[int], into: list, who: str, k: int):
        """Draw π_ref's `k` responses to the prompts `rows` (identity `who`) into `into`."""
        seeds = self._seeds(who)
        drawn = issue_draws(workers, ref_v, self.prompts.take(rows), k, [seeds[u] for u in rows])
        for u, r in zip(rows, drawn, strict=True):
            into[u] = r

    def _issue_exploit(self, p: _Pending, judges: list) -> None:
        """Judge every candidate against every one of π_t's samples (`Samples.pick`)."""
        from selfplay.evaluation.exploiter import cross_pairs

        cur = [s.slim() for s in waits.get(p.cur)]
        cand = [s if isinstance(s, Samples) else waits.get(s).slim() for s in p.cand]
        p.exploit = issue_compare(judges, *cross_pairs(cand, cur))

    def poll(self, judges: list) -> list[dict]:
        """Finish the evaluations whose results are all in (issuing the exploiter's
        judgments, on `judges`, once their draws are in); their metrics."""
        out = []
        for p in list(self.pending):
            refs = p.refs()
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if len(ready) < len(refs):
                continue
            if p.exploit_due():
                self._guarded(p, lambda p=p: self._issue_exploit(p, judges))
                continue
            out += self._finish(p)
        return out

    def drain(self, judges: list) -> list[dict]:
        """Wait for every evaluation in flight; their metrics."""
        out = []
        for p in list(self.pending):
            if p.exploit_due() and not self._guarded(p, lambda p=p: self._issue_exploit(p, judges)):
                continue
            out += self._finish(p)
        return out

    def _guarded(self, p: _Pending, issue) -> bool:
        """issue(); False (and the evaluation skipped) when an actor it needs died."""
        try:
            issue()
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
            self._skip(p, e)
            return False

    def _skip(self, p: _Pending, e: Exception) -> None:
        if p in self.pending:
            self.pending.remove(p)
        print(f"evaluation at step {p.step} skipped: {type(e).__name__}", file=sys.stderr)
        # π_ref's draws (and candidates) lost with it are drawn again by the next evaluation
        self._ref = [s if isinstance(s, Samples) else None for s in self._ref or []]
        if self._cand is not None:
            self._cand = [s if isinstance(s, Samples) else None for s in self._cand]

    def _finish(self, p: _Pending) -> list[dict]:
        self.pending.remove(p)
        try:
            full = waits.get(p.cur)
            ref = [s if isinstance(s, Samples) else waits.get(s) for s in p.ref]
            judged = np.concatenate(waits.get([r for _, r in p.judged]))
            logp_ref = waits.get(p.logp_ref)
            cand = [s if isinstance(s, Samples) else waits.get(s) for s in p.cand]
            exploit = np.concatenate(waits.get([r for _, r in p.exploit])) if p.exploit else None
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
            self._skip(p, e)
            return []
        self._ref = self._keep(self._ref, ref, self.cache, REFERENCE)
        if self.cand_cache is not None:
            self._cand = self._keep(self._cand, cand, self.cand_cache, CANDIDATES)
        cur = [s.slim() for s in full]
        logq = [np.asarray(s.logprobs, np.float64).sum(axis=1) for s in full]
        m = eval_metrics(judged.reshape(len(cur), self.samples), cur, ref, logq, logp_ref)
        if exploit is not None:
            m |= exploit_metrics(exploit.reshape(len(cur), -1, self.samples))
        m["step"] = p.step
        return [m]

    def _keep(self, held: list | None, got: list, cache: SampleCache, who: str) -> list:
        """π_ref's draws (`who`), cached once (the first evaluation), reused from memory."""
        held = list(held or [])
        fresh = [u for u, s in enumerate(held) if isinstance(s, ray.ObjectRef)]
        keys, seeds = prompt_keys(self.prompts), self._seeds(who)
        for u in fresh:
            held[u] = got[u].slim()
            cache.put(who, keys[u], seeds[u], held[u])
        return held


def eval_metrics(p, cur, ref, logq, logp_ref) -> dict:
    """The `eval/` metrics (module docstring) from p [U, S] = P(y_t ≻ y_ref) (NaN:
    masked), π_t's and π_ref's samples per prompt, and per prompt [S] log q(y_t) and
    log π_ref(y_t)."""
    from selfplay.games.league import win_rates
    from selfplay.games.ratings import length_controlled

    wr = win_rates({(0, 1): p}, 2)
    lengths = lambda side: np.stack([s.lengths for s in side]).astype(np.float64)  # noqa: E731
    trunc = lambda side: float(np.mean([np.mean(s.truncated_flags()) for s in side]))  # noqa: E731
    diff = lengths(cur) - lengths(ref)
    kl = float(np.mean(np.concatenate(logq) - np.concatenate(logp_ref)))
    out = {
        "eval/win_rate": _f(wr.win_rate[0, 1]),
        "eval/win_rate_low": _f(wr.ci_low[0, 1]),
        "eval/win_rate_high": _f(wr.ci_high[0, 1]),
        "eval/win_rate_lc": _f(length_controlled(p, diff)[0]),
        "eval/length": float(lengths(cur).mean()),
        "eval/length_ref": float(lengths(ref).mean()),
        "eval/truncated": trunc(cur),
        "eval/truncated_ref": trunc(ref),
        "eval/kl_ref": kl,
    }
    return out


def exploit_metrics(P) -> dict:
    """`eval/exploitability_lb` (and its interval, and the exploiter's win rate) from
    P [U, N, S] = P(candidate k ≻ y_t,s) (`selfplay.games.exploiter.best_of_n`)."""
    from selfplay.games.exploiter import best_of_n

    r = best_of_n(P)
    return {
        "eval/exploiter_win_rate": _f(r.win_rate),
        "eval/exploitability_lb": _f(r.exploitability_lb),
        "eval/exploitability_lb_low": _f(r.lb_low),
        "eval/exploitability_lb_high": _f(r.lb_high),
    }


#: The task evaluator's exact values (`Evaluator.start`) shown beside the estimates.
EXACT = {"eval/win_rate_exact": "win_rate_ref", "eval/kl_ref_exact": "kl_ref_exact"}


def with_exact(m: dict, entry: dict) -> dict:
    """`m` plus the exact values the task evaluated at the same step (`entry`)."""
    return m | {k: entry[src] for k, src in EXACT.items() if entry.get(src) is not None}


def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
