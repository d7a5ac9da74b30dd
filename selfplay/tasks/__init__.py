"""Tasks: what is being solved. A `Task` (tasks/base.py) is the runtime's only link
to the problem; `make_task` picks one from `task.kind` in a fixed table."""

from __future__ import annotations

from selfplay.errors import InputError


def make_task(cfg):
    """The `Task` for a `TaskConfig`."""
    from selfplay.tasks import prompts, sequence_game, token_game

    kinds = {
        "token_game": token_game.from_config,
        "sequence_game": sequence_game.from_config,
        "prompts": prompts.from_config,
    }
    if cfg.kind not in kinds:
        raise InputError(f"unknown task.kind {cfg.kind!r}; expected one of {sorted(kinds)}")
    return kinds[cfg.kind](cfg)
