"""Build a run from a `Config` and execute it: Ray actors, controller, evaluation, tracking.

This is what `selfplay train CONFIG` calls. It starts an in-process Ray cluster
(`runtime.num_cpus`) unless `runtime.address` names one.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfplay.algos.compat import runtime_notes
from selfplay.config import Config, to_yaml
from selfplay.errors import InputError
from selfplay.tasks.token_game import TokenGame, from_config


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


def _build_model(spec):
    from selfplay.models.load import load_policy

    return load_policy(spec)[0]


def _build_backend(spec, kind: str):
    from selfplay.rollout import make_backend

    return make_backend(kind, spec)


def make_rollout_worker(spec, r):
    """One `RolloutActor` on `r`'s (RolloutConfig) resources: at build, and when the pool grows."""
    from selfplay.runtime.workers.actors import RolloutActor

    return RolloutActor.options(
        num_cpus=r.num_cpus, num_gpus=r.num_gpus, resources=dict(r.resources)
    ).remote(functools.partial(_build_backend, spec, r.backend))


def _autoscaler(r):
    """The rollout autoscale policy, or None; its bundle is one worker's Ray resources."""
    from selfplay.runtime.workers.control import Autoscaler

    if r.autoscale is None:
        return None
    a = r.autoscale
    bundle = {"CPU": r.num_cpus, "GPU": r.num_gpus, **r.resources}
    return Autoscaler(
        a.min_workers,
        a.max_workers,
        a.target_queue_depth,
        {k: float(v) for k, v in bundle.items() if v > 0},
        window=a.window,
    )


def _build_judge(P: np.ndarray, moves: tuple[str, ...], batch_size: int):
    from selfplay.judges.factory import JudgeSpec, make_judge

    return make_judge(JudgeSpec(kind="game", batch_size=batch_size, matrix=P, moves=moves))


def model_spec(cfg: Config, game: TokenGame):
    """The policy's model: the tiny factory over the game's words, or an HF name/path."""
    from selfplay.models.tiny import ModelSpec

    if cfg.model.name == "tiny":
        t = cfg.model.tiny
        return ModelSpec(
            words=tuple(game.vocab_words),
            hidden=t.hidden,
            layers=t.layers,
            heads=t.heads,
            seed=t.seed,
            init_std=t.init_std,
        )
    return cfg.model.name


@dataclass
class MoveEvaluator:
    """Exact move distribution of a learner-held role: softmax of log π over the move tokens."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray

    @classmethod
    def build(cls, prompt_tokens: list[int], move_ids: list[int]) -> MoveEvaluator:
        n, L = len(move_ids), len(prompt_tokens) + 1
        ids = np.array([prompt_tokens + [m] for m in move_ids], dtype=np.int64)
        resp = np.zeros((n, L), dtype=np.float32)
        resp[:, -1] = 1.0
        return cls(ids, np.ones((n, L), dtype=np.int64), resp)

    def policy(self, learners, role: str | None = None) -> np.ndarray:
        lp = (
            learners.policy_logprobs(self.input_ids, self.attention_mask, self.response_mask, role)
            .sum(axis=1)
            .astype(np.float64)
        )
        lp -= lp.max()
        p = np.exp(lp)
        return p / p.sum()


@dataclass
class RunResult:
    summary: dict
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    records: list = field(default_factory=list)  # the controller's PhaseRecords, in order


def make_judge_server(game: TokenGame, j):
    """One `JudgeActor` (a preference server) on `j`'s (JudgeConfig) resources."""
    from selfplay.runtime.workers.actors import JudgeActor
    from selfplay.runtime.workers.judging import JudgePolicy

    return JudgeActor.options(num_cpus=j.num_cpus).remote(
        functools.partial(_build_judge, game.P, tuple(game.moves), j.batch_size),
        JudgePolicy(retries=j.retries, timeout_s=j.timeout_s, on_failure=j.on_failure),
    )


def build(cfg: Config, workers: int | None = None):
    """Everything a run needs: (game, controller, evaluator, algo, hyper).

    `workers`: the rollout pool's size, when a resumed run restores its own."""
    from selfplay.models.load import (
        check_safetensors_dir,
        encode_prompts,
        load_policy,
        load_tokenizer,
    )
    from selfplay.runtime.driver.controller import Controller, ControllerSettings
    from selfplay.runtime.learner.group import LearnerGroup
    from selfplay.runtime.learner.learner import LearnerSettings
    from selfplay.runtime.workers.pool import RolloutPool

    game = from_config(cfg.task)
    spec = model_spec(cfg, game)
    if cfg.model.name == "tiny":
        _, tok = load_policy(spec)
    else:
        check_safetensors_dir(cfg.model.name)  # one line here, not a wrapped actor error
        tok = load_tokenizer(cfg.model.name)
    move_ids = [tok.convert_tokens_to_ids(m) for m in game.moves]
    if any(i is None or i == tok.unk_token_id for i in move_ids):
        raise InputError(
            f"model {cfg.model.name}: the move names {game.moves} must be single tokens"
        )
    algo, hyper = _hyper(cfg, game.n)
    plan = algo.plan(hyper)
    for note in runtime_notes(cfg.algo.name, hyper):  # tabular-only features, once
        print(note, file=sys.stderr)
    r, j, lcfg = cfg.rollout, cfg.judge, cfg.learner
    workers = r.workers if workers is None else workers
    make_worker = functools.partial(make_rollout_worker, spec, r)
    scaler = _autoscaler(r)
    rollout = [make_worker() for _ in range(scaler.clamp(workers) if scaler else workers)]
    make_judge = functools.partial(make_judge_server, game, j)
    judges = [make_judge() for _ in range(j.servers)]
    learners = LearnerGroup(
        functools.partial(_build_model, spec),
        LearnerSettings(
            lr=lcfg.lr,
            grad_clip=lcfg.grad_clip,
            strategy=lcfg.strategy,
            loss=cfg.algo.loss,
            normalize_logprobs=cfg.algo.normalize_logprobs,
            updates_per_phase=lcfg.updates_per_phase,
            micro_batch=lcfg.micro_batch,
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
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        explore_temperature=r.explore_temperature,
        max_staleness=cfg.runtime.max_staleness,
        seed=cfg.seed,
        max_reissues=cfg.runtime.max_reissues,
        allowed_token_ids=move_ids,
        pad_id=tok.pad_token_id,
    )
    pool = RolloutPool(
        rollout, make_worker=make_worker, autoscale=scaler, join_wait_s=r.join_wait_s
    )
    ctl = Controller(plan, settings, pool, judges, learners, game.prompts, make_judge=make_judge)
    evaluator = MoveEvaluator.build(encode_prompts(tok, [game.prompts(1, 0)[1][0]])[0], move_ids)
    return game, ctl, evaluator, algo, hyper


def result_json(summary: dict) -> str:
    return json.dumps(summary, default=float)


def write_config(cfg: Config, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    p = run_dir / "config.yaml"
    p.write_text(to_yaml(cfg))
    return p


def new_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / f"{cfg.algo.name}-{stamp}"
    d, i = base, 1
    while d.exists():
        d, i = Path(f"{base}-{i}"), i + 1
    return d
