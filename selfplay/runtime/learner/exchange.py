"""A learner rank's weights going in and out (a mixin of `Learner`): publishing a
version, the checkpointable state, and swapping a role's weights into the model.

What a version holds (`selfplay.models.lora.version_tensors`): the whole state dict of
a fully trained model, or only the adapter's tensors under LoRA. Under LoRA, π_ref is
the base model with the adapter switched off; it is never stored, and its published
version is the all-zero adapter (BA = 0 adds exactly nothing to the base's outputs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from selfplay.models.weights import FlatWeights, flatten_state_dict
from selfplay.runtime.learner import sharding
from selfplay.runtime.learner.sharding import local
from selfplay.runtime.learner.state import (
    LearnerState,
    RoleWeights,
    clone_optim,
    local_optim,
    optim_like,
)

#: The role that is the base model under LoRA.
REF = "ref"


class Exchange:
    """Needs `model`, `ctx`, `config`, `opt`, `_names`, `_params` (the trainable
    parameters), `_lora`, `_roles`, `_live`, `_live_copy`, `_holds` and `_role(name)`."""

    def publish(self, role: str | None = None) -> FlatWeights | None:
        """Full weights (current, or `role`'s) as FlatWeights on rank 0; None on other ranks.
        Under LoRA, the adapter's tensors only.

        Unsharded, a role's tensors are flattened where they are: swapping them into
        the model and back would copy the whole policy three more times."""
        role = None if role == self._live else role
        if self._lora:
            return self._publish_adapter(role)
        if role is not None and not self.ctx.sharded:
            if self.ctx.rank != 0:
                return None
            by_ptr = {
                p.data_ptr(): t for p, t in zip(self._params, self._role(role).params, strict=True)
            }
            return flatten_state_dict(
                {
                    k: by_ptr.get(v.data_ptr(), v).detach()
                    for k, v in self.model.state_dict().items()
                }
            )
        with self._weights(role):
            sd = sharding.full_state_dict(self.model, self.ctx)
            # Flatten inside: without FSDP2 the state dict views the swapped-in storage.
            return None if sd is None else flatten_state_dict(sd)

    def _publish_adapter(self, role: str | None) -> FlatWeights | None:
        if role == REF:  # the base: a zero adapter, whatever A holds
            full = [torch.zeros(p.shape, dtype=p.dtype) for p in self._params]
        else:
            with self._weights(role):  # a collective under FSDP2 (full_tensor)
                full = [
                    (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
                    for p in self._params
                ]
        if self.ctx.rank != 0:
            return None
        return flatten_state_dict(dict(zip(self._names, full, strict=True)))

    def state(self, copy: bool = True) -> LearnerState:
        """This rank's state as plain local tensors (optimizer DTensors → their shards).
        The live role is `params`/`optim` (named by `live`, not repeated in `roles`).
        copy=False: the tensors themselves, for writing out before the next call."""
        c = (lambda t: t.clone()) if copy else (lambda t: t)  # noqa: E731
        return LearnerState(
            rank=self.ctx.rank,
            world=self.ctx.world,
            strategy=self.config.strategy,
            params=[c(local(p).detach()) for p in self._params],
            optim=local_optim(self._optim_refs(), copy),
            roles={
                k: RoleWeights([c(t) for t in v.params], local_optim(v.optim, copy))
                for k, v in self._roles.items()
            },
            live=self._live,
        )

    def load_state(self, state: LearnerState) -> None:
        if (state.rank, state.world, state.strategy) != (
            self.ctx.rank,
            self.ctx.world,
            self.config.strategy,
        ):
            raise ValueError(
                f"checkpoint is rank {state.rank}/{state.world} {state.strategy}, "
                f"learner is {self.ctx.rank}/{self.ctx.world} {self.config.strategy}"
            )
        if len(state.params) != len(self._params):
            raise ValueError(
                f"checkpoint holds {len(state.params)} trainable tensors, the learner "
                f"{len(self._params)} (a LoRA checkpoint resumes only under the same model.lora)"
            )
        dev = self.ctx.device
        self._roles, self._live, self._live_copy, self._holds = {}, None, None, None
        self._load_params([t.to(dev) for t in state.params])
        self.opt.state.clear()
        for i, st in optim_like(state.optim, self._params, dev).items():
            self.opt.state[self._params[i]] = st
        self._roles = {
            k: RoleWeights([t.to(dev) for t in v.params], optim_like(v.optim, self._params, dev))
            for k, v in state.roles.items()
            if k != state.live
        }
        self._live = state.live

    # ------------------------------------------------------------- helpers
    def _local_params(self) -> list[torch.Tensor]:
        return [local(p).detach().clone() for p in self._params]

    def _load_params(self, params: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, t in zip(self._params, params, strict=True):
                local(p).copy_(t)

    def _optim_refs(self) -> dict[int, dict[str, torch.Tensor]]:
        return {i: self.opt.state[p] for i, p in enumerate(self._params) if p in self.opt.state}

    def _optim_state(self) -> dict[int, dict[str, torch.Tensor]]:
        return clone_optim(self._optim_refs())

    @contextmanager
    def _weights(self, role: str | None) -> Iterator[None]:
        """Temporarily swap `role`'s weights into the model (bitwise restore after);
        under LoRA, π_ref is the model with its adapter switched off."""
        if role is None or role == self._live:
            yield
            return
        if self._lora and role == REF:
            with self.model.disable_adapter():
                yield
            return
        r = self._role(role)
        if self.ctx.sharded:  # DTensor shards: copy in and back
            saved = self._local_params()
            self._load_params(r.params)
            try:
                yield
            finally:
                self._load_params(saved)
            return
        saved = [p.data for p in self._params]  # swap storages: no copy
        try:
            for p, t in zip(self._params, r.params, strict=True):
                p.data = t
            yield
        finally:
            for p, t in zip(self._params, saved, strict=True):
                p.data = t
