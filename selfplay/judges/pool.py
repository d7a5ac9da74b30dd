"""Several preference servers behind one judge: split a batch, reassemble in order.

Rows are cut into contiguous, near-equal chunks, one per server (no server
gets an empty call). `servers` are callables (prompts, a, b) -> result; with
plain judges the result is the array itself. For Ray, pass the actors' bound
remote methods and `gather=ray.get`, so all chunks are in flight at once:

    JudgePool([s.prob.remote for s in servers], gather=ray.get)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from selfplay.judges.base import check_batch


def split_even(n: int, parts: int) -> list[slice]:
    """Contiguous slices covering range(n), sizes differing by at most one, none empty."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (i < extra)
        out.append(slice(start, start + size))
        start += size
    return [s for s in out if s.stop > s.start]


class JudgePool:
    def __init__(
        self,
        servers: Sequence[Callable[[list[str], list[str], list[str]], Any]],
        *,
        gather: Callable[[list[Any]], list[np.ndarray]] | None = None,
    ) -> None:
        if not servers:
            raise ValueError("JudgePool needs at least one server")
        self.servers = list(servers)
        self.gather = gather if gather is not None else (lambda results: results)

    def prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        n = check_batch(prompts, a, b)
        chunks = split_even(n, len(self.servers))
        pending = [
            server(list(prompts[s]), list(a[s]), list(b[s]))
            for server, s in zip(self.servers, chunks, strict=False)
        ]
        parts = [np.asarray(p, dtype=np.float64) for p in self.gather(pending)]
        for s, p in zip(chunks, parts, strict=True):
            if p.shape != (s.stop - s.start,):
                raise ValueError(
                    f"judge server returned shape {p.shape} for {s.stop - s.start} rows"
                )
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
