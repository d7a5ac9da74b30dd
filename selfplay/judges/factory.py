"""Build a judge from a typed spec (`JudgeSpec`), the one entry point the runtime uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from selfplay.errors import InputError
from selfplay.judges.base import Judge

if TYPE_CHECKING:
    from selfplay.models.tiny import ModelSpec

JudgeKind = Literal["game", "reward", "pairwise", "llm"]


@dataclass(frozen=True)
class JudgeSpec:
    """kind:       game | reward | pairwise | llm.
    model:      HF path, hub name or `tiny:<spec>` (model judges only).
    batch_size: rows per forward pass (model judges; both orders count as rows).
    matrix:     [n, n] P(i ≻ j) and `moves` the n move names (game judge only).
    template:   judge prompt template with {prompt}, {a}, {b} (pairwise / llm; None = default).
    """

    kind: JudgeKind
    batch_size: int
    model: str | ModelSpec | None = None
    device: str = "cpu"
    dtype: str = "float32"
    matrix: np.ndarray | None = None
    moves: tuple[str, ...] | None = None
    template: str | None = None


def make_judge(spec: JudgeSpec) -> Judge:
    if spec.kind == "game":
        if spec.matrix is None or spec.moves is None:
            raise InputError("judge.kind=game needs a matrix and move names")
        from selfplay.judges.game import GameJudge

        return GameJudge(spec.matrix, list(spec.moves))
    if spec.kind not in ("reward", "pairwise", "llm"):
        raise InputError(f"unknown judge kind {spec.kind!r}; expected game, reward, pairwise or llm")
    if spec.model is None:
        raise InputError(f"judge.kind={spec.kind} needs judge.model (a path, hub name or tiny:...)")
    if spec.batch_size < 1:
        raise InputError(f"judge batch_size must be >= 1, got {spec.batch_size}")
    kw = {"batch_size": spec.batch_size, "device": spec.device}
    if spec.template is not None and spec.kind != "reward":
        kw["template"] = spec.template
    from selfplay.models.load import load_classifier, load_policy

    if spec.kind == "llm":
        from selfplay.judges.llm_judge import LLMJudge

        return LLMJudge(*load_policy(spec.model, dtype=spec.dtype, device=spec.device), **kw)
    model, tok = load_classifier(spec.model, dtype=spec.dtype, device=spec.device)
    if spec.kind == "reward":
        from selfplay.judges.reward import RewardJudge

        return RewardJudge(model, tok, **kw)
    from selfplay.judges.pairwise import PairwiseJudge

    return PairwiseJudge(model, tok, **kw)
