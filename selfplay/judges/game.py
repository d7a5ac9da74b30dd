"""Exact preferences of a symmetric matrix game over text responses (the token game).

P[i, j] = P(move i ≻ move j) with P + Pᵀ = 1 (so P[i, i] = ½): a constant-sum
preference game as in NLHF (Munos et al. 2023). A response is the move whose
name equals its stripped text; anything else is invalid. An invalid response
loses to every valid one (P = 0) and ties another invalid one (P = ½), so the
extended game is still constant-sum and no model judge symmetrisation is needed.
"""

from __future__ import annotations

import numpy as np

from selfplay.errors import InputError
from selfplay.judges.base import check_batch

TOL = 1e-9


class GameJudge:
    def __init__(self, P: np.ndarray, move_names: list[str]) -> None:
        P = np.asarray(P, dtype=np.float64)
        n = len(move_names)
        if P.ndim != 2 or P.shape != (n, n):
            raise InputError(f"game judge: matrix shape {P.shape} does not match {n} moves")
        if len(set(move_names)) != n or any(m != m.strip() or not m for m in move_names):
            raise InputError("game judge: move names must be distinct, non-empty, unpadded")
        if not np.all((P >= -TOL) & (P <= 1 + TOL)):
            raise InputError("game judge: preferences must lie in [0, 1]")
        if not np.allclose(P + P.T, 1.0, atol=TOL, rtol=0):
            raise InputError("game judge: the matrix is not constant-sum (P + Pᵀ ≠ 1)")
        # Remove the tolerated asymmetry so P(a≻b) + P(b≻a) = 1 up to one rounding.
        P = np.clip(P, 0.0, 1.0)
        self.P = 0.5 + 0.5 * (P - P.T)
        self.moves = list(move_names)
        self._index = {m: i for i, m in enumerate(self.moves)}

    def move_index(self, responses: list[str]) -> np.ndarray:
        """[N] int64 move index of each response, −1 when invalid."""
        return np.array([self._index.get(r.strip(), -1) for r in responses], dtype=np.int64)

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
