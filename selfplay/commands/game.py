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
@click.option("--algos", "algo_spec", default=DEFAULT_ALGOS, show_default=True)
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
@click.option("--no-mlflow", is_flag=True, help="Do not log the run to MLflow.")
def game(
    matrix, kind, n, seed, algo_spec, iterations, beta, eta, queries, init, as_json, plot, no_mlflow
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
    names = lab.parse_algos(algo_spec)
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
