"""The generation-backend protocol and what the backends share.

A backend holds a cache of policy versions (weights per `Version`) and samples
K responses per prompt from one version or from a geometric mixture of two
(`MixtureVersion`, Nash-MD). The caller asks `has(v)` and pushes only the
versions the backend lacks; nothing is ever "the latest".

What a row of `Samples` holds (both backends):
  tokens[i, :lengths[i]]  the sampled response ids; a sampled eos is the last
                          real token (its probability is part of the sequence's),
                          and so is the token that completed a stop string,
  logprobs[i, t]          log π_s(tokens[i, t] | prompt, tokens[i, :t]) under the
                          *final sampling distribution* π_s (0 on padding),
  texts[i]                the decoded response without special tokens, cut before
                          the first stop string (decoded in the worker, once; with
                          `decode=False`, texts is None: the judge reads token ids),
  truncated[i]            the response reached max_new_tokens without an eos id or
                          a stop string (judged on the response only, never on the
                          prompt, which may hold an eos of its own: ChatML's
                          <|im_end|>). A response drawn from allowed tokens with no
                          eos among them (the token game's one move) is complete at
                          its fixed length and never truncated.

The final sampling distribution, cut in this order (vLLM's order too; the mask and
the temperature commute):

    z(y)   = s(y) / T                        s: the log-softmax of the logits
    z(y)   = −∞  for y ∉ allowed_token_ids
    z(y)   = −∞  for z(y) < the k-th largest z          (top_k > 0; ties are kept)
    z(y)   = −∞  for y outside the nucleus: the most probable tokens of softmax(z),
                 taken in order while the mass before them is < top_p (so at least one)
    log π_s = log_softmax(z)

Stop strings: a response ends at the first stop string in its decoded text. The
tokens are kept up to and including the one that completed it, so the learner trains
on exactly what was sampled (log-probs included); the text the judge sees is cut
before the stop string (text after it inside that last token is dropped too). A
stopped response is finished, not truncated. EOS ids: the tokenizer's eos plus the
model's generation-config eos ids (`eos_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from selfplay.errors import InputError
from selfplay.models.weights import FlatWeights
from selfplay.types import MixtureVersion, Prompts, SamplerVersion, Samples, Version


class VersionNotLoaded(KeyError):
    """generate() was asked for a version the backend does not hold (push it, then retry)."""


@runtime_checkable
class GenerationBackend(Protocol):
    def load_weights(self, version: Version, flat: FlatWeights) -> None: ...

    def has(self, version: Version) -> bool: ...

    def versions(self) -> list[Version]: ...

    def drop(self, version: Version) -> None: ...

    def generate(
        self,
        prompts: Prompts,
        *,
        version: SamplerVersion,
        k: int,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        allowed_token_ids: list[int] | None = None,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: Sequence[str] = (),
        decode: bool = True,
    ) -> Samples: ...


def needed_versions(version: SamplerVersion) -> tuple[Version, ...]:
    """The stored versions a sampler needs (a mixture needs both ends)."""
    return version.parts


def check_generate_args(
    prompts: Prompts,
    *,
    k: int,
    max_new_tokens: int,
    temperature: float,
    allowed_token_ids: list[int] | None,
    vocab_size: int,
    top_p: float = 1.0,
    top_k: int = 0,
    stop: Sequence[str] = (),
) -> None:
    if len(prompts) == 0:
        raise InputError("generate: no prompts")
    if k < 1 or max_new_tokens < 1:
        raise InputError(f"generate: k={k} and max_new_tokens={max_new_tokens} must be >= 1")
    if not temperature > 0:
        raise InputError(f"generate: temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise InputError(f"generate: top_p must lie in (0, 1], got {top_p}")
    if top_k < 0:
        raise InputError(f"generate: top_k must be >= 0 (0: off), got {top_k}")
    if isinstance(stop, str) or any(not isinstance(x, str) or not x for x in stop):
        raise InputError(f"generate: stop must be a list of non-empty strings, got {stop!r}")
    if allowed_token_ids is not None:
        if not allowed_token_ids:
            raise InputError("generate: allowed_token_ids is empty")
        bad = [t for t in allowed_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise InputError(f"generate: allowed token ids {bad[:5]} outside [0, {vocab_size})")


def prompt_token_ids(tokenizer, prompts: Prompts) -> list[list[int]]:
    """The token ids the policy is conditioned on: the task's, or `texts` encoded here."""
    if prompts.tokens is not None:
        return [list(t) for t in prompts.tokens]
    from selfplay.models.load import encode_prompts

    return encode_prompts(tokenizer, prompts.texts)


def eos_ids(tokenizer, generation_config=None) -> set[int]:
    """The ids that end a response: the tokenizer's eos plus the generation config's."""
    ids: set[int] = set()
    gen_eos = getattr(generation_config, "eos_token_id", None)
    for src in (tokenizer.eos_token_id, gen_eos):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(x) for x in src)
    return ids


def can_end(eos: set[int], allowed_token_ids: list[int] | None, stop: Sequence[str]) -> bool:
    """Whether a response can finish before max_new_tokens (else it is never truncated)."""
    return bool(stop) or allowed_token_ids is None or bool(eos & set(allowed_token_ids))


def first_stop(text: str, stop: Sequence[str]) -> int:
    """Index in `text` where the earliest stop string starts, −1 if none occurs."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else -1


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) its first stop string."""
    i = first_stop(text, stop)
    return text if i < 0 else text[:i]


def check_mixture(version: SamplerVersion) -> None:
    if isinstance(version, MixtureVersion) and not 0.0 <= version.lam <= 1.0:
        raise InputError(f"mixture weight λ={version.lam} must lie in [0, 1]")


def pack_samples(
    prompts: Prompts,
    tokens: Sequence[Sequence[int]],
    logprobs: Sequence[Sequence[float]],
    texts: list[str] | None,
    *,
    version: SamplerVersion,
    k: int,
    width: int,
    pad_id: int,
    meta: dict[str, float],
    prompt_tokens: list[list[int]],
    truncated: Sequence[bool],
) -> Samples:
    """Right-pad per-row token/log-prob lists into `Samples` of width `width`.

    prompt_tokens: the encoded prompt ids the sampler conditioned on, one list per prompt.
    truncated: per row, whether it reached max_new_tokens without finishing.
    """
    n = len(tokens)
    tok = np.full((n, width), pad_id, dtype=np.int64)
    lp = np.zeros((n, width), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    for i, (t, p) in enumerate(zip(tokens, logprobs, strict=True)):
        lengths[i] = len(t)
        tok[i, : len(t)] = t
        lp[i, : len(p)] = p
    return Samples(
        prompt_ids=np.asarray(prompts.ids, dtype=np.int64),
        prompt_texts=list(prompts.texts),
        tokens=tok,
        lengths=lengths,
        logprobs=lp,
        texts=texts,
        version=version,
        k=k,
        pad_id=pad_id,
        meta=meta,
        prompt_tokens=[list(p) for p in prompt_tokens],
        prompt_rendered=None if prompts.rendered is None else list(prompts.rendered),
        truncated=np.asarray(truncated, dtype=bool).reshape(n),
    )
