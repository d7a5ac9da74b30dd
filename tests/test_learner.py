"""The learner in-process (one rank, no Ray): role log-probs, the closed-form
minimiser, bitwise phase restarts, publish round trips.

Oracles: plain HF forwards of independently built models, and the closed form
log π ∝ a·log π_anchor + b·log μ + c·g over an enumerated response space.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from selfplay.algos.losses import phase_loss
from selfplay.algos.plan import Phase
from selfplay.models.tiny import tiny_causal_lm
from selfplay.models.weights import flatten_state_dict, load_flat
from selfplay.runtime.learner.batch import all_pairs, build_train_batch
from selfplay.runtime.learner.learner import Learner, LearnerSettings
from selfplay.types import Samples, Version

VOCAB = 12
MOVES = [8, 9, 10, 11]  # the single-token response space
PROMPT = [2, 5, 4, 6]  # <bos> <user> <system> <assistant>: any fixed prefix works
G = np.array([0.2, 0.55, 0.7, 0.35])

model_fn = functools.partial(
    tiny_causal_lm, VOCAB, seed=0, hidden=16, layers=1, heads=2, init_std=0.3
)
ref_fn = functools.partial(
    tiny_causal_lm, VOCAB, seed=1, hidden=16, layers=1, heads=2, init_std=0.3
)
PHASE = Phase(
    sample="main",
    opponents=(("main", 1.0),),
    anchor="main",
    mu="ref",
    a=0.6,
    b=0.4,
    c=1.5,
    output="main",
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matmuls: intra-op threads only add contention on the 2-core CI box (15x slower).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def move_batch(repeats: int = 1, sampler_logprobs: float | None = None, seed: int = 0):
    """`repeats` prompts, each answered once with every move (all responses enumerated)."""
    rng = np.random.default_rng(seed)
    n = len(MOVES) * repeats
    lp = (
        rng.normal(0, 50, (n, 1)) if sampler_logprobs is None else np.full((n, 1), sampler_logprobs)
    ).astype(np.float32)
    samples = Samples(
        prompt_ids=np.arange(repeats),
        prompt_texts=["p"] * repeats,
        tokens=np.tile(MOVES, repeats)[:, None].astype(np.int64),
        lengths=np.ones(n, dtype=np.int64),
        logprobs=lp,
        texts=[str(m) for m in np.tile(MOVES, repeats)],
        version=Version(0, "main"),
        k=len(MOVES),
    )
    return build_train_batch(samples, [PROMPT] * repeats, np.tile(G, repeats))


def move_logprobs(model: torch.nn.Module) -> torch.Tensor:
    """Plain forward: log π(move | PROMPT) over the full vocabulary, at the 4 moves."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([PROMPT])).logits[0, -1]
    return torch.log_softmax(logits.double(), -1)[MOVES]


def make_learner(**cfg) -> Learner:
    cfg = {"lr": 0.02, "grad_clip": None, "updates_per_phase": 2, **cfg}
    learner = Learner(model_fn, LearnerSettings(**cfg))
    learner.set_role("ref", ref_fn().state_dict())
    return learner


def test_anchor_logprobs_come_from_role_weights_not_sampler():
    batch_a, batch_b = move_batch(sampler_logprobs=0.0), move_batch()
    outs = []
    for batch in (batch_a, batch_b):
        learner = make_learner()
        metrics = learner.train_phase(PHASE, batch)
        outs.append((metrics, learner.publish()))
    assert outs[0][0].loss_initial == outs[1][0].loss_initial
    assert np.array_equal(outs[0][1].buffer, outs[1][1].buffer)
    # Oracle for the first loss: anchor/μ log-probs from plain forwards of fresh models.
    lp0, lp_ref = move_logprobs(model_fn()).float(), move_logprobs(ref_fn()).float()
    expected = phase_loss(
        PHASE,
        "regression",
        lp0,
        lp0,
        lp_ref,
        torch.tensor(G, dtype=torch.float32),
        all_pairs(np.zeros(4)),
    )
    assert outs[0][0].loss_initial == pytest.approx(float(expected), rel=1e-5)


def test_many_updates_reach_closed_form_target():
    learner = make_learner(lr=0.03, updates_per_phase=400)
    metrics = learner.train_phase(PHASE, move_batch())
    target = torch.softmax(
        PHASE.a * move_logprobs(model_fn())
        + PHASE.b * move_logprobs(ref_fn())
        + PHASE.c * torch.tensor(G),
        0,
    )
    trained = model_fn()
    load_flat(trained, learner.publish())
    got = torch.softmax(move_logprobs(trained), 0)
    assert metrics.loss < 1e-6 < metrics.loss_initial
    assert torch.allclose(got, target, atol=1e-4), (got, target)  # observed ~3e-8
    # The target is far from the start: the test would fail without learning.
    assert (torch.softmax(move_logprobs(model_fn()), 0) - target).abs().max() > 0.05
    assert metrics.kl_anchor > 0 and metrics.kl_ref > 0 and metrics.tokens == 4


def test_start_phase_restores_weights_and_optimizer_bitwise():
    learner = make_learner()
    batch = move_batch()
    learner.train_phase(PHASE, batch)  # main now has nonzero AdamW state
    before = learner.state()
    lead = dataclasses.replace(PHASE, output="lead")
    learner.start_phase(lead)
    learner.train_phase(lead, batch)
    first_lead = learner.publish()
    assert not np.array_equal(first_lead.buffer, learner.publish("main").buffer)
    learner.start_phase(lead)  # anchor "main": back to θ_t and its optimizer state
    after = learner.state()
    for x, y in zip(before.params, after.params, strict=True):
        assert torch.equal(x, y)
    assert before.optim.keys() == after.optim.keys() and before.optim
    for i, st in before.optim.items():
        for k, v in st.items():
            assert torch.equal(v, after.optim[i][k]), k
    # A role published in place equals the same weights published from the model.
    assert np.array_equal(learner.publish().buffer, learner.publish("main").buffer)
    learner.train_phase(lead, batch)
    assert np.array_equal(first_lead.buffer, learner.publish().buffer)
    assert np.array_equal(first_lead.buffer, learner.publish("lead").buffer)


def test_state_round_trip_resumes_bitwise():
    batch = move_batch()
    learner = make_learner()
    learner.train_phase(PHASE, batch)
    saved = learner.state()
    learner.train_phase(PHASE, batch)
    once = learner.publish()
    other = Learner(model_fn, learner.config)  # fresh, no roles
    other.load_state(saved)
    assert set(other.roles) == {"main", "ref"}
    other.train_phase(PHASE, batch)
    assert np.array_equal(once.buffer, other.publish().buffer)


def test_publish_and_set_role_round_trip():
    learner = make_learner()
    learner.train_phase(PHASE, move_batch())
    flat = learner.publish()
    fresh = model_fn()
    load_flat(fresh, flat)
    assert all(torch.equal(v, learner.model.state_dict()[k]) for k, v in fresh.state_dict().items())
    learner.set_role("magnet", flat)
    assert np.array_equal(learner.publish("magnet").buffer, flat.buffer)
    # policy_logprobs under a role equals a plain forward of that role's weights.
    b = move_batch()
    got = learner.policy_logprobs(b.input_ids, b.attention_mask, b.response_mask, role="ref")
    assert np.allclose(got[:, len(PROMPT)], move_logprobs(ref_fn()).numpy(), atol=1e-5)
    assert np.array_equal(got[:, : len(PROMPT)], np.zeros((4, len(PROMPT))))
    ref_flat = flatten_state_dict(ref_fn())
    learner.set_role("prev", ref_flat)
    assert np.array_equal(learner.publish("prev").buffer, ref_flat.buffer)


def test_learner_errors():
    learner = make_learner()
    with pytest.raises(KeyError, match="no role 'magnet'"):
        learner.start_phase("magnet")
    single = move_batch()
    single.group[:] = np.arange(4)  # one response per prompt: nothing to compare
    with pytest.raises(ValueError, match="no pairs"):
        learner.train_phase(PHASE, single)
    with pytest.raises(ValueError, match="lack parameters"):
        learner.set_role("ref", {})
    with pytest.raises(ValueError, match=r"loss form must be one of \('regression', 'ipo'\)"):
        LearnerSettings(loss="pg")  # tabular-only: the runtime ships no sampler log-probs


def restricted_seq_logprobs(model: torch.nn.Module, seqs: list[tuple[int, ...]]) -> torch.Tensor:
    """Plain forwards: Σ_t log softmax_{MOVES}(logits | PROMPT, s_<t)(s_t) per sequence."""
    out = []
    with torch.no_grad():
        for s in seqs:
            logits = model(input_ids=torch.tensor([PROMPT + list(s)])).logits[0].double()
            lp = 0.0
            for t, tok in enumerate(s):
                row = torch.log_softmax(logits[len(PROMPT) - 1 + t, MOVES], -1)
                lp += row[MOVES.index(tok)]
            out.append(lp)
    return torch.stack(out)


def test_two_token_responses_train_onto_the_restricted_target():
    # All 16 two-move sequences, once each: the minimiser of the regression loss is the
    # closed form on the *restricted* sequence log-probs (the sampler's distribution).
    # With the unrestricted LM the prefix-dependent normaliser would shift the fit.
    seqs = [(a, b) for a in MOVES for b in MOVES]
    g = np.random.default_rng(1).uniform(0, 1, len(seqs))
    samples = Samples(
        prompt_ids=np.arange(1),
        prompt_texts=["p"],
        tokens=np.array(seqs, dtype=np.int64),
        lengths=np.full(len(seqs), 2, dtype=np.int64),
        logprobs=np.zeros((len(seqs), 2), dtype=np.float32),
        texts=[str(s) for s in seqs],
        version=Version(0, "main"),
        k=len(seqs),
    )
    batch = build_train_batch(samples, [PROMPT], g)
    learner = make_learner(lr=0.01, updates_per_phase=600, allowed_token_ids=tuple(MOVES))
    metrics = learner.train_phase(PHASE, batch)
    lp0, lp_ref = restricted_seq_logprobs(model_fn(), seqs), restricted_seq_logprobs(ref_fn(), seqs)
    target = torch.softmax(PHASE.a * lp0 + PHASE.b * lp_ref + PHASE.c * torch.tensor(g), 0)
    trained = model_fn()
    load_flat(trained, learner.publish())
    got = restricted_seq_logprobs(trained, seqs).exp()
    assert got.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert metrics.loss < 1e-5 < metrics.loss_initial
    assert torch.allclose(got, target, atol=1e-5), (got, target)  # observed ~6e-8
    assert (lp0.exp() - target).abs().max() > 0.05  # far from the start
    # the learner's own enumerated log-probs are the oracle's
    ids = np.array([PROMPT + list(s) for s in seqs])
    resp = np.zeros(ids.shape, dtype=np.float32)
    resp[:, -2:] = 1
    mine = learner.policy_logprobs(ids, np.ones_like(ids), resp).sum(1)
    np.testing.assert_allclose(np.exp(mine), got.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        make_learner(allowed_token_ids=(3, VOCAB))


def _held_bytes(learner: Learner) -> int:
    """Bytes of every distinct storage the learner holds: the model's parameters and
    gradients, AdamW state, and every stored role's weights and optimizer state."""
    seen: dict[int, int] = {}

    def add(t):
        if torch.is_tensor(t) and t.numel():
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()

    for p in learner.model.parameters():
        add(p)
        add(p.grad)
    for st in learner.opt.state.values():
        for v in st.values():
            add(v)
    for r in learner._roles.values():
        for t in r.params:
            add(t)
        for st in (r.optim or {}).values():
            for v in st.values():
                add(v)
    return sum(seen.values())


def test_mpo_step_holds_each_tensor_once():
    """MPO's roles (main trained in place, magnet and ref frozen) between steps: the
    weights, AdamW's two moments and one copy per frozen role, 5 × the weights (plus
    AdamW's step counters); gradients are not held between phases. A copy of the live
    role for two roles at once is made once."""
    learner = Learner(model_fn, LearnerSettings(lr=0.02, grad_clip=None))
    w = sum(p.numel() * p.element_size() for p in learner.model.parameters())
    learner.copy_role("magnet", "main")
    learner.copy_role("ref", "main")  # π_ref = π_0 = the magnet at the start
    assert _held_bytes(learner) == 2 * w
    phase = dataclasses.replace(PHASE, mu="magnet")
    for _ in range(2):
        learner.start_phase(phase)
        learner.train_phase(phase, move_batch())
        learner.copy_role("magnet", "main")  # the refresh
        steps = 4 * len(learner.opt.state)  # AdamW's 0-d float32 `step` per parameter
        assert _held_bytes(learner) == 5 * w + steps
    assert set(learner.roles) == {"main", "magnet", "ref"}


def test_the_anchor_held_by_the_model_costs_no_forward():
    """After `start_phase` the model is the anchor: its log-probs are the first update's
    forward, detached. The same phase with the anchor in a separate role (same weights,
    scored by its own forward) reaches the same weights; the held one saves exactly that
    one forward pass."""
    phase = dataclasses.replace(PHASE, anchor="anc")
    runs = {}
    for held in (True, False):
        learner = make_learner()
        learner.copy_role("anc", "main")
        if held:
            learner.start_phase(phase)  # loads "anc": the model holds the anchor
        calls = []
        hook = learner.model.register_forward_hook(lambda *a, c=calls: c.append(1))
        metrics = learner.train_phase(phase, move_batch())
        hook.remove()
        trained = model_fn()
        load_flat(trained, learner.publish())
        runs[held] = (len(calls), move_logprobs(trained), metrics.loss_initial)
    # 2 updates + μ (π_ref here) + after the updates, and the anchor's when not held
    assert runs[True][0] == 4 and runs[False][0] == 5, runs
    assert torch.allclose(runs[True][1], runs[False][1], rtol=0, atol=1e-6), runs
    assert not torch.allclose(runs[True][1], move_logprobs(model_fn()), atol=1e-3)  # it moved
    assert runs[True][2] == pytest.approx(runs[False][2], rel=1e-6)


def test_activation_checkpointing_takes_the_same_step():
    """Recomputing each block's forward in the backward pass changes memory, not the
    update: the weights after two phases match those of a plain learner."""
    batch = move_batch(repeats=2)
    plain, ckpt = make_learner(), make_learner(checkpoint_activations=True)
    for learner in (plain, ckpt):
        learner.train_phase(PHASE, batch)
        learner.train_phase(PHASE, batch)
    a, b = plain.publish().to_state_dict(), ckpt.publish().to_state_dict()
    assert max((a[k] - model_fn().state_dict()[k]).abs().max() for k in a) > 1e-2  # moved
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_warmup_scales_the_first_updates():
    """AdamW's first update moves every weight with a gradient by lr·ĝ/√(ĝ²) = lr (bias
    corrected, eps aside); with warmup_updates=4 the first update is lr/4, and the schedule
    is read from AdamW's step count, so a second phase continues it (2/4)."""
    start = model_fn().state_dict()
    moved = []
    for warmup in (0, 4):
        learner = make_learner(lr=0.02, updates_per_phase=1, warmup_updates=warmup)
        learner.train_phase(PHASE, move_batch())
        w = learner.publish().to_state_dict()
        moved.append(max((w[k] - start[k]).abs().max().item() for k in w))
        assert learner.opt.param_groups[0]["lr"] == pytest.approx(0.02 / 4 if warmup else 0.02)
        learner.train_phase(PHASE, move_batch())
        assert learner.opt.param_groups[0]["lr"] == pytest.approx(0.02 * 2 / 4 if warmup else 0.02)
    assert moved[0] == pytest.approx(0.02, rel=1e-3)
    assert moved[1] == pytest.approx(0.02 / 4, rel=1e-3)
