"""The rollout pool: which workers serve, which versions each holds, and its changes.

The controller owns one `RolloutPool`. Three things change its membership:

- elastic resizing (`selfplay.runtime.workers.control`): at each phase boundary, before
  any batch is requested, the pool moves towards its `RunControl` target;
  growing starts workers that join once up, shrinking retires workers and kills
  each only after every queued batch that may have used it has been trained;
- healing: a worker whose process died (SIGKILL, OOM, lost node) is replaced
  by a new one in the same slot, so a reissued batch is split across the same
  number of workers and drawn with the same seeds (`Controller.collect`);
- the end of the run (`close`).

Which versions a worker holds is keyed by its actor handle, not its position,
so a replaced or new worker loads what it needs before its first `generate`
(actor tasks from one caller run in order; a backend refuses to sample a
version it lacks). Judges are healed the same way (`replace_dead`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from selfplay.runtime.workers.control import Autoscaler, request_workers, start_control
from selfplay.types import Version

PING_S = 30.0  # a live worker busy with a queued batch answers within this, a dead one at once


@dataclass(frozen=True)
class Resize:
    """The active rollout pool went from `old` to `new` workers before step `step` ran on."""

    step: int
    old: int
    new: int


def replace_dead(actors: list, make: Callable[[], object] | None) -> list[int]:
    """Replace, in place, every actor whose process is gone; returns their slots.

    Liveness is a `ready()` ping: a dead actor fails it with `RayActorError` at
    once; one that is still busy (a queued generate) counts as alive.
    """
    pings = [a.ready.remote() for a in actors]
    done, _ = ray.wait(pings, num_returns=len(pings), timeout=PING_S)
    dead = []
    for i, p in enumerate(pings):
        if p not in done:
            continue
        try:
            ray.get(p)
        except ray.exceptions.RayActorError:
            dead.append(i)
    if dead and make is None:
        raise RuntimeError("an actor died and this pool cannot start a replacement")
    for i in dead:
        ray.kill(actors[i])  # in case it is only unreachable, not gone
        actors[i] = make()
    return dead


def heal(pool, judges: list, make_judge, wait_s: float, stop=None) -> int:
    """Replace the dead rollout workers of `pool` and the dead `judges` in their slots,
    and wait until the new ones are up: at most `wait_s` seconds, or until `stop` (a
    `StopRequest`) is set (`waits.await_ready`, raising `WaitAborted`), as a batch
    issued to an actor that no node can host would wait forever. Returns the number
    of judges replaced."""
    from selfplay.runtime import waits

    workers = pool.heal()
    dead = replace_dead(judges, make_judge)
    new = [*(pool.workers[i] for i in workers), *(judges[i] for i in dead)]
    what = " and ".join(
        f"{n} {name}{'s' if n > 1 else ''}"
        for n, name in ((len(workers), "rollout worker"), (len(dead), "preference server"))
        if n
    )
    if workers and pool.worker_resources:
        what += f" ({pool.worker_resources})"
    waits.await_ready(new, what=what, wait_s=wait_s, stop=stop)
    return len(dead)


@dataclass
class RolloutPool:
    workers: list
    make_worker: Callable[[], object] | None = None  # one new RolloutActor (driver/build.py)
    autoscale: Autoscaler | None = None
    join_wait_s: float = 0.0  # how long a safe point waits for new workers to start
    worker_resources: str = ""  # one worker's Ray resources, as the messages name them
    control: object = None  # the run's RunControl actor, once `open_control` ran
    needs: list | None = None  # what the run's actors ask Ray for (`resources.run_needs`)
    grows: bool = False  # the cluster may grow (runtime.address): a size beyond it waits
    resizes: list[Resize] = field(default_factory=list)
    replaced: int = 0  # workers replaced after their process died
    _loaded: dict[object, set] = field(default_factory=dict)  # actor handle -> versions
    _starting: list[tuple[object, object]] = field(default_factory=list)  # (actor, ready ref)
    _retiring: list[tuple[object, list]] = field(default_factory=list)  # (actor, queued batches)
    _drops: dict[object, list] = field(default_factory=dict)  # actor handle -> versions to drop
    poll: object = None  # the control's `target` ref in flight
    _target: int = 0  # the control's target as last read

    # ------------------------------------------------------------- versions
    def prepare(
        self, worker, versions: set[Version], refs: dict[Version, object]
    ) -> tuple[list[tuple[Version, list]], list[Version]]:
        """What `worker`'s next `sample` call drops and loads: the versions released since
        its last call, and [(version, [ref])] of those in `versions` it lacks (a boxed
        ref: the worker pulls the weights, the driver never does)."""
        have = self._loaded.setdefault(worker, set())
        load = [(v, [refs[v]]) for v in sorted(versions - have)]
        have.update(versions)
        return load, self._drops.pop(worker, [])

    def lend(self, worker, versions: set[Version], refs: dict[Version, object]) -> list[Version]:
        """Load `versions` on `worker` now, for calls made outside `sample` (evaluation),
        after applying its pending drops; returns those it lacked, to `unload` after."""
        load, drop = self.prepare(worker, versions, refs)
        for v in drop:
            worker.drop.remote(v)
        for v, boxed in load:
            worker.load.remote(v, boxed)
        return [v for v, _ in load]

    def unload(self, worker, versions: list[Version]) -> None:
        """Drop `versions` from `worker` after the calls already made to it."""
        have = self._loaded.get(worker, set())
        for v in versions:
            worker.drop.remote(v)
            have.discard(v)

    def drop(self, versions: list[Version]) -> None:
        """Released versions leave each worker with its next `sample` call."""
        for v in versions:
            for w, have in self._loaded.items():
                if v in have:
                    self._drops.setdefault(w, []).append(v)
                    have.discard(v)

    def heal(self) -> list[int]:
        """Replace dead workers in their slots; returns the slots replaced."""
        old = list(self.workers)
        dead = replace_dead(self.workers, self.make_worker)
        for i in dead:
            self._loaded.pop(old[i], None)
            self._drops.pop(old[i], None)
        self.replaced += len(dead)
        return dead

    # ------------------------------------------------------------- elastic
    @property
    def starting(self) -> list:
        """Workers started for the pool that have not joined it yet."""
        return [w for w, _ in self._starting]

    def end_state(self) -> dict[str, int]:
        """The pool as it is: the size asked for (`selfplay scale`, autoscale), the
        workers serving, and those started that have not joined (waiting for room)."""
        target = self._target if self.control is not None else len(self.workers)
        return {"target": target, "serving": len(self.workers), "starting": len(self._starting)}

    def open_control(self, name: str) -> None:
        """Start the run's named `RunControl`, so `selfplay scale NAME` reaches it."""
        a = self.autoscale
        self.control = start_control(
            name,
            len(self.workers),
            (a.min_workers, a.max_workers) if a else None,
            self.needs,
            self.grows,
        )
        self._target = len(self.workers)
        self.poll = self.control.target.remote()
        if a is not None:
            request_workers(len(self.workers), a.bundle)

    def close_control(self) -> None:
        """End of run: stop the control actor, workers still starting, and the resource ask."""
        for w, _ in self._starting:
            ray.kill(w)
        self._starting.clear()
        if self.control is not None:
            ray.kill(self.control)
            self.control = self.poll = None
        if self.autoscale is not None:
            request_workers(0, self.autoscale.bundle)

    def _queue_depth(self, queue) -> int:
        """Queued batches already generated and judged, waiting for the learner."""
        refs = [p.info_ref for p in queue]
        return len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else 0

    def poll_target(self) -> int:
        """The control's target, without waiting: the answer to the poll sent at the
        previous safe point if it has come (then the next poll goes out), else the
        last one read. A `selfplay scale` lands at the first safe point after its
        answer arrives (one phase later at most, when the driver is fast)."""
        if ray.wait([self.poll], timeout=0)[0]:
            self._target = ray.get(self.poll)
            self.poll = self.control.target.remote()
        return self._target

    def resize(self, step: int, phase: int, queue) -> None:
        """Safe point (no request in flight): move the pool towards the control's target."""
        if self.control is None:
            return
        want = self.poll_target()
        if self.autoscale is not None and phase == 0 and not self._starting:
            new = self.autoscale.decide(want, self._queue_depth(queue))
            if new != want:
                # Within the control's bounds (decide clamps), so set_target accepts it;
                # the poll sent after it reads it back.
                self.control.set_target.remote(new)
                self._target, self.poll = new, self.control.target.remote()
                want = new
                request_workers(new, self.autoscale.bundle)
        old = len(self.workers)
        have = old + len(self._starting)
        for _ in range(want - have):
            w = self.make_worker()
            self._starting.append((w, w.ready.remote()))
        for _ in range(have - want):
            if self._starting:  # never served, so no batch can depend on it
                ray.kill(self._starting.pop()[0])
            else:
                # Out of the pool now; killed once every batch queued now is trained.
                self._retiring.append((self.workers.pop(), list(queue)))
        self._admit()
        if len(self.workers) != old:
            self.resizes.append(Resize(step, old, len(self.workers)))
        self.control.report.remote(len(self.workers), len(self._starting), len(self._retiring))

    def _admit(self) -> None:
        """Started workers join the pool; waits at most `join_wait_s` for those still starting."""
        if not self._starting:
            return
        refs = [r for _, r in self._starting]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=self.join_wait_s)[0])
        for w, r in self._starting:
            if r in ready:
                ray.get(r)  # a worker whose backend failed to build fails the run here
                self.workers.append(w)  # loads what it needs at its first request
        self._starting = [(w, r) for w, r in self._starting if r not in ready]

    def reap(self, queue) -> None:
        """Kill retired workers once no queued batch can still be waiting on their samples."""
        keep = []
        for w, pends in self._retiring:
            if any(p is q for p in pends for q in queue):
                keep.append((w, pends))
            else:
                ray.kill(w)
                self._loaded.pop(w, None)
                self._drops.pop(w, None)
        self._retiring = keep

    def kill_all(self) -> None:
        for w in [*self.workers, *(w for w, _ in self._retiring)]:
            ray.kill(w)
