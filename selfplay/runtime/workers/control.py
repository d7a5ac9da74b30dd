"""Elastic rollout workers: the run's named control actor and the autoscale policy.

Every `selfplay train` run owns one `RunControl` actor, named after its run dir
(`run_dir.name`) in the Ray namespace `selfplay`, not detached: it dies with
the driver. It only holds the *desired* rollout-worker count. `selfplay scale
RUN --rollout-workers N` writes it from any process on the cluster; the
controller polls it at every phase boundary (a safe point) without waiting
(`RolloutPool.poll_target`: the answer to the poll sent at the previous
boundary, so a new target lands within two boundaries) and grows or shrinks
its pool (see `RolloutPool.resize`):

- growing starts new `RolloutActor`s; one joins the pool once its process is up
  (`rollout.join_wait_s` bounds how long a safe point waits for it, default 0:
  training never stalls on a node the autoscaler has yet to add), and it loads
  every version the next batch needs before its first `generate` (actor tasks
  from one caller run in order; a backend refuses to sample a version it lacks);
- shrinking takes workers out of the pool at once, so no new batch uses them,
  and kills each only after every queued batch that may have used it has been
  trained, so no batch is lost or sampled twice.

Autoscale (optional, `rollout.autoscale`): at each step boundary the
controller observes the queue depth, the number of requested batches already
generated and judged, waiting for the learner. The controller prefetches at
most one batch (and none with `max_staleness: 0`, where the depth is always 0
and the policy climbs to `max_workers`), so the depth is 0 or 1.
After `window` settled steps, a mean depth below `target_queue_depth` (the
learner waited for rollouts) adds a worker, a mean above it removes one,
within `[min_workers, max_workers]`. Each new target is also sent to Ray's
autoscaler as `request_resources(bundles=[worker bundle] * target)`, a
persistent floor on the cluster's size, so the Ray autoscaler (or KubeRay's)
adds nodes before the pending actors would make it do so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ray

from selfplay.errors import InputError

NAMESPACE = "selfplay"


@dataclass(frozen=True)
class ControlState:
    """What `selfplay scale` reads back: the wanted and the serving worker counts."""

    target: int
    active: int
    starting: int
    retiring: int
    autoscale: tuple[int, int] | None  # (min_workers, max_workers) when on


@ray.remote(num_cpus=0)
class RunControl:
    """The run's mailbox: the desired rollout-worker count, and the pool as last reported."""

    def __init__(
        self, target: int, bounds: tuple[int, int] | None, needs=None, grows: bool = False
    ) -> None:
        self._target = target
        self._bounds = bounds
        self._pool = (target, 0, 0)
        self._needs = needs  # the run's actors (resources.run_needs), for `selfplay scale`
        self._grows = grows  # on a cluster that may grow (runtime.address)

    def needs(self) -> tuple[list | None, bool]:
        """(what the run's actors ask Ray for, whether its cluster may grow)."""
        return self._needs, self._grows

    def target(self) -> int:
        return self._target

    def set_target(self, n: int) -> int:
        lo, hi = self._bounds or (1, n)
        if not lo <= n <= hi:
            raise ValueError(f"rollout workers must lie in [{lo}, {hi}], got {n}")
        self._target = n
        return n

    def report(self, active: int, starting: int, retiring: int) -> None:
        self._pool = (active, starting, retiring)

    def state(self) -> ControlState:
        return ControlState(self._target, *self._pool, autoscale=self._bounds)


def start_control(
    name: str,
    workers: int,
    bounds: tuple[int, int] | None = None,
    needs: list | None = None,
    grows: bool = False,
):
    """Create the run's `RunControl`; a live run of the same name is an InputError.
    `needs` (`resources.run_needs`) and `grows` let `selfplay scale` check a new size.

    It is pinned to the driver's node: a 0-CPU actor may otherwise land on a
    worker node that the autoscaler later removes, taking the run with it.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    try:
        return RunControl.options(name=name, namespace=NAMESPACE, scheduling_strategy=here).remote(
            workers, bounds, needs, grows
        )
    except ValueError:
        raise InputError(f"a run named {name} already runs on this Ray cluster") from None


def request_workers(n: int, bundle: dict[str, float]) -> None:
    """Ask Ray's autoscaler for room for `n` rollout workers (replaces the previous ask)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[dict(bundle) for _ in range(n)])


@dataclass
class Autoscaler:
    """Queue-depth policy (module docstring): one worker more or less per `window` steps."""

    min_workers: int
    max_workers: int
    target_queue_depth: float
    bundle: dict[str, float]
    window: int = 4
    seen: list[int] = field(default_factory=list)

    def clamp(self, n: int) -> int:
        return max(self.min_workers, min(self.max_workers, n))

    def decide(self, current: int, depth: int) -> int:
        """Observe one step's queue depth; return the new target for a pool of `current`."""
        self.seen.append(depth)
        if len(self.seen) < self.window:
            return self.clamp(current)
        mean = sum(self.seen) / len(self.seen)
        self.seen.clear()
        if mean < self.target_queue_depth:
            return self.clamp(current + 1)
        if mean > self.target_queue_depth:
            return self.clamp(current - 1)
        return self.clamp(current)


def scale(run: str, workers: int, say=None) -> tuple[int, ControlState]:
    """Set run `run`'s desired rollout-worker count; returns (previous target, state).

    A size the cluster cannot place (`cluster.scale_shortfall`) is refused where the
    cluster cannot grow (the run's in-process cluster: InputError, the target is left
    as it is); on a cluster that may grow (runtime.address) it is set, and `say` tells
    what waits for nodes (Ray's autoscaler adds them for the pending workers)."""
    from selfplay.runtime.resources import scale_shortfall

    if workers < 1:
        raise InputError(f"--rollout-workers must be >= 1, got {workers}")
    try:
        ctl = ray.get_actor(run, namespace=NAMESPACE)
    except ValueError:
        raise InputError(
            f"no running run named {run!r} on this Ray cluster (namespace {NAMESPACE})"
        ) from None
    before = ray.get(ctl.state.remote())
    needs, grows = ray.get(ctl.needs.remote())
    why = None if needs is None else scale_shortfall(needs, workers)
    if why is not None and not grows:
        raise InputError(
            f"--rollout-workers {workers}: {why} (run {run} has {before.target}; its "
            "in-process cluster cannot grow)"
        )
    if why is not None and say is not None:
        say(f"note: --rollout-workers {workers}: {why} now; the rest wait for nodes to join")
    try:
        ray.get(ctl.set_target.remote(workers))
    except ray.exceptions.RayTaskError as e:
        raise InputError(f"run {run}: {e.cause}") from None
    return before.target, ray.get(ctl.state.remote())
