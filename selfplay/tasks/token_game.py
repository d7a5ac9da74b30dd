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

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selfplay import games
from selfplay.errors import InputError
from selfplay.tasks.base import Sampling
from selfplay.types import Prompts

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

    def model_words(self) -> list[str]:
        return PROMPT_WORDS + self.moves

    def bind(self, tokenizer) -> None:
        from selfplay.models.load import encode_prompts, format_prompt

        self._tokens = encode_prompts(tokenizer, [PROMPT])[0]
        self._rendered = format_prompt(tokenizer, PROMPT)

    def prompts(self, count: int, start_id: int) -> Prompts:
        """`count` copies of the prompt with stable ids start_id, start_id+1, ..."""
        ids = np.arange(start_id, start_id + count, dtype=np.int64)
        tokens = getattr(self, "_tokens", None)
        return Prompts(
            ids=ids,
            texts=[PROMPT] * count,
            tokens=None if tokens is None else [list(tokens)] * count,
            rendered=None if tokens is None else [self._rendered] * count,
        )

    def move_ids(self, tokenizer) -> list[int]:
        ids = [tokenizer.convert_tokens_to_ids(m) for m in self.moves]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise InputError(f"the model's tokenizer must have the moves {self.moves} as tokens")
        return ids

    def sampling(self, tokenizer, rollout) -> Sampling:
        """One move token per response, drawn from the move tokens only."""
        return Sampling(
            max_new_tokens=1,
            temperature=rollout.temperature,
            explore_temperature=rollout.explore_temperature,
            allowed_token_ids=tuple(self.move_ids(tokenizer)),
        )

    def judge_spec(self, judge):
        from selfplay.judges.factory import JudgeSpec

        return JudgeSpec(
            kind="game", batch_size=judge.batch_size, matrix=self.P, moves=tuple(self.moves)
        )

    def evaluator(self, tokenizer, beta: float) -> GameEvaluator:
        from selfplay.models.load import encode_prompts

        prompt = encode_prompts(tokenizer, [PROMPT])[0]
        return GameEvaluator(self, MoveProbe.build(prompt, self.move_ids(tokenizer)), beta)

    def nash(self) -> np.ndarray:
        return games.solve_nash(self.P)

    def gap(self, pi: np.ndarray) -> float:
        return float(games.gap(self.P, pi))

    def regularized_gap(self, pi: np.ndarray, beta: float, mu: np.ndarray) -> float | None:
        if not beta:
            return None
        return float(games.regularized_gap(self.P, pi, beta, mu))


@dataclass
class MoveProbe:
    """Exact move distribution of a learner-held role: softmax of log π over the move tokens."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray

    @classmethod
    def build(cls, prompt_tokens: list[int], move_ids: list[int]) -> MoveProbe:
        n, L = len(move_ids), len(prompt_tokens) + 1
        ids = np.array([prompt_tokens + [m] for m in move_ids], dtype=np.int64)
        resp = np.zeros((n, L), dtype=np.float32)
        resp[:, -1] = 1.0
        return cls(ids, np.ones((n, L), dtype=np.int64), resp)

    def policy(self, learners, role: str | None = None) -> np.ndarray:
        lp = learners.policy_logprobs(self.input_ids, self.attention_mask, self.response_mask, role)
        lp = lp.sum(axis=1).astype(np.float64)
        lp -= lp.max()
        p = np.exp(lp)
        return p / p.sum()


@dataclass
class GameEvaluator:
    """Exact evaluation of the token game: the gap, the regularized gap against
    μ = π_ref (β > 0 only: algorithms that solve the β-regularized game), the move
    distribution, and the exact win rate against π_ref."""

    game: TokenGame
    probe: MoveProbe
    beta: float
    headline: str = "gap"
    plot_keys: tuple[str, ...] = ("gap", "regularized_gap")
    pi_ref: np.ndarray | None = field(default=None, repr=False)

    def _metrics(self, pi: np.ndarray) -> dict[str, Any]:
        return {
            "gap": self.game.gap(pi),
            "regularized_gap": self.game.regularized_gap(pi, self.beta, self.pi_ref),
            "policy": [float(x) for x in pi],
            # P(π_t beats π_ref) under the game judge, ties counting ½.
            "win_rate_ref": float(pi @ self.game.P @ self.pi_ref),
        }

    def reference(self, learners) -> dict[str, Any]:
        self.pi_ref = self.probe.policy(learners, "ref")
        return self._metrics(self.pi_ref)

    def evaluate(self, learners) -> dict[str, Any]:
        return self._metrics(self.probe.policy(learners))

    def summary(self, learners) -> dict[str, Any]:
        pi, b = self.probe.policy(learners), self.beta
        return {
            "game": self.game.source,
            "moves": self.game.moves,
            **self._metrics(pi),
            "beta": b or None,
            # π_ref's move probabilities: with `beta` and `policy`, anyone can recompute
            # the regularized gap from the matrix.
            "reference_policy": self.pi_ref.tolist(),
            "nash": self.game.nash().tolist(),
            "regularized_nash": (
                games.solve_regularized(self.game.P, b, self.pi_ref).tolist() if b else None
            ),
        }

    def format(self, s: dict[str, Any]) -> list[str]:
        lines = [f"gap: {s['gap_initial']:.4f} at start -> {s['gap']:.4f} at the end"]
        if s["regularized_gap"] is not None:
            lines.append(
                f"regularized gap (β={s['beta']:g}): {s['regularized_gap_initial']:.4f}"
                f" -> {s['regularized_gap']:.4f}"
            )
        reg = s["regularized_nash"]
        head = f"{'move':<6}{'policy':>9}{'π_ref':>9}{'NE':>9}" + (
            f"{'reg. NE':>10}" if reg else ""
        )
        lines.append(head)
        for i, m in enumerate(s["moves"]):
            row = (
                f"{m:<6}{s['policy'][i]:>9.4f}{s['reference_policy'][i]:>9.4f}{s['nash'][i]:>9.4f}"
            )
            lines.append(row + (f"{reg[i]:>10.4f}" if reg else ""))
        return lines


def from_config(task) -> TokenGame:
    """Build from a `TaskConfig`: `task.matrix` (.npy/.csv) wins over `task.generate`."""
    if task.matrix:
        return TokenGame(games.load(task.matrix), str(task.matrix))
    P = games.generate(task.generate, task.n, task.seed)
    return TokenGame(P, f"{task.generate} n={task.n} seed={task.seed}")
