"""Build a judge from a typed spec (`JudgeSpec`), the one entry point the runtime uses.

Judge kinds are looked up in `JUDGE_KINDS`, an explicit table of selfplay's own
judges; a kind name is never imported by string. Model judges load their
weights through `selfplay.models.load` (safetensors only, no remote code).

`model_judge_spec(judge)` is the spec of a model judge from the `judge` config
section (a text task's `judge_spec`). `check_judge_spec(spec)` checks a model
judge on the driver, before any actor or run dir exists (the judge itself loads
inside a Ray actor, where a bad model would only surface as a dead actor): the
directory exists and holds safetensors, its config loads without remote code, a
reward / pairwise model has one logit, the template formats, and an llm judge's
answers are single tokens. It reads the config and tokenizer only, no weights.
A function judge (`judges.function`) is loaded there once, so a missing file,
module or name, or a name that is not callable, is one line before Ray starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from selfplay.errors import InputError
from selfplay.judges.base import Judge

if TYPE_CHECKING:
    from selfplay.models.tiny import ModelSpec

JudgeKind = Literal["game", "reward", "pairwise", "llm", "function"]
MODEL_KINDS = ("reward", "pairwise", "llm")
PROMPT_KINDS = (*MODEL_KINDS, "function")  # the judges of a prompts task


@dataclass(frozen=True)
class JudgeSpec:
    """kind:       game | reward | pairwise | llm | function.
    model:      HF path, hub name, `.gguf` file or `tiny:<spec>` (model judges only).
    batch_size: rows per forward pass (model judges; both orders count as rows).
    matrix:     [n, n] P(i ≻ j) over the responses, `moves` the move names and
                `length` the moves per response, n = len(moves)**length (game judge only).
    template:   judge prompt template with {prompt}, {a}, {b} (pairwise / llm; None = default).
    move_ids:   the moves' token ids (game judge): it then reads responses as token ids,
                and the rollout workers need not decode text (`judges_text`).
    function:   `file.py:name` (absolute path) or `module:name` (function judge only);
    returns:    what it returns, score | prob; tau: the score judge's temperature.
    """

    kind: JudgeKind
    batch_size: int
    model: str | ModelSpec | None = None
    device: str = "cpu"
    dtype: str = "float32"
    matrix: np.ndarray | None = None
    moves: tuple[str, ...] | None = None
    length: int = 1
    template: str | None = None
    move_ids: tuple[int, ...] | None = None
    function: str | None = None
    returns: str = "score"
    tau: float = 1.0


def _game(spec: JudgeSpec) -> Judge:
    if spec.matrix is None or spec.moves is None:
        raise InputError("judge.kind=game needs a matrix and move names")
    from selfplay.judges.game import GameJudge

    ids = None if spec.move_ids is None else list(spec.move_ids)
    return GameJudge(spec.matrix, list(spec.moves), spec.length, ids)


def judges_text(spec: JudgeSpec) -> bool:
    """Whether the judge `spec` builds reads response texts (else token ids: a game
    judge given its moves' token ids)."""
    return not (spec.kind == "game" and spec.move_ids is not None)


def _model_kwargs(spec: JudgeSpec) -> dict:
    if spec.model is None:
        raise InputError(f"judge.kind={spec.kind} needs judge.model (a path, hub name or tiny:...)")
    if spec.batch_size < 1:
        raise InputError(f"judge batch_size must be >= 1, got {spec.batch_size}")
    kw = {"batch_size": spec.batch_size, "device": spec.device}
    if spec.template is not None and spec.kind != "reward":
        kw["template"] = spec.template
    return kw


def _reward(spec: JudgeSpec) -> Judge:
    kw = _model_kwargs(spec)
    from selfplay.judges.reward import RewardJudge
    from selfplay.models.load import load_classifier

    return RewardJudge(*load_classifier(spec.model, dtype=spec.dtype, device=spec.device), **kw)


def _pairwise(spec: JudgeSpec) -> Judge:
    kw = _model_kwargs(spec)
    from selfplay.judges.pairwise import PairwiseJudge
    from selfplay.models.load import load_classifier

    return PairwiseJudge(*load_classifier(spec.model, dtype=spec.dtype, device=spec.device), **kw)


def _llm(spec: JudgeSpec) -> Judge:
    kw = _model_kwargs(spec)
    from selfplay.judges.llm_judge import LLMJudge
    from selfplay.models.load import load_policy

    return LLMJudge(*load_policy(spec.model, dtype=spec.dtype, device=spec.device), **kw)


def _function(spec: JudgeSpec) -> Judge:
    if spec.function is None:
        raise InputError("judge.kind=function needs judge.function (file.py:name or module:name)")
    from selfplay.judges.function import FunctionJudge, load_function

    return FunctionJudge(load_function(spec.function), returns=spec.returns, tau=spec.tau)


def model_judge_spec(judge) -> JudgeSpec:
    """The JudgeSpec of a prompts task's judge (a model or a function) from a `JudgeConfig`."""
    if judge.kind not in PROMPT_KINDS:
        raise InputError(
            f"judge.kind={judge.kind} does not judge text; expected one of {PROMPT_KINDS}"
        )
    if judge.kind == "function":
        from selfplay.judges.function import resolve_ref

        if not judge.function:
            raise InputError(
                "judge.kind=function needs judge.function (file.py:name or module:name)"
            )
        return JudgeSpec(
            kind="function",
            batch_size=judge.batch_size,
            function=resolve_ref(judge.function),
            returns=judge.returns,
            tau=judge.tau,
        )
    return JudgeSpec(
        kind=judge.kind, batch_size=judge.batch_size, model=judge.model, template=judge.template
    )


def _looks_local(name: str) -> bool:
    """A path rather than a hub name: absolute, ./ ../ ~, or its first part exists here."""
    from pathlib import Path

    first = Path(name).parts[0] if Path(name).parts else name
    return name.startswith(("/", ".", "~")) or (len(Path(name).parts) > 1 and Path(first).exists())


def check_judge_spec(spec: JudgeSpec) -> None:
    """One-line InputError for a judge that cannot load (see the module docstring)."""
    if spec.kind == "function":
        _function(spec)  # loads the function: its file runs once, here
        return
    if spec.kind not in MODEL_KINDS:
        return
    if spec.model is None:
        raise InputError(f"judge.kind={spec.kind} needs judge.model (a directory or hub name)")
    if spec.template is not None:
        if spec.kind == "reward":
            raise InputError("judge.template is for pairwise and llm judges, not judge.kind=reward")
        from selfplay.judges.base import check_template

        check_template(spec.template)
    from selfplay.models.tiny import ModelSpec

    if isinstance(spec.model, ModelSpec) or spec.model.startswith(ModelSpec.PREFIX):
        return  # built in code
    from pathlib import Path

    from selfplay.models.load import check_safetensors_dir, is_gguf, load_tokenizer

    name = spec.model
    if not Path(name).exists() and (_looks_local(name) or is_gguf(name)):
        what = "file" if is_gguf(name) else "directory"
        raise InputError(f"judge.model: no such {what}: {name}")
    check_safetensors_dir(name)
    config = _model_config(name)
    if spec.kind in ("reward", "pairwise") and config.num_labels != 1:
        raise InputError(
            f"judge model {name} has {config.num_labels} labels; "
            f"a {spec.kind} judge needs exactly one logit"
        )
    if spec.kind == "llm":
        from selfplay.judges.llm_judge import check_answers

        check_answers(load_tokenizer(name))


def _model_config(name: str):
    from selfplay.models.load import load_model_config

    return load_model_config(name, "judge model")


# The allow-list: every judge kind selfplay can build, and nothing else.
JUDGE_KINDS: dict[str, Callable[[JudgeSpec], Judge]] = {
    "game": _game,
    "reward": _reward,
    "pairwise": _pairwise,
    "llm": _llm,
    "function": _function,
}


def make_judge(spec: JudgeSpec) -> Judge:
    """The judge `spec` describes (InputError for an unknown kind or missing fields)."""
    build = JUDGE_KINDS.get(spec.kind) if isinstance(spec.kind, str) else None
    if build is None:
        raise InputError(
            f"unknown judge kind {spec.kind!r}; expected one of {', '.join(JUDGE_KINDS)}"
        )
    return build(spec)
