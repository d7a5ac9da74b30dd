"""Build a run from a `Config`: the task, the Ray actors, the controller, the evaluator.

Each setting is handed once to the component that uses it: rollout workers get
their `Sampling` at construction, learners their `LearnerSettings`, judges their
`JudgeSpec`, failure policy and truncation rule (`rollout.truncated`), the controller the plan and the batch shape. The
task (`selfplay.tasks`) is the only source of problem-specific pieces.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

from selfplay.algos.compat import runtime_notes
from selfplay.config import Config
from selfplay.errors import InputError


def _hyper(cfg: Config, n: int):
    from selfplay import algos

    algo = algos.get(cfg.algo.name)
    h = algo.default_hyper(n)
    over = {
        k: getattr(cfg.algo, k)
        for k in ("eta", "beta", "alpha", "magnet_every")
        if getattr(cfg.algo, k) is not None
    }
    return algo, algo.resolve(h.with_(**over) if over else h)


def _build_model(spec, dtype: str):
    from selfplay.models.load import load_policy

    return load_policy(spec, dtype=dtype)[0]


def _build_backend(spec, kind: str, dtype: str = "float32"):
    from selfplay.rollout import make_backend

    return make_backend(kind, spec, dtype=dtype)


def make_rollout_worker(spec, cfg: Config, sampling):
    """One `RolloutActor` on the rollout section's resources, holding its sampling
    settings: at build, and whenever the pool grows or replaces a worker."""
    from selfplay.runtime.workers.actors import RolloutActor

    r = cfg.rollout
    return RolloutActor.options(
        num_cpus=r.num_cpus, num_gpus=r.num_gpus, resources=dict(r.resources)
    ).remote(functools.partial(_build_backend, spec, r.backend, cfg.model.dtype), sampling)


def worker_bundle(r) -> dict[str, float]:
    """One rollout worker's Ray resources (the rollout section's), as Ray is asked."""
    bundle = {"CPU": r.num_cpus, "GPU": r.num_gpus, **r.resources}
    return {k: float(v) for k, v in bundle.items() if v > 0}


def _autoscaler(r):
    """The rollout autoscale policy, or None; its bundle is one worker's Ray resources."""
    from selfplay.runtime.workers.control import Autoscaler

    if r.autoscale is None:
        return None
    a = r.autoscale
    return Autoscaler(
        a.min_workers, a.max_workers, a.target_queue_depth, worker_bundle(r), window=a.window
    )


def _build_judge(spec):
    from selfplay.judges.factory import make_judge

    return make_judge(spec)


def model_spec(cfg: Config, task):
    """The policy's model: the tiny factory over the task's words, or an HF name/path;
    under `model.lora`, that base with a LoRA adapter (`selfplay.models.lora.Adapted`)."""
    from selfplay.models.lora import Adapted, LoraSpec
    from selfplay.models.tiny import ModelSpec

    base: object = cfg.model.name
    if cfg.model.name == "tiny":
        t = cfg.model.tiny
        base = ModelSpec(
            words=tuple(task.model_words()),
            hidden=t.hidden,
            layers=t.layers,
            heads=t.heads,
            seed=t.seed,
            init_std=t.init_std,
        )
    lo = cfg.model.lora
    if lo is None:
        return base
    targets = lo.target_modules if isinstance(lo.target_modules, str) else tuple(lo.target_modules)
    alpha = 2.0 * lo.r if lo.alpha is None else lo.alpha
    return Adapted(base, LoraSpec(r=lo.r, alpha=alpha, target_modules=targets), cfg.seed)


def _tokenizer(cfg: Config, spec):
    from selfplay.models.load import check_safetensors_dir, load_tokenizer
    from selfplay.models.lora import Adapted

    if isinstance(spec, Adapted):
        return _tokenizer(cfg, spec.base)
    if isinstance(spec, str):
        check_safetensors_dir(spec)  # one line here, not a wrapped actor error
        return load_tokenizer(spec)
    return spec.tokenizer()


@dataclass
class RunResult:
    summary: dict
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    records: list = field(default_factory=list)  # the controller's PhaseRecords, in order
    text: str = ""  # the human-readable summary `selfplay train` prints


def make_judge_server(spec, j, truncated: str = "lose", rows: bool = False):
    """One `JudgeActor` (a preference server) for the task's judge `spec`, on `j`'s
    (JudgeConfig) resources; `truncated`: the rollout section's rule for truncated
    responses; `rows`: build the rollout rows (RUN_DIR/rollouts, MLflow's table)."""
    from selfplay.runtime.workers.actors import JudgeActor
    from selfplay.runtime.workers.judging import JudgePolicy

    return JudgeActor.options(num_cpus=j.num_cpus).remote(
        functools.partial(_build_judge, spec),
        JudgePolicy(retries=j.retries, timeout_s=j.timeout_s, on_failure=j.on_failure),
        truncated,
        rows,
    )


@dataclass
class Run:
    """What `build` makes: the task, the controller over live actors, the task's
    evaluator of the learner's policy, and the algorithm with its resolved hyperparameters."""

    task: object  # Task
    controller: object  # Controller
    evaluator: object  # Evaluator
    algo: object
    hyper: object
    build_policy: object = None  # zero-arg callable: a policy model (for RUN_DIR/model)
    tokenizer: object = None  # the policy's tokenizer
    sampling: object = None  # the rollout workers' `Sampling`
    eval_prompts: object = None  # the sampled evaluation's prompts (eval.every > 0)

    @property
    def beta(self) -> float:
        """β of the regularized game the algorithm solves (0 for the unregularized one)."""
        return float(self.hyper.beta) if self.algo.objective == "regularized" else 0.0


@dataclass
class Bound:
    """The task bound to the policy's tokenizer (`Task.bind`), with the policy's model."""

    task: object  # Task
    spec: object  # ModelSpec or a model name
    tokenizer: object
    eval_prompts: object = None  # `Prompts` of the sampled evaluation (eval.every > 0)


def bind_task(cfg: Config) -> Bound:
    """Make the task and bind it to the policy's tokenizer: where the task's bad input
    (its data, its prompts) fails, in one line. No Ray needed, nothing written."""
    from selfplay.models.load import check_lora_targets
    from selfplay.tasks import make_task

    task = make_task(cfg.task)
    spec = model_spec(cfg, task)
    tok = _tokenizer(cfg, spec)
    check_lora_targets(spec)  # LoRA targets the base lacks: one line, before Ray
    task.bind(tok)
    eval_prompts = None
    if cfg.eval.every:
        from selfplay.evaluation.sampling import eval_units

        eval_prompts = eval_units(task, cfg.task.kind, cfg.eval.prompts)
        if len(eval_prompts) < 2:
            raise InputError(
                f"eval.every={cfg.eval.every} needs at least 2 held-out prompts, the task has "
                f"{len(eval_prompts)}: set task.eval_split or task.eval_fraction, or eval.every=0"
            )
    return Bound(task, spec, tok, eval_prompts)


def build(cfg: Config, workers: int | None = None, bound: Bound | None = None) -> Run:
    """Everything a run needs, for any task. `workers`: the rollout pool's size, when a
    resumed run restores its own; `bound`: the task `bind_task` already bound (the CLI
    binds it before Ray starts), else it is bound here."""
    from selfplay.judges.factory import check_judge_spec, judges_text
    from selfplay.runtime.driver.controller import Controller, ControllerSettings
    from selfplay.runtime.learner.group import LearnerGroup
    from selfplay.runtime.learner.learner import LearnerSettings
    from selfplay.runtime.resources import check_run_resources, run_needs
    from selfplay.runtime.workers.pool import RolloutPool

    bound = bound or bind_task(cfg)
    task, spec, tok = bound.task, bound.spec, bound.tokenizer
    sampling = task.sampling(tok, cfg.rollout)
    judge_spec = task.judge_spec(cfg.judge)
    check_judge_spec(judge_spec)  # on the driver: a bad judge model is one line, not a dead actor
    algo, hyper = _hyper(cfg, task.n)
    for note in runtime_notes(cfg.algo.name, hyper):  # tabular-only features, once
        print(note, file=sys.stderr)
    r, j, lcfg = cfg.rollout, cfg.judge, cfg.learner
    rows = r.save == "every" or cfg.tracking.enabled
    # Texts are decoded once, in the worker, only where the judge or the rows need them.
    sampling = dataclasses.replace(sampling, texts=judges_text(judge_spec) or rows)
    workers = r.workers if workers is None else workers
    make_worker = functools.partial(make_rollout_worker, spec, cfg, sampling)
    scaler = _autoscaler(r)
    check_run_resources(cfg, scaler.clamp(workers) if scaler else workers)  # before any actor
    rollout = [make_worker() for _ in range(scaler.clamp(workers) if scaler else workers)]
    make_judge = functools.partial(make_judge_server, judge_spec, j, r.truncated, rows)
    judges = [make_judge() for _ in range(j.servers)]
    build_policy = functools.partial(_build_model, spec, cfg.model.dtype)
    learners = LearnerGroup(
        build_policy,
        LearnerSettings(
            lr=lcfg.lr,
            grad_clip=lcfg.grad_clip,
            strategy=lcfg.strategy,
            loss=cfg.algo.loss,
            normalize_logprobs=cfg.algo.normalize_logprobs,
            updates_per_phase=lcfg.updates_per_phase,
            micro_batch=lcfg.micro_batch,
            # The policy is the LM restricted as the sampler restricts it.
            allowed_token_ids=sampling.allowed_token_ids,
            # ... and tempered as it samples the policy (opponents, evaluation).
            temperature=sampling.temperature,
            threads=lcfg.threads,
            checkpoint_activations=lcfg.checkpoint_activations,
            warmup_updates=lcfg.warmup_updates,
        ),
        lcfg.shards,
        num_cpus=lcfg.num_cpus,
        num_gpus=lcfg.num_gpus,
        # custom resources tie learners to their node group (deploy/)
        resources=dict(lcfg.resources),
    )
    settings = ControllerSettings(
        prompts_per_step=r.prompts_per_step,
        k=r.k,
        opponents_k=r.opponents_k,
        max_staleness=cfg.runtime.max_staleness,
        seed=cfg.seed,
        max_reissues=cfg.runtime.max_reissues,
        pad_id=tok.pad_token_id,
        node_wait_s=cfg.runtime.node_wait_s,
    )
    pool = RolloutPool(
        rollout,
        make_worker=make_worker,
        autoscale=scaler,
        join_wait_s=r.join_wait_s,
        needs=run_needs(cfg, len(rollout)),
        grows=bool(cfg.runtime.address),
        worker_resources=", ".join(f"{k}: {v:g}" for k, v in worker_bundle(r).items()),
    )
    ctl = Controller(
        algo.plan(hyper), settings, pool, judges, learners, task.prompts, make_judge=make_judge
    )
    run = Run(
        task,
        ctl,
        None,
        algo,
        hyper,
        build_policy=build_policy,
        tokenizer=tok,
        sampling=sampling,
        eval_prompts=bound.eval_prompts,
    )
    run.evaluator = task.evaluator(tok, run.beta)
    return run
