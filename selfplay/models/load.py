"""Loading policies and judges: any HF model by path or hub name, or a tiny model by spec.

Names: a local directory or hub name goes to `AutoModelFor*.from_pretrained`;
`tiny:<spec>` (see `ModelSpec`) builds a random-init tiny model in code; a path
ending in `.gguf` (a llama.cpp file) is read by transformers' GGUF loader (needs
the `gguf` and `accelerate` packages: `pip install 'selfplay[real]'`), its
quantised weights de-quantised to float. That model is then rebuilt from its
config without the `quantization_config` and given the same state dict, so it
trains, checkpoints and `save_pretrained`s like any other (transformers refuses
to save a model it loaded from GGUF).

Safe loading: weights are read from safetensors only (`use_safetensors=True`),
never from pickle `.bin` checkpoints, and `trust_remote_code=False` is passed
explicitly, so loading a model runs no code that ships with it. A local
directory without a `*.safetensors` file is refused before transformers sees it.

Prompt rendering, the one rule (`render_prompt`): a message list, or a string
the caller asks to wrap as one user turn, goes through the tokenizer's chat
template with the generation prompt, and the rendered text is tokenized without
adding special tokens again (the template carries its own <bos>); a string not
wrapped is used as is and tokenized with the tokenizer's own special tokens.
Messages without a chat template are an `InputError`. `format_prompt` and
`encode_prompts` (the games, and any prompt a task did not render) wrap a string
exactly when the tokenizer has a chat template, the HF convention.
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
from selfplay.models.hub import is_local, offline_unless_reachable
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
GGUF_PACKAGES = ("gguf", "accelerate")


def is_gguf(name_or_path) -> bool:
    """Whether a model name is a llama.cpp `.gguf` file path."""
    return isinstance(name_or_path, str) and name_or_path.lower().endswith(".gguf")


def _gguf_parts(name: str) -> tuple[str, str]:
    p = Path(name).expanduser()
    return str(p.parent), p.name


def check_gguf_file(name: str) -> None:
    """InputError unless `name` is an existing file and the GGUF loader's packages import."""
    from importlib.util import find_spec

    if not Path(name).expanduser().is_file():
        raise InputError(f"model file {name} does not exist")
    missing = [m for m in GGUF_PACKAGES if find_spec(m) is None]
    if missing:
        raise InputError(
            f"loading {name} needs the {' and '.join(missing)} package(s): "
            f"pip install 'selfplay[real]'"
        )


def check_safetensors_dir(name_or_path: str) -> None:
    """InputError if `name_or_path` is a local directory holding no `*.safetensors` file.

    A name written as a path (absolute, or starting with `.` or `~`) must be an existing
    directory. Hub names pass; `from_pretrained(use_safetensors=True)` refuses those itself.
    A `.gguf` path must be an existing file (`check_gguf_file`).
    """
    if is_gguf(name_or_path):
        check_gguf_file(name_or_path)
        return
    from selfplay.models.lora import adapter_base, is_adapter_dir

    if is_adapter_dir(name_or_path):
        if not (Path(name_or_path) / "adapter_model.safetensors").is_file():
            raise InputError(f"adapter {name_or_path}: no adapter_model.safetensors")
        base = adapter_base(name_or_path)
        if not base.startswith(ModelSpec.PREFIX):
            check_safetensors_dir(base)
        return
    p = Path(name_or_path).expanduser()
    if name_or_path.startswith(("/", ".", "~")) and not p.is_dir():
        raise InputError(f"model directory {name_or_path} does not exist")
    if p.is_dir() and not any(p.glob("*.safetensors")):
        raise InputError(PICKLE_REFUSED.format(p))


def _gguf_pretrained(auto, path: str, what: str):
    """`auto.from_pretrained` of a `.gguf` file (an AutoTokenizer or AutoConfig): no
    remote code; a file transformers cannot read is an InputError naming `what`."""
    check_gguf_file(path)
    d, f = _gguf_parts(path)
    try:
        return auto.from_pretrained(d, gguf_file=f, trust_remote_code=False)
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise InputError(f"cannot load {what} {path!r}: {_first_line(e)}") from None


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a local directory or hub name; no remote code runs."""
    if is_gguf(name_or_path):
        return _gguf_pretrained(AutoTokenizer, name_or_path, "tokenizer")
    if not is_local(name_or_path):
        offline_unless_reachable()
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load tokenizer {name_or_path!r}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _from_gguf(auto_cls, name: str, what: str):
    """The model of a `.gguf` file, de-quantised, rebuilt as a plain (savable) model."""
    import copy

    check_gguf_file(name)
    d, f = _gguf_parts(name)
    try:
        loaded = auto_cls.from_pretrained(d, gguf_file=f, trust_remote_code=False)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as e:
        raise InputError(f"cannot load {what} {name!r}: {_first_line(e)}") from None
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = auto_cls.from_config(config, dtype=loaded.dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model.eval(), load_tokenizer(name)


def _from_pretrained(auto_cls, name: str, what: str):
    if is_gguf(name):
        return _from_gguf(auto_cls, name, what)
    check_safetensors_dir(name)
    if not is_local(name):
        offline_unless_reachable()
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its load report: the refusal below says it in one line
    hf_logging.disable_progress_bar()
    try:
        model, info = auto_cls.from_pretrained(
            name, use_safetensors=True, trust_remote_code=False, output_loading_info=True
        )
    except (OSError, ValueError, SafetensorError) as e:
        # ValueError: e.g. a config whose auto_map needs the repository's own code.
        if re.search(r"file named \S*\.safetensors", str(e)):
            raise InputError(PICKLE_REFUSED.format(name)) from None
        raise InputError(f"cannot load {what} {name!r}: {_first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()
    check_loading_info(info, name, what, model)
    return model, load_tokenizer(name)


def check_loading_info(info: dict, name: str, what: str, model) -> None:
    """InputError when transformers' loading info (`output_loading_info=True`) reports
    weights that the files lack (`missing_keys`: transformers initialised them at random)
    or hold in another shape (`mismatched_keys`). Tied weights (an lm_head tied to the
    embeddings) are not missing: transformers leaves them out of `missing_keys`."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ()
    )
    if not missing and not mismatched:
        return
    bad, how = (missing, "lacks") if missing else (mismatched, "has in another shape")
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise InputError(
        f"{what} {name!r} {how} weights a {type(model).__name__} needs ({shown}); they "
        f"would be random: is it another kind of model (a reward model where a causal LM "
        f"is wanted, or the reverse)?"
    )


def check_model_weights(name: str, what: str, kind: str = "causal") -> None:
    """Load `name` once (`causal`: as a causal LM, else as a sequence classifier) and
    refuse it when weights are missing (`check_loading_info`); the model is dropped."""
    auto_cls = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    _from_pretrained(auto_cls, name, what)


def load_policy(
    name_or_path: str | ModelSpec, *, dtype: str = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(causal LM in eval mode, tokenizer) from a path, hub name, `tiny:<spec>`, ModelSpec,
    a LoRA adapter directory (its base with the adapter merged in) or an `Adapted` spec
    (the base wrapped by peft: `selfplay.models.lora`)."""
    from selfplay.models import lora

    if isinstance(name_or_path, lora.Adapted):
        model, tok = load_policy(name_or_path.base, dtype=dtype, device=device)
        spec = name_or_path
        return lora.apply_lora(model, spec.lora, spec.seed, spec.base_name()), tok
    if lora.is_adapter_dir(name_or_path):
        base, tok = load_policy(lora.adapter_base(name_or_path), dtype=dtype, device=device)
        if any(Path(name_or_path).glob("tokenizer*")):
            tok = load_tokenizer(name_or_path)
        return lora.load_adapter(name_or_path, base), tok
    if isinstance(name_or_path, ModelSpec) or name_or_path.startswith(ModelSpec.PREFIX):
        spec = (
            name_or_path if isinstance(name_or_path, ModelSpec) else ModelSpec.parse(name_or_path)
        )
        return _finish(spec.causal_lm(), spec.tokenizer(), dtype, device)
    model, tok = _from_pretrained(AutoModelForCausalLM, name_or_path, "model")
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
        model, tok = _from_pretrained(AutoModelForSequenceClassification, name_or_path, "model")
    if model.config.num_labels != 1:
        raise InputError(
            f"judge model {name_or_path!s} has {model.config.num_labels} labels; "
            "a reward or pairwise judge needs exactly one logit"
        )
    return _finish(model, tok, dtype, device)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt, *, wrap: bool) -> tuple[str, bool]:
    """(rendered text, templated) of a raw prompt: a string or a list of {role, content}.

    Messages, and a string with `wrap`, go through the chat template with the
    generation prompt (templated: True); a string without `wrap` is returned as is.
    InputError when the template is needed and the tokenizer has none.
    """
    if isinstance(prompt, str) and not wrap:
        return prompt, False
    if not has_chat_template(tokenizer):
        what = "a string prompt wrapped as a user turn" if isinstance(prompt, str) else "messages"
        raise InputError(
            f"{what} need the tokenizer's chat template, and {_tokenizer_name(tokenizer)} has none"
        )
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return text, True


def _tokenizer_name(tokenizer) -> str:
    return repr(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def encode_rendered(tokenizer: PreTrainedTokenizerBase, text: str, templated: bool) -> list[int]:
    """Token ids of a rendered prompt (never empty: an empty prompt becomes <bos>/<eos>).

    Quiet (`verbose=False`): a prompt longer than the model's limit is the caller's
    to count and refuse (`task.max_prompt_tokens`), not transformers' to warn about."""
    ids = list(tokenizer(text, add_special_tokens=not templated, verbose=False)["input_ids"])
    if not ids:
        start = tokenizer.bos_token_id
        ids = [start if start is not None else tokenizer.eos_token_id]
    return ids


def load_model_config(name_or_path: str, what: str):
    """A model's config alone (no weights, no remote code): InputError naming `what`."""
    from transformers import AutoConfig

    if is_gguf(name_or_path):
        return _gguf_pretrained(AutoConfig, name_or_path, what)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load {what} {name_or_path!r}: {_first_line(e)}") from None


def load_generation_config(name_or_path: str):
    """A model directory's generation config (its eos ids), or None where it has none
    (a `.gguf` file: its tokenizer's eos)."""
    from transformers import GenerationConfig

    if is_gguf(name_or_path):
        return None
    try:
        return GenerationConfig.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError):
        return None


def format_prompt(tokenizer: PreTrainedTokenizerBase, text) -> str:
    """The prompt rendered by the HF convention: wrapped as a user turn when the
    tokenizer has a chat template, raw text without one."""
    return render_prompt(tokenizer, text, wrap=has_chat_template(tokenizer))[0]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: list) -> list[list[int]]:
    """Token ids of each prompt rendered by `format_prompt`'s convention."""
    wrap = has_chat_template(tokenizer)
    return [encode_rendered(tokenizer, *render_prompt(tokenizer, t, wrap=wrap)) for t in texts]


def check_lora_targets(spec: object) -> None:
    """InputError, before any actor starts, when an `Adapted` spec (`models.lora`) targets
    modules its base lacks. The base is built on the meta device from its config (no
    weights read)."""
    from selfplay.models import lora

    if not isinstance(spec, lora.Adapted) or isinstance(spec.lora.target_modules, str):
        return
    base = spec.base
    config = base.causal_lm().config if isinstance(base, ModelSpec) else None
    config = config or load_model_config(str(base), "model")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    lora.check_targets(model, spec.lora)
