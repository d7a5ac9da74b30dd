"""`selfplay bench games|pipeline|scale|memory|trl`: the benchmarks reported in the README."""

from __future__ import annotations

import click

from selfplay.cli import FINITE_FLOAT
from selfplay.outputs import dumps


@click.group("bench")
def bench() -> None:
    """Benchmarks (measured figures go in the README)."""


@bench.command("pipeline")
@click.option("--steps", default=12, show_default=True, help="Steps per throughput run.")
@click.option("--repeats", default=15, show_default=True, help="Publish+pull repetitions.")
@click.option(
    "--opponents",
    default="32,1024",
    show_default=True,
    help="Comma-separated opponent counts per prompt (stage balance) to measure.",
)
@click.option(
    "--simulate",
    default=None,
    metavar="gen=S,judge=S,learn=S",
    help="Simulated stages instead (seconds per step-sized batch on one actor; "
    "the actors sleep): sync vs async against the 2x limit.",
)
@click.option("--json", "as_json", is_flag=True, help="With --simulate: a JSON line last.")
def pipeline(steps: int, repeats: int, opponents: str, simulate: str | None, as_json: bool) -> None:
    """Async vs sync samples/s on the token game; publish+pull vs raw ray.put/get.
    With --simulate: the controller on simulated stages (selfplay/bench/orchestration.py)."""
    from selfplay.runtime.cluster import use_loopback

    use_loopback()  # its in-process Ray cluster binds to loopback, as `selfplay train`'s does
    from selfplay.bench import pipeline as p
    from selfplay.errors import InputError

    if simulate is not None:
        from selfplay.bench import orchestration as o
        from selfplay.bench.simulate import Stages

        stages = Stages.parse(simulate)
        if steps <= o.WARM + 1:
            raise InputError(f"--steps must be > {o.WARM + 1} with --simulate, got {steps}")
        r = o.pipeline(stages, steps=steps)
        click.echo(o.format_pipeline(r))
        if as_json:
            click.echo(dumps(o.pipeline_json(r)))
        return

    try:
        counts = tuple(int(x) for x in opponents.split(","))
    except ValueError:
        raise InputError(
            f"--opponents must be comma-separated integers, got {opponents!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise InputError(f"--opponents must be positive, got {opponents!r}")
    r = p.run(steps=steps, repeats=repeats, opponents=counts)
    click.echo(dumps(r) if as_json else p.format_report(r))


@bench.command("publish")
@click.argument("model", type=str)
@click.option("--lora", type=click.IntRange(min=1), default=None, help="A rank-R adapter.")
@click.option("--repeats", default=15, show_default=True, help="Publish+pull repetitions.")
def publish(model: str, lora: int | None, repeats: int) -> None:
    """Publish + pull of one policy version of MODEL (a model directory), learner to rollout
    worker through the object store, against a raw ray.put/get of as many bytes. With
    --lora R a version is a rank-R adapter on every linear layer."""
    import ray

    from selfplay.bench.pipeline import format_publish, publish_pull
    from selfplay.models.load import check_safetensors_dir
    from selfplay.models.lora import Adapted, LoraSpec

    check_safetensors_dir(model)
    spec = Adapted(model, LoraSpec(r=lora, alpha=2.0 * lora)) if lora else model
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        click.echo(format_publish(publish_pull(0, 0, repeats, spec)))
    finally:
        ray.shutdown()


@bench.command("scale")
@click.option(
    "--workers",
    default="1,4,16,64",
    show_default=True,
    help="Comma-separated rollout pool sizes (simulated workers: num_cpus=0 actors that sleep).",
)
@click.option("--steps", default=5, show_default=True, help="Steps per pool size.")
@click.option("--json", "as_json", is_flag=True, help="A JSON line last.")
def scale(workers: str, steps: int, as_json: bool) -> None:
    """Samples/s and driver CPU per step against the number of rollout workers."""
    from selfplay.runtime.cluster import use_loopback

    use_loopback()
    from selfplay.bench import orchestration as o
    from selfplay.errors import InputError

    try:
        counts = tuple(int(x) for x in workers.split(","))
    except ValueError:
        raise InputError(f"--workers must be comma-separated integers, got {workers!r}") from None
    if not counts or min(counts) < 1:
        raise InputError(f"--workers must be positive, got {workers!r}")
    if steps <= o.WARM + 1:
        raise InputError(f"--steps must be > {o.WARM + 1}, got {steps}")
    r = o.scale(counts, steps=steps)
    click.echo(o.format_scale(r))
    if as_json:
        click.echo(dumps(o.scale_json(r)))


@bench.command("games")
@click.option("--n", default=1000, show_default=True, help="Actions of the game solved vs the LP.")
@click.option(
    "--budget",
    type=FINITE_FLOAT,
    default=60.0,
    show_default=True,
    help="Seconds per algorithm vs the LP.",
)
@click.option("--json", "as_json", is_flag=True)
def games(n: int, budget: float, as_json: bool) -> None:
    """Last-iterate algorithms vs the LP at n=1000; batched sweep vs a NumPy loop."""
    from selfplay.bench import games as g

    r = g.run(n=n, budget=budget)
    click.echo(dumps(r) if as_json else g.format_report(r))


@bench.command("memory")
@click.option(
    "--trl-python",
    default=".venv-trl/bin/python",
    show_default=True,
    help="Python of a venv with TRL (`make bench-trl`); the TRL side is skipped without it.",
)
@click.option("--steps", default=10, show_default=True, help="Training steps per run.")
@click.option("--interval", type=FINITE_FLOAT, default=0.2, show_default=True, help="Poll, s.")
@click.option("--json", "as_json", is_flag=True)
def memory(trl_python: str, steps: int, interval: float, as_json: bool) -> None:
    """Peak RSS of the text demo run (driver + Ray actors) and of TRL's Nash-MD, same model."""
    from selfplay.bench import memory as m
    from selfplay.errors import InputError

    if steps < 1 or interval <= 0:
        raise InputError(f"need --steps >= 1 and --interval > 0, got {steps} and {interval}")
    r = m.run(trl_python, steps=steps, interval=interval)
    click.echo(dumps(r) if as_json else m.format_report(r))


@bench.command("trl")
@click.option(
    "--trl-python",
    default=".venv-trl/bin/python",
    show_default=True,
    help="Python of a venv with TRL (`make bench-trl` creates it).",
)
@click.option("--steps", default=40, show_default=True, help="Steps per run, both sides.")
@click.option("--warmup", default=10, show_default=True, help="Steps left out of the rate.")
@click.option("--rounds", default=2, show_default=True, help="Back-to-back repetitions.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON line.")
def trl(trl_python: str, steps: int, warmup: int, rounds: int, as_json: bool) -> None:
    """Nash-MD prompts/s: selfplay against TRL's NashMDTrainer on the same saved models."""
    from selfplay.bench import trl_compare as t
    from selfplay.errors import InputError

    if rounds < 1:
        raise InputError(f"--rounds must be >= 1, got {rounds}")
    r = t.run(trl_python, steps=steps, warmup=warmup, rounds=rounds)
    if not as_json:
        click.echo(t.format_report(r))
    click.echo(dumps(t.summary_json(r)))


@bench.command("cycles")
@click.argument("source", type=str)
@click.option(
    "--judge",
    "function",
    default="selfplay.judges.raters:prob",
    show_default=True,
    help="The judge function, file.py:name or module:name.",
)
@click.option("--returns", type=click.Choice(["score", "prob"]), default="prob", show_default=True)
@click.option("--tau", type=FINITE_FLOAT, default=1.0, show_default=True)
@click.option("--max-responses", type=click.IntRange(3, 2000), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def cycles(
    source: str, function: str, returns: str, tau: float, max_responses: int, seed: int
) -> None:
    """The fraction of response triples that a judge ranks in a cycle (a ≻ b ≻ c ≻ a).
    SOURCE: a RUN_DIR (its rollouts), or a parquet / jsonl file with a `response` field."""
    from selfplay.bench.cycles import run

    click.echo(dumps(run(source, function, returns, tau, max_responses, seed)))
