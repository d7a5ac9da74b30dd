"""LLM losses: pure torch functions of sequence log-probs and judged preferences.

Each form turns one plan phase (a, b, c, ĝ) into a loss over sampled
responses; targets (anchor, μ, ĝ) are detached, they come from frozen versions.

1. **Target regression** (default): for pairs (i, j) of responses to the same
   prompt, squared error of (log π_θ(y_i) − log π_θ(y_j)) onto
   a·Δ log π_anc + b·Δ log μ + c·Δ ĝ. Its minimiser over a softmax policy is
   the tabular update for any full-support behaviour policy.
2. **IPO** (EGPO, online IPO; Calandriello et al. 2024, Zhou et al. 2025):
   ((log π_θ/π_ref)(y_i) − (log π_θ/π_ref)(y_j) − (ĝ_i − ĝ_j)/β)², taken as
   *one* gradient step from the anchor; that step is the tabular update with
   learning rate n·η·β/4 (softmax over n responses, mean over all n² pairs).
3. **Policy gradient** (optional; TRL's Nash-MD, MPO's practical loss):
   REINFORCE with baseline ½ plus k2 KL penalties (b/c toward μ, a/c toward
   the anchor). Needs on-policy samples, or importance weights π_θ/π_b for
   samples from a behaviour π_b (the runtime's learner always passes them);
   its maximiser is the tabular update when a + b = 1 (every plan here).

Sequence log-probs: summed over tokens, or length-normalised (EGPO's choice).

Derivation (minimisers, the IPO gradient, the k2 surrogate):
docs/algorithms.md#llm-loss-forms
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from selfplay.algos.names import LossForm
from selfplay.algos.plan import Num, Phase

Reduction = Literal["mean", "sum"]
Form = LossForm


def sequence_logprob(
    token_logprobs: torch.Tensor, mask: torch.Tensor, normalize: bool = False
) -> torch.Tensor:
    """[N, T] token log-probs and 0/1 mask → [N] sum (or mean over unmasked tokens)."""
    m = mask.to(token_logprobs.dtype)
    s = (token_logprobs * m).sum(dim=-1)
    return s / m.sum(dim=-1).clamp_min(1.0) if normalize else s


def _reduce(x: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _pair_diff(x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    return x[pairs[:, 0]] - x[pairs[:, 1]]


def target_regression_loss(
    logp: torch.Tensor,
    logp_anchor: torch.Tensor,
    logp_mu: torch.Tensor | None,
    g: torch.Tensor,
    pairs: torch.Tensor,
    a,
    b,
    c,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Σ/mean over pairs (i, j) of ((logp_i − logp_j) − target_ij)², see module doc.

    logp, logp_anchor, logp_mu, g: [N] (logp_mu may be None when b = 0);
    pairs: LongTensor [M, 2] of indices into N (both responses of one prompt);
    a, b, c: floats or 0-d tensors. "sum" lets a sharded learner divide by the
    global pair count itself.
    """
    target = a * _pair_diff(logp_anchor.detach(), pairs) + c * _pair_diff(g.detach(), pairs)
    if logp_mu is not None:
        target = target + b * _pair_diff(logp_mu.detach(), pairs)
    return _reduce((_pair_diff(logp, pairs) - target) ** 2, reduction)


def ipo_loss(
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    g: torch.Tensor,
    pairs: torch.Tensor,
    beta,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Online-IPO loss: ((h_i − h_j) − (g_i − g_j)/β)², h = logp − logp_ref."""
    h = logp - logp_ref.detach()
    target = _pair_diff(g.detach(), pairs) / beta
    return _reduce((_pair_diff(h, pairs) - target) ** 2, reduction)


def pg_loss(
    logp: torch.Tensor,
    g: torch.Tensor,
    *,
    logp_mu: torch.Tensor | None = None,
    kl_mu: Num = 0.0,
    logp_anchor: torch.Tensor | None = None,
    kl_anchor: Num = 0.0,
    weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """REINFORCE with baseline ½ plus k2 KL penalties.

    loss_i = w_i·[−(g_i − ½)·logp_i + kl_mu·½(logp_i − logp_mu_i)² + kl_anchor·½(logp_i − logp_anc_i)²]

    Without `weight` (w = 1) the samples must come from π_θ. With
    w_i = π_θ(y_i)/π_b(y_i) (detached) for samples from any full-support π_b, the
    gradient is the on-policy one in expectation (importance sampling).
    TRL's Nash-MD is `kl_mu = β`, `kl_anchor = 0` with ĝ against the mixture
    (the proximity to π_t comes from taking one small step instead).
    """
    loss = -(g.detach() - 0.5) * logp
    if logp_mu is not None and kl_mu:
        loss = loss + kl_mu * 0.5 * (logp - logp_mu.detach()) ** 2
    if logp_anchor is not None and kl_anchor:
        loss = loss + kl_anchor * 0.5 * (logp - logp_anchor.detach()) ** 2
    if weight is not None:
        loss = weight.detach() * loss
    return _reduce(loss, reduction)


def phase_loss(
    phase: Phase,
    form: Form,
    logp: torch.Tensor,
    logp_anchor: torch.Tensor,
    logp_mu: torch.Tensor | None,
    g: torch.Tensor,
    pairs: torch.Tensor | None,
    reduction: Reduction = "mean",
    *,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of one plan phase in the chosen form (the learner's entry point).

    regression: target_regression_loss with the phase's (a, b, c).
    ipo:        ipo_loss against μ with β = b/c (= β for EGPO/online-IPO
                plans); take one step from the anchor's weights.
    pg:         pg_loss with kl_mu = b/c, kl_anchor = a/c and the importance
                weights `weight` (None: on-policy samples; `pairs` unused).
    """
    if form in ("regression", "ipo") and pairs is None:
        raise ValueError(f"the {form} form needs the response pairs")
    if form == "regression":
        assert pairs is not None
        return target_regression_loss(
            logp, logp_anchor, logp_mu, g, pairs, phase.a, phase.b, phase.c, reduction
        )
    if form == "ipo":
        if logp_mu is None or phase.mu is None:
            raise ValueError("the IPO form needs a reference (phase.mu)")
        assert pairs is not None
        return ipo_loss(logp, logp_mu, g, pairs, phase.b / phase.c, reduction)
    if form == "pg":
        return pg_loss(
            logp,
            g,
            logp_mu=logp_mu,
            kl_mu=phase.b / phase.c if phase.mu else 0.0,
            logp_anchor=logp_anchor,
            kl_anchor=phase.a / phase.c,
            weight=weight,
            reduction=reduction,
        )
    raise ValueError(f"loss form must be 'regression', 'ipo' or 'pg', got {form!r}")


def g_hat(
    pref: torch.Tensor | Sequence[torch.Tensor],
    weights: Sequence[float],
    mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """ĝ(y_i) = Σ_k w_k · mean_j pref_k[i, j]  → [N].

    pref: [N, S, K] (S opponent sources, K judged opponents each) or a sequence
    of S tensors [N, K_s]; pref_k[i, j] = P(y_i ≻ y''_{k,j}) as judged.
    mask: optional, same layout, 1 for judgments to use (at least one per source).
    """
    if isinstance(pref, torch.Tensor):
        pref = pref.unbind(dim=1)
        mask = mask.unbind(dim=1) if isinstance(mask, torch.Tensor) else mask
    if len(pref) != len(weights):
        raise ValueError(f"{len(pref)} opponent sources but {len(weights)} weights")
    out = torch.zeros_like(pref[0][:, 0])
    for k, (p, w) in enumerate(zip(pref, weights, strict=True)):
        if mask is None:
            out = out + w * p.mean(dim=-1)
        else:
            m = mask[k].to(p.dtype)
            out = out + w * (p * m).sum(-1) / m.sum(-1)
    return out


def k3_kl(sampler: list[torch.Tensor], other: list[torch.Tensor] | None) -> float:
    """Σ_rows (r − 1) − log r with log r = other − sampler, per-row sequence log-probs of
    rows drawn from π_sampler: Schulman's k3 estimator of KL(π_sampler‖π_other)
    (E_sampler[r] = 1, so each term is unbiased for E_sampler[−log r] = KL and is ≥ 0).
    0 without `other`. The learner's `kl_anchor` and `kl_ref`, with π_sampler the
    phase's anchor (the policy that drew the rows)."""
    if not other:
        return 0.0
    lr = torch.cat(other).double() - torch.cat(sampler).double()
    return float((torch.expm1(lr) - lr).sum())
