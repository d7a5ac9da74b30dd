"""Ray wrapper of the learner: `LearnerActor` (one rank) and `LearnerGroup` (the driver side).

The actor is a thin shell over `selfplay.runtime.learner.learner.Learner`. The group
creates N actors, rendezvouses them into one torch.distributed group at rank
0's node address, and broadcasts every call (under FSDP2 every call is a
collective). Data never funnels through the driver:

- a `TrainBatch` is put in the object store once; every rank receives the same
  ref (Ray resolves it zero-copy) and cuts its own whole-group shard;
- `publish` returns the ref of rank 0's `publish` task, whose return value *is* the
  FlatWeights: Ray stores it in the object store on rank 0's node, the driver only
  holds (and owns) the ref, and a rollout worker's `load` waits on it. Nothing
  blocks: the driver hands the ref on before the learner has finished training.

Calls are issued to every rank in order (actor tasks from one caller run in
order). `issue(method, ...)` returns the ranks' refs without waiting; the
blocking methods wait on them. The controller issues `start_phase`,
`train_phase`, `publish` and `copy_role` without waiting and reads the metrics
once per step, so learner round trips are not on its critical path.

`learner_cls` (default `Learner`) is the plain class each actor wraps, built as
`learner_cls(model_fn, config, rank=, world_size=, init_method=, backend=, device=)`;
the simulated pipeline (`selfplay.bench.simulate`) substitutes one that sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import ray
import torch

from selfplay.algos.plan import Phase
from selfplay.models.weights import FlatWeights
from selfplay.runtime import waits
from selfplay.runtime.learner.batch import TrainBatch, build_train_batch, shard
from selfplay.runtime.learner.learner import Learner, LearnerSettings, PhaseMetrics
from selfplay.runtime.learner.state import LearnerState
from selfplay.types import Samples


@ray.remote
class LearnerActor:
    """One learner rank in its own process."""

    def __init__(
        self,
        model_fn: Callable[[], torch.nn.Module],
        config: LearnerSettings,
        rank: int,
        world_size: int,
        device: str | None = None,
        learner_cls: Callable[..., Learner] = Learner,
    ) -> None:
        torch.set_num_threads(config.threads)  # 1 by default: CPU actors share the box
        self._args = (model_fn, config, rank, world_size, device)
        self._cls = learner_cls
        self.learner: Learner | None = None
        self._parts: dict = {}

    def address(self) -> str:
        """`tcp://IP:PORT` on this actor's node (called on rank 0 for the rendezvous)."""
        from selfplay.runtime.learner.sharding import free_port

        return f"tcp://{ray.util.get_node_ip_address()}:{free_port()}"

    def init(self, init_method: str | None, backend: str | None = None) -> int:
        model_fn, config, rank, world, device = self._args
        self.learner = self._cls(
            model_fn,
            config,
            rank=rank,
            world_size=world,
            init_method=init_method,
            backend=backend,
            device=device,
        )
        return rank

    def set_role(self, role: str, weights: FlatWeights | Mapping[str, torch.Tensor]) -> None:
        self._l().set_role(role, weights)

    def snapshot(self, role: str) -> None:
        self._l().snapshot(role)

    def copy_role(self, dst: str, src: str) -> None:
        self._l().copy_role(dst, src)

    def start_phase(self, phase: Phase | str) -> None:
        self._l().start_phase(phase)

    def train_phase(self, phase: Phase, batch: TrainBatch) -> PhaseMetrics:
        learner = self._l()
        return learner.train_phase(phase, shard(batch, learner.ctx.rank, learner.ctx.world))

    def publish(self, role: str | None = None) -> FlatWeights | None:
        """Rank 0's FlatWeights (None on the other ranks): the task's return value is
        the published object, so nobody waits for a ref to come back first."""
        return self._l().publish(role)

    def policy_logprobs(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        response_mask: np.ndarray,
        role: str | None = None,
    ) -> np.ndarray:
        return self._l().policy_logprobs(input_ids, attention_mask, response_mask, role)

    def sequence_logprobs(self, role: str | None, *samples: Samples) -> list[np.ndarray]:
        """Per `Samples` (one prompt's responses each), [N] Σ_t log π_role(y_t | x, y_<t),
        one forward per `Samples` (evaluation's KL; every rank takes part)."""
        out = []
        for s in samples:
            b = build_train_batch(s, s.prompt_tokens, np.zeros(len(s)))
            lp = self._l().policy_logprobs(b.input_ids, b.attention_mask, b.response_mask, role)
            out.append(lp.sum(axis=1, dtype=np.float64))
        return out

    def state(self) -> LearnerState:
        return self._l().state()

    def checkpoint_meta(self) -> tuple[dict, list[str]]:
        """(JSON meta, part names) of this rank's state; the parts are then fetched one
        at a time with `checkpoint_part` (no copy is made here: the learner takes no
        other call in between)."""
        from selfplay.runtime.checkpoint.codec import learner_parts, pack_learner_state

        tensors, meta = pack_learner_state(self._l().state(copy=False))
        self._parts = learner_parts(tensors)
        return meta, list(self._parts)

    def checkpoint_part(self, name: str) -> dict:
        """One part as raw bytes (`RawTensor`: numpy, so Ray ships it without a pickled copy)."""
        from selfplay.runtime.checkpoint.format import RawTensor

        part = self._parts.pop(name)
        return {k: RawTensor.of(t) for k, t in part.items()}

    def load_state(self, state: LearnerState) -> None:
        self._l().load_state(state)

    def close(self) -> None:
        if self.learner is not None:
            self.learner.close()

    def _l(self) -> Learner:
        if self.learner is None:
            raise RuntimeError("LearnerActor.init was not called")
        return self.learner


class LearnerGroup:
    """N `LearnerActor`s forming one torch.distributed group; calls go to every rank."""

    def __init__(
        self,
        model_fn: Callable[[], torch.nn.Module],
        config: LearnerSettings,
        world_size: int,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        resources: dict[str, float] | None = None,
        backend: str | None = None,
        device: str | None = None,
        learner_cls: Callable[..., Learner] = Learner,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"learner world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        opts = LearnerActor.options(
            num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None
        )
        self.actors = [
            opts.remote(model_fn, config, r, world_size, device, learner_cls)
            for r in range(world_size)
        ]
        addr = waits.get(self.actors[0].address.remote()) if world_size > 1 else None
        waits.get([a.init.remote(addr, backend) for a in self.actors])

    def issue(self, method: str, *args) -> list[ray.ObjectRef]:
        """Call `method` on every rank; the ranks' result refs, not waited on."""
        return [getattr(a, method).remote(*args) for a in self.actors]

    def later(self, method: str, *args):
        """Call `method` on every rank now; the returned callable waits for the ranks
        and gives rank 0's result (an evaluation read a step later)."""
        refs = self.issue(method, *args)
        return lambda: waits.get(refs)[0]

    def _all(self, method: str, *args) -> list:
        return waits.get(self.issue(method, *args))

    def set_role(self, role: str, weights: FlatWeights | ray.ObjectRef) -> None:
        ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        self._all("set_role", role, ref)

    def snapshot(self, role: str) -> None:
        self._all("snapshot", role)

    def copy_role(self, dst: str, src: str) -> None:
        self._all("copy_role", dst, src)

    def start_phase(self, phase: Phase | str) -> None:
        self._all("start_phase", phase)

    def train_phase(self, phase: Phase, batch: TrainBatch | ray.ObjectRef) -> PhaseMetrics:
        """Every rank gets the same batch ref and trains on its own whole-group shard
        (loss form, updates and micro-batch: the group's LearnerSettings)."""
        ref = batch if isinstance(batch, ray.ObjectRef) else ray.put(batch)
        return self._all("train_phase", phase, ref)[0]

    def issue_phase(self, phase: Phase, batch: TrainBatch | ray.ObjectRef) -> list:
        """`start_phase` then `train_phase` on every rank, not waited on: the ranks'
        `PhaseMetrics` refs (rank 0's first)."""
        ref = batch if isinstance(batch, ray.ObjectRef) else ray.put(batch)
        self.issue("start_phase", phase)
        return self.issue("train_phase", phase, ref)

    def publish(self, role: str | None = None) -> ray.ObjectRef:
        """Ref of the full FlatWeights of `role` (rank 0's `publish`; every rank takes
        part, as FSDP2 needs), not waited on: weights skip the driver."""
        return self.issue("publish", role)[0]

    def policy_logprobs(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        response_mask: np.ndarray,
        role: str | None = None,
    ) -> np.ndarray:
        return self._all("policy_logprobs", input_ids, attention_mask, response_mask, role)[0]

    def state(self) -> list[LearnerState]:
        return self._all("state")

    def load_state(self, states: list[LearnerState]) -> None:
        waits.get([a.load_state.remote(s) for a, s in zip(self.actors, states, strict=True)])

    def shutdown(self) -> None:
        try:
            self._all("close")
        except ray.exceptions.RayActorError:
            pass  # a rank already died (its process group is gone with it)
        finally:
            for a in self.actors:
                ray.kill(a)
            self.actors = []
