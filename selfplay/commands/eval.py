"""`selfplay eval POLICY... [--reference REF] [--league RUN_DIR] [--prompts DATA] ...`.

Every check is made before Ray starts and before anything is written (`plan`); the
work is `selfplay.evaluation.runner.run_eval`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

import click

from selfplay.errors import InputError
from selfplay.evaluation.sampling import GAME_UNITS, eval_units

# Bounds on an evaluation's size, checked before anything starts: every prompt (a game's
# every draw) is one generate call per policy and S responses, all held in memory.
MAX_PROMPTS = 100_000
MAX_SAMPLES = 1024


@click.command("eval")
@click.argument("policies", nargs=-1, type=str)
@click.option(
    "--reference", type=str, default=None, help="π_ref, a POLICY [the run's initial policy]."
)
@click.option(
    "--league",
    type=str,
    default=None,
    metavar="RUN_DIR",
    help="Reference, every kept policy and final of RUN_DIR.",
)
@click.option(
    "--prompts", "data", type=str, default=None, help="Prompts file [the run's eval prompts]."
)
@click.option(
    "--num-prompts",
    type=int,
    default=None,
    help=f"First N prompts [all; games: {GAME_UNITS} draws].",
)
@click.option(
    "--judge.kind",
    "judge_kind",
    type=str,
    default=None,
    help="reward, pairwise or llm [the run's].",
)
@click.option(
    "--judge.model",
    "judge_model",
    type=str,
    default=None,
    help="Judge model directory [the run's].",
)
@click.option("--samples", type=int, default=4, show_default=True, help="Samples per prompt.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache", type=str, default=None, help="Sample cache dir [RUN_DIR/eval/cache].")
@click.option("--plot", type=str, default=None, help="Heatmap PNG [RUN_DIR/eval/win_rates.png].")
@click.option(
    "--exploiter",
    type=str,
    default=None,
    metavar="best-of-N",
    help="Also exploit each policy with the best of N candidates from --proposal.",
)
@click.option(
    "--proposal",
    type=str,
    default="reference",
    show_default=True,
    help="The exploiter's candidates: reference, league (the run's kept policies) or a POLICY.",
)
@click.option(
    "--max-judgments",
    type=int,
    default=None,
    help="Refuse an exploiter needing more judgments than this (U·N·S per policy).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, last line.")
@click.option("--no-mlflow", is_flag=True, help="Do not log the evaluation to MLflow.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def eval_cmd(policies, as_json, no_mlflow, no_progress, **opts) -> None:
    """Win rates between POLICYs (a run dir: its final policy; RUN_DIR:STEP: a kept
    policy; a model directory), with 95% intervals, the league's Nash equilibrium,
    each policy's exploitability in it, Elo and length-controlled win rates. With one
    run dir alone: the run's final policy against its reference, on its eval prompts,
    judged by its judge."""
    from selfplay.outputs import dumps

    plan, out_dir, uri = make_plan(list(policies), **opts)
    if plan.exploiter is not None:
        from selfplay.evaluation.exploiter import count_judgments

        n = count_judgments(plan.exploiter, len(plan.prompts), plan.samples, len(plan.policies))
        click.echo(
            f"exploiter: best-of-{plan.exploiter.n} from {plan.exploiter.proposal_name}, "
            f"{n} judgments",
            err=True,
        )
    if not plan.cfg.runtime.address and os.environ.get("RAY_ADDRESS"):
        raise InputError(  # ray.init would join that cluster and refuse num_cpus
            f"RAY_ADDRESS={os.environ['RAY_ADDRESS']} is set but the run's runtime.address "
            "is not: unset RAY_ADDRESS"
        )
    if not no_mlflow:
        from selfplay.tracking import check_store

        check_store(uri)
    import ray

    from selfplay.evaluation.exact import blind_spots
    from selfplay.evaluation.runner import format_report, run_eval
    from selfplay.runtime.cluster import init_ray
    from selfplay.runtime.driver.rundir import Stopped, reap_cluster_with_driver, stop_on_signals

    own_cluster = not ray.is_initialized() and not plan.cfg.runtime.address
    init_ray(plan.cfg)
    if own_cluster:  # its Ray processes die with this one, however it dies
        reap_cluster_with_driver()
    with stop_on_signals() as stop:  # after ray.init, which installs its own SIGTERM handler
        try:
            report = run_eval(plan, progress=not no_progress, stop=stop)
        except Stopped as e:
            cached = f"the draws made so far are cached in {plan.cache}: " if plan.cache else ""
            click.echo(
                f"error: {str(e).split(';')[0]}; nothing was reported; {cached}"
                f"the same command goes on from there",
                err=True,
            )
            sys.exit(e.exit_code)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(dumps(report, indent=1))
    if not no_mlflow:
        _log(report, out_dir / "report.json", uri)
    click.echo(format_report(report), err=as_json)
    for line in blind_spots(report):
        click.echo(line, err=True)
    if as_json:
        click.echo(dumps(report))


def make_plan(
    args: list[str],
    *,
    reference,
    league,
    data,
    num_prompts,
    judge_kind,
    judge_model,
    samples,
    seed,
    cache,
    plot,
    exploiter=None,
    proposal="reference",
    max_judgments=None,
):
    """(EvalPlan, output dir, tracking uri): every argument checked, nothing written."""
    from selfplay.config import SEED_MAX, load_config
    from selfplay.evaluation import policies as pol
    from selfplay.evaluation.runner import EvalPlan
    from selfplay.outputs import check_writable_dir, check_writable_file

    if not args and league is None:
        raise InputError(
            "give the POLICYs to compare (RUN_DIR, RUN_DIR:STEP or a model directory) "
            "or --league RUN_DIR"
        )
    if samples < 1:
        raise InputError(f"--samples must be >= 1, got {samples}")
    if num_prompts is not None and not 1 <= num_prompts <= MAX_PROMPTS:
        raise InputError(f"--num-prompts must be in [1, {MAX_PROMPTS}], got {num_prompts}")
    if samples > MAX_SAMPLES:
        raise InputError(f"--samples must be <= {MAX_SAMPLES}, got {samples}")
    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed must be in [0, {SEED_MAX}], got {seed}")
    if league is not None and not pol.is_run_dir(league):
        raise InputError(f"--league {league}: not a run dir (no config.yaml)")
    if data is not None and not Path(data).expanduser().exists() and _looks_local(data):
        raise InputError(f"--prompts {data}: no such file")
    # resolve every POLICY first: an unknown path is one line before anything else
    given = [pol.resolve(a) for a in args]
    run = league or next((_run_of(a) for a in args if _run_of(a)), None)
    over = [f"judge.{k}={v}" for k, v in (("kind", judge_kind), ("model", judge_model)) if v]
    if run is not None:
        cfg = pol.read_run_config(run, over)
        if data is not None:
            if cfg.task.kind != "prompts":
                raise InputError(f"--prompts: the run {run} plays a game ({cfg.task.kind})")
            cfg = cfg.model_copy(update={"task": _file_task(data, cfg.task)})
    else:
        if data is None or judge_kind is None:
            raise InputError(
                "without a run dir, give --prompts DATA and --judge.kind (and --judge.model)"
            )
        if not given:
            raise InputError("selfplay eval needs at least 2 policies, got none")
        base_dir = str(given[0].source)
        task = ["task.kind=prompts", f"task.dataset={data}"]
        cfg = load_config(None, [*task, f"model.name={base_dir}", *over])
        cfg = cfg.model_copy(update={"task": _file_task(data, None)})
    if reference is not None:
        ref = pol.resolve(reference)
        ref = pol.Policy("reference", ref.source, ref.identity)
    else:
        ref = pol.reference_policy(cfg) if run is not None else None
    chosen = pol.league(league, ref) if league is not None else ([ref] if ref else [])
    names = [p.name for p in chosen]
    chosen += given
    policies = _distinct(pol.unique_names(chosen, [*names, *args]))
    if len(policies) < 2:
        raise InputError(
            f"selfplay eval needs at least 2 policies, got {len(policies)} "
            f"({', '.join(p.name for p in policies) or 'none'})"
        )
    from selfplay.runtime.driver.build import bind_task

    bound = bind_task(cfg)  # the task's data read and checked here
    # Workers sample plain models: a LoRA run's base, each adapter merged into it.
    bound = dataclasses.replace(bound, spec=getattr(bound.spec, "base", bound.spec))
    pol.check_compatible(policies, bound)
    prompts = eval_units(bound.task, cfg.task.kind, num_prompts, every_prompt=data is not None)
    if not len(prompts):
        raise InputError(
            "the run holds out no eval prompts (task.eval_split / task.eval_fraction); "
            "give --prompts DATA"
        )
    out_dir = Path(run) / "eval" if run is not None else Path("runs") / "eval"
    cache_dir = Path(cache).expanduser() if cache else out_dir / "cache"
    plot_path = Path(plot).expanduser() if plot else out_dir / "win_rates.png"
    check_writable_dir(cache_dir, "--cache")
    check_writable_file(plot_path, "--plot")
    check_writable_dir(out_dir, "the eval output dir")
    facts = {"task": bound.task.source, "judge": cfg.judge.kind or "game"}
    if cfg.judge.model:
        facts["judge_model"] = cfg.judge.model
    ex = _exploiter(exploiter, proposal, max_judgments, run, ref, bound)
    if ex is not None:
        _check_cost(ex, max_judgments, len(prompts), samples, len(policies))
    plan = EvalPlan(
        exploiter=ex,
        policies=policies,
        cfg=cfg,
        task=bound.task,
        tokenizer=bound.tokenizer,
        prompts=prompts,
        base=bound.spec,
        samples=samples,
        seed=seed,
        cache=cache_dir,
        plot=plot_path,
        facts=facts,
    )
    return plan, out_dir, cfg.tracking.uri


def _exploiter(kind, proposal, max_judgments, run, ref, bound):
    """The `Exploiter` of --exploiter/--proposal, checked; None without --exploiter."""
    from selfplay.evaluation import policies as pol
    from selfplay.evaluation.exploiter import make_exploiter, parse_kind

    if kind is None:
        return None
    n = parse_kind(kind)
    if max_judgments is not None and max_judgments < 1:
        raise InputError(f"--max-judgments must be >= 1, got {max_judgments}")
    if proposal == "reference":
        if ref is None:
            raise InputError("--proposal reference needs a run dir or --reference")
        members = [ref]
    elif proposal == "league":
        if run is None:
            raise InputError("--proposal league needs a run dir")
        members = pol.league(run, ref)
    else:
        members = [pol.resolve(proposal)]
        pol.check_compatible(members, bound)
    return make_exploiter(n, members, proposal)


def _check_cost(ex, max_judgments, units: int, samples: int, policies: int) -> None:
    from selfplay.evaluation.exploiter import count_judgments

    if samples < 2:
        raise InputError(
            "--exploiter needs --samples >= 2: it picks on one half, scores on the other"
        )
    need = count_judgments(ex, units, samples, policies)
    if max_judgments is not None and need > max_judgments:
        raise InputError(
            f"the best-of-{ex.n} exploiter needs {need} judgments ({units} prompts x {ex.n} "
            f"candidates x {samples} samples x {policies} policies), over --max-judgments "
            f"{max_judgments}"
        )


def _distinct(policies):
    """Each set of weights once (the first name it was given wins), with a note."""
    seen, out = {}, []
    for p in policies:
        if p.identity in seen:
            click.echo(
                f"note: {p.name} is {seen[p.identity]} (the same weights); listed once", err=True
            )
            continue
        seen[p.identity] = p.name
        out.append(p)
    return out


def _looks_local(data: str) -> bool:
    return data.startswith(("/", ".", "~")) or Path(data).suffix in (
        ".jsonl",
        ".json",
        ".csv",
        ".parquet",
    )


def _run_of(arg: str) -> str | None:
    from selfplay.evaluation.policies import is_run_dir

    m = re.fullmatch(r"(.+):(\d+)", arg)
    for d in (arg, m.group(1) if m else None):
        if d is not None and is_run_dir(d):
            return d
    return None


def _file_task(data: str, task):
    """A prompts task over every prompt of DATA, in file order (the run's rendering)."""
    from selfplay.config_tasks import PromptsTask

    keys = ("prompt_column", "max_prompt_tokens", "chat_template")
    keep = {} if task is None else {k: getattr(task, k) for k in keys}
    return PromptsTask(dataset=data, shuffle=False, **keep)


def _log(report: dict, report_path: Path, uri) -> None:
    from selfplay.tracking import mlflow_run

    names = report["policies"]
    params = {
        "policies": ",".join(names),
        "prompts": report["prompts"],
        "samples": report["samples"],
        "seed": report["seed"],
        "judge": report.get("judge"),
        "task": report.get("task"),
    }
    with mlflow_run("eval", params, uri=uri, tags={"selfplay.command": "eval"}) as tr:
        metrics = {}
        for i, n in enumerate(names):
            key = re.sub(r"[^\w\-. ]", "_", n)
            metrics[f"{key}.exploitability"] = report["exploitability"][i]
            metrics[f"{key}.league_nash"] = report["league_nash"][i]
            metrics[f"{key}.elo"] = report["elo"][i]
            got = report.get("exploiter", {}).get("policies", {}).get(n)
            if got and got.get("exploitability_lb") is not None:
                metrics[f"{key}.exploitability_lb"] = got["exploitability_lb"]
        tr.log_metrics(metrics)
        table = {"policy": names}
        for j, n in enumerate(names):
            table[n] = [row[j] for row in report["win_rate"]]
        tr.log_table(table, "win_rates.json")
        tr.log_artifact(report_path)
        if "plot" in report:
            tr.log_artifact(report["plot"])
