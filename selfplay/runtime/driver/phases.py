"""What the controller (`controller.py`) keeps of each phase: the batch it requested and
has in flight (`Pending`), and, once trained on, its record (`PhaseRecord`), which the
run's report, MLflow and checkpoints (`resume.py`) read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfplay.types import SamplerVersion, Version


@dataclass
class Pending:
    """A requested batch: what it samples (prompts from `start`, versions, opponent
    weights), the role → version map it sampled from, and the refs of its result."""

    step: int
    phase: int
    start: int  # first prompt id: the batch answers prompts start .. start+prompts_per_step-1
    used: dict[str, Version]
    samplers: list[SamplerVersion]  # [trained-on sampler, *opponent sources]
    weights: list[float]  # opponent weights
    batch_ref: object = None
    info_ref: object = None
    rows_ref: object = None  # its rollout rows (a pyarrow Table), or None
    workers: int = 0  # size of the rollout pool that sampled it
    reissues: int = 0


@dataclass
class PhaseRecord:
    step: int
    phase: int
    output: Version
    staleness: int
    rows: int
    queries: int
    prompt_ids: np.ndarray
    sampler_versions: list[SamplerVersion]
    opponent_versions: list[SamplerVersion]
    anchor: Version
    metrics: object  # PhaseMetrics (an ObjectRef until the step's end, `_finish_step`)
    seconds: float  # wall time from this phase's `train` to the next's (or the step's end)
    batch: object = None  # BatchInfo: generation/judging seconds and token counts
    workers: int = 0  # size of the rollout pool that sampled this batch
    reissues: int = 0  # times the batch was sampled again after an actor died
    rows_ref: object = None  # the batch's rollout rows (pyarrow Table ref), or None
