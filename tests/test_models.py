"""Tiny-model factory, HF loading round-trip, chat formatting and flat weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfplay.errors import InputError
from selfplay.models.load import encode_prompts, format_prompt, load_classifier, load_policy
from selfplay.models.tiny import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    ModelSpec,
    tiny_causal_lm,
    tiny_tokenizer,
    tiny_vocab,
)
from selfplay.models.weights import ALIGN, flatten_state_dict, load_flat

WORDS = ("rock", "paper", "scissors", "choose", "a", "move")
SPEC = ModelSpec(words=WORDS, hidden=16, layers=1, heads=2, seed=0)


def _same_weights(m1: torch.nn.Module, m2: torch.nn.Module) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_tokenizer_vocab_and_specials():
    tok = tiny_tokenizer(WORDS)
    vocab = tiny_vocab(WORDS)
    assert len(tok) == len(vocab) == 7 + len(WORDS)
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (PAD_ID, EOS_ID, BOS_ID)
    ids = tok("choose a move")["input_ids"]
    assert ids == [BOS_ID] + [vocab.index(w) for w in ("choose", "a", "move")]
    assert tok("zebra", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    assert tok.decode([vocab.index("rock"), EOS_ID], skip_special_tokens=True) == "rock"
    with pytest.raises(InputError):
        tiny_tokenizer(["two words"])


def test_chat_template_and_encoding():
    tok = tiny_tokenizer(WORDS)
    vocab = tiny_vocab(WORDS)
    text = format_prompt(tok, "choose a move")
    assert text == "<bos><user> choose a move <assistant>"
    expect = [
        BOS_ID,
        vocab.index("<user>"),
        vocab.index("choose"),
        vocab.index("a"),
        vocab.index("move"),
        vocab.index("<assistant>"),
    ]
    # The template carries <bos>; encoding must not add a second one.
    assert encode_prompts(tok, ["choose a move"]) == [expect]
    tok.chat_template = None
    assert format_prompt(tok, "choose a move") == "choose a move"
    assert encode_prompts(tok, ["choose a move", ""]) == [[BOS_ID] + expect[2:5], [BOS_ID]]


def test_tiny_model_is_deterministic_per_seed():
    n = len(tiny_vocab(WORDS))
    a, b = tiny_causal_lm(n, seed=3), tiny_causal_lm(n, seed=3)
    c = tiny_causal_lm(n, seed=4)
    assert _same_weights(a, b) and not _same_weights(a, c)
    # Building a model must not consume the caller's RNG.
    torch.manual_seed(0)
    x = torch.rand(1)
    torch.manual_seed(0)
    tiny_causal_lm(n, seed=5)
    assert torch.equal(torch.rand(1), x)


def test_model_spec_parse_roundtrip_and_errors():
    spec = ModelSpec.parse("tiny:words=rock,paper;hidden=16;layers=1;seed=7")
    assert spec == ModelSpec(words=("rock", "paper"), hidden=16, layers=1, seed=7)
    assert ModelSpec.parse(spec.name()) == spec
    for bad in ("tiny:hidden=x", "tiny:colour=red", "tiny:hidden", "gpt:hidden=3"):
        with pytest.raises(InputError):
            ModelSpec.parse(bad)
    with pytest.raises(InputError):
        load_policy("tiny:hidden=30;heads=4")


def test_load_policy_local_path_roundtrip(tmp_path):
    model, tok = load_policy(SPEC.name())
    assert _same_weights(model, SPEC.causal_lm())
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model2, tok2 = load_policy(str(tmp_path))
    ids = torch.tensor(encode_prompts(tok, ["choose a move"]))
    assert encode_prompts(tok2, ["choose a move"]) == ids.tolist()
    assert format_prompt(tok2, "x") == format_prompt(tok, "x")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)
    with pytest.raises(InputError):
        load_policy(str(tmp_path / "missing"))


def test_load_classifier_needs_one_logit(tmp_path):
    model, _ = load_classifier(SPEC)
    assert model.config.num_labels == 1
    lm, tok = load_policy(SPEC)
    from transformers import LlamaForSequenceClassification

    cfg = lm.config
    cfg.num_labels = 3
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(InputError, match="3 labels"):
        load_classifier(str(tmp_path))


def test_flat_weights_roundtrip_and_layout():
    src = SPEC.causal_lm()
    flat = flatten_state_dict(src)
    assert flat.buffer.dtype == np.uint8 and flat.buffer.ndim == 1
    assert all(e.offset % ALIGN == 0 for e in flat.entries)
    total = sum(p.numel() * p.element_size() for p in src.state_dict().values())
    assert total <= flat.nbytes < total + ALIGN * len(flat.entries)
    dst = ModelSpec(words=WORDS, hidden=16, layers=1, heads=2, seed=1).causal_lm()
    assert not _same_weights(src, dst)
    flat.buffer.setflags(write=False)  # as it arrives from the Ray object store
    load_flat(dst, flat)
    assert _same_weights(src, dst)
    # A view, not a copy: tensors alias the buffer.
    name, t = next(flat.named_tensors())
    assert t.data_ptr() == flat.buffer.ctypes.data + flat.entries[0].offset


def test_flat_weights_keep_bfloat16_and_reject_mismatch():
    sd = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7), "c": torch.tensor(2.5)}
    flat = flatten_state_dict(sd)
    back = flat.to_state_dict()
    assert all(back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(ValueError, match="do not match"):
        load_flat(SPEC.causal_lm(), flat)


def test_flat_weights_store_tied_tensors_once():
    n = len(tiny_vocab(SPEC.vocab_words))
    src = tiny_causal_lm(n, seed=0, hidden=16, layers=1, tie_embeddings=True)
    dst = tiny_causal_lm(n, seed=1, hidden=16, layers=1, tie_embeddings=True)
    assert src.lm_head.weight.data_ptr() == src.model.embed_tokens.weight.data_ptr()
    flat = flatten_state_dict(src)
    by_name = {e.name: e for e in flat.entries}
    assert by_name["lm_head.weight"].offset == by_name["model.embed_tokens.weight"].offset
    untied = sum(p.numel() * p.element_size() for p in src.state_dict().values())
    assert flat.nbytes < untied  # the embedding is stored once
    load_flat(dst, flat)
    assert _same_weights(src, dst)
    assert dst.lm_head.weight.data_ptr() == dst.model.embed_tokens.weight.data_ptr()


def test_a_model_path_that_does_not_exist_is_one_line(tmp_path):
    from selfplay.models.load import check_safetensors_dir

    with pytest.raises(InputError, match="does not exist"):
        check_safetensors_dir(str(tmp_path / "missing"))
    check_safetensors_dir("org/hub-name")  # a hub name is left to from_pretrained


def _save(model, tok, d):
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_weights_missing_from_the_files_are_refused(tmp_path):
    """transformers' own loading info decides: a classifier's files loaded as a causal LM
    lack lm_head.weight, a causal LM's loaded as a classifier lack score.weight."""
    tok = SPEC.tokenizer()
    clf = _save(SPEC.sequence_classifier(), tok, tmp_path / "reward")
    lm = _save(SPEC.causal_lm(), tok, tmp_path / "policy")
    with pytest.raises(InputError, match=r"lacks weights a LlamaForCausalLM needs \(lm_head"):
        load_policy(clf)
    with pytest.raises(InputError, match=r"LlamaForSequenceClassification needs \(score"):
        load_classifier(lm)
    load_policy(lm), load_classifier(clf)  # each as what it is: loads


def test_tied_embeddings_are_not_missing(tmp_path):
    """A tied lm_head is not in the files (save_pretrained writes the tensor once) and is
    the embedding after loading, not random."""
    from safetensors import safe_open

    n = len(tiny_vocab(WORDS))
    d = _save(
        tiny_causal_lm(n, seed=0, hidden=16, layers=1, tie_embeddings=True),
        SPEC.tokenizer(),
        tmp_path,
    )
    with safe_open(f"{d}/model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
    model, _ = load_policy(d)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
