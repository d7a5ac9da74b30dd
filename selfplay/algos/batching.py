"""Input shaping of the tabular runner: games, per-game (per-setting) hyperparameters and
distributions as float64 batches, and the batch size B they imply (tabular.py)."""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from selfplay.algos.base import Hyper
from selfplay.errors import InputError


def batch_hyper(h: Hyper, B: int) -> Hyper:
    """Turn tensor-valued fields into float64 [B, 1] (numbers stay numbers)."""
    kw = {}
    for f in fields(h):
        v = getattr(h, f.name)
        if isinstance(v, torch.Tensor):
            v = v.to(torch.float64).reshape(-1, 1)
            if v.shape[0] not in (1, B):
                raise InputError(f"hyperparameter {f.name} has {v.shape[0]} values for {B} games")
        kw[f.name] = v
    return replace(h, **kw)


def as_batch(x, B: int, n: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[-1] != n or t.shape[0] not in (1, B):
        raise InputError(f"{name} must have shape [n] or [B, n] with n={n}, B={B}")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise InputError(f"{name} must be a full-support distribution (all entries > 0)")
    if bool(((t.sum(-1) - 1).abs() > 1e-6).any()):
        raise InputError(f"{name} must sum to 1")
    return (t / t.sum(-1, keepdim=True)).expand(B, n).clone()


def as_games(P) -> torch.Tensor:
    """[B, n, n] (B games) or [n, n] (one game, shared by every setting), float64."""
    P = torch.as_tensor(P, dtype=torch.float64)
    if P.dim() not in (2, 3) or P.shape[-1] != P.shape[-2]:
        raise InputError(f"P must be [B, n, n] or [n, n], got shape {tuple(P.shape)}")
    return P


def batch_size(P: torch.Tensor, *per_setting) -> int:
    """B: the games of a [B, n, n] P, or for one game [n, n] the largest leading size of
    the per-setting inputs (hyperparameter tensors, init, μ); 1 if none is batched."""
    if P.dim() == 3:
        return P.shape[0]
    sizes = {1}
    for x in per_setting:
        if isinstance(x, Hyper):
            sizes |= {
                int(torch.as_tensor(getattr(x, f.name)).reshape(-1).shape[0])
                for f in fields(x)
                if isinstance(getattr(x, f.name), torch.Tensor)
            }
        elif x is not None and torch.as_tensor(x).dim() == 2:
            sizes.add(int(torch.as_tensor(x).shape[0]))
    if len(sizes - {1}) > 1:
        raise InputError(f"per-setting inputs disagree on the number of settings: {sorted(sizes)}")
    return max(sizes)
