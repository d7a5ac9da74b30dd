"""A user's Python function as the judge (`judge.kind: function`).

`judge.function` names it as verl's `custom_reward_function` does: a file and a
name, `path/to/file.py:name`, or an importable module and a name,
`package.module:name`. `judge.returns` declares what it computes:

- `score` (pointwise): `fn(prompt, response) -> float` s. The judge is
  Bradley–Terry with temperature τ = `judge.tau`:

      P(a ≻ b | x) = σ((s(x, a) − s(x, b)) / τ),

  σ computed as ½ + ½·tanh(d/2) (odd about ½ exactly, as in `RewardJudge`); each
  distinct (prompt, response) of a batch is scored once, so a = b gives ½ exactly.
- `prob` (pairwise): `fn(prompt, a, b) -> float` p(a ≻ b) ∈ [0, 1]. The judge
  returns the symmetrised P = ½ + ½·(p(a, b) − p(b, a)) (`judges.base.symmetrized`),
  so the game stays constant-sum whatever order bias the function has; a
  function already antisymmetric (p(b, a) = 1 − p(a, b)) comes back unchanged.

`prompt` is the raw prompt: a string, or a list of {role, content} messages.

Failures. A row whose call raises, or returns something that is not a finite
number, gets NaN (the first exception of a call is logged); the preference
servers then apply `judge.retries` and `judge.on_failure` to those comparisons
(`runtime.workers.judging`). A function that cannot be loaded is an
`InputError` (`load_function`), raised on the driver before Ray starts. A file
is executed as a fresh module (not added to `sys.modules`); a relative file
path is resolved against the working directory of the driver (`resolve_ref`),
so the preference servers load the same file.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from selfplay.errors import InputError
from selfplay.judges.base import check_batch, prompt_key, symmetrized
from selfplay.types import RawPrompt

log = logging.getLogger(__name__)
RETURNS = ("score", "prob")
FORM = "path/to/file.py:name or package.module:name"


def _split(ref: str) -> tuple[str, str]:
    target, sep, name = ref.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise InputError(f"judge.function must be {FORM}, got {ref!r}")
    return target, name


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def resolve_ref(ref: str) -> str:
    """`ref` with a file path made absolute (the servers may run in another directory)."""
    target, name = _split(ref)
    if _is_file(target):
        return f"{Path(target).expanduser().resolve()}:{name}"
    return ref


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _module(target: str):
    if _is_file(target):
        path = Path(target).expanduser()
        if not path.is_file():
            raise InputError(f"judge.function: no such file: {target}")
        spec = importlib.util.spec_from_file_location(f"_selfplay_judge_{uuid.uuid4().hex}", path)
        if spec is None or spec.loader is None:
            raise InputError(f"judge.function: cannot load {target} as Python")
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception as e:  # noqa: BLE001 - the user's file: any error is one line
            raise InputError(f"judge.function: {target} failed to load: {_first_line(e)}") from None
        return mod
    try:
        return importlib.import_module(target)
    except Exception as e:  # noqa: BLE001 - ImportError, or the module's own error
        raise InputError(f"judge.function: cannot import {target}: {_first_line(e)}") from None


def load_function(ref: str) -> Callable:
    """The callable `ref` names (see the module docstring); InputError in one line if none."""
    target, name = _split(ref)
    mod = _module(target)
    if not hasattr(mod, name):
        raise InputError(f"judge.function: {target} has no {name!r}")
    fn = getattr(mod, name)
    if not callable(fn):
        raise InputError(f"judge.function: {target}:{name} is not callable ({type(fn).__name__})")
    return fn


def _number(value) -> float:
    x = float(value)  # a non-number raises here: that row fails
    if not math.isfinite(x):
        raise ValueError(f"returned {x}")
    return x


class FunctionJudge:
    """P(a ≻ b | x) from a user's score or probability function (module docstring)."""

    def __init__(self, fn: Callable, *, returns: str = "score", tau: float = 1.0) -> None:
        if returns not in RETURNS:
            raise InputError(f"judge.returns must be one of {RETURNS}, got {returns!r}")
        if not tau > 0:
            raise InputError(f"judge.tau must be > 0, got {tau}")
        self.fn, self.returns, self.tau = fn, returns, tau
        self.prob = self._score_prob if returns == "score" else symmetrized(self.raw)

    def _calls(self, rows: list[tuple]) -> np.ndarray:
        """[len(rows)] float64 fn(*row), NaN where a call raised or gave no finite number."""
        out = np.full(len(rows), np.nan)
        first = None
        for i, row in enumerate(rows):
            try:
                out[i] = _number(self.fn(*row))
            except Exception as e:  # noqa: BLE001 - a failed row is NaN (judge.on_failure)
                first = first or e
        if first is not None:
            bad = int(np.isnan(out).sum())
            log.warning("judge function failed on %d of %d calls: %s", bad, len(rows), first)
        return out

    def scores(self, prompts: list[RawPrompt], responses: list[str]) -> np.ndarray:
        return self._calls(list(zip(prompts, responses, strict=True)))

    def _score_prob(self, prompts: list[RawPrompt], a: list[str], b: list[str]) -> np.ndarray:
        n = check_batch(prompts, a, b)
        pk = [prompt_key(p) for p in prompts]
        raw = dict(zip(pk, prompts, strict=True))
        keys = sorted(set(zip(pk, a, strict=True)) | set(zip(pk, b, strict=True)))
        index = {key: i for i, key in enumerate(keys)}
        s = self.scores([raw[p] for p, _ in keys], [y for _, y in keys])
        ia = np.array([index[k] for k in zip(pk, a, strict=True)], dtype=np.int64)
        ib = np.array([index[k] for k in zip(pk, b, strict=True)], dtype=np.int64)
        d = (s[ia] - s[ib]) / self.tau if n else np.zeros(0)
        return 0.5 + 0.5 * np.tanh(0.5 * d)

    def raw(self, prompts: list[RawPrompt], a: list[str], b: list[str]) -> np.ndarray:
        """[N] fn(prompt, a, b) for the order given (not symmetrised); NaN where it failed
        or fell outside [0, 1]."""
        p = self._calls(list(zip(prompts, a, b, strict=True)))
        p[(p < 0) | (p > 1)] = np.nan
        return p
