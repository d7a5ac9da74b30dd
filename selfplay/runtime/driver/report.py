"""What a run reports: per-step training metrics, the final summary, and the plot.

Task-specific numbers (the token game's exact gaps, its policy table) come from the
task's evaluator; everything here is about the run itself (losses, throughput,
staleness, faults) and is the same for every task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def step_metrics(step: int, recs, elapsed: float) -> dict:
    """One step's training metrics from its phases' `PhaseRecord`s."""
    rows = sum(r.rows for r in recs)
    secs = sum(r.seconds for r in recs)
    last = recs[-1].metrics
    out = {
        "step": step,
        "loss": last.loss,
        "loss_initial": last.loss_initial,
        "grad_norm": last.grad_norm,
        "kl_anchor": last.kl_anchor,
        "kl_ref": last.kl_ref,
        "staleness": max(r.staleness for r in recs),
        "rows": rows,
        "rollout_workers": recs[-1].workers,  # pool size that sampled the step's last batch
        "preference_queries": sum(r.queries for r in recs),
        "train_seconds": secs,
        "elapsed": elapsed,
        # The version this step published: its `main` output step t+1.
        "policy_version": recs[-1].output.step,
        # Over the phases' train wall time (which includes waiting for the batch when
        # synchronous).
        "train_samples_per_s": rows / secs if secs else 0.0,
        "train_tokens_per_s": sum(r.metrics.tokens for r in recs) / secs if secs else 0.0,
    }
    gen_s = sum(r.batch.gen_s for r in recs)  # worker seconds spent generating (all draws)
    judge_s = sum(r.batch.judge_s for r in recs)
    out["generate_tokens_per_s"] = sum(r.batch.new_tokens for r in recs) / gen_s if gen_s else 0.0
    out["judge_queries_per_s"] = out["preference_queries"] / judge_s if judge_s else 0.0
    # Judge failures (judge.on_failure=mask): counted, never trained on.
    out["judge_masked_pairs"] = sum(r.batch.masked_pairs for r in recs)
    out["judge_masked_rows"] = sum(r.batch.masked_rows for r in recs)
    out["judge_retries"] = sum(r.batch.judge_retries for r in recs)
    out["batches_reissued"] = sum(r.reissues for r in recs)
    # Response lengths and truncation (max_new_tokens without eos or a stop string),
    # of the sampled (trained-side) responses and of the opponents' responses.
    for side, name in (("", "response"), ("opponent_", "opponent")):
        lengths = _cat([getattr(r.batch, f"{side}lengths") for r in recs])
        trunc = _cat([getattr(r.batch, f"{side}truncated") for r in recs])
        out |= length_stats(name, lengths, trunc)
    if len(recs) > 1:  # multi-phase plans (Nash-MP, EGPO): one loss/KL per phase
        for r in recs:
            out[f"loss_{r.output.role}"] = r.metrics.loss
            out[f"kl_anchor_{r.output.role}"] = r.metrics.kl_anchor
    return out


def _cat(parts) -> np.ndarray:
    parts = [np.asarray(p) for p in parts if p is not None]
    return np.concatenate(parts) if parts else np.zeros(0)


def length_stats(name: str, lengths: np.ndarray, truncated: np.ndarray) -> dict:
    """{name}_truncated_fraction, {name}_length_mean and _p90 (numpy's linear
    percentile), in tokens; None when there are no responses (a batch restored from
    a checkpoint written before these were recorded)."""
    n = len(lengths)
    return {
        f"{name}_truncated_fraction": float(np.mean(truncated)) if len(truncated) else None,
        f"{name}_length_mean": float(np.mean(lengths)) if n else None,
        f"{name}_length_p90": float(np.percentile(lengths, 90)) if n else None,
    }


def summarize(cfg, run, history: list[dict], seconds: float, run_dir: Path) -> dict:
    """The run's summary: the task evaluator's final report, each evaluated metric's
    value at step 0 (`<name>_initial`), and the run's own counts."""
    ctl, ev = run.controller, run.evaluator
    rows = sum(r.rows for r in ctl.records)
    initial = {
        f"{k}_initial": v for k, v in history[0].items() if k != "step" and not isinstance(v, list)
    }
    return {
        "algo": cfg.algo.name,
        "task": run.task.source,
        "steps": cfg.runtime.steps,
        **initial,
        **ev.summary(ctl.learners),
        "preference_queries": int(ctl.queries),
        "samples": int(rows),
        "max_staleness_seen": max((r.staleness for r in ctl.records), default=0),
        "rollout_resizes": [[z.step, z.old, z.new] for z in ctl.resizes],  # (step, old, new)
        "rollout_pool": ctl.rollout_pool.end_state(),  # asked for, serving, not yet joined
        # Fault tolerance, this process's part of the run: actors replaced, batches redone.
        "rollout_workers_replaced": ctl.rollout_pool.replaced,
        "judges_replaced": ctl.judges_replaced,
        "batches_reissued": sum(r.reissues for r in ctl.records),
        "judge_masked_pairs": sum(h.get("judge_masked_pairs", 0) for h in history),
        "seconds": round(seconds, 3),
        "samples_per_s": rows / seconds if seconds else 0.0,
        "run_dir": str(run_dir),
    }


def format_summary(s: dict, evaluator) -> str:
    head = (
        f"{s['algo']} on {s['task']}: {s['steps']} steps, {s['samples']} samples, "
        f"{s['preference_queries']} preference queries, {s['seconds']:.1f}s"
    )
    return "\n".join(
        [head, *evaluator.format(s), *format_eval(s.get("eval")), f"run dir: {s['run_dir']}"]
    )


def plot_history(history: list[dict], keys: tuple[str, ...], path: Path, title: str) -> Path:
    """Log-scale curves of the evaluated metrics `keys` over the steps they were taken."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, key in enumerate(keys):
        pts = [(h["step"], h[key]) for h in history if h.get(key) is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, [max(y, 1e-12) for y in ys], "-" if i == 0 else "--", label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(keys[0])
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def last_eval(history: list[dict]) -> dict | None:
    """The newest sampled evaluation's metrics (`eval/…`, without the prefix) and step."""
    for h in reversed(history):
        if h.get("eval/win_rate") is not None or "eval/kl_ref" in h:
            return {"step": h["step"]} | {
                k.removeprefix("eval/"): v for k, v in h.items() if k.startswith("eval/")
            }
    return None


def format_eval(e: dict | None) -> list[str]:
    """One line for the end of `selfplay train`: the newest sampled evaluation."""
    if not e:
        return []
    num = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    exact = lambda k: f" (exact {num(e[k + '_exact'])})" if k + "_exact" in e else ""  # noqa: E731
    return [
        f"eval at step {e['step']}: win rate vs π_ref {num(e['win_rate'])} "
        f"[{num(e['win_rate_low'])}, {num(e['win_rate_high'])}]{exact('win_rate')}, "
        f"length-controlled {num(e['win_rate_lc'])}, KL(π‖π_ref) {num(e['kl_ref'])}"
        f"{exact('kl_ref')}, "
        f"length {e['length']:.1f} vs {e['length_ref']:.1f} tokens, truncated "
        f"{e['truncated']:.2f} vs {e['truncated_ref']:.2f}"
        + (
            f", exploitability >= {num(e['exploitability_lb'])} "
            f"[{num(e['exploitability_lb_low'])}, {num(e['exploitability_lb_high'])}] "
            "(best-of-N from π_ref)"
            if "exploitability_lb" in e
            else ""
        )
    ]


def plot_eval(history: list[dict], path: Path, title: str) -> Path | None:
    """Win rate against π_ref with its 95% band (and the exact value, for the games),
    and the sampled KL(π‖π_ref), over the evaluated steps; None without any."""
    pts = [h for h in history if h.get("eval/win_rate") is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [h["step"] for h in pts]
    col = lambda k: [np.nan if h.get(k) is None else h[k] for h in pts]  # noqa: E731
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(xs, col("eval/win_rate"), "o-", label="sampled")
    a.fill_between(
        xs, col("eval/win_rate_low"), col("eval/win_rate_high"), alpha=0.25, label="95% interval"
    )
    if any(h.get("eval/win_rate_exact") is not None for h in pts):
        a.plot(xs, col("eval/win_rate_exact"), "k--", label="exact")
    if any(h.get("eval/win_rate_lc") is not None for h in pts):
        a.plot(xs, col("eval/win_rate_lc"), ":", label="length-controlled")
    a.axhline(0.5, color="grey", lw=0.8)
    a.set_ylim(0, 1)
    a.set_xlabel("step")
    a.set_ylabel("P(π_t ≻ π_ref)")
    a.set_title(title)
    a.legend(fontsize=8)
    b.plot(xs, col("eval/kl_ref"), "o-")
    b.set_xlabel("step")
    b.set_ylabel("KL(π_t ‖ π_ref), sampled")
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
