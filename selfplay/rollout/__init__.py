"""Generation backends (hf, vllm) behind `GenerationBackend`; `make_backend` picks one.

Backends import lazily: `import selfplay.rollout` pulls in neither transformers
nor vllm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from selfplay.errors import InputError

if TYPE_CHECKING:
    from selfplay.models.tiny import ModelSpec
    from selfplay.rollout.base import GenerationBackend

BackendKind = Literal["hf", "vllm"]


def make_backend(kind: BackendKind, model: str | ModelSpec, *, device: str = "cpu",
                 dtype: str = "float32", **engine_kwargs) -> GenerationBackend:
    """An empty backend for `model` (a path, hub name, `tiny:<spec>` or ModelSpec).

    No version is loaded yet: push weights with `load_weights(version, flat)`.
    `engine_kwargs` go to `vllm.LLM` (vllm only).
    """
    if kind == "hf":
        if engine_kwargs:
            raise InputError(f"hf backend takes no engine options, got {sorted(engine_kwargs)}")
        from selfplay.rollout.hf import HFBackend

        return HFBackend.from_name(model, device=device, dtype=dtype)
    if kind == "vllm":
        from selfplay.rollout.vllm import VLLMBackend

        return VLLMBackend(model, dtype=dtype, **engine_kwargs)
    raise InputError(f"unknown rollout backend {kind!r}; expected 'hf' or 'vllm'")
