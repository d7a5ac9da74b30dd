"""The token game: a verifiable end-to-end NLHF task.

A prompt asks the policy to choose one of n move tokens; a response is exactly
one move token (generation is restricted to the move tokens). The preference
server is a matrix game P over the moves, so P(y ≻ y' | x) = P[move(y), move(y')].

It is the sequence game (tasks/sequence_game.py) of length 1 with its own
prompt: the LM's policy is the softmax of its next-token logits restricted to
the move tokens, and the run computes the exact duality gap `2·max_y (P π)_y − 1`
of the current last iterate, and the regularized gap against the reference
policy π_ref (the initial model's move distribution, which is the μ of the
β-regularized game).
"""

from __future__ import annotations

import numpy as np

from selfplay import games
from selfplay.tasks.sequence_game import GameEvaluator, SequenceGame, move_names

__all__ = ["PROMPT", "PROMPT_WORDS", "GameEvaluator", "TokenGame", "from_config", "move_names"]

PROMPT_WORDS = ["choose", "one", "move", ":"]
PROMPT = "choose one move :"


class TokenGame(SequenceGame):
    """The sequence game with length 1 over the n moves of P."""

    def __init__(self, P: np.ndarray, source: str) -> None:
        P = np.asarray(P)
        super().__init__(P, source, alphabet=int(P.shape[0]), length=1, prompt=PROMPT)


def from_config(task) -> TokenGame:
    """Build from a `TaskConfig`: `task.matrix` (.npy/.csv) wins over `task.generate`."""
    if task.matrix:
        return TokenGame(games.load(task.matrix), str(task.matrix))
    P = games.generate(task.generate, task.n, task.seed)
    return TokenGame(P, f"{task.generate} n={task.n} seed={task.seed}")
