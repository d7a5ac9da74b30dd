"""torch.distributed plumbing for the learner group: process group, DDP/FSDP2, reductions.

Strategies (`LearnerSettings.strategy`):

- "ddp": every rank holds the full model. Gradients are summed with ONE
  all_reduce per optimizer step over a flattened buffer, after all
  micro-batches are accumulated. This is what `DistributedDataParallel` does
  under `no_sync()` + a final synced backward; we do it by hand because DDP
  averages (divides by world size) and syncs on every backward, while the
  exact loss normalisation below wants a plain sum once per step.
- "fsdp2": `torch.distributed.fsdp.fully_shard` on every transformer block
  (the HF `_no_split_modules` classes) and on the root. FSDP2 reduce-scatters
  gradients in each backward; its divide factor is set to 1 (with a plain SUM
  collective, as gloo has no PREMUL_SUM) so it sums too.
  Parameters are DTensors sharded on dim 0; forward passes are collectives, so
  every rank must run the same number of them (the learner pads with dummy
  micro-batches). Verified to run on CPU with gloo in torch 2.13.

Exactness: the learner's loss is Σ_local pairs ℓ / M_global with M_global the
all-reduced pair count, so Σ_ranks ∇ = ∇ of the full-batch mean loss, and
1 shard and N shards take the same optimizer step up to float summation order.

world_size == 1 never initialises a process group, whatever the strategy.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

Strategy = Literal["ddp", "fsdp2"]
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp2")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for `tcp://` rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DistContext:
    """One rank's view of the learner group."""

    rank: int
    world: int
    strategy: Strategy
    device: torch.device

    @property
    def sharded(self) -> bool:
        """True when forwards are collectives (FSDP2 with more than one rank)."""
        return self.world > 1 and self.strategy == "fsdp2"

    @classmethod
    def create(
        cls,
        rank: int,
        world: int,
        strategy: str,
        init_method: str | None,
        backend: str | None,
        device: str | None,
    ) -> DistContext:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown learner strategy {strategy!r}; expected one of {STRATEGIES}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} out of range for world size {world}")
        cuda = torch.cuda.is_available() and device != "cpu"
        dev = torch.device(device) if device else torch.device("cuda" if cuda else "cpu")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if world > 1:
            if init_method is None:
                raise ValueError("world_size > 1 needs init_method, e.g. tcp://127.0.0.1:PORT")
            be = backend or ("nccl" if dev.type == "cuda" else "gloo")
            if not dist.is_initialized():
                dist.init_process_group(be, init_method=init_method, rank=rank, world_size=world)
        return cls(rank=rank, world=world, strategy=strategy, device=dev)  # type: ignore[arg-type]

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def all_reduce_max(self, value: int) -> int:
        if self.world == 1:
            return int(value)
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Transformer blocks to shard separately: HF `_no_split_modules` classes."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:  # non-HF module: shard the children of every ModuleList
        blocks = [
            c for m in model.modules() if isinstance(m, torch.nn.ModuleList) for c in m.children()
        ]
    return blocks


def checkpoint_blocks(model: torch.nn.Module) -> None:
    """Activation checkpointing: each transformer block (`_blocks`) keeps only its inputs
    for the backward pass and runs its forward again there (`torch.utils.checkpoint`,
    non-reentrant), so a micro-batch holds one block's activations at a time instead of
    every block's. Forwards without gradients (log-probs of roles) are unchanged. The
    model stays in eval mode: transformers' own checkpointing acts only in train mode."""
    from torch.utils.checkpoint import checkpoint

    for block in _blocks(model):
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed


def prepare_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """Move to the device, make replicas identical (broadcast from rank 0), wrap per strategy."""
    model = model.to(ctx.device)
    if ctx.world > 1:
        with torch.no_grad():
            for t in (*model.parameters(), *model.buffers()):
                dist.broadcast(t.data, src=0)
    if ctx.sharded:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        for m in model.modules():
            if isinstance(m, FSDPModule):
                # Sum, not mean (module docstring). Forcing a plain SUM collective: the
                # default for a custom factor is PREMUL_SUM, which gloo lacks.
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)
    return model


def reshard(model: torch.nn.Module) -> None:
    """Return FSDP2 params to their sharded state (the root stays unsharded after a
    no-grad forward, which would leave stale copies once the shards are edited)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def local(p: torch.Tensor) -> torch.Tensor:
    """This rank's storage of a parameter (the shard of a DTensor; a view, writable)."""
    return p.to_local() if hasattr(p, "to_local") else p.data


def local_of_full(full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """This rank's part of the full tensor `full` laid out like parameter `p` (no comms)."""
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        # src_data_rank=None: every rank holds `full`, so each just slices its shard.
        return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
    return full


def sum_grads(params: list[torch.Tensor], ctx: DistContext) -> None:
    """DDP: one all_reduce(SUM) of all gradients (missing grads count as zero)."""
    if ctx.world == 1 or ctx.strategy != "ddp":
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def full_state_dict(model: torch.nn.Module, ctx: DistContext) -> dict[str, torch.Tensor] | None:
    """The full CPU state dict on rank 0 (None elsewhere); a collective under FSDP2."""
    if ctx.sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        sd = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return dict(sd) if ctx.rank == 0 else None
    if ctx.rank != 0:
        return None
    return {k: v.detach() for k, v in model.state_dict().items()}
