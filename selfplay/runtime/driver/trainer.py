"""`selfplay train`: run the controller on the token game, evaluate, track, summarise.

After every step the exact move distribution π_t of the learner's `main` role
is read off the LM (softmax of its log-probs over the move tokens), and its
duality gap `2·max_y (P π_t)_y − 1` is computed exactly; for algorithms that
solve the β-regularized game, so is the regularized gap against μ = π_ref.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import ray

from selfplay import games
from selfplay.config import Config
from selfplay.errors import RunError
from selfplay.runtime.checkpoint.resume import record_json, restore_controller, save_checkpoint
from selfplay.runtime.cluster import init_ray
from selfplay.runtime.driver.build import RunResult, build, new_run_dir
from selfplay.runtime.driver.rundir import (
    Stopped,
    create_run_dir,
    lock_run_dir,
    reap_cluster_with_driver,
    stop_on_signals,
    write_config,
)


def _step_metrics(step: int, recs, pi, game, beta, pi_ref, elapsed) -> dict:
    rows = sum(r.rows for r in recs)
    secs = sum(r.seconds for r in recs)
    last = recs[-1].metrics
    out = {
        "step": step,
        "gap": game.gap(pi),
        "policy": [float(x) for x in pi],
        "regularized_gap": game.regularized_gap(pi, beta, pi_ref),
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
        # Exact probability that π_t beats π_ref under the game judge (ties count ½).
        "win_rate_ref": float(pi @ game.P @ pi_ref),
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
    if len(recs) > 1:  # multi-phase plans (Nash-MP, EGPO): one loss/KL per phase
        for r in recs:
            out[f"loss_{r.output.role}"] = r.metrics.loss
            out[f"kl_anchor_{r.output.role}"] = r.metrics.kl_anchor
    return out


def plot_history(history: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(steps, [max(h["gap"], 1e-12) for h in history], label="gap")
    if history[0]["regularized_gap"] is not None:
        ax.plot(
            steps,
            [max(h["regularized_gap"], 1e-12) for h in history],
            "--",
            label="regularized gap",
        )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("exact duality gap of π_t")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train(cfg: Config, *, progress: bool = True, resume=None) -> RunResult:
    """Run `cfg`; with `resume` (a `Checkpoint` from `resume.check_resume`) continue
    that run in its own run dir from the checkpoint's step.

    SIGTERM or SIGINT stops it at the next step boundary with a checkpoint and raises
    `rundir.Stopped` (see `selfplay.runtime.driver.rundir`)."""
    own_cluster = not ray.is_initialized() and not cfg.runtime.address
    init_ray(cfg)
    if own_cluster:
        reap_cluster_with_driver()
    with stop_on_signals() as stop:  # after ray.init, which installs its own SIGTERM handler
        return _train(cfg, progress, resume, stop)


def _train(cfg: Config, progress: bool, resume, stop) -> RunResult:
    from tqdm import tqdm

    done = 0 if resume is None else int(resume.step)
    workers = None
    if resume is not None and cfg.rollout.workers == resume.meta["config"]["rollout"]["workers"]:
        workers = resume.meta["controller"]["workers"]  # the pool as `selfplay scale` left it
    game, ctl, ev, algo, hyper = build(cfg, workers=workers)
    if resume is None:
        run_dir = create_run_dir(new_run_dir(cfg))  # and lock it
    else:
        run_dir = resume.path.parent.parent
        lock_run_dir(run_dir)  # already held when `check_resume` ran in this process
    stop.run_dir = run_dir
    cfg_path = write_config(cfg, run_dir)  # atomically, after the config was checked
    beta = float(hyper.beta) if algo.objective == "regularized" else 0.0
    if resume is None:
        ctl.init_versions()
    else:
        restore_controller(ctl, resume)
    pi_ref = ev.policy(ctl.learners, "ref")
    state = (
        dict(resume.meta["trainer"])
        if resume is not None
        else {
            "history": [
                {
                    "step": 0,
                    "gap": game.gap(pi_ref),
                    "policy": [float(x) for x in pi_ref],
                    "regularized_gap": game.regularized_gap(pi_ref, beta, pi_ref),
                }
            ],
            "elapsed": 0.0,
            "mlflow_run_id": None,
        }
    )
    history = state["history"]
    with contextlib.ExitStack() as stack:
        stack.callback(ctl.learners.shutdown)
        stack.callback(_kill_workers, ctl)
        # Named after the run dir: `selfplay scale NAME --rollout-workers N` resizes the pool.
        ctl.open_control(run_dir.name)
        stack.callback(ctl.close_control)
        print(
            f"run {run_dir.name} (Ray at {_gcs_address()}): resize with `selfplay scale "
            f"{run_dir.name} --rollout-workers N`" + (f"; resumed at step {done}" if done else ""),
            file=sys.stderr,
        )
        tracker = stack.enter_context(_tracker(cfg, run_dir, state["mlflow_run_id"]))
        state["mlflow_run_id"] = tracker.run_id if tracker is not None else None
        bar = stack.enter_context(
            tqdm(
                total=cfg.runtime.steps,
                initial=done,
                desc=f"{cfg.algo.name} steps",
                file=sys.stderr,
                disable=not progress,
            )
        )
        t0 = time.perf_counter() - state["elapsed"]
        every = cfg.runtime.checkpoint_every

        def on_step(step: int, recs) -> None:
            pi = ev.policy(ctl.learners)
            m = _step_metrics(step + 1, recs, pi, game, beta, pi_ref, time.perf_counter() - t0)
            history.append(m)
            if tracker is not None:
                tracker.log_metrics(
                    {k: v for k, v in m.items() if k not in ("step", "policy")}, step=step + 1
                )
            bar.update(1)
            bar.set_postfix(gap=f"{m['gap']:.3g}", stale=m["staleness"])
            if step + 1 < cfg.runtime.steps and (stop or (every and (step + 1) % every == 0)):
                save_checkpoint(ctl, cfg, run_dir, {**state, "elapsed": time.perf_counter() - t0})
            if stop and step + 1 < cfg.runtime.steps:
                _stopped(stop, step + 1, cfg.runtime.steps, run_dir)

        try:
            ctl.run(cfg.runtime.steps, on_step=on_step)
        except ray.exceptions.RayActorError as e:
            raise RunError(
                f"a learner died at step {ctl.next_step} ({type(e).__name__}); the "
                f"last checkpoint is intact: continue with `selfplay train --resume "
                f"{run_dir}`"
            ) from None
        seconds = time.perf_counter() - t0
        final = save_checkpoint(ctl, cfg, run_dir, {**state, "elapsed": seconds})
        pi = ev.policy(ctl.learners)
        summary = _summary(cfg, game, ctl, pi, pi_ref, beta, history, seconds, run_dir)
        summary["checkpoint"] = str(final)
        plot = plot_history(history, run_dir / "gap.png", f"{cfg.algo.name} on {game.source}")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        (run_dir / "history.json").write_text(json.dumps(history, indent=1, default=float))
        (run_dir / "records.json").write_text(json.dumps([record_json(r) for r in ctl.records]))
        if tracker is not None:
            tracker.log_metrics(
                {"final_gap": summary["gap"], "samples_per_s": summary["samples_per_s"]}
            )
            for p in (cfg_path, plot, run_dir / "summary.json", run_dir / "history.json"):
                tracker.log_artifact(p)
            tracker.log_artifacts(final, "checkpoint")
    return RunResult(summary=summary, history=history, run_dir=run_dir, records=ctl.records)


def _stopped(stop, done: int, steps: int, run_dir: Path) -> None:
    """Raise `Stopped` at a step boundary, after the checkpoint of `done` steps was written."""
    raise Stopped(
        f"stopped by {stop.name} after step {done} of {steps}, checkpoint written; "
        f"continue with `selfplay train --resume {run_dir}`",
        stop.signum,
    )


def _kill_workers(ctl) -> None:
    """Rollout workers and judges end with the run. Left to garbage collection (the
    controller sits in a reference cycle) they would hold their CPUs until the next
    `gc.collect()`, and a second run in the same cluster waits for them."""
    ctl.rollout_pool.kill_all()
    for actor in ctl.judges:
        ray.kill(actor)


def _gcs_address() -> str:
    return ray.get_runtime_context().gcs_address


def _tracker(cfg: Config, run_dir: Path, run_id: str | None = None):
    if not cfg.tracking.enabled:
        return contextlib.nullcontext(None)
    from selfplay.tracking import mlflow_run

    return mlflow_run(
        run_dir.name,
        cfg.model_dump(mode="json"),
        uri=cfg.tracking.uri,
        experiment=cfg.tracking.experiment,
        tags={"selfplay.command": "train"},
        run_id=run_id,
    )


def _summary(cfg, game, ctl, pi, pi_ref, beta, history, seconds, run_dir) -> dict:
    rows = sum(r.rows for r in ctl.records)
    nash = game.nash()
    out = {
        "algo": cfg.algo.name,
        "game": game.source,
        "moves": game.moves,
        "steps": cfg.runtime.steps,
        "gap_initial": history[0]["gap"],
        "gap": game.gap(pi),
        "regularized_gap_initial": history[0]["regularized_gap"],
        "regularized_gap": game.regularized_gap(pi, beta, pi_ref),
        "beta": beta or None,
        "policy": pi.tolist(),
        "nash": nash.tolist(),
        "regularized_nash": (
            games.solve_regularized(game.P, beta, pi_ref).tolist() if beta else None
        ),
        "preference_queries": int(ctl.queries),
        "samples": int(rows),
        "max_staleness_seen": max((r.staleness for r in ctl.records), default=0),
        "rollout_resizes": [[z.step, z.old, z.new] for z in ctl.resizes],  # (step, old, new)
        # Fault tolerance, this process's part of the run: actors replaced, batches redone.
        "rollout_workers_replaced": ctl.rollout_pool.replaced,
        "judges_replaced": ctl.judges_replaced,
        "batches_reissued": sum(r.reissues for r in ctl.records),
        "judge_masked_pairs": sum(h.get("judge_masked_pairs", 0) for h in history),
        "seconds": round(seconds, 3),
        "samples_per_s": rows / seconds if seconds else 0.0,
        "run_dir": str(run_dir),
    }
    return out


def format_summary(s: dict) -> str:
    lines = [
        f"{s['algo']} on {s['game']}: {s['steps']} steps, {s['samples']} samples, "
        f"{s['preference_queries']} preference queries, {s['seconds']:.1f}s",
        f"gap: {s['gap_initial']:.4f} at start -> {s['gap']:.4f} at the end",
    ]
    if s["regularized_gap"] is not None:
        lines.append(
            f"regularized gap (β={s['beta']:g}): {s['regularized_gap_initial']:.4f}"
            f" -> {s['regularized_gap']:.4f}"
        )
    lines.append(
        f"{'move':<6}{'policy':>9}{'NE':>9}" + (f"{'reg. NE':>10}" if s["regularized_nash"] else "")
    )
    for i, m in enumerate(s["moves"]):
        row = f"{m:<6}{s['policy'][i]:>9.4f}{s['nash'][i]:>9.4f}"
        if s["regularized_nash"]:
            row += f"{s['regularized_nash'][i]:>10.4f}"
        lines.append(row)
    lines.append(f"run dir: {s['run_dir']}")
    return "\n".join(lines)
