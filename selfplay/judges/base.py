"""The judge protocol, symmetrisation and batching shared by all preference models.

A judge returns P(a ≻ b | x) ∈ [0, 1] for each row. NLHF's game is
constant-sum only if P(a ≻ b) + P(b ≻ a) = 1 (Munos et al. 2023), which a
learned model does not guarantee, so model judges are symmetrised:

    P(a ≻ b) = ½·(p(a, b) + 1 − p(b, a)) = ½ + ½·(p(a, b) − p(b, a)),

written in the second form because float subtraction is exactly antisymmetric
(fl(x − y) = −fl(y − x)), so the identity holds to one rounding of the final
add. Rows with identical responses get exactly ½ (a response ties itself), by
definition rather than by trusting two forward passes to agree bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

RawJudge = Callable[[list[str], list[str], list[str]], np.ndarray]


@runtime_checkable
class Judge(Protocol):
    def prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        """[N] float64 in [0, 1]: P(a_i ≻ b_i | prompts_i)."""
        ...


def check_batch(prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> int:
    if not len(prompts) == len(a) == len(b):
        raise ValueError(
            f"judge batch lengths differ: {len(prompts)} prompts, {len(a)} a, {len(b)} b"
        )
    return len(prompts)


def symmetrized(raw: RawJudge) -> RawJudge:
    """Wrap a raw (order-biased) judge: P = ½ + ½·(p(a,b) − p(b,a)); ½ where a == b.

    Both orders go to `raw` as one batch of 2N rows, each row's pair in a
    canonical (sorted) order, so asking (b, a) gives exactly 1 − P(a, b) up to one
    rounding. Across differently composed batches a float32 model agrees only to
    ~1e-7 (matmul shapes change), which is noise, not bias.
    """

    def prob(prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        n = check_batch(prompts, a, b)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        # Canonical order (lo, hi) per row: prob(a, b) and prob(b, a) then run the
        # very same raw batch, so their outputs are exact mirror images.
        swap = np.array([x > y for x, y in zip(a, b, strict=True)])
        lo = [min(x, y) for x, y in zip(a, b, strict=True)]
        hi = [max(x, y) for x, y in zip(a, b, strict=True)]
        p = np.asarray(raw(list(prompts) * 2, lo + hi, hi + lo), dtype=np.float64)
        d = p[:n] - p[n:]
        out = 0.5 + 0.5 * np.where(swap, -d, d)
        out[np.array([x == y for x, y in zip(a, b, strict=True)])] = 0.5
        return np.clip(out, 0.0, 1.0)

    return prob


def batched(fn: Callable[[slice], np.ndarray], n: int, batch_size: int) -> np.ndarray:
    """Concatenate fn(slice) over consecutive slices of at most batch_size rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = [
        np.asarray(fn(slice(i, min(i + batch_size, n))), dtype=np.float64)
        for i in range(0, n, batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def encode_right_padded(
    tokenizer, texts: list[str], *, add_special_tokens: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [B, T], attention mask [B, T], lengths [B]) right-padded with the pad id.

    Right padding keeps every real token at its unpadded position, so a causal
    model's logits at lengths−1 equal those of an unpadded forward pass.
    """
    rows = [tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
    rows = [r if r else [tokenizer.eos_token_id] for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
    lengths = attn.sum(-1)
    return ids.to(device), attn.to(device), lengths.to(device)


def prompt_text(prompt) -> str:
    """A raw prompt as plain text: a string as is; messages as `role: content` lines
    (where a judge template has one {prompt} slot, or a tokenizer no chat template)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def prompt_key(prompt) -> tuple[int, str]:
    """A hashable, orderable key of a raw prompt (a string or a message list)."""
    if isinstance(prompt, str):
        return (0, prompt)
    return (1, json.dumps([[m["role"], m["content"]] for m in prompt]))


def conversation_text(tokenizer, prompt, response: str) -> tuple[str, bool]:
    """(text, add_special_tokens) of a prompt–response pair for a reward model.

    `prompt`: a string or a list of {role, content} messages. With a chat template:
    the messages (a string: one user turn) then an assistant turn (the template adds
    its own specials). Without: the formatted prompt (messages as `prompt_text`), a
    newline, then the response.
    """
    from selfplay.models.load import format_prompt  # transformers only when a model judge runs

    if getattr(tokenizer, "chat_template", None):
        head = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        msgs = [*head, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(msgs, tokenize=False), False
    return f"{format_prompt(tokenizer, prompt_text(prompt))}\n{response}", True
