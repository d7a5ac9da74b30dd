"""`selfplay bench pipeline --simulate` and `selfplay bench scale`: the controller
measured against its own limit, with stages that sleep (`selfplay.bench.simulate`).

1. Pipeline: one rollout worker, one preference server, one learner; sync
   (`max_staleness` 0) against async (1) samples/s on MPO's one-phase plan. With
   balanced stages (gen + judge = learn) perfect overlap gives 2×; target ≥ 1.8×.
2. Scale: W simulated rollout workers (`num_cpus=0` actors) and W/8 preference
   servers (at least one), generation-bound stages, async; samples/s against W·(samples/s at W = 1). Target ≥ 0.8× linear
   up to 64 workers.

Rates are over the steady state: from the end of step `WARM` − 1 to the end of
the last step (the first steps hold the pipeline's fill, and Ray starting the
process of the first assembly task); a short run before the measured ones warms
Ray's worker pool. The driver's time per step is its own
CPU time (`time.process_time`) over the whole run, divided by the steps.
Utilisation of a stage: its actors' busy (sleeping) seconds over the steady
window, per actor.
"""

from __future__ import annotations

import functools
import itertools
import time

import ray

from selfplay.bench.simulate import SimLearner, Stages, _sim_backend, _sim_judge, prompts

WARM = 2  # steps left out of the rates
PROMPTS, K, M = 64, 4, 4  # per step: P prompts, K trained responses, M opponents each
_names = itertools.count()


def _sim_run(
    stages: Stages,
    max_staleness: int,
    steps: int,
    workers: int = 1,
    servers: int = 1,
    prompts_per_step: int = PROMPTS,
    k: int = K,
    m: int = M,
    texts: bool = True,
) -> dict:
    """Run `steps` steps of MPO on simulated stages; samples/s, utilisation, driver time."""
    from selfplay import algos
    from selfplay.runtime.driver.controller import Controller, ControllerSettings
    from selfplay.runtime.learner.group import LearnerGroup
    from selfplay.runtime.learner.settings import LearnerSettings
    from selfplay.runtime.workers.actors import JudgeActor, RolloutActor
    from selfplay.runtime.workers.judging import JudgePolicy
    from selfplay.runtime.workers.pool import RolloutPool
    from selfplay.tasks.base import Sampling

    algo = algos.get("mpo")
    plan = algo.plan(algo.resolve(algo.default_hyper(VOCAB_N)))
    sources = len(plan.phases[0].opponents)
    p = prompts_per_step
    make_worker = functools.partial(
        RolloutActor.options(num_cpus=0).remote,
        functools.partial(_sim_backend, stages.gen / (p * (k + m * sources)), texts),
        Sampling(1, 1.0, 1.0),
    )
    judges = [
        JudgeActor.options(num_cpus=0).remote(
            functools.partial(_sim_judge, stages.judge / (p * k * m * sources)), JudgePolicy()
        )
        for _ in range(servers)
    ]
    pool = RolloutPool([make_worker() for _ in range(workers)], make_worker=make_worker)
    learners = LearnerGroup(
        _no_model,
        LearnerSettings(),
        1,
        num_cpus=0,
        learner_cls=functools.partial(SimLearner, seconds_per_row=stages.learn / (p * k)),
    )
    settings = ControllerSettings(p, k, m, max_staleness, seed=0, pad_id=0)
    ctl = Controller(plan, settings, pool, judges, learners, prompts)
    ray.get([a.ready.remote() for a in (*pool.workers, *judges)])
    ctl.open_control(f"bench-sim-{next(_names)}-{time.time_ns()}")
    ends: list[float] = []
    seen: list[str] = []  # the version `on_step` sees published (`Controller.published`)

    def on_step(step: int, recs) -> None:
        ends.append(time.perf_counter())
        seen.append(str(ctl.published()[0]))

    try:
        cpu0 = time.process_time()
        ctl.init_versions()
        ctl.run(steps, on_step=on_step)
        cpu = time.process_time() - cpu0
    finally:
        ctl.close_control()
        learners.shutdown()
        pool.kill_all()
        for j in judges:
            ray.kill(j)
    steady = [r for r in ctl.records if r.step >= WARM]
    window = ends[-1] - ends[WARM - 1]
    rows = sum(r.rows for r in steady)
    return {
        "max_staleness": max_staleness,
        "workers": workers,
        "servers": servers,
        "steps": steps,
        "samples_per_s": rows / window,
        "step_s": window / (steps - WARM),
        "driver_s_per_step": cpu / steps,
        "utilisation": {
            # busy seconds as the stages define them (each sleep is exactly that long)
            "gen": len(steady) * stages.gen / (window * workers),
            "judge": len(steady) * stages.judge / (window * servers),
            "learn": rows * stages.learn / (p * k) / window,
        },
        "published_at_step_end": seen,
        "records": [
            {
                "step": r.step,
                "phase": r.phase,
                "sampler": str(r.sampler_versions[0]),
                "output": str(r.output),
                "staleness": r.staleness,
            }
            for r in ctl.records
        ],
    }


VOCAB_N = 5  # actions of the (notional) game: only MPO's default hyper-parameters use it


def _no_model():
    return None


def _init() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    _sim_run(Stages(0.01, 0.01, 0.01), 1, WARM + 1)  # Ray starts the assembly task's process


def pipeline(stages: Stages, steps: int = 12) -> dict:
    """Sync against async on simulated stages (module docstring, 1)."""
    _init()
    sync = _sim_run(stages, 0, steps)
    asyn = _sim_run(stages, 1, steps)
    limit = (stages.gen + stages.judge + stages.learn) / max(
        stages.gen + stages.judge, stages.learn, 1e-12
    )
    return {
        "stages": vars(stages),
        "sync": sync,
        "async": asyn,
        "speedup": asyn["samples_per_s"] / sync["samples_per_s"],
        "limit": limit,
    }


def pipeline_json(r: dict) -> dict:
    return {
        "sync_samples_per_s": r["sync"]["samples_per_s"],
        "async_samples_per_s": r["async"]["samples_per_s"],
        "driver_s_per_step": r["async"]["driver_s_per_step"],
        "sync_driver_s_per_step": r["sync"]["driver_s_per_step"],
        "speedup": r["speedup"],
        "limit": r["limit"],
        "utilisation_sync": r["sync"]["utilisation"],
        "utilisation_async": r["async"]["utilisation"],
        "stages": r["stages"],
    }


def format_pipeline(r: dict) -> str:
    st = r["stages"]
    lines = [
        f"simulated stages (s per step-sized batch on one actor): gen={st['gen']:g} "
        f"judge={st['judge']:g} learn={st['learn']:g}; {PROMPTS} prompts x {K} responses "
        f"(+{M} opponents) per step"
    ]
    for name in ("sync", "async"):
        x = r[name]
        u = x["utilisation"]
        lines.append(
            f"  max_staleness={x['max_staleness']}: {x['samples_per_s']:.1f} samples/s "
            f"({x['step_s'] * 1e3:.0f} ms/step), utilisation gen {u['gen']:.0%} judge "
            f"{u['judge']:.0%} learn {u['learn']:.0%}, driver {x['driver_s_per_step'] * 1e3:.1f}"
            f" ms CPU/step"
        )
    lines.append(
        f"  async speedup {r['speedup']:.2f}x (perfect overlap {r['limit']:.2f}x; target >= 1.8x)"
    )
    return "\n".join(lines)


SCALE_STAGES = Stages(gen=32.0, judge=0.05, learn=0.05)
SCALE_PROMPTS = 256
WORKERS_PER_SERVER = 8  # preference servers grow with the pool, as a deployment's would


def _servers(workers: int) -> int:
    return max(1, workers // WORKERS_PER_SERVER)


def scale(workers: tuple[int, ...], steps: int = 5, stages: Stages = SCALE_STAGES) -> dict:
    """Samples/s and driver CPU per step against the rollout pool's size (module docstring, 2)."""
    _init()
    runs = [
        _sim_run(
            stages,
            1,
            steps,
            workers=w,
            servers=_servers(w),
            prompts_per_step=max(SCALE_PROMPTS, w),
        )
        for w in workers
    ]
    base = runs[0]["samples_per_s"] / runs[0]["workers"]
    return {
        "stages": vars(stages),
        "workers": [r["workers"] for r in runs],
        "samples_per_s": [r["samples_per_s"] for r in runs],
        "driver_s_per_step": [r["driver_s_per_step"] for r in runs],
        "vs_linear": [r["samples_per_s"] / (base * r["workers"]) for r in runs],
        "driver_us_per_worker_step": [r["driver_s_per_step"] / r["workers"] * 1e6 for r in runs],
        "utilisation_gen": [r["utilisation"]["gen"] for r in runs],
    }


def scale_json(r: dict) -> dict:
    keys = ("workers", "samples_per_s", "driver_s_per_step", "vs_linear")
    return {k: r[k] for k in keys} | {
        "driver_us_per_worker_step": r["driver_us_per_worker_step"],
        "stages": r["stages"],
    }


def format_scale(r: dict) -> str:
    st = r["stages"]
    lines = [
        f"simulated rollout workers (num_cpus=0), async, gen={st['gen']:g} judge={st['judge']:g}"
        f" learn={st['learn']:g} s per step-sized batch on one actor ({SCALE_PROMPTS} prompts;"
        f" one preference server per {WORKERS_PER_SERVER} workers)"
    ]
    for i, w in enumerate(r["workers"]):
        lines.append(
            f"  {w:>3} workers: {r['samples_per_s'][i]:8.1f} samples/s, "
            f"{r['vs_linear'][i]:.2f}x linear, gen utilisation {r['utilisation_gen'][i]:.0%}, "
            f"driver {r['driver_s_per_step'][i] * 1e3:.1f} ms CPU/step "
            f"({r['driver_us_per_worker_step'][i]:.0f} us per worker)"
        )
    lines.append("  target: >= 0.8x linear up to 64 workers")
    return "\n".join(lines)
