"""What one learner step consumes: `TrainBatch`, its builder, sharding and pairs.

Layout. Row i is `prompt tokens ++ response tokens ++ padding`, RIGHT-padded to
a common length L. Right padding keeps every real token at its natural position
0..len−1, so an HF causal LM needs no `position_ids` (left padding would shift
positions unless they are rebuilt from the mask). Under causal attention the
trailing padding cannot influence real tokens.

`response_mask[i, j] = 1` marks the response tokens whose log-probability
counts: log π(input_ids[i, j] | input_ids[i, :j]) is read from the logits at
position j−1, so `response_mask[:, 0]` must be 0 (every prompt has ≥ 1 token).

Target regression only identifies log-prob *differences between responses to
the same prompt* (docs/algorithms.md), so the loss is over pairs (i, j), i < j, in
the same `group`. Sharding therefore splits by whole groups: no pair crosses a
shard, and the sum of the per-shard pair losses is the full-batch pair loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from selfplay.types import SamplerVersion, Samples


@dataclass
class TrainBatch:
    """One learner batch, all numpy; N rows, L = max prompt+response length.

    input_ids:        [N, L] int64, prompt ++ response ++ pad (right-padded).
    attention_mask:   [N, L] int64, 1 on prompt and response tokens.
    response_mask:    [N, L] float32, 1 on response tokens whose log-prob counts.
    g:                [N] float64, ĝ(y) = Σ_k w_k P(y ≻ opponent_k), already combined.
    group:            [N] int64, rows answering the same prompt share a group id.
    prompt_ids:       [N] int64, dataset prompt id of each row.
    versions:         per-row sampler version (staleness accounting).

    The sampler's own log-probs are not shipped: the learner's targets come from its
    roles' weights, never from the sampler (target regression is unbiased under any
    full-support behaviour policy; the pg form, which would need them, is tabular-only).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray
    g: np.ndarray
    group: np.ndarray
    prompt_ids: np.ndarray
    versions: tuple[SamplerVersion, ...]

    def __post_init__(self) -> None:
        n = self.input_ids.shape[0]
        for name in ("attention_mask", "response_mask"):
            if getattr(self, name).shape != self.input_ids.shape:
                raise ValueError(
                    f"TrainBatch.{name} shape {getattr(self, name).shape} "
                    f"!= input_ids shape {self.input_ids.shape}"
                )
        for name in ("g", "group", "prompt_ids"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"TrainBatch.{name} must have shape ({n},)")
        if len(self.versions) != n:
            raise ValueError(f"TrainBatch.versions has {len(self.versions)} entries, expected {n}")
        if n and self.response_mask[:, 0].any():
            raise ValueError("TrainBatch.response_mask[:, 0] must be 0 (a prompt needs >= 1 token)")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_pairs(self) -> int:
        _, counts = np.unique(self.group, return_counts=True)
        return int((counts * (counts - 1) // 2).sum())

    def take(self, rows: np.ndarray) -> TrainBatch:
        """The sub-batch of `rows` (in that order), trimmed to its own max length."""
        rows = np.asarray(rows, dtype=np.int64)
        width = int(self.attention_mask[rows].sum(axis=1).max()) if len(rows) else 1
        return TrainBatch(
            input_ids=self.input_ids[rows, :width],
            attention_mask=self.attention_mask[rows, :width],
            response_mask=self.response_mask[rows, :width],
            g=self.g[rows],
            group=self.group[rows],
            prompt_ids=self.prompt_ids[rows],
            versions=tuple(self.versions[int(i)] for i in rows),
        )


def build_train_batch(
    samples: Samples,
    prompt_token_ids: Sequence[Sequence[int]],
    g: np.ndarray,
    *,
    pad_id: int | None = None,
    group_offset: int = 0,
) -> TrainBatch:
    """Join prompts and responses into a right-padded TrainBatch.

    samples:          K responses per prompt, prompt-major (row i answers prompt i // K).
    prompt_token_ids: one token-id list per prompt (len = N / K), as the sampler saw it.
    g:                [N] ĝ per response.
    group ids are `group_offset + i // K` (pass an offset to keep them unique
    when several batches are concatenated).
    """
    n, k = len(samples), samples.k
    if k < 1 or n % k:
        raise ValueError(f"Samples has {n} rows, not a multiple of k={k}")
    if len(prompt_token_ids) != n // k:
        raise ValueError(f"expected {n // k} prompt token lists, got {len(prompt_token_ids)}")
    g = np.asarray(g, dtype=np.float64)
    if g.shape != (n,):
        raise ValueError(f"g must have shape ({n},), got {g.shape}")
    pad = samples.pad_id if pad_id is None else pad_id
    prompts = [np.asarray(p, dtype=np.int64) for p in prompt_token_ids]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. <bos>)")
    lengths = np.asarray(samples.lengths, dtype=np.int64)
    width = max(len(prompts[i // k]) + int(lengths[i]) for i in range(n)) if n else 1
    ids = np.full((n, width), pad, dtype=np.int64)
    attn = np.zeros((n, width), dtype=np.int64)
    resp = np.zeros((n, width), dtype=np.float32)
    for i in range(n):
        p, r = prompts[i // k], int(lengths[i])
        ids[i, : len(p)] = p
        ids[i, len(p) : len(p) + r] = samples.tokens[i, :r]
        attn[i, : len(p) + r] = 1
        resp[i, len(p) : len(p) + r] = 1.0
    return TrainBatch(
        input_ids=ids,
        attention_mask=attn,
        response_mask=resp,
        g=g,
        group=group_offset + np.arange(n, dtype=np.int64) // k,
        prompt_ids=np.repeat(np.asarray(samples.prompt_ids, dtype=np.int64), k),
        versions=(samples.version,) * n,
    )


def concat_batches(batches: Sequence[TrainBatch]) -> TrainBatch:
    """Stack batches (re-padding to a common length); group ids are renumbered to stay disjoint."""
    if not batches:
        raise ValueError("concat_batches needs at least one batch")
    width = max(b.input_ids.shape[1] for b in batches)

    def pad(a: np.ndarray, value) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=value)

    groups, offset = [], 0
    for b in batches:
        _, inv = np.unique(b.group, return_inverse=True)
        groups.append(offset + inv.astype(np.int64))
        offset += int(inv.max()) + 1 if len(b) else 0
    return TrainBatch(
        # Pad value is irrelevant: right padding sits after every real token (causal mask).
        input_ids=np.concatenate([pad(b.input_ids, 0) for b in batches]),
        attention_mask=np.concatenate([pad(b.attention_mask, 0) for b in batches]),
        response_mask=np.concatenate([pad(b.response_mask, 0) for b in batches]),
        g=np.concatenate([b.g for b in batches]),
        group=np.concatenate(groups),
        prompt_ids=np.concatenate([b.prompt_ids for b in batches]),
        versions=tuple(v for b in batches for v in b.versions),
    )


def shard_rows(group: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Row indices of shard `rank`: whole groups, contiguous in sorted group order.

    Groups are cut where the running row count crosses r·N/world, so shards hold
    about N/world rows each; a shard may be empty when there are fewer groups
    than ranks (the learner still joins every collective).
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for world size {world}")
    order = np.argsort(group, kind="stable")
    _, starts, counts = np.unique(group[order], return_index=True, return_counts=True)
    ends = np.cumsum(counts)
    # Shard of a group: by where its midpoint falls among the N/world slices.
    mid = (ends - counts / 2.0) * world / max(len(group), 1)
    owner = np.minimum(mid.astype(np.int64), world - 1)
    mine = [order[s : s + c] for s, c, o in zip(starts, counts, owner, strict=True) if o == rank]
    return np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)


def shard(batch: TrainBatch, rank: int, world: int) -> TrainBatch:
    """Shard `rank` of `world` of the batch, split by whole groups (see `shard_rows`)."""
    if world == 1:
        return batch
    return batch.take(shard_rows(batch.group, rank, world))


def all_pairs(group: np.ndarray | torch.Tensor) -> torch.Tensor:
    """All (i, j), i < j, with group[i] == group[j]: LongTensor [M, 2], sorted by (i, j)."""
    g = torch.as_tensor(np.asarray(group), dtype=torch.int64)
    n = g.numel()
    if n < 2:
        return torch.zeros((0, 2), dtype=torch.int64)
    out = []
    for gid in torch.unique(g):
        idx = torch.nonzero(g == gid, as_tuple=False).flatten()
        if idx.numel() > 1:
            tri = torch.triu_indices(idx.numel(), idx.numel(), offset=1)
            out.append(torch.stack([idx[tri[0]], idx[tri[1]]], dim=1))
    if not out:
        return torch.zeros((0, 2), dtype=torch.int64)
    pairs = torch.cat(out)
    key = pairs[:, 0] * n + pairs[:, 1]
    return pairs[torch.argsort(key)]


@dataclass
class Micro:
    """A micro-batch on the learner's device: whole groups, with their pairs."""

    input_ids: torch.Tensor  # [n, L]
    attention_mask: torch.Tensor  # [n, L]
    target_mask: torch.Tensor  # [n, L-1]: response_mask shifted to the predicted positions
    g: torch.Tensor  # [n]
    pairs: torch.Tensor  # [m, 2] local row indices


def micro_batches(batch: TrainBatch, micro_batch: int, device) -> list[Micro]:
    """Whole groups packed into micro-batches of at most `micro_batch` rows
    (a larger group goes alone), in sorted group order."""
    order = np.argsort(batch.group, kind="stable")
    _, starts, counts = np.unique(batch.group[order], return_index=True, return_counts=True)
    chunks: list[list[int]] = []
    for s, c in zip(starts, counts, strict=True):
        rows = order[s : s + c].tolist()
        if chunks and len(chunks[-1]) + c <= micro_batch:
            chunks[-1].extend(rows)
        else:
            chunks.append(rows)
    return [to_micro(batch.take(np.asarray(rows)), device) for rows in chunks]


def to_micro(b: TrainBatch, dev) -> Micro:
    resp = torch.as_tensor(b.response_mask, dtype=torch.float32, device=dev)
    return Micro(
        input_ids=torch.as_tensor(b.input_ids, dtype=torch.int64, device=dev),
        attention_mask=torch.as_tensor(b.attention_mask, dtype=torch.int64, device=dev),
        target_mask=resp[:, 1:],
        g=torch.as_tensor(b.g, dtype=torch.float32, device=dev),
        pairs=all_pairs(b.group).to(dev),
    )
