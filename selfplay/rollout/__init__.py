"""Generation backends (hf, vllm) behind `GenerationBackend`; `make_backend` picks one.

Backends import lazily: `import selfplay.rollout` pulls in neither transformers
nor vllm. Backend names are looked up in `BACKENDS`, an explicit table of
selfplay's own backends, never imported by string.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from selfplay.errors import InputError

if TYPE_CHECKING:
    from selfplay.models.tiny import ModelSpec
    from selfplay.rollout.base import GenerationBackend

BackendKind = Literal["hf", "vllm"]


def _hf(model, device: str, dtype: str, engine_kwargs: dict) -> GenerationBackend:
    if engine_kwargs:
        raise InputError(f"hf backend takes no engine options, got {sorted(engine_kwargs)}")
    from selfplay.rollout.hf import HFBackend

    return HFBackend.from_name(model, device=device, dtype=dtype)


def _vllm(model, device: str, dtype: str, engine_kwargs: dict) -> GenerationBackend:
    # Same rules as selfplay.models.load: safetensors weights only, no remote code.
    if engine_kwargs.get("trust_remote_code"):
        raise InputError("vllm backend: trust_remote_code is not allowed (no model code is run)")
    fmt = engine_kwargs.setdefault("load_format", "safetensors")
    if fmt != "safetensors":
        raise InputError(f"vllm backend: load_format must be 'safetensors', got {fmt!r}")
    engine_kwargs["trust_remote_code"] = False
    from selfplay.models.load import check_safetensors_dir
    from selfplay.models.tiny import ModelSpec

    if isinstance(model, str) and not model.startswith(ModelSpec.PREFIX):
        check_safetensors_dir(model)
    from selfplay.rollout.vllm import VLLMBackend

    return VLLMBackend(model, dtype=dtype, **engine_kwargs)


def check_vllm() -> None:
    """One line, before any actor starts, when vLLM cannot run on this machine: it is
    not installed, or no CUDA GPU is visible (vLLM has no CPU path here)."""
    from importlib.util import find_spec

    problems = []
    if find_spec("vllm") is None:
        problems.append("vLLM is not installed (pip install -e '.[vllm]')")
    import torch

    if not torch.cuda.is_available():
        problems.append("vLLM needs a CUDA GPU and none is visible")
    if problems:
        raise InputError(f"rollout.backend=vllm: {'; '.join(problems)}; use rollout.backend=hf")


# The allow-list: every generation backend selfplay can build, and nothing else.
BACKENDS = {"hf": _hf, "vllm": _vllm}


def make_backend(
    kind: BackendKind,
    model: str | ModelSpec,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    **engine_kwargs,
) -> GenerationBackend:
    """An empty backend for `model` (a path, hub name, `tiny:<spec>` or ModelSpec).

    No version is loaded yet: push weights with `load_weights(version, flat)`.
    `engine_kwargs` go to `vllm.LLM` (vllm only); there `load_format` is
    safetensors and `trust_remote_code` is False, whatever is passed.
    """
    build = BACKENDS.get(kind) if isinstance(kind, str) else None
    if build is None:
        raise InputError(f"unknown rollout backend {kind!r}; expected one of {', '.join(BACKENDS)}")
    return build(model, device, dtype, dict(engine_kwargs))
