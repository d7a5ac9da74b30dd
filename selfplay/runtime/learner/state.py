"""A learner rank's state: role weights, its checkpointable `LearnerState`, and
AdamW state helpers.

Role weights and optimizer state are this rank's local storage: under FSDP2
a parameter's shard (parameters are DTensors sharded on dim 0), otherwise the
whole tensor. AdamW state under FSDP2 is a DTensor per parameter; `LearnerState`
holds its local shard as a plain tensor so it can be written as safetensors,
and `Learner.load_state` lays it out again like the parameter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from selfplay.runtime.learner.sharding import local


@dataclass
class RoleWeights:
    """A frozen copy of this rank's parameter storage, plus AdamW state if snapshotted."""

    params: list[torch.Tensor]
    optim: dict[int, dict[str, torch.Tensor]] | None = None


@dataclass
class LearnerState:
    """Rank-local checkpoint: restore with the same world size and strategy."""

    rank: int
    world: int
    strategy: str
    params: list[torch.Tensor]
    optim: dict[int, dict[str, torch.Tensor]]
    roles: dict[str, RoleWeights]
    live: str | None = None  # the role `params`/`optim` are (not repeated in `roles`)


def clone_optim(state: Mapping[int, Mapping[str, object]]) -> dict[int, dict[str, torch.Tensor]]:
    return {
        i: {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in st.items()}
        for i, st in state.items()
    }


def local_optim(state, copy: bool = True):
    """Optimizer state with every DTensor replaced by this rank's shard (a plain tensor),
    every tensor cloned (copy=True) or as it is."""
    if state is None:
        return None

    def one(v):
        v = local(v) if hasattr(v, "to_local") else v
        return v.detach().clone() if copy and torch.is_tensor(v) else v

    return {i: {k: one(v) for k, v in st.items()} for i, st in state.items()}


def optim_like(state, params: list, device):
    """Local optimizer state as a learner with `params` keeps it: on `device`, and laid
    out like its parameter (a DTensor shard under FSDP2). AdamW keeps `step` on the
    CPU unless capturable, so that one stays where it is."""
    if state is None:
        return None
    out = {}
    for i, st in state.items():
        p, new = params[i], {}
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                v = v.to(device)
                if hasattr(p, "device_mesh") and v.shape == local(p).shape:
                    from torch.distributed.tensor import DTensor

                    v = DTensor.from_local(
                        v,
                        p.device_mesh,
                        p.placements,
                        run_check=False,
                        shape=p.shape,
                        stride=p.stride(),
                    )
            new[k] = v
        out[i] = new
    return out


#: glibc's M_MMAP_THRESHOLD parameter of mallopt.
_M_MMAP_THRESHOLD = -3


def fixed_mmap_threshold(nbytes: int = 1 << 18) -> bool:
    """Serve every allocation of ≥ `nbytes` with its own mmap (glibc): freed tensors then
    go back to the OS at once. glibc's default raises the threshold to the largest chunk
    freed so far (up to 32 MiB), after which a model's per-layer tensors come from the
    heap, and a freed copy of the weights stays in the process's RSS. False where there
    is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):
        return False
