"""`selfplay scale RUN --rollout-workers N [--address HOST:PORT]`: resize a running job's rollout pool.

RUN is the run's name, its run dir's last part (what `selfplay train` prints
on stderr when it starts). The command joins the cluster (`--address`, else
$RAY_ADDRESS, else `auto`: a cluster on this machine; with several, pass the
address `selfplay train` printed), sets the target of
the run's `RunControl` actor and returns; the controller applies it at its
next phase boundary (selfplay/runtime/workers/control.py).
"""

from __future__ import annotations

import click


@click.command("scale")
@click.argument("run", type=str)
@click.option(
    "--rollout-workers",
    "workers",
    type=int,
    required=True,
    metavar="N",
    help="Desired number of rollout workers (>= 1).",
)
@click.option(
    "--address",
    default=None,
    metavar="HOST:PORT",
    help="Ray GCS address (default $RAY_ADDRESS, else 'auto': the local cluster).",
)
def scale(run: str, workers: int, address: str | None) -> None:
    """Set a running job's rollout-worker count; applied at its next phase boundary."""
    from selfplay.errors import InputError

    if workers < 1:  # before connecting: no cluster needed to refuse it
        raise InputError(f"--rollout-workers must be >= 1, got {workers}")
    from selfplay.runtime.cluster import connect
    from selfplay.runtime.workers import control

    connect(address)
    before, st = control.scale(run, workers, say=lambda m: click.echo(m, err=True))
    note = f"; autoscale keeps it in [{st.autoscale[0]}, {st.autoscale[1]}]" if st.autoscale else ""
    click.echo(
        f"{run}: rollout workers {before} -> {st.target} (serving {st.active}, "
        f"starting {st.starting}, retiring {st.retiring}){note}"
    )
