"""`selfplay submit | status | logs | stop`: training runs as Ray jobs on a cluster.

    selfplay submit conf/quickstart.yaml --address http://HEAD:8265 runtime.steps=100 --wait
    selfplay status raysubmit_XYZ --address http://HEAD:8265

`--address` defaults to $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS (as Ray's own
job CLI), else http://127.0.0.1:8265. The job id
is the only thing `submit` prints on stdout (then the job's logs with
`--wait`); everything else goes to stderr. `--wait` exits 0 only if the job
SUCCEEDED, 1 if it failed or was stopped.
"""

from __future__ import annotations

import sys

import click

_ADDRESS = click.option(
    "--address",
    default=None,
    metavar="URL",
    help="Job server, e.g. http://HEAD:8265 (default "
    "$RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, else "
    "http://127.0.0.1:8265).",
)


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def _follow(client, job_id: str) -> None:
    from selfplay import jobs

    try:
        st = jobs.follow(client, job_id, lambda s: click.echo(s, nl=False))
    except KeyboardInterrupt:
        _echo_err(
            f"stopped following; job {job_id} keeps running (selfplay stop {job_id} to end it)"
        )
        sys.exit(130)
    _echo_err(f"job {job_id} {st.status}" + (f": {st.message}" if st.message else ""))
    if st.status != "SUCCEEDED":
        sys.exit(1)  # SystemExit: click returns, not raises, an Exit when not standalone


@click.command("submit", context_settings={"ignore_unknown_options": True})
@click.argument("config", type=str)
@click.argument("overrides", nargs=-1, type=str)
@_ADDRESS
@click.option(
    "--working-dir",
    default=None,
    metavar="DIR",
    help="Directory uploaded as the job's working dir (default: the current dir); "
    "CONFIG must lie inside it.",
)
@click.option(
    "--pip",
    "pip",
    multiple=True,
    metavar="REQ",
    help="A pip requirement installed in the job's env (repeatable), e.g. 'vllm>=0.6'.",
)
@click.option(
    "--wait", is_flag=True, help="Follow the job's logs to its end; exit 0 only if it succeeded."
)
@click.option(
    "--resume",
    default=None,
    metavar="RUN_DIR",
    help="Continue the run in RUN_DIR (an absolute path on the cluster's storage).",
)
def submit(
    config: str,
    overrides: tuple[str, ...],
    address: str | None,
    working_dir: str | None,
    pip: tuple[str, ...],
    wait: bool,
    resume: str | None,
) -> None:
    """Submit `selfplay train CONFIG [key=value ...]` as a Ray job."""
    from selfplay import jobs

    sub = jobs.build_submission(
        config, list(overrides), working_dir=working_dir, pip=list(pip), resume=resume
    )
    client = jobs.connect(address)  # unreachable or unauthorised: one line, exit 2
    if sub.tracking_uri is None:
        _echo_err(
            "note: no tracking.uri or MLFLOW_TRACKING_URI; the run logs to mlflow.db in "
            "the job's temporary working dir on the cluster"
        )
    if not sub.output_dir.startswith("/"):
        _echo_err(
            f"note: output_dir {sub.output_dir!r} is relative: the run dir and its "
            f"checkpoints stay in the job's temporary working dir; to resume a job later, "
            f"set output_dir to storage the cluster keeps (e.g. a shared mount)"
        )
    job_id = jobs.submit(client, sub)
    click.echo(job_id)
    _echo_err(f"submitted {job_id} to {client.get_address()}: {sub.entrypoint}")
    sys.stdout.flush()
    if wait:
        _follow(client, job_id)


@click.command("status")
@click.argument("job_id", type=str)
@_ADDRESS
def status(job_id: str, address: str | None) -> None:
    """Print a job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and message."""
    from selfplay import jobs

    st = jobs.status(jobs.connect(address), job_id)
    click.echo(f"{st.status}" + (f"\t{st.message}" if st.message else ""))


@click.command("logs")
@click.argument("job_id", type=str)
@_ADDRESS
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep streaming until the job ends; exit 0 only if it succeeded.",
)
def logs(job_id: str, address: str | None, follow: bool) -> None:
    """Print a job's logs."""
    from selfplay import jobs

    client = jobs.connect(address)
    if follow:
        _follow(client, job_id)
    else:
        click.echo(jobs.logs(client, job_id), nl=False)


@click.command("stop")
@click.argument("job_id", type=str)
@_ADDRESS
def stop(job_id: str, address: str | None) -> None:
    """Ask a running job to stop."""
    from selfplay import jobs

    stopped = jobs.stop(jobs.connect(address), job_id)
    click.echo(f"stopping {job_id}" if stopped else f"{job_id} had already ended")
