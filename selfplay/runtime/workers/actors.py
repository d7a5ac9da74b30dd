"""Thin Ray actors over the plain classes, and the batch assembly.

- `RolloutActor` wraps a `GenerationBackend` (hf or vllm): it pulls a version's
  weights from the object store only when asked to load one it lacks. The
  controller makes one `sample` call per chunk and batch (drop, load, then every
  draw), so the driver's cost per worker is one call, not one per draw and version.
- `JudgeActor` wraps a `Judge` and turns (samples, opponent samples) refs into
  a `Judged` chunk, so sampled tensors go worker → judge → learner without
  passing through the driver. Failed judge calls are retried, then raised or
  masked per its `JudgePolicy` (see `judging`); a raise reaches the driver as a
  `RayTaskError` whose `.cause` is the one-line `RunError`. It applies the
  truncation rule (`rollout.truncated`, given at construction) and records the
  opponents' lengths and truncation flags, which only it sees.
- `assemble_batch` concatenates judged chunks into one `TrainBatch`, dropping rows
  the judge could not score, summing the judging counts and gathering the response
  lengths and truncation flags for the step's logs. It runs on a preference server
  (`JudgeActor.assemble`), where the chunks are: a zero-CPU Ray task would make Ray
  start a new worker process (≈ 360 MB, torch imported) whenever none was idle.

Both actors report their `pid()`, so fault-tolerance tests can kill them.

Each actor sets one torch thread: on a small box the actors share the cores.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import ray

from selfplay.runtime.workers.judging import (
    Judged,
    JudgePolicy,
    compare_pairs,
    estimate_g,
    to_train_batch,
)
from selfplay.runtime.workers.rows import rows_table
from selfplay.tasks.base import Sampling
from selfplay.types import Prompts, SamplerVersion, Samples, Version


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@ray.remote
class RolloutActor:
    def __init__(self, backend_fn, sampling: Sampling) -> None:
        """backend_fn: zero-arg callable building the backend inside this process;
        sampling: the task's generation settings, applied to every draw."""
        _one_thread()
        self.backend = backend_fn()
        self.sampling = sampling

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()

    def versions(self) -> list[Version]:
        return self.backend.versions()

    def load(self, version: Version, boxed_ref: list) -> None:
        """Pull `version` (boxed_ref = [ref], so the driver never fetches the weights)."""
        if not self.backend.has(version):
            self.backend.load_weights(version, ray.get(boxed_ref[0]))

    def drop(self, version: Version) -> None:
        self.backend.drop(version)

    def sample(
        self,
        prompts: Prompts,
        draws: list[tuple[SamplerVersion, int, int, bool]],
        load: list[tuple[Version, list]] = (),
        drop: list[Version] = (),
    ):
        """Drop the versions `drop`, pull `load` ([(version, [ref])]), then for each
        (version, k, seed, explore) of `draws` generate K responses per prompt, in
        order. One `Samples` per draw: call with `.options(num_returns=len(draws))`."""
        for v in drop:
            self.drop(v)
        for v, boxed in load:
            self.load(v, boxed)
        out = tuple(self.generate(prompts, v, k, seed, explore) for v, k, seed, explore in draws)
        return out if len(out) > 1 else out[0]

    def generate_each(self, prompts: Prompts, version: SamplerVersion, k: int, seed: int):
        """`generate` in one batched call, handed back per prompt (`Samples.split`): call
        with `.options(num_returns=len(prompts))`, one ref per prompt."""
        parts = self.generate(prompts, version, k, seed).split()
        return tuple(parts) if len(parts) > 1 else parts[0]

    def generate(
        self, prompts: Prompts, version: SamplerVersion, k: int, seed: int, explore: bool = False
    ) -> Samples:
        """K responses per prompt from `version`; `explore`: at the behaviour policy's
        temperature (the trained-on responses), else at the policy's (opponents)."""
        s = self.sampling
        # The backend records the prompt tokens it saw (Samples.prompt_tokens).
        return self.backend.generate(
            prompts,
            version=version,
            k=k,
            max_new_tokens=s.max_new_tokens,
            temperature=s.explore_temperature if explore else s.temperature,
            seed=seed,
            allowed_token_ids=None if s.allowed_token_ids is None else list(s.allowed_token_ids),
            top_p=s.top_p,
            top_k=s.top_k,
            stop=list(s.stop),
            decode=s.texts,
        )


@ray.remote
class JudgeActor:
    def __init__(
        self,
        judge_fn,
        policy: JudgePolicy = JudgePolicy(),
        truncated: str = "lose",
        rows: bool = False,
    ) -> None:
        """judge_fn: zero-arg callable building the judge inside this process;
        truncated: "lose" | "keep", the rule for truncated responses (`estimate_g`);
        rows: also return the chunk's rollout rows (`rows.rows_table`)."""
        _one_thread()
        self.judge = judge_fn()
        self.policy = policy
        self.truncated = truncated
        self.rows = rows

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()

    def judge_chunk(self, samples: Samples, weights: list[float], *opponents: Samples) -> Judged:
        """Raises RunError when a comparison keeps failing and policy.on_failure == "raise"."""
        t0 = time.perf_counter()
        est = estimate_g(
            self.judge,
            samples,
            list(zip(opponents, weights, strict=True)),
            self.policy,
            self.truncated,
        )
        return Judged(
            samples=samples,
            g=est.g,
            queries=est.queries,
            judge_s=time.perf_counter() - t0,
            keep=est.keep,
            masked_pairs=est.masked_pairs,
            masked_rows=est.masked_rows,
            judge_retries=est.judge_retries,
            opponent_lengths=_cat([np.asarray(o.lengths, dtype=np.int64) for o in opponents]),
            opponent_truncated=_cat([o.truncated_flags() for o in opponents], bool),
            rows=self._rows(samples, est.g, opponents) if self.rows else None,
        )

    def compare(self, *units: Samples) -> np.ndarray:
        """[n] P(a_r ≻ b_r) per row (`judging.compare_pairs`), NaN where masked: `units`
        is side a's prompts then side b's, the same prompts in the same order."""
        half = len(units) // 2
        if not half or len(units) != 2 * half:
            raise ValueError("compare takes side a's samples then side b's, as many of each")
        a, b = Samples.concat(units[:half]), Samples.concat(units[half:])
        return compare_pairs(self.judge, a, b, self.policy, self.truncated).p

    def assemble(self, pad_id: int | None, *judged: Judged | list[Judged]):
        """`assemble_batch` here, where the chunks were judged (no new process)."""
        return assemble_batch(pad_id, *judged)

    def judge_chunks(self, weights: list[float], *samples: Samples) -> list[Judged]:
        """Several chunks in one call (the controller's one call per server and batch):
        `samples` is each chunk's trained samples then its opponents, chunk after chunk."""
        per = 1 + len(weights)
        return [
            self.judge_chunk(samples[i], weights, *samples[i + 1 : i + per])
            for i in range(0, len(samples), per)
        ]

    @staticmethod
    def _rows(samples: Samples, g: np.ndarray, opponents: tuple[Samples, ...]):
        import pyarrow as pa

        parts = [rows_table(samples, g, "trained")]
        parts += [rows_table(o, None, "opponent") for o in opponents]
        return pa.concat_tables(parts)


def _cat(parts: list[np.ndarray], dtype=np.int64) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def _empty(dtype):
    return field(default_factory=lambda: np.zeros(0, dtype=dtype))


@dataclass
class BatchInfo:
    """What the driver needs to know about a batch without fetching its tensors."""

    rows: int
    queries: int
    prompt_ids: np.ndarray  # one per prompt, for accounting
    gen_s: float
    judge_s: float
    new_tokens: int  # generated, dropped rows included
    masked_pairs: int = 0  # comparisons masked after the judge's retries
    masked_rows: int = 0  # rows dropped: no valid comparison against some source
    judge_retries: int = 0  # judge calls re-sent after a failure
    # Per response, for the step's logs: the sampled (trained-side) rows, dropped
    # rows included, and every opponent sample judged against.
    lengths: np.ndarray = _empty(np.int64)
    truncated: np.ndarray = _empty(bool)
    opponent_lengths: np.ndarray = _empty(np.int64)
    opponent_truncated: np.ndarray = _empty(bool)


def assemble_batch(pad_id: int | None, *judged: Judged | list[Judged]):
    """Concatenate judged chunks (or lists of them, `judge_chunks`) into (TrainBatch,
    BatchInfo, rollout rows or None), in order (`JudgeActor.assemble` runs it; call
    that with `.options(num_returns=3)`).

    rows counts the rows kept; prompt_ids lists every prompt judged (dropped rows' too).
    """
    chunks = [c for j in judged for c in (j if isinstance(j, list) else [j])]
    batch = to_train_batch(chunks, pad_id=pad_id)
    info = BatchInfo(
        rows=len(batch),
        queries=sum(c.queries for c in chunks),
        prompt_ids=np.concatenate([np.asarray(c.samples.prompt_ids) for c in chunks]),
        gen_s=sum(c.samples.meta.get("gen_s", 0.0) for c in chunks),
        judge_s=sum(c.judge_s for c in chunks),
        new_tokens=int(sum(int(c.samples.lengths.sum()) for c in chunks)),
        masked_pairs=sum(c.masked_pairs for c in chunks),
        masked_rows=sum(c.masked_rows for c in chunks),
        judge_retries=sum(c.judge_retries for c in chunks),
        lengths=_cat([np.asarray(c.samples.lengths) for c in chunks]),
        truncated=_cat([c.samples.truncated_flags() for c in chunks], bool),
        opponent_lengths=_cat([_or_empty(c.opponent_lengths, np.int64) for c in chunks]),
        opponent_truncated=_cat([_or_empty(c.opponent_truncated, bool) for c in chunks], bool),
    )
    tables = [c.rows for c in chunks if c.rows is not None]
    if tables:
        import pyarrow as pa

        return batch, info, pa.concat_tables(tables)
    return batch, info, None


def _or_empty(a: np.ndarray | None, dtype) -> np.ndarray:
    return np.zeros(0, dtype=dtype) if a is None else a
