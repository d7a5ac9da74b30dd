"""`selfplay train [CONFIG] [key=value ...] [--resume RUN_DIR] [--json]`."""

from __future__ import annotations

import os
import sys

import click

from selfplay.outputs import dumps


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
    from selfplay.config_paths import absolute_paths

    # Relative paths are this directory's: the run records them absolute.
    cfg = absolute_paths(load_config(config, overrides)) if config is not None else None
    ckpt = None
    if resume is not None:
        from selfplay.runtime.driver.resume import check_resume  # imports no Ray

        cfg, ckpt = check_resume(
            cfg, overrides, resume, warn=lambda m: click.echo(f"warning: {m}", err=True)
        )
    bound = _preflight(cfg, new_run=resume is None)
    from selfplay.runtime.driver.rundir import Stopped
    from selfplay.runtime.driver.trainer import train as run_train

    try:
        result = run_train(cfg, progress=not no_progress, resume=ckpt, bound=bound)
    except Stopped as e:  # SIGTERM/SIGINT: one line, exit 128 + signal (143, 130)
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    click.echo(result.text)
    if as_json:
        click.echo(dumps(result.summary))


def _preflight(cfg, *, new_run: bool):
    """What can fail before the run starts fails here, in one line: before Ray starts,
    before the run dir is created, before any actor is placed. Last, the task is bound
    to the policy's tokenizer (its data loaded and checked); the bound task is returned
    for the run, so the data is read once."""
    from selfplay.config import check_training
    from selfplay.errors import InputError
    from selfplay.outputs import check_writable_dir

    check_training(cfg)
    if new_run:
        check_writable_dir(cfg.output_dir, "output_dir")
    _quiet_hub()  # a hub name off-line: its one-line error, not five retry warnings
    if cfg.model.name != "tiny":
        from selfplay.models.load import check_safetensors_dir

        check_safetensors_dir(cfg.model.name)  # the policy first: a missing dir in one line
    if cfg.judge.kind in ("reward", "pairwise", "llm", "function"):  # before Ray: it loads
        from selfplay.judges.factory import check_judge_spec, model_judge_spec

        check_judge_spec(model_judge_spec(cfg.judge))
    _check_weights(cfg)
    local = not cfg.runtime.address  # the in-process cluster: its actors run on this machine
    if local and os.environ.get("RAY_ADDRESS"):
        # ray.init would join that cluster and refuse runtime.num_cpus with a traceback.
        raise InputError(
            f"RAY_ADDRESS={os.environ['RAY_ADDRESS']} is set but runtime.address is not: set "
            f"runtime.address=auto to join that cluster, or unset RAY_ADDRESS"
        )
    if local and cfg.rollout.backend == "vllm":
        from selfplay.rollout import check_vllm

        check_vllm()
    if local:  # its actors must fit this machine: an unplaceable one waits forever
        from selfplay.runtime.resources import precheck_in_process

        precheck_in_process(cfg)
    if cfg.tracking.enabled:
        from selfplay.tracking import check_store

        check_store(cfg.tracking.uri)
    if cfg.runtime.address:
        from selfplay.runtime.cluster import check_reachable

        if cfg.runtime.address != "auto":
            check_reachable(cfg.runtime.address)  # a GCS that does not answer hangs ray.init
        else:
            addr = _auto_address()
            try:
                check_reachable(addr)
            except InputError as e:  # the cluster `ray start` recorded has stopped
                raise InputError(
                    f"runtime.address=auto: {e}; start one with `ray start --head`"
                ) from None
    from selfplay.runtime.driver.build import bind_task  # imports no Ray

    return bind_task(cfg)


def _check_weights(cfg) -> None:
    """Each model the run loads from files (policy, judge) loaded once here, and refused
    in one line when transformers reports weights missing from its files (they would be
    random); its memory is freed before Ray starts."""
    from selfplay.models.load import check_model_weights

    if cfg.model.name != "tiny":
        check_model_weights(cfg.model.name, "model.name")
    model = cfg.judge.model
    if cfg.judge.kind in ("reward", "pairwise", "llm") and not model.startswith("tiny:"):
        kind = "causal" if cfg.judge.kind == "llm" else "classifier"
        check_model_weights(model, f"judge.model (judge.kind={cfg.judge.kind})", kind)


def _quiet_hub() -> None:
    try:
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        return
    hub_logging.set_verbosity_error()


def _auto_address() -> str:
    """The cluster `ray.init(address="auto")` would join ($RAY_ADDRESS, else the one
    `ray start` recorded), or one line saying that none is running."""
    from ray._private.services import canonicalize_bootstrap_address

    from selfplay.errors import InputError

    try:
        addr = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError):
        addr = None
    if not addr:
        raise InputError(
            "runtime.address=auto: no Ray cluster is running here; start one with "
            "`ray start --head` (or leave runtime.address unset for an in-process cluster)"
        )
    return addr
