"""conf/: every YAML config loads with `load_config` (the same path as `selfplay train`),
and the GPU configs ask for exactly the node they are written for.

The GPU configs cannot run here (no GPU, no vLLM, no hub); what is checked is what can
be without one: they validate, they are the setting their header promises (vLLM rollouts,
FSDP2 learners, bf16, the UltraFeedback prompts and a one-logit reward judge), and their
actors fit on 1 or 8 GPUs and not on fewer (`run_needs` / `shortfall`, the arithmetic
`selfplay train` runs before Ray starts).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from selfplay.config import load_config
from selfplay.runtime.resources import run_needs, shortfall

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "conf").rglob("*.yaml"))
GPU = {"qwen0.5b-1gpu.yaml": 1, "qwen0.5b-8gpu.yaml": 8}


def test_conf_has_the_configs():
    names = {p.relative_to(ROOT / "conf").as_posix() for p in CONFIGS}
    assert {"quickstart.yaml", "tests/converge.yaml", *(f"gpu/{n}" for n in GPU)} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_config_validates(path):
    cfg = load_config(path)
    assert load_config(path, []).model_dump() == cfg.model_dump()


@pytest.mark.parametrize("name", sorted(GPU))
def test_gpu_config_is_the_promised_setting(name):
    path = ROOT / "conf" / "gpu" / name
    header = path.read_text().splitlines()[0]
    assert header.startswith("# NOT RUN"), header  # says it cannot run here, first thing
    cfg = load_config(path)
    assert cfg.model.name == "Qwen/Qwen2.5-0.5B-Instruct" and cfg.model.dtype == "bfloat16"
    t = cfg.task
    assert (t.kind, t.dataset, t.prompt_column, t.split, t.eval_split) == (
        "prompts",
        "HuggingFaceH4/ultrafeedback_binarized",
        "prompt",
        "train_prefs",
        "test_prefs",
    )
    assert (cfg.judge.kind, cfg.judge.model) == ("reward", "trl-lib/Qwen2-0.5B-Reward")
    assert cfg.rollout.backend == "vllm" and cfg.learner.strategy == "fsdp2"
    assert cfg.rollout.num_gpus > 0 and cfg.learner.num_gpus > 0


@pytest.mark.parametrize("name,gpus", sorted(GPU.items()))
def test_gpu_config_fits_its_node_and_no_smaller(name, gpus):
    cfg = load_config(ROOT / "conf" / "gpu" / name)
    needs = run_needs(cfg)
    # Hand count: shards × learner GPUs + workers × rollout GPUs is the node's GPUs.
    r, lc = cfg.rollout, cfg.learner
    assert lc.shards * lc.num_gpus + r.workers * r.num_gpus == gpus
    node = {"CPU": float(cfg.runtime.num_cpus), "GPU": float(gpus)}
    assert shortfall(needs, node, [node]) is None
    smaller = {**node, "GPU": gpus - 0.5}
    why = shortfall(needs, smaller, [smaller])
    assert why is not None and "GPU" in why
