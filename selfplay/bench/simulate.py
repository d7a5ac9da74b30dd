"""Simulated stages for the orchestration benchmarks (`selfplay bench pipeline --simulate`,
`selfplay bench scale`).

The rollout, judge and learner actors are the real ones (`RolloutActor`,
`JudgeActor`, `LearnerActor`), driven by the real controller, policy store, object
refs, versions and staleness rules; only the plain classes inside them are replaced
by ones that do no compute and sleep:

- `SimBackend` (a `GenerationBackend`): sleeps `seconds_per_row` per response it
  draws and returns one-token responses; it refuses a version it does not hold,
  like the real backends;
- `SimJudge` (a `Judge`): sleeps `seconds_per_pair` per comparison, returns ½;
- `SimLearner` (the learner's interface): sleeps `seconds_per_row` per trained row
  and publishes a `FlatWeights` of `nbytes` zero bytes.

Stage times are given per step-sized batch on one actor (`Stages`):
`gen=S` is one rollout worker's time to draw a whole step's responses (P prompts ×
(K trained + M opponents per source)); `judge=S` is one preference server's time to
judge a whole step (P·K·M comparisons per source); `learn=S` is the learner's time
to train on a step's P·K rows. Each call sleeps in proportion to its share, so W
workers take `gen/W` per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from selfplay.errors import InputError
from selfplay.types import Prompts, Samples, Version

VOCAB = 8  # one-token responses drawn from ids 3..VOCAB-1


@dataclass(frozen=True)
class Stages:
    """Seconds per step-sized batch on one actor (module docstring)."""

    gen: float
    judge: float
    learn: float

    @classmethod
    def parse(cls, text: str) -> Stages:
        """`gen=S,judge=S,learn=S` (all three, seconds >= 0)."""
        vals: dict[str, float] = {}
        for part in text.split(","):
            key, sep, val = part.partition("=")
            try:
                vals[key.strip()] = float(val) if sep else float("nan")
            except ValueError:
                vals[key.strip()] = float("nan")
        if set(vals) != {"gen", "judge", "learn"} or not all(
            np.isfinite(v) and v >= 0 for v in vals.values()
        ):
            raise InputError(
                f"--simulate must be gen=S,judge=S,learn=S with seconds >= 0, got {text!r}"
            )
        return cls(**vals)


class SimBackend:
    """A generation backend that sleeps `seconds_per_row` per response."""

    def __init__(self, seconds_per_row: float, texts: bool = True) -> None:
        self.seconds_per_row = seconds_per_row
        self.texts = texts
        self._held: set[Version] = set()

    def load_weights(self, version: Version, flat) -> None:
        self._held.add(version)

    def has(self, version: Version) -> bool:
        return version in self._held

    def versions(self) -> list[Version]:
        return sorted(self._held)

    def drop(self, version: Version) -> None:
        self._held.discard(version)

    def generate(self, prompts: Prompts, *, version, k: int, seed: int, **_) -> Samples:
        from selfplay.rollout.base import VersionNotLoaded

        missing = [v for v in version.parts if v not in self._held]
        if missing:
            raise VersionNotLoaded(f"{missing[0]} is not loaded")
        t0 = time.perf_counter()
        n = len(prompts) * k
        time.sleep(self.seconds_per_row * n)
        tok = np.random.default_rng(seed).integers(3, VOCAB, size=(n, 1), dtype=np.int64)
        return Samples(
            prompt_ids=np.asarray(prompts.ids, dtype=np.int64),
            prompt_texts=list(prompts.texts),
            tokens=tok,
            lengths=np.ones(n, dtype=np.int64),
            logprobs=np.full((n, 1), -1.0, dtype=np.float32),
            texts=[f"w{int(t)}" for t in tok[:, 0]] if self.texts else None,
            version=version,
            k=k,
            meta={"gen_s": time.perf_counter() - t0},
            prompt_tokens=[list(p) for p in prompts.tokens],
            truncated=np.zeros(n, dtype=bool),
        )


class SimJudge:
    """A judge that sleeps `seconds_per_pair` per comparison and answers ½."""

    def __init__(self, seconds_per_pair: float) -> None:
        self.seconds_per_pair = seconds_per_pair

    def prob(self, prompts, a, b) -> np.ndarray:
        time.sleep(self.seconds_per_pair * len(a))
        return np.full(len(a), 0.5)


class SimLearner:
    """The learner's interface (`Learner`), sleeping `seconds_per_row` per trained row."""

    def __init__(
        self,
        model_fn,
        config,
        *,
        rank: int = 0,
        world_size: int = 1,
        init_method=None,
        backend=None,
        device=None,
        seconds_per_row: float = 0.0,
        nbytes: int = 1 << 20,
    ) -> None:
        self.ctx = SimpleNamespace(rank=rank, world=world_size)
        self.seconds_per_row = seconds_per_row
        self.nbytes = nbytes
        self.busy_s = 0.0

    def set_role(self, role, weights) -> None: ...

    def snapshot(self, role) -> None: ...

    def copy_role(self, dst, src) -> None: ...

    def start_phase(self, phase) -> None: ...

    def train_phase(self, phase, batch):
        from selfplay.runtime.learner.settings import PhaseMetrics

        t = self.seconds_per_row * len(batch)
        time.sleep(t)
        self.busy_s += t
        return PhaseMetrics(0.0, 0.0, 0.0, 0.0, float("nan"), len(batch), len(batch), 0, 1)

    def publish(self, role=None):
        from selfplay.models.weights import FlatWeights

        if self.ctx.rank != 0:
            return None
        return FlatWeights(np.zeros(self.nbytes, dtype=np.uint8), ())

    def close(self) -> None: ...


def prompts(count: int, start_id: int) -> Prompts:
    """`count` prompts from id `start_id`, two tokens each."""
    ids = np.arange(start_id, start_id + count, dtype=np.int64)
    return Prompts(ids=ids, texts=[f"p{i}" for i in ids], tokens=[[1, 2]] * count)


def _sim_backend(seconds_per_row: float, texts: bool) -> SimBackend:
    return SimBackend(seconds_per_row, texts)


def _sim_judge(seconds_per_pair: float) -> SimJudge:
    return SimJudge(seconds_per_pair)
