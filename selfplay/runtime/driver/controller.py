"""The controller: executes an algorithm's step plan on the actors.

It does not know which algorithm it runs. For each step t and each phase of
the plan it (1) resolves the phase's sampler and opponent roles to published
versions, (2) has the rollout workers sample K responses per prompt and a
separate opponent draw per opponent source, (3) has the preference servers
turn them into ĝ, (4) has the learner group start from the anchor, train on
the phase loss and publish the result as `(t, lead)` or `(t+1, main)`, and
(5) applies the plan's role refreshes (OMWU's π_{t−1}, MPO's magnet).

Asynchrony, with one owner: while the learner trains phase i, the batch of
phase i+1 is already being sampled and judged from the versions published so
far, if and only if its predicted staleness is at most `max_staleness`.
Staleness is counted in published versions: for each role the batch sampled
from, the index of the version that role will have when the batch is trained,
minus the index of the version that sampled it. The check is made again when
the batch is trained (it can never exceed the bound). `max_staleness: 0` runs
every phase strictly in order and is reproducible for a fixed seed.

The driver only moves object refs: samples go worker → judge → assembly task
→ learners, and weights go learner rank 0 → object store → workers.

The driver does not wait on the learner within a step: `train` issues its calls
(run in order on each rank); a published version is a ref the workers' next
`sample` loads once the weights exist. The driver blocks only on each batch's
`BatchInfo` (`collect`) and on the step's metrics, once, before `on_step`, which
runs with the next batch already sampled and judged when the bound allows a
prefetch; what `on_step` issues without waiting (an evaluation of `published()`,
read later) overlaps with the next phase.

Elastic rollout pool and healing (`selfplay.runtime.workers.pool`): at each phase
boundary the pool is resized to the run's `RunControl` target. A batch whose
rollout worker or preference server died is reissued: the dead actors are
replaced in their slots and the same prompts are sampled again from the same
versions with the same seeds (`collect`), at most `max_reissues` times. A worker
lost with its node is replaced the same way, on the remaining or new nodes; while
no node can host it the controller waits at most `node_wait_s`, saying so
(`selfplay.runtime.waits.await_ready`), then fails with `WaitAborted`. Every wait on
Ray is made in slices (`waits.get`), so a stop signal is honoured at any time.

Checkpoints (`selfplay.runtime.driver.resume`) are taken at step boundaries; the
controller's state is `next_step`, the prompt `cursor`, the policy store and
the `queue` of requested batches not yet trained on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray

from selfplay.algos.plan import StepPlan, refreshed, source_roles
from selfplay.errors import RunError
from selfplay.runtime import waits
from selfplay.runtime.driver.phases import Pending, PhaseRecord
from selfplay.runtime.driver.store import PolicyStore, staleness
from selfplay.runtime.workers.pool import Resize, RolloutPool, heal
from selfplay.types import Version


@dataclass(frozen=True)
class ControllerSettings:
    prompts_per_step: int
    k: int
    opponents_k: int
    max_staleness: int
    seed: int
    max_reissues: int = 3
    pad_id: int | None = None
    node_wait_s: float = 120.0  # how long replacements of dead actors may take to start


@dataclass
class Controller:
    plan: StepPlan
    settings: ControllerSettings
    rollout_pool: RolloutPool
    judges: list
    learners: object  # LearnerGroup
    prompt_source: object  # callable(count, start_id) -> Prompts
    make_judge: Callable[[], object] | None = None  # one new JudgeActor, to replace a dead one
    store: PolicyStore = field(default_factory=PolicyStore)
    records: list[PhaseRecord] = field(default_factory=list)
    queries: int = 0
    cursor: int = 0  # next prompt id
    next_step: int = 0  # first step `run` executes (> 0 after a resume)
    queue: deque = field(default_factory=deque)  # requested, not yet trained Pendings
    judges_replaced: int = 0
    stop: object = None  # the run's StopRequest: set by the first SIGTERM/SIGINT
    _issued: list = field(default_factory=list)  # learner refs of the step not yet read

    # The pool, as the tests and `selfplay scale` see it.
    @property
    def rollout(self) -> list:
        return self.rollout_pool.workers

    @property
    def starting(self) -> list:
        return self.rollout_pool.starting

    @property
    def control(self):
        return self.rollout_pool.control

    @property
    def resizes(self) -> list[Resize]:
        return self.rollout_pool.resizes

    def open_control(self, name: str) -> None:
        self.rollout_pool.open_control(name)

    def close_control(self) -> None:
        self.rollout_pool.close_control()

    # ------------------------------------------------------------- versions
    def init_versions(self) -> None:
        """Publish π_0 as (0, main) and π_ref as (0, ref); kept roles start at π_0."""
        for role in self.plan.roles_kept:
            if role != "main":
                self.learners.copy_role(role, "main")
        if "ref" not in self.plan.roles_kept:
            self.learners.copy_role("ref", "main")
        ref = self.learners.publish("main")
        v0 = Version(0, "main")
        # ref first: the publish index of π_0 must be next to π_1's, or a batch sampled
        # from π_0 would count as 2 versions old once π_1 is out.
        self.store.add(Version(0, "ref"), ref)  # same weights, its own name
        self.store.add(v0, ref)
        self.store.assign("main", v0)
        self.store.assign("ref", Version(0, "ref"))
        for role in self.plan.roles_kept:
            if role not in ("main", "ref"):
                self.store.assign(role, v0)

    def published(self, role: str = "main") -> tuple[Version, object]:
        """The version `role` plays now and the ref of its weights, not waited on. From
        `on_step(t)`: main@t+1, the policy step t trained; an evaluation issued on it
        (and read later) overlaps with the next phase instead of holding the driver."""
        v = self.store.roles[role]
        return v, self.store.refs[v]

    def _release(self) -> None:
        pinned = self.store.pinned_by([s for p in self.queue for s in p.samplers])
        self.rollout_pool.drop(self.store.release_unused(pinned))

    # ------------------------------------------------------------- requests
    def _seed(self, step: int, phase: int, chunk: int, draw: int) -> int:
        return int(
            np.random.SeedSequence([self.settings.seed, step, phase, chunk, draw]).generate_state(
                1
            )[0]
        )

    def request(self, step: int, phase_index: int) -> Pending:
        """Take the next prompts and the phase's current versions, and issue the batch."""
        phase = self.plan.phases[phase_index]
        samplers = [
            self.store.resolve(src) for src in (phase.sample, *(o for o, _ in phase.opponents))
        ]
        used = {
            r: self.store.roles[r]
            for src in (phase.sample, *(o for o, _ in phase.opponents))
            for r in source_roles(src)
        }
        pend = Pending(
            step, phase_index, self.cursor, used, samplers, [float(w) for _, w in phase.opponents]
        )
        self.cursor += self.settings.prompts_per_step
        self._issue(pend)
        return pend

    def _issue(self, pend: Pending) -> None:
        """Sample and judge `pend` on the current pool. Deterministic in (seed, step,
        phase, chunk): a reissue on a healed pool of the same size draws the same batch."""
        s, pool = self.settings, self.rollout_pool
        needed = self.store.pinned_by(pend.samplers)
        batch_prompts = self.prompt_source(s.prompts_per_step, pend.start)
        sampler, opps = pend.samplers[0], pend.samplers[1:]
        chunks = np.array_split(np.arange(len(batch_prompts)), len(pool.workers))
        chunks = [(c, rows) for c, rows in enumerate(chunks) if len(rows)]
        # Server j judges a contiguous run of chunks in one call, so the batch keeps
        # chunk order and the driver makes one call per server, not per chunk.
        server = np.array_split(np.arange(len(chunks)), len(self.judges))
        server_of = {int(i): j for j, ids in enumerate(server) for i in ids}
        args: list[list] = [[] for _ in self.judges]
        for i, (c, rows) in enumerate(chunks):
            w = pool.workers[c]
            load, drop = pool.prepare(w, needed, self.store.refs)
            # Trained-on responses may come from a hotter behaviour policy (target
            # regression is unbiased under any full-support behaviour); opponents may not.
            # One seed for every opponent source (common random numbers): each draw
            # is still exact, but OMWU's 2·ĝ(π_t) − ĝ(π_{t−1}) then carries the noise
            # of about one draw instead of five (π_t ≈ π_{t−1} sample alike).
            draws = [(sampler, s.k, self._seed(pend.step, pend.phase, c, 0), True)]
            seed = self._seed(pend.step, pend.phase, c, 1)
            draws += [(v, s.opponents_k, seed, False) for v in opps]
            # One call per worker: drop, load and every draw.
            refs = w.sample.options(num_returns=len(draws)).remote(
                batch_prompts.take(rows), draws, load, drop
            )
            args[server_of[i]] += refs if len(draws) > 1 else [refs]
        judged = [
            j.judge_chunks.remote(pend.weights, *a)
            for j, a in zip(self.judges, args, strict=True)
            if a
        ]
        host = next(j for j, a in zip(self.judges, args, strict=True) if a)
        pend.batch_ref, pend.info_ref, pend.rows_ref = host.assemble.options(num_returns=3).remote(
            s.pad_id, *judged
        )
        pend.workers = len(pool.workers)

    def _finish_step(self, recs: list[PhaseRecord]) -> None:
        """Wait for the step's learner calls (raising a learner's error) and fill in
        the records' metrics and seconds."""
        waits.get(self._issued)  # every rank's PhaseMetrics and copy_role (small objects)
        self._issued = []
        end = time.perf_counter()
        metrics = waits.get([r.metrics for r in recs])  # rank 0's, already here
        starts = [r.seconds for r in recs] + [end]
        for i, r in enumerate(recs):
            r.metrics, r.seconds = metrics[i], starts[i + 1] - starts[i]

    def collect(self, pend: Pending):
        """The batch's BatchInfo; a batch lost with a dead worker or judge is reissued."""
        while True:
            try:
                info = waits.get(pend.info_ref)
                if info.rows == 0:
                    raise RunError(
                        f"every response of step {pend.step} phase {pend.phase} was "
                        f"masked (judge failures); nothing to train on"
                    )
                return info
            except RunError as e:  # judge failures past their retries: one line, not a traceback
                raise RunError(str(getattr(e, "cause", None) or e)) from None
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.RayTaskError,
                ray.exceptions.ObjectLostError,
            ) as e:
                _seen(pend.batch_ref, pend.rows_ref)
                # A batch sampled from a version whose publish failed fails too (before
                # it, so that call has already failed): the learner's error is the one.
                if self._issued:
                    done = ray.wait(self._issued, num_returns=len(self._issued), timeout=0)[0]
                    ray.get(done, timeout=60)
                if not isinstance(e, ray.exceptions.RayActorError | ray.exceptions.ObjectLostError):
                    raise
                if pend.reissues >= self.settings.max_reissues:
                    raise RunError(
                        f"batch of step {pend.step} phase {pend.phase} lost "
                        f"{pend.reissues + 1} times (a rollout worker or preference "
                        f"server died: {type(e).__name__}); giving up"
                    ) from None
            # ...and waits (bounded by node_wait_s) for the replacements to be up
            self.judges_replaced += heal(
                self.rollout_pool,
                self.judges,
                self.make_judge,
                self.settings.node_wait_s,
                self.stop,
            )
            pend.reissues += 1  # even with nothing replaced: the reissue runs on live actors
            self._issue(pend)

    # ------------------------------------------------------------- training
    def _predicted_staleness(self, nxt: tuple[int, int], cur: tuple[int, int]) -> int:
        """Staleness the batch for `nxt` would have if requested now, while `cur` trains."""
        step, phase_index = cur
        phase = self.plan.phases[phase_index]
        last = phase_index == len(self.plan.phases) - 1
        future = self.store.future_roles(phase.output, self.plan.refresh if last else (), step)
        nphase = self.plan.phases[nxt[1]]
        roles = {
            r
            for src in (nphase.sample, *(o for o, _ in nphase.opponents))
            for r in source_roles(src)
        }
        if not roles <= self.store.roles.keys():
            return 1 << 30  # e.g. the first `lead`: it does not exist until this phase publishes it
        used = {r: self.store.roles[r] for r in roles}
        return staleness(used, future, self.store.index)

    def train(self, pend: Pending) -> PhaseRecord:
        s, phase = self.settings, self.plan.phases[pend.phase]
        t0 = time.perf_counter()
        now = self.store.future_roles(None, (), pend.step)
        lag = staleness(pend.used, now, self.store.index)
        if lag > s.max_staleness:  # the one place the bound is enforced
            raise RuntimeError(
                f"batch for step {pend.step} phase {pend.phase} is {lag} versions "
                f"stale (max_staleness={s.max_staleness})"
            )
        last = pend.phase == len(self.plan.phases) - 1
        due = [rf for rf in self.plan.refresh if last and rf.due(pend.step)]
        before = dict(self.store.roles)
        issue = self._issued.extend  # learner calls are issued here, read in `_finish_step`
        for rf in due:
            if rf.when == "before":  # the learner's copy of the pre-update policy
                issue(self.learners.issue("copy_role", rf.dst, rf.src))
        anchor = self.store.roles[phase.anchor]
        info = self.collect(pend)  # a lost batch is reissued before the learner waits on it
        metrics = self.learners.issue_phase(phase, pend.batch_ref)
        issue(metrics)
        out = Version(pend.step + 1 if phase.output == "main" else pend.step, phase.output)
        self.store.add(out, self.learners.publish(phase.output))
        self.store.assign(phase.output, out)
        for rf in due:
            if rf.when == "after":
                issue(self.learners.issue("copy_role", rf.dst, rf.src))
        if last:
            for role, v in refreshed(
                self.store.roles, before, self.plan.refresh, pend.step
            ).items():
                self.store.assign(role, v)
        self.queries += info.queries
        rec = PhaseRecord(
            pend.step,
            pend.phase,
            out,
            lag,
            info.rows,
            info.queries,
            info.prompt_ids,
            [pend.samplers[0]],
            pend.samplers[1:],
            anchor,
            metrics[0],
            t0,  # a start time until `_finish_step`
            info,
            workers=pend.workers,
            reissues=pend.reissues,
            rows_ref=pend.rows_ref,
        )
        self.records.append(rec)
        return rec

    def run(self, steps: int, on_step=None) -> None:
        """Run steps `next_step .. steps-1` of the plan; `on_step(step, records)` after each
        one, at a step boundary where `queue` holds at most the prefetched next batch."""
        n = len(self.plan.phases)
        tasks = [(t, p) for t in range(self.next_step, steps) for p in range(n)]
        step_records: list[PhaseRecord] = []
        for i, task in enumerate(tasks):
            self.rollout_pool.resize(*task, self.queue)
            if not self.queue:
                self.queue.append(self.request(*task))
            pend = self.queue[0]
            if (pend.step, pend.phase) != task:
                raise RuntimeError(f"queued batch is for {(pend.step, pend.phase)}, not {task}")
            if (
                i + 1 < len(tasks)
                and self._predicted_staleness(tasks[i + 1], task) <= self.settings.max_staleness
            ):
                self.queue.append(self.request(*tasks[i + 1]))
            step_records.append(self.train(pend))
            self.queue.popleft()  # only once trained: a checkpoint never misses a batch
            self._release()
            self.rollout_pool.reap(self.queue)
            if task[1] == n - 1:
                self._finish_step(step_records)
                self.next_step = task[0] + 1
                if on_step is not None:
                    on_step(task[0], step_records)
                step_records = []


def _seen(*refs) -> None:
    """Read a lost batch's other results (failed with it), so Ray does not report them
    as unhandled errors when they are freed."""
    for r in refs:
        try:
            ray.get(r, timeout=10)
        except Exception:  # noqa: BLE001 - the failure is the one `collect` handles
            pass
