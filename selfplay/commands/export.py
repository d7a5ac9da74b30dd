"""`selfplay export RUN_DIR [--out DIR] [--merge]`: a run's model/ from its newest checkpoint."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("run_dir", type=str)
@click.option(
    "--out", default=None, metavar="DIR", help="Where to write it [RUN_DIR/model]; replaced."
)
@click.option(
    "--merge",
    is_flag=True,
    help="A LoRA run: write the base with the adapter merged in, a plain model "
    "[RUN_DIR/model-merged], instead of the adapter.",
)
def export(run_dir: str, out: str | None, merge: bool) -> None:
    """Write RUN_DIR/model (safetensors, config, tokenizer; under LoRA the adapter) from
    the run's newest intact checkpoint, without Ray and without training: after a failed
    export (a full disk), or for the policy of a run that stopped early. Prints the
    directory written."""
    from pathlib import Path

    from selfplay.outputs import check_writable_dir
    from selfplay.runtime.driver.disk import disk_full
    from selfplay.runtime.driver.export import MERGED_DIR, MODEL_DIR, export_from_checkpoint

    target = Path(out) if out else Path(run_dir) / (MERGED_DIR if merge else MODEL_DIR)
    check_writable_dir(target.parent, "--out")  # one line, before the checkpoint is read
    with disk_full(target, "the run's checkpoints are intact: free space and export again"):
        path, step = export_from_checkpoint(run_dir, target, merge)
    click.echo(f"wrote {path} (the policy after step {step})", err=True)
    click.echo(str(path))
