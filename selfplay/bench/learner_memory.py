"""Peak RSS of one learner rank through MPO training steps and a checkpoint.

    python -m selfplay.bench.learner_memory [--steps 3] [--prompts 8] [--tokens 32]

The model is SmolLM2-135M's shape (Llama: hidden 576, 30 layers, 9 heads, 3 kv
heads, intermediate 1536, vocab 49152, tied embeddings; 134.5M parameters), random
init in float32: memory does not depend on the weights' values. The learner is
the plain `Learner` the `LearnerActor` wraps, driven as the controller drives it
for MPO (`init_versions`: magnet and ref copied from main; then per step
start_phase, train_phase, publish, and the magnet refresh), then checkpointed the
way `resume.controller_state` streams it (one part fetched and written at a time;
here the writer runs in the same process, so its buffers count too). Each stage
prints VmRSS and the kernel's peak VmHWM of this process (/proc/self/status).

The budget (float32, P parameters, 4P bytes each): weights + gradients + AdamW
(2 moments) + one copy per frozen role (magnet, ref) = 6 × 4P, plus activations.
With `--lora R` (an adapter of Q ≪ P parameters on every linear layer): the base once,
4P, plus 6 × 4Q for the adapter's roles, gradients and moments, plus activations.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SMOL = dict(
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    intermediate_size=1536,
    vocab_size=49152,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report(stage: str, t0: float) -> dict:
    row = {"stage": stage, "rss_mb": _status_mb("VmRSS"), "peak_mb": _status_mb("VmHWM")}
    print(
        f"{time.monotonic() - t0:7.1f}s  {stage:<28} RSS {row['rss_mb']:7.0f} MB"
        f"  peak {row['peak_mb']:7.0f} MB",
        flush=True,
    )
    return row


def smol_model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOL)).float()


def batch(prompts: int, k: int, prompt_len: int, tokens: int, seed: int = 0):
    from selfplay.runtime.learner.batch import TrainBatch
    from selfplay.types import Version

    rng = np.random.default_rng(seed)
    n, L = prompts * k, prompt_len + tokens
    resp = np.zeros((n, L), dtype=np.float32)
    resp[:, prompt_len:] = 1.0
    return TrainBatch(
        input_ids=rng.integers(0, SMOL["vocab_size"], (n, L)).astype(np.int64),
        attention_mask=np.ones((n, L), dtype=np.int64),
        response_mask=resp,
        g=rng.uniform(0, 1, n),
        group=np.repeat(np.arange(prompts), k).astype(np.int64),
        prompt_ids=np.repeat(np.arange(prompts), k).astype(np.int64),
        versions=(Version(0, "main"),) * n,
    )


def checkpoint(learner, root: Path) -> Path:
    """As `resume.controller_state` + `write_checkpoint` do, without Ray: parts fetched
    lazily as raw bytes, one file each."""
    from selfplay.runtime.checkpoint.codec import learner_parts, pack_learner_state
    from selfplay.runtime.checkpoint.format import RawTensor, write_checkpoint

    tensors, meta = pack_learner_state(learner.state(copy=False))
    parts = learner_parts(tensors)
    del tensors

    def fetch(name):
        return {k: RawTensor.of(t) for k, t in parts.pop(name).items()}

    files = {f"learner-0.{n}": (lambda n=n: fetch(n)) for n in list(parts)}
    return write_checkpoint(root, 1, {"learner": meta}, files, keep=1)


def main(argv: list[str] | None = None) -> list[dict]:
    from selfplay.algos import mpo
    from selfplay.algos.base import Hyper
    from selfplay.runtime.learner.learner import Learner
    from selfplay.runtime.learner.settings import LearnerSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--micro-batch", type=int, default=4, help="rows per forward")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (learner.threads)")
    ap.add_argument("--checkpoint-activations", action="store_true")
    ap.add_argument(
        "--lora", type=int, default=0, metavar="R", help="a rank-R LoRA adapter on every linear"
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.monotonic()
    rows = [report("start", t0)]
    build = smol_model
    if a.lora:
        from selfplay.models.lora import LoraSpec, apply_lora

        def build():
            return apply_lora(smol_model(), LoraSpec(r=a.lora, alpha=2.0 * a.lora))

    learner = Learner(
        build,
        LearnerSettings(
            lr=1e-5,
            loss="regression",
            micro_batch=a.micro_batch,
            temperature=a.temperature,
            checkpoint_activations=a.checkpoint_activations,
        ),
    )
    n = sum(p.numel() for p in learner.model.parameters())
    trained = sum(p.numel() for p in learner._params)
    print(
        f"parameters: {n / 1e6:.1f}M = {4 * n / 1e9:.3f} GB in float32; trained "
        f"{trained / 1e6:.2f}M",
        flush=True,
    )
    rows.append(report("learner built", t0))
    learner.copy_role("magnet", "main")  # MPO's init_versions
    learner.copy_role("ref", "main")
    learner.publish("main")
    rows.append(report("roles + publish", t0))
    (ph,) = mpo.plan(Hyper(eta=4.0, alpha=0.5)).phases  # the runtime's MPO step
    b = batch(a.prompts, a.k, a.prompt_len, a.tokens)
    for step in range(a.steps):
        learner.start_phase(ph)
        m = learner.train_phase(ph, b)
        learner.publish("main")  # the FlatWeights go to the object store, then are dropped
        learner.copy_role("magnet", "main")  # a refresh every step: the worst case
        rows.append(report(f"step {step + 1} (kl_ref {m.kl_ref:.2e})", t0))
    with tempfile.TemporaryDirectory() as d:
        path = checkpoint(learner, Path(d))
        size = sum(f.stat().st_size for f in path.iterdir()) / 1e9
        rows.append(report(f"checkpoint ({size:.2f} GB)", t0))
    return rows


if __name__ == "__main__":
    main()
