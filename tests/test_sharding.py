"""Sharded learners: 1 shard and 2 shards take the same step (DDP and FSDP2, gloo on CPU).

The oracle for the 2-rank Ray `LearnerGroup` is the in-process 1-rank `Learner`
on the whole batch; the oracle for the batch helpers is a plain Python loop.
"""

from __future__ import annotations

import functools
import itertools
import sys

import numpy as np
import pytest
import ray
import torch

from selfplay.algos.plan import Phase
from selfplay.models.tiny import tiny_causal_lm
from selfplay.runtime.learner.batch import all_pairs, build_train_batch, shard, shard_rows
from selfplay.runtime.learner.group import LearnerGroup
from selfplay.runtime.learner.learner import Learner, LearnerSettings
from selfplay.types import Samples, Version

VOCAB = 14


def _model64(seed: int) -> torch.nn.Module:
    """The tiny LM in float64: see test_two_shards_match_one for why."""
    return tiny_causal_lm(VOCAB, seed=seed, hidden=16, layers=2, heads=2, init_std=0.2).double()


# The learner actors cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _lora64(seed: int) -> torch.nn.Module:
    """The same LM under a LoRA adapter on every linear layer (only the adapter trains)."""
    from selfplay.models.lora import LoraSpec, apply_lora

    return apply_lora(_model64(seed), LoraSpec(r=2, alpha=4.0), seed=0).double()


model_fn = functools.partial(_model64, 3)
lora_fn = functools.partial(_lora64, 3)
ref_fn = functools.partial(_model64, 4)
PHASE = Phase(
    sample="main",
    opponents=(("main", 1.0),),
    anchor="main",
    mu="ref",
    a=0.7,
    b=0.3,
    c=2.0,
    output="main",
)
CONFIG = dict(lr=0.02, grad_clip=1.0, weight_decay=0.01)


def ragged_batch(group_sizes: list[int], seed: int = 0):
    """Groups of uneven size; prompts and responses of varying length (1..3 tokens)."""
    rng = np.random.default_rng(seed)
    parts, prompts = [], []
    for i, k in enumerate(group_sizes):
        lengths = rng.integers(1, 4, size=k)
        tokens = np.zeros((k, 3), dtype=np.int64)
        for r, n in enumerate(lengths):
            tokens[r, :n] = rng.integers(7, VOCAB, size=n)
        parts.append(
            Samples(
                prompt_ids=np.array([i]),
                prompt_texts=["p"],
                tokens=tokens,
                lengths=lengths,
                logprobs=np.zeros((k, 3), np.float32),
                texts=[""] * k,
                version=Version(0, "main"),
                k=k,
            )
        )
        prompts.append([2, *rng.integers(4, 7, size=int(rng.integers(1, 4)))])
    from selfplay.runtime.learner.batch import concat_batches

    return concat_batches(
        [
            build_train_batch(s, [p], rng.uniform(0, 1, len(s)))
            for s, p in zip(parts, prompts, strict=True)
        ]
    )


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


LEAD = Phase(
    sample="main",
    opponents=(("main", 1.0),),
    anchor="main",
    mu="ref",
    a=0.7,
    b=0.3,
    c=2.0,
    output="lead",
)


def two_phase_step(learner, batches):
    """Nash-MP-shaped step: lead phase, restore θ_t, update phase; returns metrics + weights."""
    learner.start_phase(LEAD)
    m_lead = learner.train_phase(LEAD, batches[0])
    learner.start_phase(PHASE)
    m_main = learner.train_phase(PHASE, batches[1])
    b = batches[0]
    lp = learner.policy_logprobs(b.input_ids, b.attention_mask, b.response_mask, role="lead")
    return (m_lead, m_main), lp, learner.publish("lead"), learner.publish()


# Why float64 and this tolerance. One shard and two sum the same per-pair gradients in a
# different order (and FSDP2 reduce-scatters). In float32 the summed gradient then
# differs by ~K·2⁻²⁴ relative to Σ|terms| (K terms), and AdamW's first steps are
# lr·m/(√v + eps) ≈ lr·sign(g) per weight, so wherever the terms of g nearly cancel
# the reorder error is amplified up to lr (0.02) itself: measured 1e-6 on one x86 CPU,
# under 1e-6 on another (the BLAS kernels differ). In float64 the same amplification
# of a 2⁻⁵³ relative error stays below 1e-12 unless the terms cancel to 1 part in 1e4
# after the first step; measured max |Δw| 2.5e-16 over 3 + 3 updates. A real bug (a
# missing all-reduce, a dropped group, a wrong pair count) moves weights by ~1e-3.
ATOL = 1e-10


@pytest.mark.ray
@pytest.mark.parametrize(
    "strategy, lora", [("ddp", False), ("fsdp2", False), ("ddp", True), ("fsdp2", True)]
)
def test_two_shards_match_one(ray_cluster, strategy, lora):
    # Phase 1: uneven groups, so the shards differ in rows, pairs and micro-batch count
    # (rank 0: [5], [2, 3]; rank 1: [4], [2], [6]). Phase 2: ONE group, so rank 0 is
    # empty and only joins the collectives.
    batches = (ragged_batch([5, 2, 3, 4, 2, 6]), ragged_batch([4], seed=1))
    settings = LearnerSettings(
        strategy=strategy,
        updates_per_phase=3,
        micro_batch=5,
        normalize_logprobs=strategy == "fsdp2",
        **CONFIG,
    )
    rows = [len(shard(batches[0], r, 2)) for r in range(2)]
    assert rows == [10, 12] and len(shard(batches[1], 0, 2)) == 0
    torch.set_num_threads(1)
    build = lora_fn if lora else model_fn  # under LoRA, μ = "ref" is the base itself
    learner = Learner(build, settings)
    if not lora:
        learner.set_role("ref", ref_fn().state_dict())
    want_metrics, want_lp, *want = two_phase_step(learner, batches)
    group = LearnerGroup(build, settings, 2, num_cpus=1)
    try:
        if not lora:
            group.set_role("ref", ray.put(ref_fn().state_dict()))
        got_metrics, got_lp, *refs = two_phase_step(group, batches)
        got = [ray.get(r) for r in refs]
    finally:
        group.shutdown()
    assert np.allclose(got_lp, want_lp, atol=1e-5, rtol=0)
    start = build().state_dict()
    for flat_got, flat_want in zip(got, want, strict=True):
        g, w = flat_got.to_state_dict(), flat_want.to_state_dict()
        assert set(g) == set(w)
        assert not lora or all(".lora_" in k for k in w)  # versions carry the adapter
        for k in w:
            assert g[k].dtype == torch.float64
            assert torch.allclose(g[k], w[k], atol=ATOL, rtol=0), k
        assert max((w[k] - start[k]).abs().max().item() for k in w) > 1e-2  # moved >> tol
    for gm, wm, batch in zip(got_metrics, want_metrics, batches, strict=True):
        assert gm.pairs == wm.pairs == batch.num_pairs
        assert gm.tokens == wm.tokens == int(batch.response_mask.sum())
        for field in ("loss", "loss_initial", "grad_norm", "kl_anchor", "kl_ref"):
            assert getattr(gm, field) == pytest.approx(getattr(wm, field), rel=1e-9), field


def test_all_pairs_matches_loop():
    group = np.array([3, 1, 3, 3, 7, 1, 5])
    want = [(i, j) for i, j in itertools.combinations(range(len(group)), 2) if group[i] == group[j]]
    assert all_pairs(group).tolist() == [list(p) for p in want]
    assert all_pairs(np.array([0, 1, 2])).shape == (0, 2)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_splits_whole_groups(world):
    batch = ragged_batch([5, 2, 3, 4, 2, 6, 1])
    parts = [shard_rows(batch.group, r, world) for r in range(world)]
    rows = np.concatenate(parts)
    assert sorted(rows.tolist()) == list(range(len(batch)))
    owners = [{int(g) for g in batch.group[p]} for p in parts]
    for a, b in itertools.combinations(owners, 2):
        assert not a & b  # no group (hence no pair) crosses shards
    assert sum(shard(batch, r, world).num_pairs for r in range(world)) == batch.num_pairs


def test_build_train_batch_layout():
    s = Samples(
        prompt_ids=np.array([10, 11]),
        prompt_texts=["a", "b"],
        tokens=np.array([[7, 8], [9, 0], [7, 0], [8, 9]]),
        lengths=np.array([2, 1, 1, 2]),
        logprobs=np.array([[-1, -2], [-3, 0], [-4, 0], [-5, -6]], np.float32),
        texts=[""] * 4,
        version=Version(2, "lead"),
        k=2,
    )
    b = build_train_batch(s, [[2, 5], [2, 4, 6]], np.array([0.1, 0.2, 0.3, 0.4]))
    assert b.input_ids.tolist() == [
        [2, 5, 7, 8, 0],
        [2, 5, 9, 0, 0],
        [2, 4, 6, 7, 0],
        [2, 4, 6, 8, 9],
    ]
    assert b.attention_mask.tolist() == [
        [1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ]
    assert b.response_mask.tolist() == [
        [0, 0, 1, 1, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    assert b.group.tolist() == [0, 0, 1, 1] and b.prompt_ids.tolist() == [10, 10, 11, 11]
    assert b.versions == (Version(2, "lead"),) * 4 and b.num_pairs == 2
