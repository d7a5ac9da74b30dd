"""Algorithms: tabular updates, LLM losses and step plans (pure torch; no ray/transformers).

from selfplay import algos
algos.NAMES                      # CLI names
algos.get("nash-mp")             # Algorithm: name, paper, objective, default_hyper, plan
algos.run("omwu", P, iterations=1000)   # batched exact tabular run -> Trace
"""

from __future__ import annotations

from selfplay.algos import egpo, mpo, mwu, nash_md, nash_mp, omwu, online_ipo, sppo
from selfplay.algos.base import Algorithm, Hyper
from selfplay.algos.losses import (
    g_hat,
    ipo_loss,
    pg_loss,
    phase_loss,
    sequence_logprob,
    target_regression_loss,
)
from selfplay.algos.names import NAMES
from selfplay.algos.plan import Mixture, Phase, Refresh, StepPlan
from selfplay.algos.tabular import Trace, run, step
from selfplay.errors import InputError

_ALGOS: dict[str, Algorithm] = {
    m.ALGORITHM.name: m.ALGORITHM
    for m in (mpo, nash_mp, omwu, egpo, nash_md, online_ipo, sppo, mwu)
}
# The registry holds exactly the names the config accepts (algos/names.py), in that order.
_ALGOS = {name: _ALGOS[name] for name in NAMES}


def get(name: str) -> Algorithm:
    """The algorithm with CLI name `name` (InputError naming the valid ones otherwise)."""
    try:
        return _ALGOS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown algorithm {name!r}; choose from {', '.join(NAMES)}") from None


__all__ = [
    "NAMES",
    "Algorithm",
    "Hyper",
    "InputError",
    "Mixture",
    "Phase",
    "Refresh",
    "StepPlan",
    "Trace",
    "g_hat",
    "get",
    "ipo_loss",
    "pg_loss",
    "phase_loss",
    "run",
    "sequence_logprob",
    "step",
    "target_regression_loss",
]
