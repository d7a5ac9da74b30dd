"""`selfplay eval`'s work on Ray: sample every policy, judge every pair, report.

`EvalPlan` is everything resolved and checked before Ray starts (the command builds
it); `run_eval` then

1. looks up each (policy, prompt, seed) draw in the `SampleCache`;
2. for the draws missing, starts `cfg.rollout.workers` rollout workers built on the
   plan's `base` model (the architecture every policy shares), loads each policy's
   weights as its own version and samples it (`sampling.sample_policy`), caching
   every draw;
3. starts `cfg.judge.servers` preference servers (the run's judge, truncation rule
   and failure policy) and judges every pair i < j of policies, sample r against
   sample r on each prompt (`sampling.compare`);
4. hands the [U, S] preference arrays, and the token-length differences
   len(y_i) − len(y_j), to `selfplay.games.league.league_report`, and draws the heatmap.

Rollout workers start only when some draw is missing: a rerun samples nothing.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfplay.evaluation.policies import Policy
from selfplay.evaluation.sampling import (
    SampleCache,
    compare,
    draw_missing,
    lookup,
    settings_key,
)
from selfplay.types import Prompts, Version


@dataclass
class EvalPlan:
    """policies: at least two, names distinct; cfg: the `Config` whose rollout, judge,
    model.dtype and runtime sections apply; task, tokenizer: the task bound to the
    base tokenizer; prompts: the eval prompts (units); base: the rollout workers' model
    (a ModelSpec or a directory); samples: S per prompt; cache: the sample cache's
    root (None: no cache); plot: the heatmap's path."""

    policies: list[Policy]
    cfg: object
    task: object
    tokenizer: object
    prompts: Prompts
    base: object
    samples: int
    seed: int
    cache: Path | None
    plot: Path | None
    facts: dict = field(default_factory=dict)  # reported as they are (e.g. the source)
    exploiter: object = None  # an `exploiter.Exploiter`, or None: no best-of-N exploiter


@dataclass
class Drawn:
    """Per policy, one slim `Samples` per prompt; and the counts of the draw."""

    samples: list[list]
    sampled: int = 0  # responses generated now
    cached: int = 0  # responses read from the cache
    seconds: float = 0.0


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, leave=False)


def _flat(policy: Policy, dtype: str):
    from transformers.utils import logging as hf_logging

    from selfplay.models.load import load_policy
    from selfplay.models.weights import flatten_state_dict

    hf_logging.disable_progress_bar()  # "Loading weights": noise here

    model, _ = load_policy(policy.source, dtype=dtype)
    return flatten_state_dict(model)


def draw_candidates(plan: EvalPlan, progress: bool, stop) -> list:
    """Per unit, the exploiter's N candidates as one slim `Samples` (members in proposal
    order), drawn like any policy's samples under their candidate identities."""
    from selfplay.evaluation.exploiter import candidate_policies
    from selfplay.types import Samples

    ex = plan.exploiter
    sub = dataclasses.replace(
        plan, policies=candidate_policies(ex), samples=ex.per_member, exploiter=None
    )
    drawn = draw(sub, progress, stop)
    units = len(plan.prompts)
    return [Samples.join([member[u] for member in drawn.samples]) for u in range(units)]


def draw(plan: EvalPlan, progress: bool = True, stop=None) -> Drawn:
    """Every policy's S responses to every eval prompt, from the cache or sampled;
    `stop`: a `StopRequest` that ends it (`Stopped`), each draw so far cached."""
    import ray

    from selfplay.runtime.driver.build import make_rollout_worker

    t0 = time.perf_counter()
    cfg, prompts, S = plan.cfg, plan.prompts, plan.samples
    sampling = plan.task.sampling(plan.tokenizer, cfg.rollout)
    cache = SampleCache(plan.cache, settings_key(sampling, S, cfg.model.dtype), k=S)
    out = Drawn(samples=[lookup(cache, p.identity, prompts, plan.seed) for p in plan.policies])
    out.cached = S * sum(g is not None for got in out.samples for g in got)
    if any(g is None for got in out.samples for g in got):
        workers = [
            make_rollout_worker(plan.base, cfg, sampling) for _ in range(cfg.rollout.workers)
        ]
        try:
            for i, (p, got) in enumerate(zip(plan.policies, out.samples, strict=True)):
                if all(g is not None for g in got):
                    continue
                version, ref = Version(i, "main"), ray.put(_flat(p, cfg.model.dtype))
                with _bar(sum(g is None for g in got), f"sampling {p.name}", progress) as bar:
                    out.sampled += draw_missing(
                        workers,
                        version,
                        p.identity,
                        prompts,
                        S,
                        plan.seed,
                        cache,
                        got,
                        prepare=lambda w, v=version, r=ref: w.load.remote(v, [r]),
                        bar=bar,
                        stop=stop,
                    )
                for w in workers:
                    w.drop.remote(version)
                del ref
        finally:
            for w in workers:
                ray.kill(w)
    out.seconds = time.perf_counter() - t0
    return out


@contextmanager
def judge_servers(plan: EvalPlan):
    """`cfg.judge.servers` preference servers (the run's judge, truncation rule and
    failure policy), killed on the way out."""
    import ray

    from selfplay.runtime.driver.build import make_judge_server

    cfg = plan.cfg
    spec = plan.task.judge_spec(cfg.judge)
    judges = [
        make_judge_server(spec, cfg.judge, cfg.rollout.truncated) for _ in range(cfg.judge.servers)
    ]
    try:
        yield judges
    finally:
        for j in judges:
            ray.kill(j)


def judge_all(plan: EvalPlan, judges: list, drawn: Drawn, progress: bool = True, stop=None):
    """({(i, j): [U, S] P(y_i ≻ y_j)}, {(i, j): [U, S] len(y_i) − len(y_j)}) for i < j."""
    m, U = len(plan.policies), len(plan.prompts)
    pairs, lengths = {}, {}
    with _bar(U * m * (m - 1) // 2, "judging", progress) as bar:
        for i in range(m):
            for j in range(i + 1, m):
                a, b = drawn.samples[i], drawn.samples[j]
                pairs[(i, j)] = compare(judges, a, b, bar=bar, stop=stop)
                la = np.stack([s.lengths for s in a]).astype(np.float64)
                lengths[(i, j)] = la - np.stack([s.lengths for s in b])
    return pairs, lengths


def run_eval(plan: EvalPlan, progress: bool = True, stop=None) -> dict:
    """Sample, judge and report (module docstring); the report is JSON-safe. `stop`:
    the `StopRequest` of `rundir.stop_on_signals`; once set, `Stopped` is raised
    within `waits.POLL_S`, every draw finished so far cached."""
    from selfplay.evaluation.exact import exact_gaps
    from selfplay.games.league import league_report

    t0 = time.perf_counter()
    drawn = draw(plan, progress, stop)
    t1 = time.perf_counter()
    with judge_servers(plan) as judges:
        pairs, lengths = judge_all(plan, judges, drawn, progress, stop)
        names = [p.name for p in plan.policies]
        report = league_report(names, pairs, lengths)
        if plan.exploiter is not None:
            from selfplay.evaluation.exploiter import exploit

            candidates = draw_candidates(plan, progress, stop)
            with _bar(len(drawn.samples) * len(plan.prompts), "exploiter", progress) as bar:
                report["exploiter"] = exploit(plan, judges, drawn.samples, candidates, bar, stop)
    exact = exact_gaps(plan)
    if exact is not None:
        report["exact_exploitability"] = exact
    report.update(
        prompts=len(plan.prompts),
        samples=plan.samples,
        seed=plan.seed,
        sampled=drawn.sampled,
        cached=drawn.cached,
        sample_seconds=drawn.seconds,
        judge_seconds=time.perf_counter() - t1,
        seconds=time.perf_counter() - t0,
        mean_length={
            n: float(np.mean([s.lengths.mean() for s in d]))
            for n, d in zip(names, drawn.samples, strict=True)
        },
        truncated={
            n: float(np.mean([np.mean(s.truncated_flags()) for s in d]))
            for n, d in zip(names, drawn.samples, strict=True)
        },
        **plan.facts,
    )
    if plan.plot is not None:
        from selfplay.evaluation.heatmap import plot_win_rates

        report["plot"] = str(plot_win_rates(report, plan.plot))
    return report


def _cell(x, lo, hi) -> str:
    f = lambda v: "  nan" if v is None else f"{v:.2f}"  # noqa: E731
    return f"{f(x)} [{f(lo)},{f(hi)}]"


def format_report(r: dict) -> str:
    """The report as text: W with 95% intervals (row beats column), then per policy its
    exploitability, league-Nash weight, Elo and (when given) LC win rates."""
    names = r["policies"]
    w = max(10, *(len(n) + 2 for n in names))
    cw = 19
    lines = [f"win rate W[i][j] = P(row ≻ column), 95% interval; {_units(r)}"]
    lines.append(" " * w + "".join(f"{n[: cw - 1]:>{cw}}" for n in names))
    for i, n in enumerate(names):
        cells = [
            f"{'—':>{cw}}"
            if i == j
            else f"{_cell(r['win_rate'][i][j], r['ci_low'][i][j], r['ci_high'][i][j]):>{cw}}"
            for j in range(len(names))
        ]
        lines.append(f"{n:<{w}}" + "".join(cells))
    lc, exact = "lc_win_rate" in r, r.get("exact_exploitability")
    head = f"{'policy':<{w}}{'exploitability [95%]':>26}"
    head += f"{'exact':>8}" if exact else ""
    head += f"{'league NE':>11}{'Elo':>8}"
    lines += ["", head + (f"{'LC win rate vs ' + names[0]:>{cw + 8}}" if lc else "")]
    for i, n in enumerate(names):
        ex = _cell(r["exploitability"][i], r["exploitability_low"][i], r["exploitability_high"][i])
        ne, elo = r.get("league_nash") or [None] * len(names), r.get("elo") or [None] * len(names)
        row = f"{n:<{w}}{ex:>26}" + (f"{_num(exact[i]):>8}" if exact else "")
        row += f"{_num(ne[i]):>11}{_num(elo[i], '.0f'):>8}"
        if lc:
            row += f"{'—' if i == 0 else _num(r['lc_win_rate'][i][0]):>{cw + 8}}"
        lines.append(row)
    if "exploiter" in r:
        from selfplay.evaluation.exploiter import format_exploiter

        lines.append(format_exploiter(r))
    if "plot" in r:
        lines.append(f"plot: {r['plot']}")
    return "\n".join(lines)


def _num(x, fmt: str = ".3f") -> str:
    return "nan" if x is None else format(x, fmt)


def _units(r: dict) -> str:
    return f"{r['prompts']} prompts x {r['samples']} samples per pair"
