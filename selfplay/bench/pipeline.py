"""`selfplay bench pipeline`: async against sync, and policy publish+pull against raw Ray.

1. End-to-end throughput on the token game: samples/s with `max_staleness=0`
   (every phase waits for its own batch) against `max_staleness=1` (the next
   batch is sampled and judged while the learner trains). Target: async ≥
   1.6× sync. The speedup depends on how the stages (generation on the rollout
   worker, judging on the preference server, learning) balance, so it is
   measured at several opponent counts per prompt (`opponents`): few
   opponents make learning dominate, many make generation and judging
   dominate. On 2 cores at most two stages run at once.
2. The time to publish a policy version (learner rank 0 flattens and puts
   its weights) and have a rollout worker pull and load it, against a raw
   `ray.put` in one actor and `ray.get` in another of the same number of
   bytes. Target: publish+pull ≤ 1.5× raw.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import ray

from selfplay.config import load_config

# 64 prompts × 8 responses per step; `rollout.opponents_k` is swept by `run`.
PIPELINE_OVERRIDES = [
    "algo.name=mpo",
    "algo.eta=2",
    "algo.alpha=0.5",
    "task.generate=rps",
    "task.n=5",
    "model.tiny.hidden=64",
    "model.tiny.layers=2",
    "rollout.prompts_per_step=64",
    "rollout.k=8",
    "learner.updates_per_phase=1",
    "learner.micro_batch=512",
    "tracking.enabled=false",
    "runtime.num_cpus=2",
]


@ray.remote(num_cpus=0.5)
class _Putter:
    def put(self, nbytes: int) -> list:
        return [ray.put(np.ones(nbytes, dtype=np.uint8))]


@ray.remote(num_cpus=0.5)
class _Getter:
    def get(self, boxed: list) -> int:
        return int(ray.get(boxed[0]).nbytes)


def throughput(max_staleness: int, steps: int, opponents: int) -> dict:
    from selfplay.runtime.driver.trainer import train

    cfg = load_config(
        None,
        [
            *PIPELINE_OVERRIDES,
            f"runtime.max_staleness={max_staleness}",
            f"runtime.steps={steps}",
            f"rollout.opponents_k={opponents}",
        ],
    )
    res = train(cfg, progress=False).summary
    return {
        "max_staleness": max_staleness,
        "opponents": opponents,
        "samples_per_s": res["samples_per_s"],
        "seconds": res["seconds"],
        "samples": res["samples"],
        "max_staleness_seen": res["max_staleness_seen"],
    }


def publish_pull(hidden: int, layers: int, repeats: int) -> dict:
    """Median seconds of (publish on learner → pull+load on worker) and of raw put → get."""
    from selfplay.models.tiny import ModelSpec
    from selfplay.runtime.driver.build import _build_backend, _build_model
    from selfplay.runtime.learner.group import LearnerGroup
    from selfplay.runtime.learner.learner import LearnerSettings
    from selfplay.runtime.workers.actors import RolloutActor
    from selfplay.tasks.base import Sampling
    from selfplay.types import Version

    spec = ModelSpec(words=("a", "b", "c"), hidden=hidden, layers=layers, heads=4)
    group = LearnerGroup(lambda: _build_model(spec, "float32"), LearnerSettings(), 1, num_cpus=0.5)
    worker = RolloutActor.options(num_cpus=0.5).remote(
        lambda: _build_backend(spec, "hf"), Sampling(1, 1.0, 1.0)
    )
    ray.get(worker.ready.remote())
    ours, raw, nbytes = [], [], 0
    putter, getter = _Putter.remote(), _Getter.remote()
    try:
        for i in range(repeats):
            t0 = time.perf_counter()
            ref = group.publish("main")
            ray.get(worker.load.remote(Version(i, "main"), [ref]))
            ours.append(time.perf_counter() - t0)
            worker.drop.remote(Version(i, "main"))
            if not nbytes:
                nbytes = int(ray.get(ref).nbytes)
            del ref
            t0 = time.perf_counter()
            boxed = ray.get(putter.put.remote(nbytes))
            ray.get(getter.get.remote(boxed))
            raw.append(time.perf_counter() - t0)
            del boxed
    finally:
        group.shutdown()
        for a in (worker, putter, getter):
            ray.kill(a)
    o, r = statistics.median(ours), statistics.median(raw)
    return {"bytes": nbytes, "publish_pull_s": o, "raw_put_get_s": r, "ratio": o / r}


def run(
    steps: int = 12,
    repeats: int = 5,
    hidden: int = 512,
    layers: int = 8,
    opponents: tuple[int, ...] = (32, 1024),
) -> dict:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for m in opponents:
        sync, asyn = throughput(0, steps, m), throughput(1, steps, m)
        rows.append(
            {
                "opponents": m,
                "sync": sync,
                "async": asyn,
                "async_speedup": asyn["samples_per_s"] / sync["samples_per_s"],
            }
        )
    pp = publish_pull(hidden, layers, repeats)
    return {"throughput": rows, "publish": pp}


def format_report(r: dict) -> str:
    lines = []
    for row in r["throughput"]:
        s, a = row["sync"], row["async"]
        lines.append(
            f"{row['opponents']:>5} opponents/prompt: max_staleness=0 {s['samples_per_s']:.1f} "
            f"samples/s ({s['seconds']:.1f}s), max_staleness=1 {a['samples_per_s']:.1f} "
            f"samples/s ({a['seconds']:.1f}s, max staleness seen {a['max_staleness_seen']}): "
            f"async speedup {row['async_speedup']:.2f}x (target >= 1.6x)"
        )
    p = r["publish"]
    lines.append(
        f"publish+pull of {p['bytes'] / 1e6:.1f} MB: {p['publish_pull_s'] * 1e3:.1f} ms; raw "
        f"ray.put/get: {p['raw_put_get_s'] * 1e3:.1f} ms; ratio {p['ratio']:.2f} (target <= 1.5)"
    )
    return "\n".join(lines)
