"""Typed data that crosses actor boundaries.

Everything here is a dataclass of numpy arrays (cheap, zero-copy through the
Ray object store) or plain scalars; no free-form dicts.

A policy version is `(step, role)`: `Version(3, "lead")` is π_{3+½}. Only
the learner stamps a version, and only when it publishes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from selfplay.algos.plan import ROLES, Role


@dataclass(frozen=True, order=True)
class Version:
    step: int
    role: Role

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {ROLES}")
        if self.step < 0:
            raise ValueError(f"version step must be >= 0, got {self.step}")

    def __str__(self) -> str:
        return f"{self.role}@{self.step}"

    @property
    def parts(self) -> tuple[Version, ...]:
        """The stored versions sampling needs: itself."""
        return (self,)


@dataclass(frozen=True)
class MixtureVersion:
    """Geometric mixture π ∝ π_a^{1−λ}·π_b^{λ} of two published versions (Nash-MD)."""

    a: Version
    b: Version
    lam: float

    def __str__(self) -> str:
        return f"mix({self.a},{self.b},{self.lam:g})"

    @property
    def parts(self) -> tuple[Version, ...]:
        """The stored versions sampling needs: a mixture needs both ends."""
        return (self.a, self.b)


SamplerVersion = Version | MixtureVersion


@dataclass
class Prompts:
    """A slice of the prompt dataset. ids are stable dataset ids (for accounting)."""

    ids: np.ndarray  # [P] int64
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Samples:
    """K responses per prompt, flattened prompt-major: row i is prompt i // K.

    tokens:    [N, T] int64 response token ids, right-padded with `pad_id`.
    lengths:   [N] int64 number of real response tokens.
    logprobs:  [N, T] float32 sampler log-probs of each token (0 on padding).
    texts:     decoded responses (what judges see).
    version:   the version (or mixture) that sampled every row.
    prompt_tokens: the prompt token ids the sampler saw, one list per prompt
               (set by the rollout worker; the learner rebuilds inputs from them).
    """

    prompt_ids: np.ndarray
    prompt_texts: list[str]
    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray
    texts: list[str]
    version: SamplerVersion
    k: int
    pad_id: int = 0
    meta: dict[str, float] = field(default_factory=dict)  # timings only
    prompt_tokens: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts)
