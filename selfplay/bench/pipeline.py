"""`selfplay bench pipeline`: async against sync, and policy publish+pull against raw Ray.

1. End-to-end throughput on the token game: samples/s with `max_staleness=0`
   (every phase waits for its own batch) against `max_staleness=1` (the next
   batch is sampled and judged while the learner trains). Target: async ≥
   1.6× sync. The speedup depends on how the stages (generation on the rollout
   worker, judging on the preference server, learning) balance, so it is
   measured at several opponent counts per prompt (`opponents`): few
   opponents make learning dominate, many make generation and judging
   dominate. On 2 cores at most two stages run at once.
2. The time to publish a policy version (learner rank 0 flattens its weights
   and returns them: the task's return value is the published object) and have
   a rollout worker pull and load it, against a raw `ray.put` in one actor and
   `ray.get` in another of the same number of bytes. Target: publish+pull ≤
   1.2× raw.

3. Strings: one step's opponent samples at `opponents` per prompt, as a rollout
   worker sends them to the judge, with decoded texts (one Python str per row)
   and as token ids only (what the game judge reads now): the worker's decode,
   the judge actor's deserialisation (`ray.get` in another process) and its ĝ.

The orchestration without the box's compute (stages that sleep) is measured by
`selfplay bench pipeline --simulate` and `selfplay bench scale`
(`selfplay.bench.orchestration`).
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


@ray.remote(num_cpus=0)
class _Reader:
    def read_s(self, boxed: list, repeats: int) -> float:
        """Median seconds of `ray.get` (deserialisation in this process) of boxed[0]."""
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            x = ray.get(boxed[0])
            out.append(time.perf_counter() - t0)
            del x
        return statistics.median(out)


def strings(opponents: int = 1024, repeats: int = 5) -> dict:
    """Decode, deserialise and judge one step's opponent samples, texts against ids."""
    from selfplay.judges.factory import make_judge
    from selfplay.runtime.driver.build import bind_task
    from selfplay.runtime.workers.judging import estimate_g
    from selfplay.types import Samples, Version

    cfg = load_config(None, [*PIPELINE_OVERRIDES, f"rollout.opponents_k={opponents}"])
    bound = bind_task(cfg)
    spec = bound.task.judge_spec(cfg.judge)
    judge, tok = make_judge(spec), bound.tokenizer
    p, k, rng = cfg.rollout.prompts_per_step, cfg.rollout.k, np.random.default_rng(0)

    def draw(m: int) -> Samples:
        n = p * m
        return Samples(
            prompt_ids=np.arange(p),
            prompt_texts=[bound.task.prompt] * p,
            tokens=rng.choice(np.asarray(spec.move_ids), size=(n, 1)),
            lengths=np.ones(n, dtype=np.int64),
            logprobs=np.zeros((n, 1), dtype=np.float32),
            texts=None,
            version=Version(0, "main"),
            k=m,
            prompt_tokens=[[1]] * p,
        )

    mine, opp = draw(k), draw(opponents)
    reader = _Reader.remote()
    out = {"opponents": opponents, "rows": len(opp)}
    try:
        for name, with_texts in (("texts", True), ("ids", False)):
            t0 = time.perf_counter()
            if with_texts:
                for s in (mine, opp):
                    s.texts = tok.batch_decode(s.tokens.tolist(), skip_special_tokens=True)
            decode = time.perf_counter() - t0
            ref = ray.put(opp)
            read = ray.get(reader.read_s.remote([ref], repeats))
            del ref
            t0 = time.perf_counter()
            estimate_g(judge, mine, [(opp, 1.0)])
            out[name] = {"decode_s": decode, "deserialise_s": read}
            out[name]["judge_s"] = time.perf_counter() - t0
            mine.texts = opp.texts = None
    finally:
        ray.kill(reader)
    return out


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


def publish_pull(hidden: int, layers: int, repeats: int, spec=None) -> dict:
    """Median seconds of (publish on learner → pull+load on worker) and of raw put → get,
    for a tiny model of that shape, or for `spec` (a model path, or an `Adapted` one:
    `selfplay bench publish`)."""
    from selfplay.models.tiny import ModelSpec
    from selfplay.runtime.driver.build import _build_backend, _build_model
    from selfplay.runtime.learner.group import LearnerGroup
    from selfplay.runtime.learner.learner import LearnerSettings
    from selfplay.runtime.workers.actors import RolloutActor
    from selfplay.tasks.base import Sampling
    from selfplay.types import Version

    if spec is None:
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
    repeats: int = 15,
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
    return {"throughput": rows, "publish": pp, "strings": strings(max(opponents), repeats)}


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
    lines.append(format_publish(r["publish"]))
    st = r.get("strings")
    if st:
        t, i = st["texts"], st["ids"]
        lines.append(
            f"strings, {st['opponents']} opponents/prompt ({st['rows']} opponent rows/step): "
            f"texts: decode {t['decode_s'] * 1e3:.0f} ms, deserialise {t['deserialise_s'] * 1e3:.1f}"
            f" ms, judge {t['judge_s'] * 1e3:.0f} ms; token ids only: deserialise "
            f"{i['deserialise_s'] * 1e3:.1f} ms, judge {i['judge_s'] * 1e3:.0f} ms"
        )
    return "\n".join(lines)


def format_publish(p: dict) -> str:
    return (
        f"publish+pull of {p['bytes'] / 1e6:.2f} MB: {p['publish_pull_s'] * 1e3:.1f} ms; raw "
        f"ray.put/get: {p['raw_put_get_s'] * 1e3:.1f} ms; ratio {p['ratio']:.2f} (target <= 1.2)"
    )
