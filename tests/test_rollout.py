"""Rollout backends on tiny models, checked against a plain unpadded forward pass."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from selfplay.errors import InputError
from selfplay.models.load import encode_prompts
from selfplay.models.tiny import EOS_ID, ModelSpec, tiny_vocab
from selfplay.models.weights import flatten_state_dict, load_flat
from selfplay.rollout import make_backend
from selfplay.rollout.base import GenerationBackend, VersionNotLoaded
from selfplay.rollout.hf import HFBackend
from selfplay.types import MixtureVersion, Prompts, Version

MOVES = ("rock", "paper", "scissors")
WORDS = (*MOVES, "choose", "a", "move", "now")
VOCAB = tiny_vocab(ModelSpec(words=WORDS).vocab_words)
MOVE_IDS = [VOCAB.index(m) for m in MOVES]
V0, V1 = Version(0, "main"), Version(1, "main")
# init_std large enough that the two versions' distributions are far from uniform.
SPECS = {
    v: ModelSpec(words=WORDS, hidden=16, layers=2, heads=2, seed=s, init_std=0.3)
    for v, s in ((V0, 0), (V1, 1))
}
PROMPTS = Prompts(ids=np.array([10, 11, 12]), texts=["choose a move", "now", "choose a move now"])


@pytest.fixture(scope="module")
def models():
    return {v: spec.causal_lm() for v, spec in SPECS.items()}


@pytest.fixture(scope="module")
def backend(models):
    be = make_backend("hf", SPECS[V0])
    for v, m in models.items():
        be.load_weights(v, flatten_state_dict(m))
    return be


def oracle_logprobs(model_for, version, prompt_ids, response, temperature, allowed):
    """log π_s of each response token by one unpadded forward per model, no cache."""
    ids = torch.tensor([prompt_ids + response])
    with torch.no_grad():
        if isinstance(version, MixtureVersion):
            la = torch.log_softmax(model_for(version.a)(ids).logits[0].double(), -1)
            lb = torch.log_softmax(model_for(version.b)(ids).logits[0].double(), -1)
            s = (1 - version.lam) * la + version.lam * lb
        else:
            s = torch.log_softmax(model_for(version)(ids).logits[0].double(), -1)
    z = s / temperature
    if allowed is not None:
        keep = torch.zeros(z.shape[-1], dtype=torch.bool)
        keep[allowed] = True
        z = z.masked_fill(~keep, float("-inf"))
    logp = torch.log_softmax(z, -1)
    start = len(prompt_ids) - 1
    return np.array([logp[start + t, tok].item() for t, tok in enumerate(response)])


def check_against_oracle(be, models, samples, version, temperature, allowed):
    prompt_ids = samples.prompt_tokens
    assert prompt_ids == encode_prompts(be.tokenizer, samples.prompt_texts)
    for i in range(len(samples)):
        n = samples.lengths[i]
        resp = samples.tokens[i, :n].tolist()
        want = oracle_logprobs(
            models.__getitem__, version, prompt_ids[i // samples.k], resp, temperature, allowed
        )
        np.testing.assert_allclose(samples.logprobs[i, :n], want, atol=2e-5, rtol=0)


def test_backend_satisfies_protocol(backend):
    assert isinstance(backend, GenerationBackend)
    assert backend.versions() == [V0, V1] and backend.has(V1)


def test_shapes_padding_and_eos(backend):
    allowed = [*MOVE_IDS, EOS_ID]  # eos has mass 1/4-ish, so rows end at different lengths
    s = backend.generate(
        PROMPTS,
        version=V0,
        k=4,
        max_new_tokens=8,
        temperature=1.0,
        seed=0,
        allowed_token_ids=allowed,
    )
    n = 3 * 4
    assert s.tokens.shape == s.logprobs.shape == (n, 8) and s.lengths.shape == (n,)
    assert s.tokens.dtype == np.int64 and s.logprobs.dtype == np.float32
    assert s.k == 4 and len(s.texts) == n and s.version == V0
    assert s.prompt_ids.tolist() == [10, 11, 12] and s.prompt_texts == PROMPTS.texts
    assert s.prompt_tokens == encode_prompts(backend.tokenizer, PROMPTS.texts)
    ended = 0
    for i in range(n):
        L = s.lengths[i]
        real = s.tokens[i, :L].tolist()
        assert EOS_ID not in real[:-1]  # generation stops at the first eos
        ended += real[-1] == EOS_ID
        assert L == 8 or real[-1] == EOS_ID
        assert (s.tokens[i, L:] == s.pad_id).all() and (s.logprobs[i, L:] == 0).all()
        assert (s.logprobs[i, :L] < 0).all()
        assert s.texts[i] == " ".join(VOCAB[t] for t in real if t != EOS_ID)
    assert 0 < ended < n  # both cases happen (fixed seed)


@pytest.mark.parametrize("temperature,allowed", [(1.0, None), (0.7, None), (1.3, MOVE_IDS)])
def test_logprobs_match_plain_forward(backend, models, temperature, allowed):
    s = backend.generate(
        PROMPTS,
        version=V1,
        k=3,
        max_new_tokens=6,
        temperature=temperature,
        seed=1,
        allowed_token_ids=allowed,
    )
    check_against_oracle(backend, models, s, V1, temperature, allowed)
    if allowed is not None:
        assert set(s.tokens.ravel().tolist()) <= set(allowed)


def test_seed_determinism(backend):
    kw = dict(version=V0, k=3, max_new_tokens=6, temperature=1.0)
    a = backend.generate(PROMPTS, seed=5, **kw)
    b = backend.generate(PROMPTS, seed=5, **kw)
    c = backend.generate(PROMPTS, seed=6, **kw)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(a.tokens, c.tokens)


def test_versions_differ_and_are_stamped(backend, models):
    kw = dict(k=2, max_new_tokens=5, temperature=1.0, seed=3)
    s0 = backend.generate(PROMPTS, version=V0, **kw)
    s1 = backend.generate(PROMPTS, version=V1, **kw)
    assert s0.version == V0 and s1.version == V1
    assert not np.array_equal(s0.logprobs, s1.logprobs)
    check_against_oracle(backend, models, s0, V0, 1.0, None)
    check_against_oracle(backend, models, s1, V1, 1.0, None)


def test_cache_has_drop_and_missing_version(models):
    be = HFBackend.from_name(SPECS[V0])
    assert be.versions() == [] and not be.has(V0)
    be.load_weights(V1, flatten_state_dict(models[V1]))
    with pytest.raises(VersionNotLoaded):
        be.generate(PROMPTS, version=V0, k=1, max_new_tokens=1, temperature=1.0, seed=0)
    with pytest.raises(VersionNotLoaded):
        be.generate(
            PROMPTS,
            version=MixtureVersion(V0, V1, 0.5),
            k=1,
            max_new_tokens=1,
            temperature=1.0,
            seed=0,
        )
    be.drop(V1)
    assert be.versions() == []
    with pytest.raises(ValueError, match="do not match"):
        be.load_weights(V0, flatten_state_dict({"x": torch.zeros(2)}))


def test_bad_arguments(backend):
    kw = dict(version=V0, k=1, max_new_tokens=2, temperature=1.0, seed=0)
    for bad in (
        dict(k=0),
        dict(temperature=0.0),
        dict(allowed_token_ids=[]),
        dict(allowed_token_ids=[len(VOCAB)]),
        dict(version=MixtureVersion(V0, V1, 1.5)),
    ):
        with pytest.raises(InputError):
            backend.generate(PROMPTS, **{**kw, **bad})
    with pytest.raises(InputError):
        make_backend("tpu", SPECS[V0])


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_mixture_logprobs_closed_form(backend, models, lam):
    mix = MixtureVersion(V0, V1, lam)
    s = backend.generate(PROMPTS, version=mix, k=2, max_new_tokens=5, temperature=0.8, seed=2)
    assert s.version == mix
    check_against_oracle(backend, models, s, mix, 0.8, None)
    if lam in (0.0, 1.0):  # the ends of the mixture are the versions themselves
        end = backend.generate(
            PROMPTS, version=V0 if lam == 0 else V1, k=2, max_new_tokens=5, temperature=0.8, seed=2
        )
        np.testing.assert_allclose(s.logprobs, end.logprobs, atol=1e-5)


@pytest.mark.parametrize("version", [V0, MixtureVersion(V0, V1, 0.5)], ids=str)
def test_move_frequencies_match_probabilities(backend, models, version):
    n = 6000
    prompt = Prompts(ids=np.array([0]), texts=["choose a move"])
    s = backend.generate(
        prompt,
        version=version,
        k=n,
        max_new_tokens=1,
        temperature=1.0,
        seed=11,
        allowed_token_ids=MOVE_IDS,
    )
    counts = np.array([(s.tokens[:, 0] == m).sum() for m in MOVE_IDS])
    ids = encode_prompts(backend.tokenizer, prompt.texts)[0]
    probs = np.exp(
        [oracle_logprobs(models.__getitem__, version, ids, [m], 1.0, MOVE_IDS)[0] for m in MOVE_IDS]
    )
    assert abs(probs.sum() - 1) < 1e-9 and probs.min() > 0.005 and probs.max() < 0.95
    # p ≥ 1e-7: under a correct sampler the p-value is uniform, so a false failure has
    # probability 1e-7 on any random stream (expected counts ≥ 30: the chi-square
    # tail is accurate there); 1e-3 would fail one machine's stream in 1000.
    assert chisquare(counts, probs * n).pvalue > 1e-7
    # The reported log-prob of each row is the log-probability of its move.
    np.testing.assert_allclose(
        np.exp(s.logprobs[:, 0]), probs[[MOVE_IDS.index(t) for t in s.tokens[:, 0]]], atol=1e-5
    )


def test_vllm_module_imports_without_vllm():
    import selfplay.rollout.vllm as mod  # must not need vllm at import time

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(InputError, match="pip install selfplay\\[vllm\\]"):
            mod.VLLMBackend("tiny:words=a")


def _gpu_vllm() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_vllm(), reason="needs a CUDA GPU and vllm")
def test_vllm_backend_matches_oracle_and_swaps_weights(models):
    be = make_backend("vllm", SPECS[V0], gpu_memory_utilization=0.2, enforce_eager=True)
    for v, m in models.items():
        be.load_weights(v, flatten_state_dict(m))
    for v in (V0, V1, V0):  # swapping in place, and back
        s = be.generate(
            PROMPTS,
            version=v,
            k=2,
            max_new_tokens=4,
            temperature=0.9,
            seed=0,
            allowed_token_ids=MOVE_IDS,
        )
        assert s.version == v and set(s.tokens[:, :4].ravel()) <= set(MOVE_IDS)
        check_against_oracle(be, models, s, v, 0.9, MOVE_IDS)


def test_load_flat_model_matches_backend_version(models):
    # The oracle models and a load_flat copy agree, so the oracle is the published version.
    copy = SPECS[V1].causal_lm()
    load_flat(copy, flatten_state_dict(models[V0]))
    ids = torch.tensor([[2, 5, 9]])
    with torch.no_grad():
        assert torch.equal(copy(ids).logits, models[V0](ids).logits)


def test_tied_embedding_model_generates_from_pushed_weights():
    from selfplay.models.tiny import tiny_causal_lm

    tied = [
        tiny_causal_lm(len(VOCAB), seed=s, hidden=16, layers=1, init_std=0.3, tie_embeddings=True)
        for s in (0, 1)
    ]
    be = HFBackend(tied[0], SPECS[V0].tokenizer())
    be.load_weights(V1, flatten_state_dict(tied[1]))
    s = be.generate(PROMPTS, version=V1, k=2, max_new_tokens=4, temperature=1.0, seed=0)
    check_against_oracle(be, {V1: tied[1]}, s, V1, 1.0, None)
