"""`selfplay game`: the Nash game lab on a matrix preference game."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from selfplay.cli import FINITE_FLOAT
from selfplay.errors import InputError

DEFAULT_ALGOS = "mpo,nash-mp,omwu,egpo,nash-md,online-ipo,sppo,mwu"


def _positive(name: str, v: float | int | None) -> None:
    if v is not None and v <= 0:
        raise InputError(f"{name} must be > 0, got {v}")


@click.command("game")
@click.option("--matrix", type=str, default=None, help="Preference matrix, .npy or .csv.")
@click.option(
    "--generate",
    "kind",
    type=str,
    default=None,
    help="Generate a game: uniform, bt-cyclic, rps, transitive.",
)
@click.option("--n", type=int, default=None, help="Number of actions (with --generate).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--algos",
    "algo_spec",
    default=None,
    help=f"Comma-separated algorithms [default: {DEFAULT_ALGOS}; with --sweep, those of "
    "them whose update uses every swept key].",
)
@click.option("--iterations", type=int, default=2000, show_default=True)
@click.option(
    "--beta", type=FINITE_FLOAT, default=None, help="Regularization β (default per algorithm)."
)
@click.option("--eta", type=FINITE_FLOAT, default=None, help="Step size η (default per algorithm).")
@click.option(
    "--queries",
    type=int,
    default=None,
    help="Estimate P(·≻π) from this many sampled preference queries per action.",
)
@click.option(
    "--init",
    type=str,
    default="random",
    show_default=True,
    help="Initial policy π_0: 'random' is softmax of N(0,1) logits seeded by --seed "
    "(full support; the uniform policy is the NE of every rps game, so starting there "
    "shows nothing); 'uniform' starts at μ. The reference μ of the regularized "
    "algorithms stays uniform either way.",
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default="runs/game/gap.png",
    show_default=True,
    help="Where to write the gap-vs-iteration PNG.",
)
@click.option(
    "--sweep",
    "sweep_specs",
    multiple=True,
    help="Hyperparameter sweep on this one game: KEY=V1,V2,... or KEY=LO:HI:K (K log-spaced; "
    "LO:HI integer range for seed, magnet_every), repeatable, keys eta, beta, alpha, "
    "magnet_every, seed; the grid is their product, run as one batch per algorithm. "
    "The plot is then final gap vs the first key.",
)
@click.option("--no-mlflow", is_flag=True, help="Do not log the run to MLflow.")
def game(
    matrix,
    kind,
    n,
    seed,
    algo_spec,
    iterations,
    beta,
    eta,
    queries,
    init,
    as_json,
    plot,
    sweep_specs,
    no_mlflow,
) -> None:
    """Run algorithms on a matrix game; report last-iterate gaps, plot, log to MLflow."""
    from selfplay import games, lab
    from selfplay.config import SEED_MAX
    from selfplay.outputs import check_writable_file

    # Every check before any work, and before anything is written.
    if (matrix is None) == (kind is None):
        raise InputError("give exactly one of --matrix PATH or --generate KIND")
    if kind is not None and n is None:
        raise InputError("--generate needs --n N")
    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed must be in [0, {SEED_MAX}], got {seed}")
    for name, v in (
        ("--iterations", iterations),
        ("--beta", beta),
        ("--eta", eta),
        ("--queries", queries),
    ):
        _positive(name, v)
    axes = None
    if sweep_specs:
        from selfplay import lab_sweep

        axes = lab_sweep.parse(sweep_specs)
        for key, given in (("eta", eta), ("beta", beta)):
            if given is not None:
                if key in axes:
                    raise InputError(f"--{key} and --sweep {key}=... both given; choose one")
                axes[key] = [given]
        if algo_spec is None:
            names = [a for a in lab.parse_algos(DEFAULT_ALGOS) if _uses(a, axes)]
        else:
            names = lab.parse_algos(algo_spec)
            for a in names:
                lab_sweep.check_used(a, axes)
        if not names:
            raise InputError(f"no algorithm uses every swept key ({', '.join(axes)})")
    else:
        names = lab.parse_algos(algo_spec or DEFAULT_ALGOS)
    lab.initial_policy(init, 2, seed)  # an unknown --init fails here, before any run
    check_writable_file(plot, "--plot")
    if not no_mlflow:
        from selfplay.tracking import check_store

        check_store()
    if kind is not None:
        P = games.generate(kind, n, seed)
        source = f"{kind} n={n} seed={seed}"
    else:
        P = games.load(matrix)
        source = str(matrix)

    if axes is not None:
        settings = dict(iterations=iterations, queries=queries, seed=seed, init=init)
        _run_sweep(names, P, source, axes, settings, as_json, plot, no_mlflow)
        return

    from tqdm import tqdm

    results = []
    bar = tqdm(
        names, desc="algorithms", file=sys.stderr, disable=as_json and not sys.stderr.isatty()
    )
    settings = dict(
        iterations=iterations, beta=beta, eta=eta, queries=queries, seed=seed, init=init
    )
    for name in bar:
        bar.set_postfix_str(name)
        results.append(lab.run_algo(name, P, **settings))
    lab.mark_same_updates(results)
    plot_path = lab.plot_gaps(results, Path(plot), f"{source} (n={P.shape[0]})")
    if not no_mlflow:
        _log(
            results,
            P,
            source,
            plot_path,
            {**settings, "algos": algo_spec},
        )
    if as_json:
        from selfplay.outputs import dumps

        click.echo(dumps({"n": int(P.shape[0]), "results": [r.summary() for r in results]}))
    else:
        click.echo(lab.format_table(results))
        click.echo(f"plot: {plot_path}")


def _uses(name: str, axes: dict) -> bool:
    from selfplay import lab_sweep

    try:
        lab_sweep.check_used(name, axes)
    except InputError:
        return False
    return True


def _run_sweep(names, P, source, axes, settings, as_json, plot, no_mlflow) -> None:
    from selfplay import lab_sweep

    rows = lab_sweep.grid(axes)
    results = [lab_sweep.run(a, P, rows, **settings)[0] for a in names]
    title = f"{source} (n={P.shape[0]}), {settings['iterations']} iterations"
    plot_path = lab_sweep.plot(results, Path(plot), title)
    doc = {"n": int(P.shape[0]), "sweep": {k: list(v) for k, v in axes.items()}}
    doc["results"] = [r.__dict__ for r in results]
    if not no_mlflow:
        from selfplay.tracking import mlflow_run

        params = {**settings, "algos": ",".join(names), "n": P.shape[0], "game": source}
        params["sweep"] = " ".join(f"{k}={','.join(map(str, v))}" for k, v in axes.items())
        with mlflow_run("game-sweep", params, tags={"selfplay.command": "game"}) as tr:
            tr.log_metrics({f"{r.algo}.best_final_gap": min(r.target) for r in results})
            tr.log_artifact(plot_path)
            tr.log_dict(doc, "sweep.json")
    if as_json:
        from selfplay.outputs import dumps

        click.echo(dumps(doc))
    else:
        click.echo(lab_sweep.format_table(results))
        click.echo(f"plot: {plot_path}")


def _log(results, P, source, plot_path, params) -> None:
    from selfplay.tracking import mlflow_run

    with mlflow_run(
        "game", {**params, "n": P.shape[0], "game": source}, tags={"selfplay.command": "game"}
    ) as tr:
        for r in results:
            tr.log_curve(f"{r.algo}.gap", r.curve_iters, [max(g, 0.0) for g in r.curve_gap])
            final = {
                f"{r.algo}.final_gap": r.gap,
                f"{r.algo}.seconds": r.seconds,
                f"{r.algo}.preference_queries": r.preference_queries,
            }
            if r.regularized_gap is not None:
                final[f"{r.algo}.final_regularized_gap"] = r.regularized_gap
            tr.log_metrics(final)
        tr.log_artifact(plot_path)
        tr.log_dict(
            {"n": int(P.shape[0]), "results": [r.summary() for r in results]}, "results.json"
        )
