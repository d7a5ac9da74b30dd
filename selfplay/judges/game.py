"""Exact preferences of a symmetric matrix game over text responses (the token and
sequence games).

P[i, j] = P(response i ≻ response j) with P + Pᵀ = 1 (so P[i, i] = ½): a
constant-sum preference game as in NLHF (Munos et al. 2023). A response is a
sequence of `length` move names (one move for the token game), separated by
optional whitespace, with optional whitespace around; it is the row
Σ_t s_t·a^(length−1−t) of P (lexicographic, first move most significant, a = the
number of moves). The parse is exact: a text that splits into `length` names in
no way, or in more than one way, is invalid. An invalid response loses to every
valid one (P = 0) and ties another invalid one (P = ½), so the extended game is
still constant-sum and no model judge symmetrisation is needed.

With the moves' token ids (`move_ids`), a response can be given as its token ids
instead (`token_rows`): exactly `length` ids, each a move's, read in the same
lexicographic order; anything else is invalid. The rollout workers then send no
text at all (the task checks, once, that decoding those ids reads back as the same
row: `SequenceGame._check_decoding`). `prob` takes either texts or rows.
"""

from __future__ import annotations

import numpy as np

from selfplay.errors import InputError
from selfplay.judges.base import check_batch

TOL = 1e-9


def parse_moves(text: str, names: list[str], length: int) -> tuple[int, ...] | None:
    """The move indices of `text` read as `length` names with optional whitespace
    between and around them; None when there is not exactly one such reading."""
    found: list[tuple[int, ...]] = []

    def walk(pos: int, moves: tuple[int, ...]) -> None:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if len(moves) == length:
            if pos == len(text):
                found.append(moves)
            return
        for i, m in enumerate(names):
            if text.startswith(m, pos) and len(found) < 2:
                walk(pos + len(m), (*moves, i))

    walk(0, ())
    return found[0] if len(found) == 1 else None


class GameJudge:
    def __init__(
        self,
        P: np.ndarray,
        move_names: list[str],
        length: int = 1,
        move_ids: list[int] | None = None,
    ) -> None:
        P = np.asarray(P, dtype=np.float64)
        a = len(move_names)
        if length < 1:
            raise InputError(f"game judge: sequence length must be >= 1, got {length}")
        n = a**length
        if P.ndim != 2 or P.shape != (n, n):
            raise InputError(
                f"game judge: matrix shape {P.shape} does not match {a} moves"
                + (f" ** length {length} = {n} sequences" if length > 1 else "")
            )
        if len(set(move_names)) != a or any(m != m.strip() or not m for m in move_names):
            raise InputError("game judge: move names must be distinct, non-empty, unpadded")
        if not np.all((P >= -TOL) & (P <= 1 + TOL)):
            raise InputError("game judge: preferences must lie in [0, 1]")
        if not np.allclose(P + P.T, 1.0, atol=TOL, rtol=0):
            raise InputError("game judge: the matrix is not constant-sum (P + Pᵀ ≠ 1)")
        # Remove the tolerated asymmetry so P(a≻b) + P(b≻a) = 1 up to one rounding.
        P = np.clip(P, 0.0, 1.0)
        self.P = 0.5 + 0.5 * (P - P.T)
        self.moves = list(move_names)
        self.length = length
        self._index: dict[str, int] = {}  # response text -> row (−1: invalid), memoised
        self._move_of: np.ndarray | None = None  # token id -> move index (−1: not a move)
        if move_ids is not None:
            if len(move_ids) != a or len(set(move_ids)) != a or min(move_ids) < 0:
                raise InputError(f"game judge: {a} distinct move token ids needed, got {move_ids}")
            self._move_of = np.full(max(move_ids) + 1, -1, dtype=np.int64)
            self._move_of[list(move_ids)] = np.arange(a)

    def token_rows(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """[N] int64 row of P of each response given as token ids (tokens [N, T] padded,
        lengths [N]), −1 when it is not exactly `length` move ids."""
        if self._move_of is None:
            raise ValueError("this game judge was built without move token ids")
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        n = len(lengths)
        if tokens.ndim != 2 or tokens.shape[1] < self.length:
            return np.full(n, -1, dtype=np.int64)
        ids = tokens[:, : self.length]
        known = (ids >= 0) & (ids < len(self._move_of))
        moves = np.where(known, self._move_of[np.where(known, ids, 0)], -1)
        ok = (lengths == self.length) & (moves >= 0).all(axis=1)
        place = len(self.moves) ** np.arange(self.length - 1, -1, -1, dtype=np.int64)
        return np.where(ok, moves @ place, -1).astype(np.int64)

    def index(self, text: str) -> int:
        """The row of P that `text` names, −1 when it is not a valid response."""
        i = self._index.get(text)
        if i is None:
            moves = parse_moves(text, self.moves, self.length)
            i = -1 if moves is None else _row(moves, len(self.moves))
            if len(self._index) < 1 << 16:
                self._index[text] = i
        return i

    def move_index(self, responses: list[str] | np.ndarray) -> np.ndarray:
        """[N] int64 row of each response, −1 when invalid; an integer array is taken
        as rows already (`token_rows`)."""
        if isinstance(responses, np.ndarray) and responses.dtype.kind in "iu":
            return responses.astype(np.int64)
        return np.array([self.index(r) for r in responses], dtype=np.int64)

    def prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        check_batch(prompts, a, b)
        ia, ib = self.move_index(a), self.move_index(b)
        va, vb = ia >= 0, ib >= 0
        out = np.full(len(ia), 0.5)
        both = va & vb
        out[both] = self.P[ia[both], ib[both]]
        out[va & ~vb] = 1.0
        out[~va & vb] = 0.0
        return out


def _row(moves: tuple[int, ...], alphabet: int) -> int:
    """Lexicographic index of a move sequence, first move most significant."""
    r = 0
    for m in moves:
        r = r * alphabet + m
    return r
