"""LoRA (`model.lora`): the learner trains an adapter, π_ref is the base with it off.

Oracles: plain forwards of the base model built on its own (π_ref), the closed-form
phase target log π ∝ a·log π_anchor + b·log μ + c·g over the enumerated moves (as in
test_learner), the merged model W + α/r·BA computed by peft's merge (export), and the
rollout worker's own sampler log-probs (versions carry the adapter only).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from test_learner import PHASE, PROMPT, G, move_batch, move_logprobs, one_thread  # noqa: F401

from selfplay.models.lora import LoraSpec, apply_lora, is_base, version_tensors
from selfplay.models.tiny import tiny_causal_lm
from selfplay.runtime.learner.learner import Learner, LearnerSettings

VOCAB = 12
base_fn = functools.partial(
    tiny_causal_lm, VOCAB, seed=0, hidden=16, layers=1, heads=2, init_std=0.3
)


def lora_fn(r: int = 4, targets=("lm_head",)):
    return apply_lora(base_fn(), LoraSpec(r=r, alpha=2.0 * r, target_modules=targets), seed=0)


def make(**cfg) -> Learner:
    cfg = {"lr": 0.03, "grad_clip": None, "updates_per_phase": 2, **cfg}
    learner = Learner(lora_fn, LearnerSettings(**cfg))
    learner.copy_role("ref", "main")  # as the controller does: π_0 is the base
    return learner


def test_ref_is_the_base_with_the_adapter_off():
    learner = make()
    b = move_batch()
    learner.train_phase(PHASE, b)
    ref = learner.policy_logprobs(b.input_ids, b.attention_mask, b.response_mask, role="ref")
    now = learner.policy_logprobs(b.input_ids, b.attention_mask, b.response_mask)
    base = move_logprobs(base_fn()).numpy()
    assert np.allclose(ref[:, len(PROMPT)], base, atol=1e-6)
    # The adapter moved the policy far beyond that tolerance: a reference that kept the
    # adapter switched on would fail the check above.
    assert np.abs(now[:, len(PROMPT)] - base).max() > 1e-2
    assert "ref" in learner.roles
    with pytest.raises(ValueError, match="ref role is the base"):
        learner.copy_role("ref", "main")  # main is no longer the base


def test_the_learner_holds_and_publishes_the_adapter_only():
    learner = make(lr=0.05)
    full = sum(p.numel() for p in base_fn().parameters())
    adapter = sum(p.numel() for p in learner._params)
    assert adapter < full / 10 and all(".lora_" in n for n in learner._names)
    learner.train_phase(PHASE, move_batch())
    flat = learner.publish()
    assert set(flat.names()) == set(learner._names) and flat.nbytes == adapter * 4
    # the published π_ref is a zero adapter: exactly the base
    assert is_base(list(learner.publish("ref").named_tensors()))
    assert not is_base(list(flat.named_tensors()))
    state = learner.state()
    assert len(state.params) == len(learner._names)  # checkpoints hold the adapter
    assert all(t.numel() <= adapter for st in state.optim.values() for t in st.values())


def test_many_updates_reach_the_closed_form_target_through_the_adapter():
    """An adapter on the output layer can represent any change of the move logits, so
    it reaches the phase's closed-form target as full fine-tuning does (test_learner)."""
    phase = dataclasses.replace(PHASE, c=6.0)  # a target far from this peaked base
    learner = make(updates_per_phase=400)
    metrics = learner.train_phase(phase, move_batch())
    base = move_logprobs(base_fn())
    # μ = "ref" is the base here, and so is the anchor π_0 (B₀ = 0).
    target = torch.softmax(phase.a * base + phase.b * base + phase.c * torch.tensor(G), 0)
    trained = lora_fn()
    trained.load_state_dict(learner.publish().to_state_dict(), strict=False)
    got = torch.softmax(move_logprobs(trained), 0)
    assert metrics.loss < 1e-6 < metrics.loss_initial
    assert torch.allclose(got, target, atol=1e-4), (got, target)
    assert (torch.softmax(base, 0) - target).abs().max() > 0.05  # far from the start


def test_resume_of_an_adapter_is_bitwise():
    batch = move_batch()
    learner = make()
    learner.train_phase(PHASE, batch)
    learner.copy_role("magnet", "main")
    saved = learner.state()
    learner.train_phase(PHASE, batch)
    once = learner.publish()
    other = Learner(lora_fn, learner.config)
    other.load_state(saved)
    assert set(other.roles) == {"main", "magnet", "ref"}
    other.train_phase(PHASE, batch)
    assert np.array_equal(once.buffer, other.publish().buffer)
    with pytest.raises(ValueError, match="trainable tensors"):
        Learner(base_fn, learner.config).load_state(saved)  # not a LoRA learner


def test_rollout_worker_samples_the_learners_adapted_policy(tmp_path):
    """The HF backend keeps the base once and runs each version's adapter over it: its
    sampler log-probs equal the learner's log-probs of the same tokens."""
    from selfplay.models.tiny import tiny_tokenizer
    from selfplay.rollout.hf import HFBackend
    from selfplay.runtime.learner.batch import build_train_batch
    from selfplay.types import Prompts, Version

    spec_fn = functools.partial(lora_fn, 2, "all-linear")
    learner = Learner(spec_fn, LearnerSettings(lr=0.05, grad_clip=None))
    learner.train_phase(PHASE, move_batch())
    words = [f"w{i}" for i in range(VOCAB - 7)]  # 4 specials, 3 role tokens, 5 words
    backend = HFBackend(spec_fn(), tiny_tokenizer(words))
    assert set(version_tensors(backend.model)) == set(learner._names)
    v = Version(1, "main")
    backend.load_weights(v, learner.publish())
    prompt_rows = [[2, 5, 4, 6], [2, 6]]
    prompts = Prompts(ids=np.arange(2), texts=["a", "b"], tokens=prompt_rows, rendered=["a", "b"])
    gen = dict(k=3, max_new_tokens=4, temperature=1.0, seed=0, decode=False)
    s = backend.generate(prompts, version=v, **gen)
    b = build_train_batch(s, prompt_rows, np.zeros(len(s.lengths)))
    lp = learner.policy_logprobs(b.input_ids, b.attention_mask, b.response_mask)
    got = lp.sum(1)
    want = np.array([s.logprobs[i, : s.lengths[i]].sum() for i in range(len(s.lengths))])
    assert np.allclose(got, want, atol=1e-4)
    # π_ref's published version (a zero adapter) samples the base
    backend.load_weights(Version(0, "ref"), learner.publish("ref"))
    s0 = backend.generate(prompts, version=Version(0, "ref"), **gen)
    b0 = build_train_batch(s0, prompt_rows, np.zeros(len(s0.lengths)))
    plain = base_fn()
    with torch.no_grad():
        logits = plain(input_ids=torch.tensor(b0.input_ids)).logits.double()
    tok = torch.log_softmax(logits, -1)[:, :-1].gather(-1, torch.tensor(b0.input_ids)[:, 1:, None])
    want0 = (tok[..., 0].numpy() * b0.response_mask[:, 1:]).sum(1)
    got0 = np.array([s0.logprobs[i, : s0.lengths[i]].sum() for i in range(len(s0.lengths))])
    assert np.allclose(got0, want0, atol=1e-4)


def test_an_adapter_dir_without_safetensors_weights_is_refused(tmp_path):
    """One line before anything loads: an adapter dir needs adapter_model.safetensors
    (a pickled adapter_model.bin is never read)."""
    from selfplay.errors import InputError
    from selfplay.models.load import check_safetensors_dir

    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "x"}')
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(InputError, match="no adapter_model.safetensors"):
        check_safetensors_dir(str(tmp_path))
