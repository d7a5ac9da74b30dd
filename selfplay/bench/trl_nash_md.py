"""TRL's `NashMDTrainer` on a saved policy, reward model and prompt file: the TRL side of
`selfplay bench trl` (selfplay/bench/trl_compare.py).

Run it with the Python of a venv that has TRL (`make bench-trl` creates `.venv-trl` with
`trl==1.0.*` and the CPU torch); selfplay never imports this module. selfplay is not
installed in that venv: the script puts this checkout on `sys.path` and loads the three
models through `selfplay.models.load` (import-light: torch, transformers, safetensors,
all TRL dependencies too), the loader every selfplay run uses (safetensors only, no
remote code), so both sides read the same directories the same way:

    .venv-trl/bin/python selfplay/bench/trl_nash_md.py --policy DIR --reward DIR \\
        --prompts FILE.jsonl --steps 24 --warmup 8

One TRL step = `per_device_train_batch_size` prompts: per prompt one completion from the
policy and one from the geometric mixture of policy and reference (`GeometricMixtureWrapper`,
which runs both models per token without a KV cache), both scored by the reward model
(P = σ(r_a − r_b)), then log-probs of the policy completion under policy and reference,
the REINFORCE loss with the KL term, backward and one AdamW step.

Prompts are given as one user message each, so TRL renders them through the tokenizer's
chat template, the same token ids selfplay's prompts task feeds the policy.

Timing: a `TrainerCallback` notes `time.perf_counter()` at the end of every optimizer step;
the throughput is the marginal rate over the steps after `--warmup` (start-up, model
loading and the first steps' allocations excluded):
    prompts/s = batch · (steps − warmup) / (t[steps] − t[warmup]).
The last line of stdout is one JSON object.

Patch (documented, applied only where needed): TRL 1.0's `GeometricMixtureWrapper` is a bare
`GenerationMixin`; transformers ≥ 5.14's `generate` calls `self.get_experts_implementation()`,
which the wrapper lacks, so the mixture generation fails with AttributeError. We give the
wrapper a method that delegates to its wrapped policy model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout this script sits in


def _patch_mixture_wrapper(wrapper_cls) -> list[str]:
    """Delegate the model hooks transformers' `generate` asks of the wrapper to its model."""
    patched = []
    for name in ("get_experts_implementation",):
        if not hasattr(wrapper_cls, name):

            def delegate(self, *args, _name=name, **kwargs):
                return getattr(self.model, _name)(*args, **kwargs)

            setattr(wrapper_cls, name, delegate)
            patched.append(name)
    return patched


def _read_prompts(path: str) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["prompt"])
    if not out:
        raise SystemExit(f"no prompts in {path}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--reward", required=True)
    ap.add_argument("--prompts", required=True, help="JSONL with a string `prompt` per line")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="prompts per step")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--mixture-coef", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="TRL's default for its online trainers; off here (pure overhead on a tiny model, "
        "and it turns off the KV cache of the policy's generation)",
    )
    a = ap.parse_args(argv)
    if not 0 <= a.warmup < a.steps:
        raise SystemExit("need 0 <= --warmup < --steps")

    import torch

    torch.set_num_threads(a.threads)
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.nash_md import NashMDConfig, NashMDTrainer
    from trl.experimental.nash_md import nash_md_trainer as nmd

    sys.path.insert(0, str(REPO))
    from selfplay.models.load import load_classifier, load_policy

    patched = _patch_mixture_wrapper(nmd.GeometricMixtureWrapper)

    policy, tok = load_policy(a.policy)
    ref, _ = load_policy(a.policy)
    reward, _ = load_classifier(a.reward)
    texts = _read_prompts(a.prompts)
    need = a.steps * a.batch
    rows = [texts[i % len(texts)] for i in range(need)]
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": t}] for t in rows]})

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        cfg = NashMDConfig(
            output_dir=out,
            per_device_train_batch_size=a.batch,
            gradient_accumulation_steps=1,
            max_new_tokens=a.max_new_tokens,
            max_steps=a.steps,
            learning_rate=a.lr,
            beta=a.beta,
            mixture_coef=a.mixture_coef,
            missing_eos_penalty=None,
            temperature=1.0,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            seed=a.seed,
            disable_tqdm=True,
            gradient_checkpointing=a.gradient_checkpointing,
        )
        trainer = NashMDTrainer(
            model=policy,
            ref_model=ref,
            reward_funcs=reward,
            args=cfg,
            train_dataset=data,
            processing_class=tok,
            callbacks=[Clock()],
        )
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    if len(marks) != a.steps:
        raise SystemExit(f"expected {a.steps} step marks, got {len(marks)}")
    span = marks[-1] - marks[a.warmup - 1] if a.warmup else marks[-1] - t0
    res = {
        "side": "trl",
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "threads": a.threads,
        "patched": patched,
        "prompts_per_step": a.batch,
        "steps": a.steps,
        "warmup": a.warmup,
        "max_new_tokens": a.max_new_tokens,
        "completions_per_prompt": 2,
        "gradient_checkpointing": a.gradient_checkpointing,
        "seconds_total": total,
        "seconds_marginal": span,
        "prompts_per_s": a.batch * (a.steps - a.warmup) / span,
    }
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(0 if main() else 1)
