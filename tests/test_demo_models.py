"""The offline demo checkpoints (selfplay.models.demo) and `selfplay demo text`.

Each arch is written once to a tmp dir and loaded back through the user's path
(`load_policy` / `load_classifier`: safetensors, no remote code). Oracles: the
in-memory tokenizer before saving (ids must come back identical through
AutoTokenizer), hand-written ChatML strings, decode(encode(s)) == s, and a reward
scored alone vs. inside a right-padded batch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import demo_models
from tokenizers import models as tok_models

from selfplay.cli import main
from selfplay.errors import InputError
from selfplay.models import demo
from selfplay.models.load import encode_prompts, load_classifier, load_policy
from selfplay.models.weights import flatten_state_dict
from selfplay.rollout.hf import HFBackend
from selfplay.types import Prompts, Version

ARCHS = ("qwen2", "llama")
SAMPLES = [
    "Write a short poem about the sea.",
    "hello world, how are you?\nfine thanks!",
    "<|im_start|>user\nhi<|im_end|>\n",
]


@pytest.fixture(scope="module", params=ARCHS)
def written(request, tmp_path_factory):
    arch = request.param
    policy_dir, reward_dir = demo_models(tmp_path_factory, arch)
    return arch, policy_dir, reward_dir


@pytest.fixture(scope="module")
def policy(written):
    arch, policy_dir, _ = written
    model, tok = load_policy(str(policy_dir))
    return arch, model, tok


def test_tokenizer_comes_back_identical(written, policy):
    arch, _, reward_dir = written
    _, model, tok = policy
    size = demo.DEFAULTS[arch]["vocab_size"]
    fresh = demo.train_tokenizer(arch, size)
    assert len(tok) == len(fresh) == size == model.config.vocab_size
    for s in SAMPLES:
        assert tok(s)["input_ids"] == fresh(s)["input_ids"]
    assert tok.chat_template == fresh.chat_template == demo.CHAT_TEMPLATE
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert (tok.eos_token_id, tok.pad_token_id) == (2, 0)
    assert tok.convert_tokens_to_ids("<|im_start|>") == 1
    # A BPE model, never the word-level tiny tokenizer, under either config.
    assert isinstance(tok.backend_tokenizer.model, tok_models.BPE)
    if arch == "qwen2":
        # transformers >= 5 rebuilds a qwen2 checkpoint's tokenizer as Qwen2Tokenizer.
        assert type(tok).__name__ == "Qwen2Tokenizer"
    gen = model.generation_config.eos_token_id
    assert set(gen if isinstance(gen, list) else [gen]) == {2, 0}
    assert model.config.pad_token_id == 0
    _, rtok = load_classifier(str(reward_dir))
    for s in SAMPLES:
        assert rtok(s)["input_ids"] == tok(s)["input_ids"]
    assert rtok.chat_template == tok.chat_template


def test_round_trip(policy):
    arch, _, tok = policy
    exact = ["the cat sat on the mat.", "why?\nbecause it's late, okay!", "  two  spaces "]
    if arch == "qwen2":  # byte level: every string comes back
        exact += ["Ünïcode 123 ☃ — tabs\tand CAPS", "x" * 50]
    for s in exact:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert ids and max(ids) < len(tok)
        assert tok.decode(ids) == s
    if arch == "llama":  # restricted alphabet: lowercased, <unk> outside it
        ids = tok("Hello World 42", add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == "hello world <unk><unk>"
        assert tok.decode(ids, skip_special_tokens=True) == "hello world "


def test_chat_template_renders_chatml(policy):
    _, _, tok = policy
    msgs = [
        {"role": "system", "content": "be brief."},
        {"role": "user", "content": "hi there"},
    ]
    want = (
        "<|im_start|>system\nbe brief.<|im_end|>\n"
        "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    )
    got = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert got == want
    assert tok.eos_token in got and got.endswith("<|im_start|>assistant\n")
    assert tok.apply_chat_template(msgs, tokenize=False) == want.removesuffix(
        "<|im_start|>assistant\n"
    )
    # The policy's prompt encoding: one user turn, eos inside, generation prompt last.
    (ids,) = encode_prompts(tok, ["hi there"])
    assert tok.decode(ids) == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token_id in ids and ids[0] == tok.convert_tokens_to_ids("<|im_start|>")


def test_generation_produces_tokens_and_stops_at_eos(policy):
    _, model, tok = policy
    be = HFBackend(model, tok)
    v = Version(0, "main")
    be.load_weights(v, flatten_state_dict(model))
    prompts = Prompts(ids=np.arange(2, dtype=np.int64), texts=["hello", "why is the sky blue?"])
    free = be.generate(prompts, version=v, k=2, max_new_tokens=8, temperature=1.0, seed=0)
    assert (free.lengths > 0).all() and int(free.tokens.max()) < len(tok)
    # Few allowed tokens, eos among them: rows stop early, on an eos id, and only there.
    eos_ids = {2, 0}
    letters = tok("abc", add_special_tokens=False)["input_ids"]
    allowed = [2, *letters]
    width = 40
    s = be.generate(
        prompts,
        version=v,
        k=4,
        max_new_tokens=width,
        temperature=1.0,
        seed=0,
        allowed_token_ids=allowed,
    )
    stopped = 0
    for row, n in zip(s.tokens, s.lengths, strict=True):
        toks = row[:n].tolist()
        assert n > 0 and set(toks) <= set(allowed)
        assert not eos_ids & set(toks[:-1])  # nothing after an eos
        if n < width:
            assert toks[-1] in eos_ids
            stopped += 1
    assert stopped >= 4  # P(stop within 40 tokens) ~ 1 - (3/4)^40 per row
    assert all("<|im_end|>" not in t for t in s.texts)


def test_reward_is_finite_per_sequence_and_padding_safe(written):
    _, _, reward_dir = written
    model, tok = load_classifier(str(reward_dir))
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    convs = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away."}],
        [
            {"role": "user", "content": "why is the sky blue?"},
            {"role": "assistant", "content": "because the air scatters blue light more."},
        ],
    ]
    texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]
    with torch.no_grad():
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        assert (batch["attention_mask"] == 0).any()  # the batch really is padded
        r = model(**batch).logits
        alone = torch.cat(
            [model(**tok([t], return_tensors="pt", add_special_tokens=False)).logits for t in texts]
        )
    assert r.shape == (3, 1) and torch.isfinite(r).all()
    torch.testing.assert_close(r, alone, atol=1e-5, rtol=1e-5)
    assert float(r.std()) > 1e-3  # not constant: depends on the response


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    from safetensors.torch import load_file

    a = demo.write_chat_policy(tmp_path / "a", arch="llama", seed=3)
    b = demo.write_chat_policy(tmp_path / "b", arch="llama", seed=3)
    c = demo.write_chat_policy(tmp_path / "c", arch="llama", seed=4)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_trl_comparison_sizes(tmp_path):
    # The fixed policy: Llama, 2 layers, hidden 64, 4 heads, vocab 64.
    d = demo.write_chat_policy(tmp_path / "p", arch="llama")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    got = [cfg[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads")]
    assert got + [cfg["vocab_size"]] == [2, 64, 4, 64]


def test_bad_sizes_and_interrupted_write_leave_nothing(tmp_path):
    with pytest.raises(InputError, match="vocab_size >= 259"):
        demo.write_chat_policy(tmp_path / "p", arch="qwen2", vocab_size=100)
    with pytest.raises(InputError, match="not divisible"):
        demo.write_chat_policy(tmp_path / "p", arch="llama", hidden=30, heads=4)
    with pytest.raises(InputError, match="unknown demo arch"):
        demo.write_reward_model(tmp_path / "p", arch="gpt2")
    with pytest.raises(KeyboardInterrupt), demo.staged_dir(tmp_path / "p") as tmp:
        (tmp / "half.safetensors").write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_shipped_prompt_files_read_as_datasets():
    import datasets

    plain = datasets.load_dataset(
        "json", data_files=str(demo.shipped_prompts_path("prompts.jsonl")), split="train"
    )
    chat = datasets.load_dataset(
        "json", data_files=str(demo.shipped_prompts_path("chat_prompts.jsonl")), split="train"
    )
    assert len(plain) + len(chat) >= 64 and plain.column_names == chat.column_names == ["prompt"]
    assert all(isinstance(p, str) and p for p in plain["prompt"])
    for msgs in chat["prompt"]:
        assert msgs[-1]["role"] == "user"
        assert all(set(m) == {"role", "content"} for m in msgs)


def test_cli_writes_outputs_and_refuses_non_empty_dir(tmp_path, capsys):
    out = tmp_path / "demo"
    main(["demo", "text", "--out", str(out), "--arch", "llama"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and str(out / "policy") in lines[0] and str(out / "reward") in lines[1]
    assert sorted(p.name for p in out.iterdir()) == [
        "chat_prompts.jsonl",
        "policy",
        "prompts.jsonl",
        "reward",
    ]
    assert (out / "prompts.jsonl").read_bytes() == demo.shipped_prompts_path().read_bytes()
    model, _ = load_policy(str(out / "policy"))
    assert model.config.model_type == "llama"
    load_classifier(str(out / "reward"))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        main(["demo", "text", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "not an empty directory" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
