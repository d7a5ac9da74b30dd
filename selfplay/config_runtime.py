"""Typed run-time sections of the run configuration: how and where a run executes
(`runtime`, rollout autoscaling), its evaluation during training (`eval`) and its
tracking. `config.py` assembles them with the problem's sections (algorithm, model,
task, rollout, judge, learner); the rules every section follows are in its docstring.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from selfplay.config_tasks import Strict as _Strict

#: `eval.exploiter`'s form (`selfplay.evaluation.exploiter.parse_kind`'s rule).
EXPLOITER = re.compile(r"best-of-([1-9][0-9]*)")


class AutoscaleConfig(_Strict):
    """Queue-depth autoscaling of the rollout pool (selfplay/runtime/workers/control.py)."""

    min_workers: int = Field(1, ge=1)
    max_workers: int = Field(4, ge=1)
    target_queue_depth: float = Field(
        0.5, ge=0, description="wanted mean number of judged batches waiting for the learner"
    )
    window: int = Field(4, ge=1, description="steps observed per decision (±1 worker)")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleConfig:
        if self.max_workers < self.min_workers:
            raise ValueError("max_workers must be >= min_workers")
        return self


class RuntimeConfig(_Strict):
    steps: int = Field(40, ge=1)
    max_staleness: int = Field(0, ge=0)
    address: str | None = None
    num_cpus: int = Field(
        2, ge=1, description="CPUs of the in-process cluster when address is None"
    )
    eval_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(
        5,
        ge=0,
        description="steps between checkpoints in RUN_DIR/checkpoints (0: only the final one)",
    )
    checkpoint_keep: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    keep_policies_every: int = Field(
        0,
        ge=0,
        description="steps between weights-only policies kept in RUN_DIR/policies/step-N "
        "(never pruned; `selfplay eval --league RUN_DIR`); 0: none",
    )
    max_reissues: int = Field(
        3,
        ge=0,
        description="times one batch is reissued after a rollout worker or "
        "preference server died, before the run fails",
    )
    node_wait_s: float = Field(
        120.0,
        ge=0,
        le=86400,
        description="seconds a run waits for a dead rollout worker or preference server's "
        "replacement to start (its node lost, none other can host it) before it fails",
    )


class EvalConfig(_Strict):
    """Sampled evaluation during training (`selfplay.runtime.driver.evaluate`)."""

    every: int = Field(
        0,
        ge=0,
        description="steps between evaluations of the policy against π_ref on held-out "
        "prompts (and the last step); 0: off",
    )
    prompts: int = Field(
        32, ge=2, description="held-out prompts (games: independent draws of the prompt)"
    )
    samples: int = Field(4, ge=1, description="responses per prompt and policy")
    exploiter: str | None = Field(
        None,
        description="best-of-N: also exploit π_t with the best of N π_ref candidates per "
        "prompt (eval/exploitability_lb; U·N·S more judgments an evaluation); None: off",
    )

    @field_validator("exploiter")
    @classmethod
    def _exploiter(cls, v: str | None) -> str | None:
        if v is not None and not EXPLOITER.fullmatch(v):
            raise ValueError(f"must be best-of-N with N >= 1 (e.g. best-of-8), got {v!r}")
        return v

    @model_validator(mode="after")
    def _halves(self) -> EvalConfig:
        if self.exploiter is not None and self.samples < 2:
            raise ValueError("eval.exploiter needs eval.samples >= 2 (two halves)")
        return self


class TrackingConfig(_Strict):
    enabled: bool = True
    uri: str | None = None
    experiment: str = "selfplay"
