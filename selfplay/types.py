"""Typed data that crosses actor boundaries.

Everything here is a dataclass of numpy arrays (cheap, zero-copy through the
Ray object store) or plain scalars; no free-form dicts.

A policy version is `(step, role)`: `Version(3, "lead")` is π_{3+½}. Only
the learner stamps a version, and only when it publishes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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


#: A prompt as the dataset gives it: a string, or a list of {role, content} messages.
RawPrompt = str | list[dict[str, str]]


@dataclass
class Prompts:
    """A slice of the task's prompts.

    ids:      [P] int64 stable prompt ids (the controller's cursor counts them).
    texts:    the raw prompts (a string or a message list): what a model judge sees,
              through its own chat template.
    tokens:   the token ids the policy is conditioned on (the task renders them once,
              with the policy's chat template where it applies); None: the rollout
              backend encodes `texts` itself (`models.load.encode_prompts`).
    rendered: the rendered text behind `tokens` (what the policy saw), for outputs.
    """

    ids: np.ndarray  # [P] int64
    texts: list[RawPrompt]
    tokens: list[list[int]] | None = None
    rendered: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, rows) -> Prompts:
        """The prompts at positions `rows`, in that order."""
        rows = [int(i) for i in rows]
        return Prompts(
            ids=np.asarray(self.ids, dtype=np.int64)[rows],
            texts=[self.texts[i] for i in rows],
            tokens=None if self.tokens is None else [self.tokens[i] for i in rows],
            rendered=None if self.rendered is None else [self.rendered[i] for i in rows],
        )


@dataclass
class Samples:
    """K responses per prompt, flattened prompt-major: row i is prompt i // K.

    tokens:    [N, T] int64 response token ids, right-padded with `pad_id`.
    lengths:   [N] int64 number of real response tokens.
    logprobs:  [N, T] float32 sampler log-probs of each token (0 on padding).
    texts:     decoded responses (what text judges see), without EOS or stop string;
               None when the worker was told not to decode (`Sampling.texts`): the
               game judge reads the token ids, and nobody pays for N Python strings.
    truncated: [N] bool, the response reached max_new_tokens without EOS or a stop
               string (judged on the completion only; never when the allowed tokens
               hold no EOS: a fixed-length response); None: not recorded (finished).
    version:   the version (or mixture) that sampled every row.
    prompt_tokens: the prompt token ids the sampler saw, one list per prompt
               (set by the rollout worker; the learner rebuilds inputs from them).
    """

    prompt_ids: np.ndarray
    prompt_texts: list[RawPrompt]
    tokens: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray
    texts: list[str] | None
    version: SamplerVersion
    k: int
    pad_id: int = 0
    meta: dict[str, float] = field(default_factory=dict)  # timings only
    prompt_tokens: list[list[int]] | None = None
    truncated: np.ndarray | None = None
    prompt_rendered: list[str] | None = None  # the text behind prompt_tokens, for outputs

    def __len__(self) -> int:
        return int(np.asarray(self.lengths).shape[0])

    def truncated_flags(self) -> np.ndarray:
        """[N] bool `truncated`, all False where it was not recorded."""
        if self.truncated is None:
            return np.zeros(len(self), dtype=bool)
        return np.asarray(self.truncated, dtype=bool).reshape(len(self))

    def split(self) -> list[Samples]:
        """One `Samples` per prompt, every field kept (log-probs, prompt tokens), rows in
        order: a batched draw handed on as per-prompt units."""
        out, k = [], self.k
        for u in range(len(self.prompt_texts)):
            rows = slice(u * k, (u + 1) * k)
            one = slice(u, u + 1)
            pick = lambda a, at: None if a is None else a[at]  # noqa: E731
            out.append(
                replace(
                    self,
                    prompt_ids=np.asarray(self.prompt_ids)[u : u + 1],
                    prompt_texts=self.prompt_texts[u : u + 1],
                    tokens=np.asarray(self.tokens)[rows],
                    lengths=np.asarray(self.lengths)[rows],
                    logprobs=np.asarray(self.logprobs)[rows],
                    texts=pick(self.texts, rows),
                    meta=dict(self.meta),
                    prompt_tokens=pick(self.prompt_tokens, one),
                    truncated=pick(self.truncated, rows),
                    prompt_rendered=pick(self.prompt_rendered, one),
                )
            )
        return out

    def slim(self) -> Samples:
        """What judging, evaluation and their cache need: the responses (tokens cut to
        the longest, texts when decoded), lengths and truncation flags; no log-probs."""
        n = len(self)
        lengths = np.asarray(self.lengths, dtype=np.int64)
        width = int(lengths.max()) if n else 0
        return Samples(
            prompt_ids=np.asarray(self.prompt_ids, dtype=np.int64),
            prompt_texts=list(self.prompt_texts),
            tokens=np.asarray(self.tokens, dtype=np.int64)[:, :width],
            lengths=lengths,
            logprobs=np.zeros((n, 0), dtype=np.float32),
            texts=None if self.texts is None else list(self.texts),
            version=self.version,
            k=self.k,
            pad_id=self.pad_id,
            truncated=None if self.truncated is None else np.asarray(self.truncated, dtype=bool),
        )

    def pick(self, rows) -> Samples:
        """The slim samples (`slim`) of one prompt's rows `rows`, in that order, repeats
        allowed: a Samples of that prompt with k = len(rows) (judging every candidate
        against every sample builds its two sides this way)."""
        if len(self.prompt_texts) != 1:
            raise ValueError("Samples.pick: one prompt's samples only")
        s, idx = self.slim(), np.asarray(rows, dtype=np.int64)
        return Samples(
            prompt_ids=s.prompt_ids,
            prompt_texts=s.prompt_texts,
            tokens=s.tokens[idx],
            lengths=s.lengths[idx],
            logprobs=np.zeros((len(idx), 0), dtype=np.float32),
            texts=None if s.texts is None else [s.texts[i] for i in idx],
            version=s.version,
            k=len(idx),
            pad_id=s.pad_id,
            truncated=None if s.truncated is None else s.truncated[idx],
        )

    @staticmethod
    def join(parts: list[Samples]) -> Samples:
        """One prompt's draws (several `Samples` of that prompt) as one: the slim rows in
        order, k = all rows (a proposal of several policies' candidates)."""
        s = Samples.concat(parts)
        return replace(s, prompt_ids=s.prompt_ids[:1], prompt_texts=s.prompt_texts[:1], k=len(s))

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        """The slim samples (`slim`) of several prompts as one, rows in order; the
        parts share k. Texts only when every part has them."""
        parts = [p.slim() for p in parts]
        n = sum(len(p) for p in parts)
        width = max((p.tokens.shape[1] for p in parts), default=0)
        tokens = np.full((n, width), parts[0].pad_id if parts else 0, dtype=np.int64)
        row = 0
        for p in parts:
            tokens[row : row + len(p), : p.tokens.shape[1]] = p.tokens
            row += len(p)
        texted = all(p.texts is not None for p in parts)
        return Samples(
            prompt_ids=np.concatenate([p.prompt_ids for p in parts]),
            prompt_texts=[t for p in parts for t in p.prompt_texts],
            tokens=tokens,
            lengths=np.concatenate([p.lengths for p in parts]),
            logprobs=np.zeros((n, 0), dtype=np.float32),
            texts=[t for p in parts for t in p.texts] if texted else None,
            version=parts[0].version,
            k=parts[0].k,
            pad_id=parts[0].pad_id,
            truncated=np.concatenate(
                [np.zeros(len(p), bool) if p.truncated is None else p.truncated for p in parts]
            ),
        )
