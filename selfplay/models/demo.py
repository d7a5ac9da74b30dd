"""Offline demo models: tiny HF checkpoints written with `save_pretrained`.

`write_chat_policy` and `write_reward_model` write a directory that loads through
the same path a user's checkpoint takes (`models.load.load_policy` /
`load_classifier`: safetensors only, no remote code). Nothing is downloaded: the
tokenizer is trained here, in code, on a small built-in corpus (the shipped prompts
plus `EXTRA_WORDS`), and the weights are random-init, deterministic for a seed.

Tokenizers (both BPE trained with `tokenizers`, wrapped as a fast tokenizer):

- `arch="qwen2"` (default vocab 512): byte-level BPE with exactly Qwen2's pipeline
  (NFC normaliser, Qwen2's pre-tokenize regex + ByteLevel, ByteLevel decoder).
  transformers >= 5 loads a qwen2 checkpoint's tokenizer as `Qwen2Tokenizer`
  whatever `tokenizer_config.json` says, and rebuilds it from vocab and merges
  with that pipeline, so any other pipeline would come back different. Every
  string round-trips (256 byte symbols). Vocab >= 256 + 3 specials.
- `arch="llama"` (default vocab 64, the TRL comparison's policy): a 64-entry
  byte-level BPE is impossible (the 256 byte symbols alone exceed it), so this is
  a character BPE over a restricted alphabet: lowercase a-z, space, newline and
  `.,?!'` (33 symbols), 4 specials, and the merges that fill the rest. A normaliser
  lowercases and strips accents; other characters (digits, `:`...) become <unk>.
  So decode(encode(s)) == s exactly for strings over that alphabet, and otherwise
  gives the lowercased text with <unk> where a character falls outside it.
  Spaces are kept as the metaspace `▁` (no prefix space), so round trips are exact.
  The saved class is `TokenizersBackend`, which transformers loads for a llama
  config from `tokenizer.json` unchanged.

Special tokens (ids in this order, both tokenizers): `<|endoftext|>` (pad),
`<|im_start|>`, `<|im_end|>` (eos), then `<unk>` for llama. No bos token. The chat
template is ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, and
`<|im_start|>assistant\\n` for the generation prompt, so every rendered prompt
holds the eos token. The generation config stops at `<|im_end|>` and `<|endoftext|>`.

Models: `Qwen2ForCausalLM` / `LlamaForCausalLM` (intermediate = 2 * hidden, as in
`models.tiny`), and for the reward model the `...ForSequenceClassification` of the
same family with one label and `pad_token_id` set (it scores the last non-pad
token). The reward head is re-drawn with std 1/sqrt(hidden) (instead of
initializer_range) so rewards are O(1) and differ between responses; it is still a
random function of the text, not a meaningful preference. A random policy emits
eos with probability about 1/vocab per token, so demo responses often run to
max_new_tokens.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from selfplay.errors import InputError

ARCHS = ("qwen2", "llama")
PAD, IM_START, IM_END, UNK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen2's own pre-tokenize regex (transformers' Qwen2Tokenizer rebuilds with it).
QWEN2_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LLAMA_ALPHABET = tuple("abcdefghijklmnopqrstuvwxyz") + ("▁", "\n", ".", ",", "?", "!", "'")
DEFAULTS = {
    "qwen2": dict(hidden=64, layers=2, heads=4, vocab_size=512),
    "llama": dict(hidden=64, layers=2, heads=4, vocab_size=64),
}
EXTRA_WORDS = (
    "the a an and or but if then so because yes no maybe good bad better best short long "
    "i you we they he she it is are was were be been have has had do does did can will "
    "would should could this that these those here there what why how when where who "
    "hello thanks please sorry sure okay answer question think know like love help make "
    "time day night sun moon water tree cat dog bird fish food tea bread apple happy sad "
    "calm kind small big new old one two three first last more less very really just"
)
PROMPT_FILES = ("prompts.jsonl", "chat_prompts.jsonl")


def shipped_prompts_path(name: str = "prompts.jsonl") -> Path:
    """Path of a prompt file shipped in `selfplay/data` (package data)."""
    if name not in PROMPT_FILES:
        raise InputError(f"no shipped prompt file {name!r}; expected one of {PROMPT_FILES}")
    return Path(__file__).resolve().parents[1] / "data" / name


def corpus() -> list[str]:
    """The tokenizer training corpus: every shipped prompt text, rendered as ChatML too,
    plus EXTRA_WORDS."""
    texts = [EXTRA_WORDS]
    for name in PROMPT_FILES:
        for line in shipped_prompts_path(name).read_text().splitlines():
            p = json.loads(line)["prompt"]
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else p
            texts.extend(m["content"] for m in msgs)
            texts.append("".join(f"{m['role']}\n{m['content']}\n" for m in msgs) + "assistant\n")
    return texts


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise InputError(f"unknown demo arch {arch!r}; expected one of {ARCHS}")


def _llama_normalize(text: str) -> str:
    return "".join(
        c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c)
    )


def train_tokenizer(arch: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """The demo tokenizer of `arch` with exactly `vocab_size` entries (see module doc)."""
    _check_arch(arch)
    specials = [PAD, IM_START, IM_END] + ([UNK] if arch == "llama" else [])
    if arch == "qwen2":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        texts = corpus()
    else:
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
        alphabet = list(LLAMA_ALPHABET)
        keep = set(LLAMA_ALPHABET) | {" "}
        # The trainer sees only alphabet characters, so no other symbol enters the vocab.
        texts = ["".join(c for c in _llama_normalize(t) if c in keep) for t in corpus()]
    floor = len(specials) + len(alphabet)
    if vocab_size < floor:
        raise InputError(f"demo {arch} tokenizer needs vocab_size >= {floor}, got {vocab_size}")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise InputError(
            f"demo {arch} tokenizer: the built-in corpus gives at most "
            f"{tok.get_vocab_size()} entries, asked for vocab_size={vocab_size}"
        )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=UNK if arch == "llama" else None,
        additional_special_tokens=[IM_START],
        model_max_length=1024,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def _config(arch: str, tok, *, hidden: int, layers: int, heads: int, **extra):
    if hidden % heads:
        raise InputError(f"demo model: hidden={hidden} is not divisible by heads={heads}")
    if layers < 1:
        raise InputError(f"demo model: layers must be >= 1, got {layers}")
    cls = Qwen2Config if arch == "qwen2" else LlamaConfig
    return cls(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        **extra,
    )


@contextmanager
def staged_dir(out_dir: str | Path):
    """Yield a fresh temp dir next to `out_dir`; on success it is renamed to `out_dir`.

    `out_dir` must not exist or be an empty directory (InputError otherwise). An
    exception (or an interrupt) removes the temp dir, so no half-written dir is left.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty directory")
    # mkdir (not mkdtemp, which makes it 0700) so the dir gets the umask's usual mode.
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise InputError(f"cannot write {out} ({e.strerror or e})") from None
    try:
        yield tmp
        try:
            if out.exists():
                out.rmdir()
            tmp.rename(out)
        except OSError as e:  # e.g. `out` filled up meanwhile
            raise InputError(f"cannot write {out} ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _resolve(arch: str, **given) -> dict:
    _check_arch(arch)
    return {k: DEFAULTS[arch][k] if v is None else v for k, v in given.items()}


def _build(auto_cls, config, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto_cls.from_config(config)
        if hasattr(model, "score"):
            torch.nn.init.normal_(model.score.weight, std=config.hidden_size**-0.5)
    return model.float().eval()


def _save(model, tok, out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser()
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


def write_chat_policy(
    out_dir: str | Path,
    *,
    arch: str = "qwen2",
    hidden: int | None = None,
    layers: int | None = None,
    heads: int | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny random-init causal LM, its tokenizer and generation config to `out_dir`.

    Sizes default to DEFAULTS[arch]. `out_dir` must not exist or be empty; it appears
    complete or not at all. Returns `out_dir`.
    """
    s = _resolve(arch, hidden=hidden, layers=layers, heads=heads, vocab_size=vocab_size)
    tok = train_tokenizer(arch, s["vocab_size"])
    config = _config(arch, tok, hidden=s["hidden"], layers=s["layers"], heads=s["heads"])
    model = _build(AutoModelForCausalLM, config, seed)
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.eos_token_id, tok.pad_token_id],
        pad_token_id=tok.pad_token_id,
        do_sample=True,
        max_new_tokens=64,
    )
    return _save(model, tok, out_dir)


def write_reward_model(
    out_dir: str | Path,
    *,
    arch: str = "qwen2",
    hidden: int | None = None,
    layers: int | None = None,
    heads: int | None = None,
    vocab_size: int | None = None,
    seed: int = 1,
) -> Path:
    """Write a tiny Bradley-Terry reward model (one-logit sequence classifier) and a copy
    of the demo tokenizer to `out_dir`. Returns `out_dir`."""
    s = _resolve(arch, hidden=hidden, layers=layers, heads=heads, vocab_size=vocab_size)
    tok = train_tokenizer(arch, s["vocab_size"])
    config = _config(
        arch, tok, hidden=s["hidden"], layers=s["layers"], heads=s["heads"], num_labels=1
    )
    model = _build(AutoModelForSequenceClassification, config, seed)
    return _save(model, tok, out_dir)
