"""Tiny models built in code: a word-level tokenizer and random-init Llama models.

Nothing here downloads anything. The tokenizer is a `tokenizers` WordLevel
model over a fixed vocabulary split on whitespace; the models are Llama
configs with `hidden`/`layers`/`heads` small enough to train on 2 CPU cores.
Initialisation is deterministic for a seed (the global torch RNG is forked,
so building a model does not disturb the caller's random state).

Vocabulary layout (ids are stable, tests rely on them):
    0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, 4 <system>, 5 <user>, 6 <assistant>,
    then `words` in order (duplicates of earlier entries are dropped).

Chat template: `<bos> <user> {content} <assistant>` (roles become their role
token, so `apply_chat_template(..., add_generation_prompt=True)` works).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from selfplay.errors import InputError

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
ROLE_TOKENS = ("<system>", "<user>", "<assistant>")
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)

# Words every tiny spec gets, so the pairwise and LLM judge templates tokenize
# without <unk> (A/B must be single tokens for the LLM judge's answer logits).
JUDGE_WORDS = ("[SEP]", "A:", "B:", "A", "B", "Question:", "Answer", "Which", "is", "better?", "or")


def tiny_vocab(words: list[str] | tuple[str, ...]) -> list[str]:
    """The full vocabulary in id order: specials, role tokens, then `words` deduplicated."""
    vocab: list[str] = []
    for w in (*SPECIAL_TOKENS, *ROLE_TOKENS, *words):
        if not w or any(c.isspace() for c in w):
            raise InputError(f"tiny vocabulary word {w!r} must be non-empty without whitespace")
        if w not in vocab:
            vocab.append(w)
    return vocab


def tiny_tokenizer(words: list[str] | tuple[str, ...]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `tiny_vocab(words)`; raw text gets a leading <bos>."""
    vocab = tiny_vocab(words)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    # Role tokens are special so decoding a response never shows them.
    hf.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})
    hf.chat_template = CHAT_TEMPLATE
    return hf


def _llama_config(
    vocab_size: int,
    hidden: int,
    layers: int,
    heads: int,
    max_positions: int,
    init_std: float,
    tie: bool = False,
    **extra,
) -> LlamaConfig:
    if hidden % heads:
        raise InputError(f"tiny model: hidden={hidden} is not divisible by heads={heads}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        tie_word_embeddings=tie,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        **extra,
    )


def _seeded_build(cls, config: LlamaConfig, seed: int) -> torch.nn.Module:
    # fork_rng: building a model must not move the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.float().eval()


def tiny_causal_lm(
    vocab_size: int,
    *,
    seed: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 256,
    init_std: float = 0.02,
    tie_embeddings: bool = False,
) -> LlamaForCausalLM:
    """Random-init Llama causal LM; identical weights for identical arguments.

    tie_embeddings=True shares lm_head with the input embedding (as many small
    HF models do), which exercises the tied-weight paths of weights and backends.
    """
    cfg = _llama_config(
        vocab_size, hidden, layers, heads, max_positions, init_std, tie=tie_embeddings
    )
    return _seeded_build(LlamaForCausalLM, cfg, seed)


def tiny_sequence_classifier(
    vocab_size: int,
    *,
    seed: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 256,
    init_std: float = 0.02,
    num_labels: int = 1,
) -> LlamaForSequenceClassification:
    """Random-init Llama sequence classifier (one logit by default: a reward model)."""
    cfg = _llama_config(
        vocab_size, hidden, layers, heads, max_positions, init_std, num_labels=num_labels
    )
    return _seeded_build(LlamaForSequenceClassification, cfg, seed)


@dataclass(frozen=True)
class ModelSpec:
    """A tiny model by value; its string form is `tiny:words=a,b,c;hidden=32;layers=2;seed=0`.

    Every tiny vocabulary also holds JUDGE_WORDS (appended after `words`).
    """

    words: tuple[str, ...] = field(default_factory=tuple)
    hidden: int = 32
    layers: int = 2
    heads: int = 2
    seed: int = 0
    init_std: float = 0.02

    PREFIX = "tiny:"

    @property
    def vocab_words(self) -> tuple[str, ...]:
        return (*self.words, *JUDGE_WORDS)

    @classmethod
    def parse(cls, name: str) -> ModelSpec:
        if not name.startswith(cls.PREFIX):
            raise InputError(f"tiny model name {name!r} must start with {cls.PREFIX!r}")
        kw: dict[str, object] = {}
        body = name[len(cls.PREFIX) :].strip()
        for part in filter(None, (p.strip() for p in body.split(";"))):
            key, sep, val = part.partition("=")
            key = key.strip()
            if not sep:
                raise InputError(f"tiny model spec: expected key=value, got {part!r}")
            try:
                if key == "words":
                    kw[key] = tuple(w.strip() for w in val.split(",") if w.strip())
                elif key in ("hidden", "layers", "heads", "seed"):
                    kw[key] = int(val)
                elif key == "init_std":
                    kw[key] = float(val)
                else:
                    raise InputError(
                        f"tiny model spec: unknown key {key!r} "
                        "(known: words, hidden, layers, heads, seed, init_std)"
                    )
            except ValueError as e:
                if isinstance(e, InputError):
                    raise
                raise InputError(f"tiny model spec: bad value for {key}: {val!r}") from None
        return cls(**kw)

    def name(self) -> str:
        return (
            f"{self.PREFIX}words={','.join(self.words)};hidden={self.hidden};"
            f"layers={self.layers};heads={self.heads};seed={self.seed};"
            f"init_std={self.init_std:g}"
        )

    def tokenizer(self) -> PreTrainedTokenizerFast:
        return tiny_tokenizer(self.vocab_words)

    def causal_lm(self) -> LlamaForCausalLM:
        return tiny_causal_lm(
            len(tiny_vocab(self.vocab_words)),
            seed=self.seed,
            hidden=self.hidden,
            layers=self.layers,
            heads=self.heads,
            init_std=self.init_std,
        )

    def sequence_classifier(self) -> LlamaForSequenceClassification:
        return tiny_sequence_classifier(
            len(tiny_vocab(self.vocab_words)),
            seed=self.seed,
            hidden=self.hidden,
            layers=self.layers,
            heads=self.heads,
            init_std=self.init_std,
        )
