"""Which policies `selfplay eval` compares: POLICY arguments resolved to weights.

A POLICY argument is one of
- a run dir (it holds config.yaml): its final policy RUN_DIR/model, named `final`;
- `RUN_DIR:STEP`: the policy the run kept after STEP steps (RUN_DIR/policies/step-N,
  written every `runtime.keep_policies_every` steps), named `step-N`;
- a model directory (safetensors weights), named by the path given.

A run's reference π_ref is its initial policy, rebuilt from RUN_DIR/config.yaml:
`model.name: tiny` is a tiny model built in code from `model.tiny` (seeded, so the
same weights as at the start of the run), any other name is that model directory
(a run records it absolute, `selfplay.config_paths`; a relative one, left by an older
run, is read from the current directory).

A policy's identity (the sample cache's key) is the SHA-256 of its config.json and
weight files, or of the tiny spec's name. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from selfplay.errors import InputError

RUN_CONFIG = "config.yaml"


@dataclass(frozen=True)
class Policy:
    """name: as reported; source: a model directory or a tiny `ModelSpec`;
    identity: hex digest of the weights (what the sample cache is keyed by)."""

    name: str
    source: object  # str (directory) | ModelSpec
    identity: str


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_CONFIG).is_file()


def read_run_config(run_dir: str | Path, overrides: list[str] | None = None):
    """The run's `Config` (RUN_DIR/config.yaml) with dotted overrides."""
    from selfplay.config import load_config

    return load_config(Path(run_dir) / RUN_CONFIG, overrides or [])


def kept_steps(run_dir: str | Path) -> list[int]:
    """Steps whose policy the run kept (RUN_DIR/policies/step-N with weights), ascending."""
    from selfplay.runtime.driver.export import POLICIES_DIR

    out = []
    for d in (Path(run_dir) / POLICIES_DIR).glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", d.name)
        if m and any(d.glob("*.safetensors")):
            out.append(int(m.group(1)))
    return sorted(out)


def identity(source) -> str:
    """SHA-256 of a model directory's config.json (a LoRA adapter's adapter_config.json,
    which names its base) and *.safetensors files (sorted by name), of a model file
    (`.gguf`), or of a tiny spec's name."""
    from selfplay.models.lora import ADAPTER_CONFIG

    h = hashlib.sha256()
    if not isinstance(source, str):
        h.update(f"tiny:{source.name}".encode())
        return h.hexdigest()
    d = Path(source)
    files = (
        [d] if d.is_file() else [d / "config.json", d / ADAPTER_CONFIG, *d.glob("*.safetensors")]
    )
    for f in sorted(files):
        if f.is_file():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
    return h.hexdigest()


def model_dir(path: str, what: str) -> str:
    """`path` checked as a policy directory with safetensors weights (one line if not)."""
    from selfplay.models.load import check_safetensors_dir

    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(f"{what} {path}: no such run dir or model directory")
    check_safetensors_dir(str(p))
    return str(p)


def final_policy(run_dir: str | Path, name: str = "final") -> Policy:
    from selfplay.runtime.driver.export import MODEL_DIR

    d = Path(run_dir) / MODEL_DIR
    if not any(d.glob("*.safetensors")):
        raise InputError(f"run {run_dir} has no final policy ({d}): did it finish?")
    return Policy(name, str(d), identity(str(d)))


def kept_policy(run_dir: str | Path, step: int) -> Policy:
    from selfplay.runtime.driver.export import policy_dir

    kept = kept_steps(run_dir)
    if step not in kept:
        have = ", ".join(map(str, kept)) if kept else "none (runtime.keep_policies_every: 0)"
        raise InputError(f"run {run_dir} kept no policy at step {step}; kept steps: {have}")
    d = str(policy_dir(run_dir, step))
    return Policy(f"step-{step}", d, identity(d))


def reference_policy(cfg) -> Policy:
    """π_ref of a run with config `cfg`: its initial policy."""
    if cfg.model.name == "tiny":
        from selfplay.runtime.driver.build import model_spec
        from selfplay.tasks import make_task

        spec = model_spec(cfg, make_task(cfg.task))
        spec = getattr(spec, "base", spec)  # a LoRA run's π_ref: the base, adapter off
        return Policy("reference", spec, identity(spec))
    path = Path(cfg.model.name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":  # a llama.cpp file (models.load)
        return Policy("reference", str(path), identity(str(path)))
    if not path.is_dir():
        raise InputError(
            f"the run's initial policy {cfg.model.name} (model.name) is not a directory "
            f"from here; give it with --reference PATH"
        )
    return Policy("reference", model_dir(str(path), "reference"), identity(str(path)))


def resolve(arg: str) -> Policy:
    """One POLICY argument: RUN_DIR, RUN_DIR:STEP or a model directory."""
    m = re.fullmatch(r"(.+):(\d+)", arg)
    if m and is_run_dir(m.group(1)):
        return kept_policy(m.group(1), int(m.group(2)))
    if m and not Path(arg).exists():
        raise InputError(f"policy {arg}: {m.group(1)} is not a run dir (no {RUN_CONFIG})")
    if is_run_dir(arg):
        return final_policy(arg)
    d = model_dir(arg, "policy")
    return Policy(arg, d, identity(d))


def league(run_dir: str | Path, reference: Policy) -> list[Policy]:
    """Every policy of a run: its reference, each kept step-N, and its final policy
    (a kept policy with the final one's weights, the last step's, is left out)."""
    final = final_policy(run_dir)
    kept = [kept_policy(run_dir, s) for s in kept_steps(run_dir)]
    return [reference, *(p for p in kept if p.identity != final.identity), final]


def unique_names(policies: list[Policy], args: list[str]) -> list[Policy]:
    """Names made distinct: a policy whose name repeats another's is named by its
    argument instead (two runs' `final`s, say)."""
    names = [p.name for p in policies]
    out = []
    for p, a in zip(policies, args, strict=True):
        out.append(Policy(a, p.source, p.identity) if names.count(p.name) > 1 else p)
    if len({p.name for p in out}) < len(out):
        raise InputError(f"policies given twice: {', '.join(a for a in args)}")
    return out


def _arch(source) -> tuple:
    from selfplay.models.lora import adapter_base, is_adapter_dir
    from selfplay.models.tiny import ModelSpec

    if is_adapter_dir(source):  # a LoRA adapter: its base's architecture
        source = adapter_base(source)
    if isinstance(source, str) and source.startswith(ModelSpec.PREFIX):
        source = ModelSpec.parse(source)
    if isinstance(source, str):
        from selfplay.models.load import load_model_config

        c = load_model_config(source, "policy")
    else:
        c = source.causal_lm().config
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    return tuple(getattr(c, k, None) for k in keys)


def check_compatible(policies, bound) -> None:
    """Every policy is sampled by workers built on the base model, on prompts tokenized
    by the base tokenizer: each must share both."""
    from selfplay.models.load import load_tokenizer

    arch, vocab = _arch(bound.spec), bound.tokenizer.get_vocab()
    for p in policies:
        if p.source == bound.spec:
            continue
        if _arch(p.source) != arch:
            raise InputError(
                f"policy {p.name} has another architecture than the base model "
                f"{bound.spec if isinstance(bound.spec, str) else 'tiny'}; selfplay eval "
                "compares policies of one architecture"
            )
        if isinstance(p.source, str) and load_tokenizer(p.source).get_vocab() != vocab:
            raise InputError(
                f"policy {p.name} has another tokenizer than the base model; selfplay eval "
                "samples every policy on the same prompt tokens"
            )
