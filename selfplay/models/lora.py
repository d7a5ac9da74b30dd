"""LoRA: the policy as a frozen base model plus a low-rank adapter (peft).

With `model.lora` set, every holder of the policy (the learner, each rollout worker,
export) builds the same `Adapted` spec: the base model, wrapped by
`peft.get_peft_model` with

    W x  ↦  W x + (α / r) · B A x,   A ∈ R^{r×d_in}, B ∈ R^{d_out×r}, B₀ = 0

on every targeted linear layer (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models"). The base weights W never change; a policy version is the adapter
(A, B) only, and π_ref is the base model with the adapter switched off
(`PeftModel.disable_adapter`): since B₀ = 0, π_0 = π_ref exactly.

Deviation from peft's defaults: `lora_dropout` is always 0. The learner keeps the
model in eval mode (its log-probs must be exact, `selfplay.runtime.learner.learner`),
so a dropout would never act.

Adapter directories (`is_adapter_dir`): a peft `save_pretrained` output,
`adapter_config.json` + `adapter_model.safetensors`, whose `base_model_name_or_path`
names the base (`Adapted.base_name`) (a path, a hub name or a `tiny:` spec). `load_policy` loads one as the
base with the adapter merged in, so `selfplay eval` and `selfplay export` take it
wherever they take a model directory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from selfplay.errors import InputError

ADAPTER_CONFIG = "adapter_config.json"
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoraSpec:
    """r: the rank; alpha: the scale numerator (the update is α/r · BA); target_modules:
    module-name suffixes to adapt, or "all-linear" (every linear layer but the output)."""

    r: int = 16
    alpha: float = 32.0
    target_modules: tuple[str, ...] | str = ALL_LINEAR

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")

    def peft_config(self):
        from peft import LoraConfig

        targets = self.target_modules
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=0.0,
            bias="none",
            target_modules=targets if isinstance(targets, str) else list(targets),
        )


@dataclass(frozen=True)
class Adapted:
    """A policy spec: `base` (what `load_policy` takes) under the LoRA adapter `lora`,
    initialised from `seed` (every holder builds the same A₀; B₀ = 0)."""

    base: object  # str | ModelSpec
    lora: LoraSpec
    seed: int = 0

    def base_name(self) -> str:
        """The base as a name a later `load_policy` resolves: an absolute path for a local
        directory or file, a `tiny:` spec for a tiny model, else the hub name."""
        b = self.base
        if hasattr(b, "name") and callable(b.name):
            return b.name()
        p = Path(str(b)).expanduser()
        return str(p.resolve()) if p.exists() else str(b)


def linear_names(model: torch.nn.Module) -> list[str]:
    """The last name part of every linear layer of `model`, sorted, once each."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m)})


def _is_linear(m: torch.nn.Module) -> bool:
    return isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"  # GPT-2's linears


def check_targets(model: torch.nn.Module, lora: LoraSpec) -> None:
    """InputError naming the targets no linear layer of `model` answers to."""
    if isinstance(lora.target_modules, str):
        return
    have = set(linear_names(model))
    unknown = [t for t in lora.target_modules if t not in have]
    if unknown:
        raise InputError(
            f"model.lora.target_modules: {', '.join(unknown)} name no linear layer of the "
            f"model (it has: {', '.join(sorted(have))})"
        )


def apply_lora(
    model: torch.nn.Module, lora: LoraSpec, seed: int = 0, base_name: str | None = None
) -> torch.nn.Module:
    """`model` wrapped by peft with the adapter `lora` (base frozen, adapter trainable),
    A₀ drawn from `seed` whatever the global RNG holds, `base_name` recorded as the base
    its `save_pretrained` names. The model is in eval mode."""
    from peft import get_peft_model

    check_targets(model, lora)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = get_peft_model(model, lora.peft_config())
    if base_name is not None:
        for cfg in wrapped.peft_config.values():
            cfg.base_model_name_or_path = base_name
    return wrapped.eval()


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def version_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a published version of `model` holds: its adapter's tensors under LoRA, its
    whole state dict otherwise. The names are the model's own (`named_parameters`)."""
    if is_lora(model):
        return {n: p for n, p in model.named_parameters() if _is_adapter(n)}
    return dict(model.state_dict())


def trained_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters training moves, in model order: every one of a plain model, the
    adapter's under LoRA (peft freezes the base). The learner trains, stores and
    checkpoints these; a checkpoint's tensors are named by them."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def is_base(named: Sequence[tuple[str, torch.Tensor]]) -> bool:
    """Whether these adapter tensors leave the base model unchanged (every B is 0)."""
    return all(not bool(t.any()) for n, t in named if ".lora_B." in n)


def is_adapter_dir(name_or_path: object) -> bool:
    return isinstance(name_or_path, str) and (Path(name_or_path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str) -> str:
    """The base model an adapter directory names (InputError when it names none)."""
    try:
        base = json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise InputError(f"adapter {path}: unreadable {ADAPTER_CONFIG} ({e})") from None
    if not base:
        raise InputError(f"adapter {path}: {ADAPTER_CONFIG} names no base_model_name_or_path")
    return str(base)


def load_adapter(path: str, base_model: torch.nn.Module) -> torch.nn.Module:
    """`base_model` with the LoRA adapter of directory `path` merged in (a plain model).

    Read as data, not through `PeftModel.from_pretrained`: the config's LoRA fields
    build the adapter, and its weights come from `adapter_model.safetensors` only (never
    a pickled `.bin`). A key the model has no place for, or an adapter weight the file
    lacks, is an InputError."""
    import dataclasses

    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = Path(path) / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(
            f"adapter {path}: no adapter_model.safetensors (pickled weights are refused)"
        )
    raw = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    if raw.get("peft_type", "LORA") != "LORA":
        raise InputError(f"adapter {path}: a {raw.get('peft_type')} adapter; only LoRA loads here")
    fields = {f.name for f in dataclasses.fields(LoraConfig)} - {
        "peft_type",
        "base_model_name_or_path",
    }
    try:
        config = LoraConfig(**{k: v for k, v in raw.items() if k in fields})
        wrapped = get_peft_model(base_model, config)
        result = set_peft_model_state_dict(wrapped, load_file(weights))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"adapter {path} does not fit its base model: {first}") from None
    lost = [k for k in result.missing_keys if _is_adapter(k)]
    if result.unexpected_keys or lost:
        bad = (result.unexpected_keys or lost)[:3]
        raise InputError(f"adapter {path} does not fit its base model: {bad}")
    return wrapped.merge_and_unload().eval()


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A plain model with the adapter folded into the base weights (W + α/r·BA); the
    adapted model is left as it was."""
    import copy

    return copy.deepcopy(model).merge_and_unload().eval()
