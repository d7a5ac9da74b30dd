"""The judge protocol, symmetrisation and batching shared by all preference models.

A judge returns P(a ≻ b | x) ∈ [0, 1] for each row. NLHF's game is
constant-sum only if P(a ≻ b) + P(b ≻ a) = 1 (Munos et al. 2023), which a
learned model does not guarantee, so model judges are symmetrised:

    P(a ≻ b) = ½·(p(a, b) + 1 − p(b, a)) = ½ + ½·(p(a, b) − p(b, a)),

written in the second form because float subtraction is exactly antisymmetric
(fl(x − y) = −fl(y − x)), so the identity holds to one rounding of the final
add. Rows with identical responses get exactly ½ (a response ties itself), by
definition rather than by trusting two forward passes to agree bit for bit.

Prompts. A judge gets the RAW prompt (`RawPrompt`: a string, or a list of
{role, content} messages) and the response text, and renders them itself with its
own tokenizer and chat template (which may differ from the policy's):

- `as_messages`: a string is one user message; a message list is used as given.
- `prompt_text`: the plain text of a prompt for a judge template's {prompt}: a
  string, or the content of a single user message, as is; otherwise one
  "role: content" line per message.
- `prompt_key`: a hashable, sortable form of a prompt (for deduplication).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from selfplay.errors import InputError
from selfplay.judges.template import template_problem
from selfplay.types import RawPrompt

RawJudge = Callable[[list[RawPrompt], list[str], list[str]], np.ndarray]


@runtime_checkable
class Judge(Protocol):
    def prob(self, prompts: list[RawPrompt], a: list[str], b: list[str]) -> np.ndarray:
        """[N] float64 in [0, 1]: P(a_i ≻ b_i | prompts_i)."""
        ...


def as_messages(prompt: RawPrompt) -> list[dict[str, str]]:
    """The prompt as chat messages: a string is one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    msgs = list(prompt)
    for m in msgs:
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise ValueError(f"a prompt message must be {{role: str, content: str}}, got {m!r}")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def prompt_text(prompt: RawPrompt) -> str:
    """Plain text of a prompt (a judge template's {prompt}); see the module docstring."""
    if isinstance(prompt, str):
        return prompt
    msgs = as_messages(prompt)
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)


def prompt_key(prompt: RawPrompt) -> tuple:
    """Hashable and totally ordered: (0, text) for a string, (1, ((role, content), ...))."""
    if isinstance(prompt, str):
        return (0, prompt)
    return (1, tuple((m["role"], m["content"]) for m in as_messages(prompt)))


def check_template(template: str) -> None:
    """InputError unless `template` is a judge template (`judges.template`: exactly
    {prompt}, {a} and {b} as plain fields, each of {a}, {b} at least once)."""
    why = template_problem(template)
    if why is not None:
        sep = " " if why.startswith("must") else ": "
        raise InputError(f"judge.template{sep}{why}")


def check_batch(prompts: Sequence[RawPrompt], a: Sequence[str], b: Sequence[str]) -> int:
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

    def prob(prompts: list[RawPrompt], a: list[str], b: list[str]) -> np.ndarray:
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


def conversation_text(tokenizer, prompt: RawPrompt, response: str) -> tuple[str, bool]:
    """(text, add_special_tokens) of a prompt–response pair for a reward model.

    With a chat template: the prompt's messages then an assistant turn, through the
    judge's own template (which adds its own specials). Without: the prompt (a string
    through `format_prompt`, a message list as `prompt_text`), a newline, the response.
    """
    from selfplay.models.load import format_prompt  # transformers only when a model judge runs

    if getattr(tokenizer, "chat_template", None):
        msgs = [*as_messages(prompt), {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(msgs, tokenize=False), False
    head = format_prompt(tokenizer, prompt) if isinstance(prompt, str) else prompt_text(prompt)
    return f"{head}\n{response}", True
