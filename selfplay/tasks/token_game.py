"""The token game: a verifiable end-to-end NLHF task.

A prompt asks the policy to choose one of n move tokens; a response is exactly
one move token (generation is restricted to the move tokens). The preference
server is a matrix game P over the moves, so P(y ≻ y' | x) = P[move(y), move(y')].

Because the response space is the n moves, the LM's policy is the softmax of
its next-token logits restricted to those tokens, and the run can compute the
exact duality gap `2·max_y (P π)_y − 1` of the current last iterate, and the
regularized gap against the reference policy π_ref (the initial model's move
distribution, which is the μ of the β-regularized game).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfplay import games

PROMPT_WORDS = ["choose", "one", "move", ":"]
PROMPT = "choose one move :"


def move_names(n: int) -> list[str]:
    return [f"m{i}" for i in range(n)]


@dataclass
class TokenGame:
    P: np.ndarray  # [n, n]
    source: str

    @property
    def n(self) -> int:
        return int(self.P.shape[0])

    @property
    def moves(self) -> list[str]:
        return move_names(self.n)

    @property
    def vocab_words(self) -> list[str]:
        return PROMPT_WORDS + self.moves

    def prompts(self, count: int, start_id: int) -> tuple[np.ndarray, list[str]]:
        """`count` copies of the prompt with stable ids start_id, start_id+1, ..."""
        return np.arange(start_id, start_id + count, dtype=np.int64), [PROMPT] * count

    def nash(self) -> np.ndarray:
        return games.solve_nash(self.P)

    def gap(self, pi: np.ndarray) -> float:
        return float(games.gap(self.P, pi))

    def regularized_gap(self, pi: np.ndarray, beta: float, mu: np.ndarray) -> float | None:
        if not beta:
            return None
        return float(games.regularized_gap(self.P, pi, beta, mu))


def from_config(task) -> TokenGame:
    """Build from a `TaskConfig`: `task.matrix` (.npy/.csv) wins over `task.generate`."""
    if task.matrix:
        return TokenGame(games.load(task.matrix), str(task.matrix))
    P = games.generate(task.generate, task.n, task.seed)
    return TokenGame(P, f"{task.generate} n={task.n} seed={task.seed}")
