"""Thin Ray actors over the plain classes, and the assembly task.

- `RolloutActor` wraps a `GenerationBackend` (hf or vllm): it pulls a version's
  weights from the object store only when asked to load one it lacks.
- `JudgeActor` wraps a `Judge` and turns (samples, opponent samples) refs into
  a `Judged` chunk, so sampled tensors go worker → judge → learner without
  passing through the driver.
- `assemble` is a Ray task concatenating judged chunks into one `TrainBatch`.

Each actor sets one torch thread: on a small box the actors share the cores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import ray

from selfplay.runtime.judging import Judged, estimate_g, to_train_batch
from selfplay.runtime.train_batch import TrainBatch
from selfplay.runtime.types import Prompts, SamplerVersion, Samples, Version


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@ray.remote
class RolloutActor:
    def __init__(self, backend_fn) -> None:
        """backend_fn: zero-arg callable building the backend inside this process."""
        _one_thread()
        self.backend = backend_fn()

    def ready(self) -> bool:
        return True

    def versions(self) -> list[Version]:
        return self.backend.versions()

    def load(self, version: Version, boxed_ref: list) -> None:
        """Pull `version` (boxed_ref = [ref], so the driver never fetches the weights)."""
        if not self.backend.has(version):
            self.backend.load_weights(version, ray.get(boxed_ref[0]))

    def drop(self, version: Version) -> None:
        self.backend.drop(version)

    def generate(self, prompts: Prompts, version: SamplerVersion, k: int, max_new_tokens: int,
                 temperature: float, seed: int, allowed_token_ids: list[int] | None) -> Samples:
        # The backend records the prompt tokens it saw (Samples.prompt_tokens).
        return self.backend.generate(prompts, version=version, k=k, max_new_tokens=max_new_tokens,
                                     temperature=temperature, seed=seed,
                                     allowed_token_ids=allowed_token_ids)


@ray.remote
class JudgeActor:
    def __init__(self, judge_fn) -> None:
        _one_thread()
        self.judge = judge_fn()

    def ready(self) -> bool:
        return True

    def judge_chunk(self, samples: Samples, weights: list[float], *opponents: Samples) -> Judged:
        t0 = time.perf_counter()
        g, q = estimate_g(self.judge, samples, list(zip(opponents, weights, strict=True)))
        return Judged(samples=samples, g=g, queries=q, judge_s=time.perf_counter() - t0)


@dataclass
class BatchInfo:
    """What the driver needs to know about a batch without fetching its tensors."""

    rows: int
    queries: int
    prompt_ids: np.ndarray  # one per prompt, for accounting
    gen_s: float
    judge_s: float
    new_tokens: int


@ray.remote(num_cpus=0)
def assemble(pad_id: int | None, *chunks: Judged) -> tuple[TrainBatch, BatchInfo]:
    """Concatenate judged chunks (call with `.options(num_returns=2)`)."""
    batch = to_train_batch(list(chunks), pad_id=pad_id)
    info = BatchInfo(
        rows=len(batch), queries=sum(c.queries for c in chunks),
        prompt_ids=np.concatenate([np.asarray(c.samples.prompt_ids) for c in chunks]),
        gen_s=sum(c.samples.meta.get("gen_s", 0.0) for c in chunks),
        judge_s=sum(c.judge_s for c in chunks),
        new_tokens=int(sum(int(c.samples.lengths.sum()) for c in chunks)))
    return batch, info
