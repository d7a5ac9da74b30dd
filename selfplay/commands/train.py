"""`selfplay train [CONFIG] [key=value ...] [--resume RUN_DIR] [--json]`."""

from __future__ import annotations

import json
import os
import sys

import click


@click.command("train", context_settings={"ignore_unknown_options": True})
@click.argument("config", type=str, required=False)
@click.argument("overrides", nargs=-1, type=str)
@click.option(
    "--resume",
    "resume",
    type=str,
    default=None,
    metavar="RUN_DIR",
    help="Continue the run in RUN_DIR from its newest intact checkpoint.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(
    config: str | None,
    overrides: tuple[str, ...],
    resume: str | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Train on a Ray cluster from a YAML CONFIG with dotted key=value overrides.

    With --resume RUN_DIR, CONFIG may be left out (the run's own config.yaml is
    used); either way the config, overrides included, must match the one stored in
    the run's checkpoint except for where and how long it runs (runtime.steps,
    addresses, worker counts, tracking). A run dir is locked by the process
    training in it. SIGTERM or Ctrl-C stops at the next step boundary with a
    checkpoint (exit 143 or 130)."""
    from selfplay.config import load_config
    from selfplay.errors import InputError

    overrides = list(overrides)
    if config is not None and "=" in config and resume is not None:
        overrides, config = [config, *overrides], None  # `train --resume DIR key=value`
    if config is None and resume is None:
        raise InputError("train needs a CONFIG file (or --resume RUN_DIR)")
    # Bad input fails here, before Ray starts and before anything is written.
    cfg = load_config(config, overrides) if config is not None else None
    ckpt = None
    if resume is not None:
        from selfplay.runtime.checkpoint.resume import check_resume  # imports no Ray

        cfg, ckpt = check_resume(
            cfg, overrides, resume, warn=lambda m: click.echo(f"warning: {m}", err=True)
        )
    if cfg.runtime.address and cfg.runtime.address != "auto":
        from selfplay.runtime.cluster import check_reachable

        check_reachable(cfg.runtime.address)  # a GCS that does not answer would hang ray.init
    if not cfg.runtime.address:
        # An in-process cluster binds to loopback: Ray reads this before it is imported
        # (by default it advertises the machine's address even for a one-node cluster).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from selfplay.runtime.driver.rundir import Stopped
    from selfplay.runtime.driver.trainer import format_summary
    from selfplay.runtime.driver.trainer import train as run_train

    try:
        result = run_train(cfg, progress=not no_progress, resume=ckpt)
    except Stopped as e:  # SIGTERM/SIGINT: one line, exit 128 + signal (143, 130)
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    click.echo(format_summary(result.summary))
    if as_json:
        click.echo(json.dumps(result.summary))
