"""The sequence game: the exact check of the multi-token path.

A prompt asks the policy for `length` moves over an alphabet of `alphabet` move
tokens. Generation is restricted to the move tokens and stops after exactly
`length` of them, so a response is a move sequence s = (s_1, ..., s_L) and
nothing else. There is no EOS: a response is complete when it has `length`
moves (no EOS is sampled, none is scored). The preference server is a matrix
game P over the n = alphabet**length sequences, rows in lexicographic order,
first move most significant: row(s) = Σ_t s_t·alphabet^(L−t).

The policy over sequences is the product of the LM's conditionals restricted to
the move tokens (the sampler's rule, applied by the learner too):

    π(s | x) = Π_t softmax_{v ∈ moves}(logits(x, s_<t))_{s_t},

computed exactly by enumerating all n sequences in one learner forward, so the
run reports the exact duality gap `2·max_s (P π)_s − 1` of its last iterate and
the regularized gap against π_ref (the initial model's sequence distribution).

The token game (tasks/token_game.py) is the length-1 case: the classes here are
shared, and the token game only fixes its prompt and `length = 1`.

Deviations and limits:
1. Nash-MD's mixture is sampled per token (selfplay/rollout/hf.py), which for
   length ≥ 2 is not the sequence-level geometric mixture its update assumes.
2. The judge reads the decoded text (move names with optional whitespace between,
   `selfplay.judges.game.parse_moves`). `sampling` checks once that the tokenizer's
   `batch_decode` (what the hf backend returns) reads back as the right sequence for
   all n sequences; the vllm backend's detokenizer is assumed to agree.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selfplay import games
from selfplay.errors import InputError
from selfplay.tasks.base import Sampling
from selfplay.types import Prompts


def move_names(n: int) -> list[str]:
    return [f"m{i}" for i in range(n)]


def sequence_prompt(length: int) -> str:
    return f"choose {length} moves :"


@dataclass
class SequenceGame:
    """P: [n, n] over the n = alphabet**length move sequences (lexicographic rows)."""

    P: np.ndarray
    source: str
    alphabet: int
    length: int
    prompt: str

    def __post_init__(self) -> None:
        n = self.alphabet**self.length
        if self.P.shape != (n, n):
            raise InputError(
                f"{self.source}: the matrix is {self.P.shape[0]}x{self.P.shape[1]}, the game has "
                f"alphabet**length = {self.alphabet}**{self.length} = {n} sequences"
            )

    @property
    def n(self) -> int:
        return int(self.P.shape[0])

    @property
    def moves(self) -> list[str]:
        """The move tokens (the alphabet)."""
        return move_names(self.alphabet)

    @property
    def responses(self) -> list[str]:
        """The n responses' texts, in row order ("m0 m2": moves joined by a space)."""
        return [" ".join(s) for s in itertools.product(self.moves, repeat=self.length)]

    @property
    def response_kind(self) -> str:
        return "move" if self.length == 1 else "sequence"

    def model_words(self) -> list[str]:
        return self.prompt.split() + self.moves

    def bind(self, tokenizer) -> None:
        from selfplay.models.load import encode_prompts, format_prompt

        self._tokens = encode_prompts(tokenizer, [self.prompt])[0]
        self._rendered = format_prompt(tokenizer, self.prompt)
        try:  # the judge reads responses as these ids (`sampling` reports a bad tokenizer)
            self._move_ids = tuple(self.move_ids(tokenizer))
        except InputError:
            self._move_ids = None

    def prompts(self, count: int, start_id: int) -> Prompts:
        """`count` copies of the prompt with stable ids start_id, start_id+1, ..."""
        ids = np.arange(start_id, start_id + count, dtype=np.int64)
        tokens = getattr(self, "_tokens", None)
        return Prompts(
            ids=ids,
            texts=[self.prompt] * count,
            tokens=None if tokens is None else [list(tokens)] * count,
            rendered=None if tokens is None else [self._rendered] * count,
        )

    def move_ids(self, tokenizer) -> list[int]:
        ids = [tokenizer.convert_tokens_to_ids(m) for m in self.moves]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise InputError(f"the model's tokenizer must have the moves {self.moves} as tokens")
        return ids

    def sampling(self, tokenizer, rollout) -> Sampling:
        """Exactly `length` tokens per response, each drawn from the move tokens only."""
        ids = self.move_ids(tokenizer)
        self._check_decoding(tokenizer, ids)
        return Sampling(
            max_new_tokens=self.length,
            temperature=rollout.temperature,
            explore_temperature=rollout.explore_temperature,
            allowed_token_ids=tuple(ids),
        )

    def _check_decoding(self, tokenizer, ids: list[int]) -> None:
        """Every sequence's decoded text (as a rollout worker decodes it) must be read
        back by the game judge as that very sequence; one line otherwise."""
        judge = self._judge()
        rows = [list(s) for s in itertools.product(ids, repeat=self.length)]
        texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
        for row, text in enumerate(texts):
            if judge.index(text) != row:
                raise InputError(
                    f"the tokenizer decodes the moves {self.responses[row]!r} as {text!r}, "
                    "which the game judge does not read back as that sequence"
                )

    def _judge(self):
        from selfplay.judges.game import GameJudge

        return GameJudge(self.P, self.moves, self.length)

    def judge_spec(self, judge):
        from selfplay.judges.factory import JudgeSpec

        return JudgeSpec(
            kind="game",
            batch_size=judge.batch_size,
            matrix=self.P,
            moves=tuple(self.moves),
            length=self.length,
            move_ids=getattr(self, "_move_ids", None),
        )

    def evaluator(self, tokenizer, beta: float) -> GameEvaluator:
        from selfplay.models.load import encode_prompts

        prompt = encode_prompts(tokenizer, [self.prompt])[0]
        probe = SequenceProbe.build(prompt, self.move_ids(tokenizer), self.length)
        return GameEvaluator(self, probe, beta)

    def nash(self) -> np.ndarray:
        return games.solve_nash(self.P)

    def gap(self, pi: np.ndarray) -> float:
        return float(games.gap(self.P, pi))

    def regularized_gap(self, pi: np.ndarray, beta: float, mu: np.ndarray) -> float | None:
        if not beta:
            return None
        return float(games.regularized_gap(self.P, pi, beta, mu))


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p‖q) = Σ p log(p/q) over p's support (inf where q has none of it)."""
    on = p > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(p[on] * (np.log(p[on]) - np.log(q[on]))))


#: Largest |Σ_s π(s) − 1| of an enumerated policy: float32 rounding is ~1e-6; a
#: learner that does not restrict to the move tokens misses far more mass.
MASS_TOL = 1e-3


@dataclass
class SequenceProbe:
    """Exact sequence distribution of a learner-held role: one row per sequence
    (prompt + moves, lexicographic), π(s) = exp Σ_t log π(s_t | x, s_<t)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    response_mask: np.ndarray

    @classmethod
    def build(cls, prompt_tokens: list[int], move_ids: list[int], length: int) -> SequenceProbe:
        seqs = list(itertools.product(move_ids, repeat=length))  # first move most significant
        n, L = len(seqs), len(prompt_tokens) + length
        ids = np.array([list(prompt_tokens) + list(s) for s in seqs], dtype=np.int64)
        resp = np.zeros((n, L), dtype=np.float32)
        resp[:, -length:] = 1.0
        return cls(ids, np.ones((n, L), dtype=np.int64), resp)

    def start(self, learners, role: str | None = None):
        """Start reading π of `role` (a `LearnerGroup`'s `later`: issued, not waited on;
        a plain `Learner` computes it now); the returned callable gives π."""
        args = (self.input_ids, self.attention_mask, self.response_mask, role)
        if hasattr(learners, "later"):
            get = learners.later("policy_logprobs", *args)
        else:
            lp = learners.policy_logprobs(*args)
            get = lambda: lp  # noqa: E731
        return lambda: self._normalized(get())

    def policy(self, learners, role: str | None = None) -> np.ndarray:
        return self.start(learners, role)()

    @staticmethod
    def _normalized(lp: np.ndarray) -> np.ndarray:
        p = np.exp(lp.sum(axis=1).astype(np.float64))
        mass = float(p.sum())
        if abs(mass - 1.0) > MASS_TOL:
            raise RuntimeError(
                f"the learner's sequence probabilities sum to {mass:.6f}, not 1: its policy "
                "is not restricted to the move tokens (LearnerSettings.allowed_token_ids)"
            )
        return p / mass


@dataclass
class GameEvaluator:
    """Exact evaluation of a matrix game over responses: the gap, the regularized gap
    against μ = π_ref (β > 0 only: algorithms that solve the β-regularized game), the
    response distribution, and the exact win rate against π_ref."""

    game: SequenceGame
    probe: SequenceProbe
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
            "kl_ref_exact": kl(pi, self.pi_ref),
        }

    def reference(self, learners) -> dict[str, Any]:
        self.pi_ref = self.probe.policy(learners, "ref")
        return self._metrics(self.pi_ref)

    def start(self, learners):
        later = self.probe.start(learners)
        return lambda: self._metrics(later())

    def summary(self, learners) -> dict[str, Any]:
        pi, b, g = self.probe.policy(learners), self.beta, self.game
        return {
            "game": g.source,
            # the responses in `policy` order: the moves (token game), the sequences
            f"{g.response_kind}s": g.responses,
            **self._metrics(pi),
            "beta": b or None,
            # π_ref's probabilities: with `beta` and `policy`, anyone can recompute
            # the regularized gap from the matrix.
            "reference_policy": self.pi_ref.tolist(),
            "nash": g.nash().tolist(),
            "regularized_nash": (
                games.solve_regularized(g.P, b, self.pi_ref).tolist() if b else None
            ),
        }

    def format(self, s: dict[str, Any]) -> list[str]:
        lines = [f"gap: {s['gap_initial']:.4f} at start -> {s['gap']:.4f} at the end"]
        if s["regularized_gap"] is not None:
            lines.append(
                f"regularized gap (β={s['beta']:g}): {s['regularized_gap_initial']:.4f}"
                f" -> {s['regularized_gap']:.4f}"
            )
        kind = self.game.response_kind
        names, reg = s[f"{kind}s"], s["regularized_nash"]
        w = max(6, len(kind) + 1, *(len(m) + 2 for m in names))
        head = f"{kind:<{w}}{'policy':>9}{'π_ref':>9}{'NE':>9}" + (
            f"{'reg. NE':>10}" if reg else ""
        )
        lines.append(head)
        for i, m in enumerate(names):
            row = f"{m:<{w}}{s['policy'][i]:>9.4f}{s['reference_policy'][i]:>9.4f}{s['nash'][i]:>9.4f}"
            lines.append(row + (f"{reg[i]:>10.4f}" if reg else ""))
        return lines


def from_config(task) -> SequenceGame:
    """Build from a `SequenceGameTask`: `task.matrix` (.npy/.csv, n×n with n =
    alphabet**length) wins over `task.generate` with `task.n` = alphabet**length."""
    a, L = task.alphabet, task.length
    if task.matrix:
        P, source = games.load(task.matrix), str(task.matrix)
    else:
        P = games.generate(task.generate, task.n, task.seed)
        source = f"{task.generate} {a}^{L} sequences seed={task.seed}"
    return SequenceGame(P, source, a, L, sequence_prompt(L))
