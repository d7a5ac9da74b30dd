"""`selfplay train CONFIG [key=value ...] [--json]`."""

from __future__ import annotations

import json
import os

import click


@click.command("train", context_settings={"ignore_unknown_options": True})
@click.argument("config", type=str)
@click.argument("overrides", nargs=-1, type=str)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(config: str, overrides: tuple[str, ...], as_json: bool, no_progress: bool) -> None:
    """Train on a Ray cluster from a YAML CONFIG with dotted key=value overrides."""
    from selfplay.config import load_config

    cfg = load_config(config, list(overrides))  # bad input fails here, before Ray starts
    if not cfg.runtime.address:
        # An in-process cluster binds to loopback: Ray reads this before it is imported
        # (by default it advertises the machine's address even for a one-node cluster).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from selfplay.runtime.trainer import format_summary
    from selfplay.runtime.trainer import train as run_train

    result = run_train(cfg, progress=not no_progress)
    click.echo(format_summary(result.summary))
    if as_json:
        click.echo(json.dumps(result.summary))
