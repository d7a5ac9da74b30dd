"""Judging a phase's samples: ĝ(y) from pairwise preferences.

For each trained response y_i to prompt x, and each opponent source s of the
phase (weight w_s), the judge compares y_i with the M opponent responses
y''_{s,1..M} drawn for the same prompt from s:

    ĝ(y_i) = Σ_s w_s · (1/M) Σ_m P(y_i ≻ y''_{s,m} | x)          (ALGORITHMS.md)

Opponents are always a separate draw, never the other members of y_i's own
group: with leave-one-out opponents, E[ĝ_i − ĝ_j | y_i, y_j] picks up a
(2P(y_i≻y_j) − 1)/(K−1) term and the regression target is biased. With a
shared opponent set per prompt, E[ĝ_i − ĝ_j | y_i, y_j] = q(y_i) − q(y_j) exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfplay.judges.base import Judge
from selfplay.runtime.train_batch import TrainBatch, build_train_batch, concat_batches
from selfplay.runtime.types import Samples


@dataclass
class Judged:
    """A judged rollout chunk: the samples, ĝ per row, and the query count."""

    samples: Samples
    g: np.ndarray  # [N] float64
    queries: int
    judge_s: float


def estimate_g(judge: Judge, samples: Samples,
               opponents: list[tuple[Samples, float]]) -> tuple[np.ndarray, int]:
    """ĝ [N] for `samples` against each (opponent samples, weight); returns (ĝ, #queries)."""
    n, k = len(samples), samples.k
    g = np.zeros(n, dtype=np.float64)
    queries = 0
    for opp, w in opponents:
        if not np.array_equal(opp.prompt_ids, samples.prompt_ids):
            raise ValueError("opponent samples must answer the same prompts, in order")
        m = opp.k
        # rows (i, j): trained response i against every opponent j of the same prompt
        ii = np.repeat(np.arange(n), m)
        jj = (ii // k) * m + np.tile(np.arange(m), n)
        p = judge.prob([samples.prompt_texts[i // k] for i in ii],
                       [samples.texts[i] for i in ii], [opp.texts[j] for j in jj])
        p = np.asarray(p, dtype=np.float64)
        if p.shape != (len(ii),) or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise ValueError("judge returned preferences outside [0, 1] or of the wrong shape")
        g += float(w) * p.reshape(n, m).mean(axis=1)
        queries += len(ii)
    return g, queries


def to_train_batch(chunks: list[Judged], pad_id: int | None = None) -> TrainBatch:
    """Concatenate judged chunks into one TrainBatch (group ids renumbered disjoint)."""
    batches = []
    for c in chunks:
        s = c.samples
        if s.prompt_tokens is None:
            raise ValueError("Samples.prompt_tokens is missing (set by the rollout worker)")
        batches.append(build_train_batch(s, s.prompt_tokens, c.g, pad_id=pad_id))
    return concat_batches(batches)
