"""`selfplay train`: run the controller on any task, evaluate, track, checkpoint, summarise.

The loop knows nothing of the problem: every `runtime.eval_every` steps (and at
the last one) it starts the task evaluator on the policy (for the token game, the
exact duality gap of the last iterate: one learner call, issued and read at the next
step, so the driver does not wait for the learner), adds its metrics to that step's
entry and MLflow, and at the end writes the summary, history and plot
(`selfplay.runtime.driver.report`). Every `eval.every` steps (and at the last) it
also starts a sampled evaluation against π_ref (`selfplay.runtime.driver.evaluate`),
which runs alongside the next steps; its metrics join their step's history entry
and MLflow when they are in, and at the latest before a checkpoint.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import ray

from selfplay.config import Config, check_training
from selfplay.config_paths import absolute_paths
from selfplay.errors import RunError
from selfplay.outputs import dumps
from selfplay.runtime import waits
from selfplay.runtime.checkpoint.codec import rng_state, set_rng_state
from selfplay.runtime.checkpoint.format import CHECKPOINT_DIR
from selfplay.runtime.cluster import init_ray
from selfplay.runtime.driver.build import RunResult, build
from selfplay.runtime.driver.disk import disk_full, free_space, is_disk_full
from selfplay.runtime.driver.evaluate import SampledEval, with_exact
from selfplay.runtime.driver.export import (
    MODEL_DIR,
    ROLLOUT_DIR,
    completions_table,
    export_policy,
    keep_policy,
    policy_dir,
    write_rollouts,
)
from selfplay.runtime.driver.failures import run_failure, wait_failure
from selfplay.runtime.driver.report import (
    format_summary,
    last_eval,
    plot_eval,
    plot_history,
    step_metrics,
    summarize,
)
from selfplay.runtime.driver.resume import record_json, restore_controller, save_checkpoint
from selfplay.runtime.driver.rundir import (
    Stopped,
    create_run_dir,
    lock_run_dir,
    reap_cluster_with_driver,
    stop_on_signals,
    write_config,
)
from selfplay.runtime.workers.rows import with_step


def train(cfg: Config, *, progress: bool = True, resume=None, bound=None) -> RunResult:
    """Run `cfg`; with `resume` (a `Checkpoint` from `resume.check_resume`) continue
    that run in its own run dir from the checkpoint's step. `bound`: the task already
    bound by `build.bind_task` (else `build` binds it).

    SIGTERM or SIGINT stops it at the next step boundary with a checkpoint and raises
    `rundir.Stopped` (see `selfplay.runtime.driver.rundir`). Relative paths in `cfg`
    are this directory's, and the run records them absolute (`config_paths`)."""
    check_training(cfg)  # before Ray starts
    cfg = absolute_paths(cfg)
    own_cluster = not ray.is_initialized() and not cfg.runtime.address
    init_ray(cfg)
    if own_cluster:
        reap_cluster_with_driver()
    with stop_on_signals() as stop:  # after ray.init, which installs its own SIGTERM handler
        return _train(cfg, progress, resume, stop, bound)


def _train(cfg: Config, progress: bool, resume, stop, bound=None) -> RunResult:
    from tqdm import tqdm

    done = 0 if resume is None else int(resume.step)
    workers = None
    if resume is not None and cfg.rollout.workers == resume.meta["config"]["rollout"]["workers"]:
        workers = resume.meta["controller"]["workers"]  # the pool as `selfplay scale` left it
    run = build(cfg, workers=workers, bound=bound)
    ctl, ev = run.controller, run.evaluator
    if resume is None:
        run_dir = create_run_dir(cfg)  # and lock it
    else:
        run_dir = resume.path.parent.parent
        lock_run_dir(run_dir)  # already held when `check_resume` ran in this process
    stop.run_dir = run_dir
    ctl.stop = stop  # a wait for lost actors' replacements ends at the first signal
    cfg_path = write_config(cfg, run_dir)  # atomically, after the config was checked
    if resume is None:
        ctl.init_versions()
    else:
        restore_controller(ctl, resume)
    first = {"step": 0, **ev.reference(ctl.learners)}
    state = (
        dict(resume.meta["trainer"])
        if resume is not None
        else {"history": [first], "elapsed": 0.0, "mlflow_run_id": None}
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
        sampled = (
            SampledEval.create(cfg, run.eval_prompts, run.sampling, run_dir)
            if cfg.eval.every
            else None
        )
        if sampled is not None:
            sampled.prepare(ctl)  # π_ref's draws before step 1: no evaluation waits on them
        t0 = time.perf_counter() - state["elapsed"]
        every = cfg.runtime.checkpoint_every

        started: list[tuple[dict, object]] = []  # (history entry, task evaluation in flight)

        def finish_exact() -> None:
            """The task's evaluations in flight (issued a step ago, so their learner call
            ran alongside this step): into their history entries, MLflow and the bar."""
            while started:
                h, get = started.pop(0)
                got = get()
                h.update(got)
                if tracker is not None:
                    tracker.log_metrics(
                        {k: v for k, v in got.items() if isinstance(v, float | int)},
                        step=h["step"],
                    )
                if ev.headline in got:
                    bar.set_postfix(
                        {ev.headline: f"{got[ev.headline]:.3g}", "stale": h["staleness"]}
                    )

        def record(evals: list[dict]) -> None:
            """Finished sampled evaluations: into their step's history entry, and MLflow."""
            for e in evals:
                m = {k: v for k, v in e.items() if k != "step"}
                for h in history:
                    if h["step"] == e["step"]:
                        m = with_exact(m, h)
                        h.update(m)
                if tracker is not None:
                    tracker.log_metrics(
                        {k: v for k, v in m.items() if v is not None}, step=e["step"]
                    )

        def on_step(step: int, recs) -> None:
            last = step + 1 == cfg.runtime.steps
            finish_exact()
            m = step_metrics(step + 1, recs, time.perf_counter() - t0)
            history.append(m)
            if last or (step + 1) % cfg.runtime.eval_every == 0:
                started.append((m, ev.start(ctl.learners)))
            if sampled is not None:
                if last or (step + 1) % cfg.eval.every == 0:
                    sampled.issue(step + 1, ctl)
                record(sampled.poll(ctl.judges))
            with disk_full(run_dir / ROLLOUT_DIR, _go_on(run_dir)):
                _rollouts(cfg, run_dir, step + 1, recs, tracker)
            if (keep := cfg.runtime.keep_policies_every) and (step + 1) % keep == 0:
                main = waits.get(ctl.store.refs[ctl.store.roles["main"]])  # π_{step+1}
                with disk_full(policy_dir(run_dir, step + 1), _go_on(run_dir)):
                    keep_policy(main, run.build_policy, run.tokenizer, run_dir, step + 1)
            if tracker is not None:
                tracker.log_metrics(
                    {k: v for k, v in m.items() if k != "step" and isinstance(v, float | int)},
                    step=step + 1,
                )
            bar.update(1)
            if step + 1 < cfg.runtime.steps and (stop or (every and (step + 1) % every == 0)):
                finish_exact()  # a resumed run has every evaluation until here
                if sampled is not None:
                    record(sampled.drain(ctl.judges))
                with disk_full(run_dir / CHECKPOINT_DIR, _go_on(run_dir)):
                    save_checkpoint(
                        ctl, cfg, run_dir, {**state, "elapsed": time.perf_counter() - t0}
                    )
            if stop and step + 1 < cfg.runtime.steps:
                _stopped(stop, step + 1, cfg.runtime.steps, run_dir)

        try:
            ctl.run(cfg.runtime.steps, on_step=on_step)
            finish_exact()
            if sampled is not None:
                record(sampled.drain(ctl.judges))
            seconds = time.perf_counter() - t0
            # The model first: a final checkpoint that fails (out of memory, of disk)
            # leaves the trained policy in RUN_DIR/model all the same. Building the
            # model draws from the RNGs; the checkpoint keeps them as the run left them.
            rng = rng_state()
            model_dir, full = _export_final(ctl, run, run_dir)
            set_rng_state(*rng)
            done = f"the model is in {model_dir}; " if model_dir else ""
            with disk_full(run_dir / CHECKPOINT_DIR, done + _go_on(run_dir)):
                final = save_checkpoint(ctl, cfg, run_dir, {**state, "elapsed": seconds})
            if full is not None:
                raise RunError(
                    f"{full}; the final checkpoint {final.name} is intact: free space, then "
                    f"write the model with `selfplay export {run_dir}`"
                )
        except waits.WaitAborted as e:  # no node could host a lost worker, or a signal
            raise wait_failure(e, ctl.next_step, run_dir) from None
        except ray.exceptions.RayError as e:  # a learner died or raised, out of memory
            raise run_failure(e, ctl.next_step, run_dir) from None
        summary = summarize(cfg, run, history, seconds, run_dir)
        summary["checkpoint"] = str(final)
        summary["model"] = str(model_dir)
        summary["eval"] = last_eval(history)
        with disk_full(run_dir, f"its final checkpoint {final.name} and model/ are written"):
            eval_plot = plot_eval(
                history, run_dir / "eval" / "win_rate.png", f"{cfg.algo.name} on {run.task.source}"
            )
            plot = plot_history(
                history,
                ev.plot_keys,
                run_dir / f"{ev.headline}.png",
                f"{cfg.algo.name} on {run.task.source}",
            )
            # Always valid JSON: a diverged run's NaN/inf are written as null.
            (run_dir / "summary.json").write_text(dumps(summary, indent=1))
            (run_dir / "history.json").write_text(dumps(history, indent=1))
            (run_dir / "records.json").write_text(dumps([record_json(r) for r in ctl.records]))
        if tracker is not None:
            final_metrics = {f"final_{ev.headline}": summary.get(ev.headline)}
            final_metrics["samples_per_s"] = summary["samples_per_s"]
            tracker.log_metrics({k: v for k, v in final_metrics.items() if v is not None})
            for p in (cfg_path, plot, run_dir / "summary.json", run_dir / "history.json"):
                tracker.log_artifact(p)
            if eval_plot is not None:
                tracker.log_artifact(eval_plot)
            tracker.log_artifacts(final, "checkpoint")
            tracker.log_artifacts(model_dir, "model")
    return RunResult(
        summary=summary,
        history=history,
        run_dir=run_dir,
        records=ctl.records,
        text=format_summary(summary, ev),
    )


def _rollouts(cfg: Config, run_dir: Path, step: int, recs, tracker) -> None:
    """RUN_DIR/rollouts/step-N.parquet (rollout.save=every) and MLflow's completions
    table of step N (the rows step N trained on, and their opponents)."""
    refs = [r.rows_ref for r in recs if r.rows_ref is not None]
    if not refs:
        return
    tables = [
        with_step(t, step, r.output.role)
        for r, t in zip([r for r in recs if r.rows_ref is not None], waits.get(refs), strict=True)
        if t is not None
    ]
    if cfg.rollout.save == "every":
        write_rollouts(tables, run_dir, step)
    if tracker is not None and (table := completions_table(tables)) is not None:
        tracker.log_table(table, f"completions/step-{step:06d}.json")


def _export_final(ctl, run, run_dir: Path) -> tuple[Path | None, str | None]:
    """(RUN_DIR/model, None) once the final policy is written there; (None, what
    happened) when the disk was full, so the final checkpoint is still tried."""
    weights = waits.get(ctl.learners.publish())
    try:
        return export_policy(weights, run.build_policy, run.tokenizer, run_dir), None
    except Exception as e:
        if not is_disk_full(e):
            raise
        where = run_dir / MODEL_DIR
        return (
            None,
            f"no space left on the device of {where} ({free_space(where)} free) while writing it",
        )


def _go_on(run_dir: Path) -> str:
    """What a run that failed to write can go on from: its newest checkpoint, if any."""
    saved = sorted((run_dir / CHECKPOINT_DIR).glob("step-*"))
    if not saved:
        return "no checkpoint was written yet: free space and start the run again"
    return (
        f"the last checkpoint {saved[-1].name} is intact: free space, then continue with "
        f"`selfplay train --resume {run_dir}`"
    )


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
