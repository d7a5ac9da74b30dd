"""What a run leaves for people to use: the final policy and its rollouts.

- `export_policy`: RUN_DIR/model/, the final policy written with `save_pretrained`
  (safetensors) next to its tokenizer and generation config, so that
  `AutoModelForCausalLM.from_pretrained(RUN_DIR/model)` and vLLM load it as they
  load any checkpoint. Written to a temporary directory and renamed into place:
  an interrupted export leaves the previous `model/` (or none), never half of one.
- `keep_policy`: RUN_DIR/policies/step-N/, a weights-only policy written the same way
  every `runtime.keep_policies_every` steps (never pruned), so a run's iterates form
  a league for `selfplay eval --league RUN_DIR`.
- `write_rollouts`: RUN_DIR/rollouts/step-NNNNNN.parquet, one row per trained-on
  response and per opponent sample of the step's phases (columns in `COLUMNS`),
  written atomically as well.
- `completions_table`: the few trained-on rows of a step that MLflow shows as a
  table (prompt, response, ĝ, version).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MODEL_DIR = "model"
MERGED_DIR = "model-merged"  # `selfplay export --merge` of a LoRA run
POLICIES_DIR = "policies"
ROLLOUT_DIR = "rollouts"
#: parquet columns, in order; `g` is null on opponent rows.
COLUMNS = (
    "step",
    "phase",
    "role",
    "prompt_id",
    "prompt",
    "response",
    "response_tokens",
    "truncated",
    "sampler_version",
    "g",
)


def export_policy(
    flat,
    build_model: Callable[[], object],
    tokenizer,
    run_dir: Path,
    out: Path | None = None,
    merge: bool = False,
) -> Path:
    """Write `flat` (the final policy's FlatWeights) as `out` (default RUN_DIR/model/)
    and return it. Under LoRA `flat` is the adapter, written as peft writes one
    (adapter_config.json naming the base, adapter_model.safetensors); merge=True writes
    the base with the adapter folded in, a plain model, instead.

    build_model: zero-argument callable returning a model of the policy's architecture
    (its weights are replaced); tokenizer: the policy's tokenizer."""
    from transformers.utils import logging as hf_logging

    from selfplay.models.lora import is_lora, merged, version_tensors

    hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards": noise here
    model = build_model()
    missing, unexpected = model.load_state_dict(flat.to_state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    carried = set(version_tensors(model))  # under LoRA the base is the model's own
    if unexpected or [k for k in missing if k not in tied and k in carried]:
        raise ValueError(
            f"final weights do not fit the policy: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if merge and is_lora(model):
        model = merged(model)
    out = run_dir / MODEL_DIR if out is None else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        # An adapter on the output layer: its base weights are the base model's, not saved.
        extra = {"save_embedding_layers": False} if is_lora(model) else {}
        model.save_pretrained(tmp, safe_serialization=True, **extra)
        tokenizer.save_pretrained(tmp)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def policy_dir(run_dir: Path, step: int) -> Path:
    """RUN_DIR/policies/step-N: where the policy kept after step N lives."""
    return Path(run_dir) / POLICIES_DIR / f"step-{int(step)}"


def keep_policy(flat, build_model: Callable[[], object], tokenizer, run_dir: Path, step: int):
    """The policy after `step` steps as RUN_DIR/policies/step-N/ (`export_policy`'s
    format: safetensors, config, tokenizer; atomic; never pruned)."""
    return export_policy(flat, build_model, tokenizer, run_dir, policy_dir(run_dir, step))


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing an existing `dst` (each rename is atomic)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}-old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_rollouts(tables: list, run_dir: Path, step: int) -> Path | None:
    """Concatenate the step's row tables (pyarrow, `COLUMNS`) into one parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return None
    out_dir = run_dir / ROLLOUT_DIR
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"step-{step:06d}.parquet"
    tmp = out_dir / f".{path.name}.tmp-{os.getpid()}"
    try:
        pq.write_table(pa.concat_tables(tables).select(list(COLUMNS)), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def completions_table(tables: list, limit: int = 8) -> dict[str, list] | None:
    """Up to `limit` trained-on rows of a step: what MLflow's table view shows."""
    cols: dict[str, list] = {"step": [], "prompt": [], "response": [], "g": [], "version": []}
    for t in tables:
        if t is None:
            continue
        d = t.to_pydict()
        for i, role in enumerate(d["role"]):
            if role == "trained" and len(cols["step"]) < limit:
                cols["step"].append(d["step"][i])
                cols["prompt"].append(d["prompt"][i])
                cols["response"].append(d["response"][i])
                cols["g"].append(d["g"][i])
                cols["version"].append(d["sampler_version"][i])
    return cols if cols["step"] else None


def export_from_checkpoint(
    run_dir: str | Path, out: Path | None = None, merge: bool = False
) -> tuple[Path, int]:
    """Write RUN_DIR/model/ (or `out`) from the run's newest intact checkpoint, without
    Ray: the policy's weights after that step, exactly as the run would have exported
    them. Returns (the model dir, the checkpoint's step). InputError for a run dir
    another process trains in, one without a checkpoint, or one sharded over several
    learners (its `--resume` exports it)."""
    from selfplay.config import Config
    from selfplay.errors import InputError
    from selfplay.models.lora import trained_parameters
    from selfplay.models.weights import flatten_state_dict
    from selfplay.runtime.checkpoint.codec import unpack_learner_state
    from selfplay.runtime.checkpoint.format import CHECKPOINT_DIR, load_latest
    from selfplay.runtime.driver.build import _build_model, _tokenizer, model_spec
    from selfplay.runtime.driver.resume import learner_files
    from selfplay.runtime.driver.rundir import lock_run_dir
    from selfplay.tasks import make_task

    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise InputError(f"{d}: not a selfplay run directory (no config.yaml)")
    lock_run_dir(d)  # not while a run trains in it
    ckpt = load_latest(d / CHECKPOINT_DIR)
    try:
        cfg = Config.model_validate(ckpt.meta["config"])
        ranks = ckpt.meta["controller"]["learners"]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{d}: checkpoint {ckpt.path.name} holds no valid config") from None
    if len(ranks) != 1:
        raise InputError(
            f"{d}: checkpoint {ckpt.path.name} is sharded over {len(ranks)} learners; "
            f"`selfplay train --resume {d} runtime.steps={ckpt.step + 1}` exports its model"
        )
    state = unpack_learner_state(learner_files(ckpt.tensors, 0), ranks[0])
    spec = model_spec(cfg, make_task(cfg.task))
    model = _build_model(spec, cfg.model.dtype)
    names = [n for n, _ in trained_parameters(model)]
    if len(names) != len(state.params):
        raise InputError(
            f"{d}: checkpoint {ckpt.path.name} holds {len(state.params)} tensors, the "
            f"policy {len(names)}"
        )
    flat = flatten_state_dict(dict(zip(names, state.params, strict=True)))
    build = functools.partial(_build_model, spec, cfg.model.dtype)
    return export_policy(flat, build, _tokenizer(cfg, spec), d, out, merge), ckpt.step
