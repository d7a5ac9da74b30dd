"""Generation settings in the hf backend: temperature, top-k, top-p, stop strings, EOS
and truncation, checked against independent oracles.

Oracles: the model's logits from one plain unpadded forward pass (no KV cache), cut
by hand in float64 numpy (a sort and a loop, not the backend's `sampling_cuts`); stop
strings found with `str.find` on decoded prefixes; truncation read off the tokens.
The truncation case uses the offline demo chat policy (`selfplay.models.demo`), whose
ChatML template puts the EOS token (<|im_end|>) in every prompt.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
from helpers import demo_models

from selfplay.errors import InputError
from selfplay.models.load import encode_prompts
from selfplay.models.tiny import EOS_ID, ModelSpec, tiny_vocab
from selfplay.models.weights import flatten_state_dict
from selfplay.rollout.hf import HFBackend
from selfplay.tasks.base import Sampling
from selfplay.types import Prompts, Version

MOVES = ("rock", "paper", "scissors")
WORDS = (*MOVES, "choose", "a", "move", "now")
VOCAB = tiny_vocab(ModelSpec(words=WORDS).vocab_words)
MOVE_IDS = [VOCAB.index(m) for m in MOVES]
V = Version(0, "main")
SPEC = ModelSpec(words=WORDS, hidden=16, layers=2, heads=2, seed=3, init_std=0.3)
PROMPTS = Prompts(ids=np.array([4, 5]), texts=["choose a move", "now"])


@pytest.fixture(scope="module")
def model():
    return SPEC.causal_lm()


@pytest.fixture(scope="module")
def backend(model):
    be = HFBackend(SPEC.causal_lm(), SPEC.tokenizer())
    be.load_weights(V, flatten_state_dict(model))
    return be


def oracle(model, prompt_ids, response, *, temperature, allowed=None, top_k=0, top_p=1.0):
    """log π_s of each response token: plain forward, then the cuts written out by hand."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + response])).logits[0].double().numpy()
    out = []
    for t, tok in enumerate(response):
        row = logits[len(prompt_ids) - 1 + t]
        s = row - np.log(np.exp(row - row.max()).sum()) - row.max()  # log-softmax
        z = s / temperature
        if allowed is not None:
            z = np.where(np.isin(np.arange(len(z)), allowed), z, -np.inf)
        if top_k:
            kth = np.sort(z)[::-1][top_k - 1]
            z = np.where(z >= kth, z, -np.inf)
        if top_p < 1:
            p = np.exp(z - z.max())
            p /= p.sum()
            keep, mass = np.zeros(len(z), dtype=bool), 0.0
            for y in np.argsort(-p, kind="stable"):
                if mass >= top_p:
                    break
                keep[y], mass = True, mass + p[y]
            z = np.where(keep, z, -np.inf)
        m = z[np.isfinite(z)].max()
        out.append(z[tok] - m - np.log(np.exp(z - m).sum()))
    return np.array(out)


def rows(samples):
    for i in range(len(samples)):
        n = int(samples.lengths[i])
        yield i, samples.tokens[i, :n].tolist(), samples.prompt_tokens[i // samples.k]


CUTS = [
    dict(temperature=0.7, top_k=3),
    dict(temperature=1.3, top_p=0.6),
    dict(temperature=1.0, top_k=5, top_p=0.8),
    dict(temperature=0.9, top_k=2, top_p=0.5, allowed=[*MOVE_IDS, EOS_ID]),
]


@pytest.mark.parametrize("cut", CUTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_cut_logprobs_equal_an_independent_computation(backend, model, cut):
    kw = dict(cut)
    allowed = kw.pop("allowed", None)
    s = backend.generate(
        PROMPTS, version=V, k=6, max_new_tokens=6, seed=7, allowed_token_ids=allowed, **kw
    )
    uncut = []
    for i, resp, prompt in rows(s):
        want = oracle(model, prompt, resp, allowed=allowed, **kw)
        assert np.isfinite(want).all(), "sampled a token the cuts exclude"
        np.testing.assert_allclose(s.logprobs[i, : len(resp)], want, atol=2e-5, rtol=0)
        base = oracle(model, prompt, resp, allowed=allowed, temperature=kw["temperature"])
        uncut.append(base - s.logprobs[i, : len(resp)])
    # The cuts renormalise over fewer tokens: each kept token is at least as likely,
    # and strictly more likely where something was cut.
    uncut = np.concatenate(uncut)
    assert (uncut <= 1e-5).all() and (uncut < -1e-3).mean() > 0.5


def test_top_k_support_is_the_k_best_tokens(backend, model):
    """Every token drawn with top_k=2 is one of the 2 most likely at its position."""
    s = backend.generate(
        PROMPTS, version=V, k=40, max_new_tokens=3, temperature=1.0, seed=0, top_k=2
    )
    seen = set()
    for _, resp, prompt in rows(s):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + resp])).logits[0]
        for t, tok in enumerate(resp):
            best = torch.topk(logits[len(prompt) - 1 + t], 2).indices.tolist()
            assert tok in best
            seen.add(best.index(tok))
    assert seen == {0, 1}  # both survivors get drawn


def test_stop_strings_end_the_response_and_are_cut_from_the_text(backend, model):
    stop = ["paper scissors", "ck ro"]  # the second ends inside the token "rock"
    allowed = [*MOVE_IDS, EOS_ID]
    s = backend.generate(
        PROMPTS,
        version=V,
        k=40,
        max_new_tokens=8,
        temperature=1.5,
        seed=2,
        allowed_token_ids=allowed,
        stop=stop,
    )
    tok = backend.tokenizer
    kinds = {"stop": 0, "eos": 0, "length": 0}

    def find(text):
        hits = [text.find(x) for x in stop if x in text]
        return min(hits) if hits else -1

    for i, resp, prompt in rows(s):
        full = tok.decode(resp, skip_special_tokens=True)
        at = find(full)
        if at >= 0:  # stopped: by the last token, the text cut before the stop string
            kinds["stop"] += 1
            assert find(tok.decode(resp[:-1], skip_special_tokens=True)) < 0
            assert s.texts[i] == full[:at] and resp[-1] != EOS_ID
            assert not s.truncated[i]
        elif resp[-1] == EOS_ID:
            kinds["eos"] += 1
            assert s.texts[i] == full and not s.truncated[i]
        else:
            kinds["length"] += 1
            assert len(resp) == 8 and s.truncated[i] and s.texts[i] == full
        want = oracle(model, prompt, resp, temperature=1.5, allowed=allowed)
        np.testing.assert_allclose(s.logprobs[i, : len(resp)], want, atol=2e-5, rtol=0)
    assert all(kinds.values()), kinds  # every ending happens (fixed seed)


def test_a_stop_string_ending_inside_a_token_keeps_the_token_and_cuts_the_text(backend):
    """stop "ck": the token "rock" completes it; "rock" stays in the tokens, the text
    ends with "ro"."""
    rock = VOCAB.index("rock")
    s = backend.generate(
        PROMPTS,
        version=V,
        k=20,
        max_new_tokens=6,
        temperature=2.0,
        seed=4,
        allowed_token_ids=[*MOVE_IDS, EOS_ID],
        stop=["ck"],
    )
    stopped = 0
    for i, resp, _ in rows(s):
        if rock in resp:
            assert resp[-1] == rock and resp.count(rock) == 1 and not s.truncated[i]
            assert s.texts[i].endswith("ro") and "ck" not in s.texts[i]
            stopped += 1
        else:
            assert "ro" not in s.texts[i]
    assert stopped > 0


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    policy, _ = demo_models(tmp_path_factory)
    be = HFBackend.from_name(str(policy))
    be.load_weights(V, flatten_state_dict(be.model))
    return be


def test_truncated_iff_max_new_tokens_without_eos_even_with_eos_in_the_prompt(chat):
    tok = chat.tokenizer
    eos = sorted(chat.eos_ids)
    assert tok.eos_token_id in eos and len(eos) == 2  # tokenizer's + generation config's
    prompts = Prompts(ids=np.array([0, 1]), texts=["say hi", "write a word"])
    ids = encode_prompts(tok, prompts.texts)
    assert all(tok.eos_token_id in p for p in ids)  # ChatML: <|im_end|> in every prompt
    others = [t for t in range(20, 26)]
    for allowed in ([*eos, *others], [eos[1], *others]):  # either eos id ends a response
        s = chat.generate(
            prompts,
            version=V,
            k=30,
            max_new_tokens=5,
            temperature=1.0,
            seed=1,
            allowed_token_ids=allowed,
        )
        ended = 0
        for i, resp, _ in rows(s):
            finished = resp[-1] in eos
            assert not any(t in eos for t in resp[:-1])
            assert s.truncated[i] == (not finished)
            assert finished or len(resp) == 5
            ended += finished
        assert 0 < ended < len(s)
        assert s.truncated.dtype == bool and s.truncated.shape == (len(s),)
    # Allowed tokens without any eos: fixed-length responses, complete, never truncated.
    s = chat.generate(
        prompts, version=V, k=2, max_new_tokens=3, temperature=1.0, seed=0, allowed_token_ids=others
    )
    assert (s.lengths == 3).all() and not s.truncated.any()
    # The full vocabulary: a random policy rarely says eos, so 2 tokens are mostly truncated.
    s = chat.generate(prompts, version=V, k=8, max_new_tokens=2, temperature=1.0, seed=0)
    for i, resp, _ in rows(s):
        assert s.truncated[i] == (resp[-1] not in eos)
    assert s.truncated.any()


def test_bad_generation_settings_are_input_errors(backend):
    kw = dict(version=V, k=1, max_new_tokens=2, temperature=1.0, seed=0)
    for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(stop=[""]), dict(stop="x")):
        with pytest.raises(InputError):
            backend.generate(PROMPTS, **kw, **bad)


def test_rollout_actor_hands_its_sampling_to_the_backend(backend):
    """The worker applies the task's Sampling (temperatures, cuts, stop) on every draw."""
    from selfplay.runtime.workers.actors import RolloutActor

    sampling = Sampling(
        max_new_tokens=5,
        temperature=0.8,
        explore_temperature=1.4,
        allowed_token_ids=(*MOVE_IDS, EOS_ID),
        top_p=0.9,
        top_k=3,
        stop=("paper scissors",),
    )
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        actor = RolloutActor.remote(lambda: HFBackend(SPEC.causal_lm(), SPEC.tokenizer()), sampling)
        ray.get(actor.load.remote(V, [ray.put(flatten_state_dict(backend.model))]))
        for explore, temp in ((False, 0.8), (True, 1.4)):
            got = ray.get(actor.generate.remote(PROMPTS, V, 4, 9, explore))
            want = backend.generate(
                PROMPTS,
                version=V,
                k=4,
                max_new_tokens=5,
                temperature=temp,
                seed=9,
                allowed_token_ids=[*MOVE_IDS, EOS_ID],
                top_p=0.9,
                top_k=3,
                stop=["paper scissors"],
            )
            assert np.array_equal(got.tokens, want.tokens) and got.texts == want.texts
            np.testing.assert_array_equal(got.logprobs, want.logprobs)
            np.testing.assert_array_equal(got.truncated, want.truncated)
    finally:
        ray.shutdown()
