"""Loading policies and judges: any HF model by path or hub name, or a tiny model by spec.

Names: a local directory or hub name goes to `AutoModelFor*.from_pretrained`;
`tiny:<spec>` (see `ModelSpec`) builds a random-init tiny model in code.

Safe loading: weights are read from safetensors only (`use_safetensors=True`),
never from pickle `.bin` checkpoints, and `trust_remote_code=False` is passed
explicitly, so loading a model runs no code that ships with it. A local
directory without a `*.safetensors` file is refused before transformers sees it.

Prompt encoding follows the HF convention: when the tokenizer has a chat
template, the prompt is rendered as one user turn with the generation prompt,
and the rendered text is tokenized without adding special tokens again (the
template carries its own <bos>); otherwise the raw text is tokenized with the
tokenizer's own special tokens.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from selfplay.errors import InputError
from selfplay.models.tiny import ModelSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def _finish(model: PreTrainedModel, tok: PreTrainedTokenizerBase, dtype: str, device: str):
    if tok.pad_token_id is None:
        # Many causal LMs ship without a pad token; eos is the usual stand-in.
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    return model.to(device=device, dtype=_dtype(dtype)).eval(), tok


PICKLE_REFUSED = "no safetensors weights in {} (pickle .bin checkpoints are not loaded)"


def check_safetensors_dir(name_or_path: str) -> None:
    """InputError if `name_or_path` is a local directory holding no `*.safetensors` file.

    Hub names pass; `from_pretrained(use_safetensors=True)` refuses those itself.
    """
    p = Path(name_or_path)
    if p.is_dir() and not any(p.glob("*.safetensors")):
        raise InputError(PICKLE_REFUSED.format(p))


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a local directory or hub name; no remote code runs."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load tokenizer {name_or_path!r}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _from_pretrained(auto_cls, name: str, what: str):
    check_safetensors_dir(name)
    try:
        model = auto_cls.from_pretrained(name, use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError, SafetensorError) as e:
        # ValueError: e.g. a config whose auto_map needs the repository's own code.
        if re.search(r"file named \S*\.safetensors", str(e)):
            raise InputError(PICKLE_REFUSED.format(name)) from None
        raise InputError(f"cannot load {what} {name!r}: {_first_line(e)}") from None
    return model, load_tokenizer(name)


def load_policy(
    name_or_path: str | ModelSpec, *, dtype: str = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(causal LM in eval mode, tokenizer) from a path, hub name, `tiny:<spec>` or ModelSpec."""
    if isinstance(name_or_path, ModelSpec) or name_or_path.startswith(ModelSpec.PREFIX):
        spec = (
            name_or_path if isinstance(name_or_path, ModelSpec) else ModelSpec.parse(name_or_path)
        )
        return _finish(spec.causal_lm(), spec.tokenizer(), dtype, device)
    model, tok = _from_pretrained(AutoModelForCausalLM, name_or_path, "policy")
    return _finish(model, tok, dtype, device)


def load_classifier(
    name_or_path: str | ModelSpec, *, dtype: str = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(one-logit sequence classifier in eval mode, tokenizer), for reward/pairwise judges."""
    if isinstance(name_or_path, ModelSpec) or name_or_path.startswith(ModelSpec.PREFIX):
        spec = (
            name_or_path if isinstance(name_or_path, ModelSpec) else ModelSpec.parse(name_or_path)
        )
        model, tok = spec.sequence_classifier(), spec.tokenizer()
    else:
        model, tok = _from_pretrained(
            AutoModelForSequenceClassification, name_or_path, "classifier"
        )
    if model.config.num_labels != 1:
        raise InputError(
            f"judge model {name_or_path!s} has {model.config.num_labels} labels; "
            "a reward or pairwise judge needs exactly one logit"
        )
    return _finish(model, tok, dtype, device)


def format_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """One user turn through the chat template with the generation prompt; raw text without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each formatted prompt (never empty: an empty prompt becomes <bos>/<eos>)."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    out = []
    for text in texts:
        ids = tokenizer(format_prompt(tokenizer, text), add_special_tokens=not templated)[
            "input_ids"
        ]
        if not ids:
            start = tokenizer.bos_token_id
            ids = [start if start is not None else tokenizer.eos_token_id]
        out.append(list(ids))
    return out
