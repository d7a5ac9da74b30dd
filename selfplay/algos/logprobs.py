"""Log-probs of sampled tokens under a tempered, optionally restricted LM, without
materialising a log-softmax copy of the logits.

    log π(y_t | ·) = z_t(y_t)/T − log Σ_{v ∈ A} exp(z_t(v)/T)

z_t: the logits at position t, T: the sampling temperature, A: the allowed tokens
(all of the vocabulary by default). A target outside A gets a finite
non-log-prob (callers mask it). The normaliser is taken in chunks along the
sequence, so at most one chunk of logits is upcast and scaled at a time; the
backward pass writes ∂/∂z = g·([v = y_t] − [v ∈ A]·π(v)) / T into ONE gradient
buffer, chunk by chunk, instead of saving a [n, L, V] float32 tensor per op.
"""

from __future__ import annotations

import torch

#: elements of one chunk's float32 [n, c, V] scratch (16 MiB)
CHUNK_ELEMENTS = 1 << 22


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 → float32; float64 stays


def _chunk_len(n: int, vocab: int, elements: int) -> int:
    return max(1, elements // max(1, n * vocab))


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, temperature, allowed, elements):
        n, L, V = logits.shape
        ct = _compute_dtype(logits.dtype)
        out = torch.empty((n, L), dtype=ct, device=logits.device)
        lse = torch.empty((n, L), dtype=ct, device=logits.device)
        c = _chunk_len(n, V if allowed is None else len(allowed), elements)
        for s in range(0, L, c):
            z = logits[:, s : s + c]
            sel = z.gather(-1, target[:, s : s + c, None]).squeeze(-1).to(ct) / temperature
            zs = z if allowed is None else z.index_select(-1, allowed)
            lse[:, s : s + c] = torch.logsumexp(zs.to(ct) / temperature, -1)
            out[:, s : s + c] = sel - lse[:, s : s + c]
        ctx.save_for_backward(logits, target, lse)
        ctx.temperature, ctx.allowed, ctx.chunk = temperature, allowed, c
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, target, lse = ctx.saved_tensors
        T, allowed, c = ctx.temperature, ctx.allowed, ctx.chunk
        ct = lse.dtype
        grad = torch.zeros_like(logits)
        for s in range(0, logits.shape[1], c):
            g = grad_out[:, s : s + c, None].to(ct) / T
            z = logits[:, s : s + c]
            zs = z if allowed is None else z.index_select(-1, allowed)
            gz = -g * torch.exp(zs.to(ct) / T - lse[:, s : s + c, None])
            gz = gz.scatter_add(-1, target[:, s : s + c, None], g) if allowed is None else gz
            if allowed is None:
                grad[:, s : s + c] = gz.to(grad.dtype)
            else:
                block = torch.zeros(z.shape, dtype=ct, device=z.device)
                block.index_copy_(-1, allowed, gz)
                block.scatter_add_(-1, target[:, s : s + c, None], g)
                grad[:, s : s + c] = block.to(grad.dtype)
        return grad, None, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    allowed: torch.Tensor | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """[n, L, V] logits, [n, L] target ids → [n, L] log π(target), π = softmax(z/T)
    over `allowed` (a LongTensor of token ids; None: the whole vocabulary), in at
    least float32. Differentiable in `logits`."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _TokenLogprobs.apply(logits, target, float(temperature), allowed, int(chunk_elements))
