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

Elastic rollout pool (`selfplay.runtime.control`): at each phase boundary,
before any batch is requested, the pool is resized to the run's `RunControl`
target. Which versions a worker holds is keyed by its actor handle, not its
position, so the pool can grow, shrink or have a worker replaced.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray

from selfplay.algos.plan import StepPlan, source_roles
from selfplay.runtime.actors import assemble
from selfplay.runtime.control import Autoscaler, request_workers, start_control
from selfplay.runtime.store import PolicyStore, staleness
from selfplay.runtime.types import Prompts, SamplerVersion, Version


@dataclass(frozen=True)
class ControllerSettings:
    prompts_per_step: int
    k: int
    opponents_k: int
    max_new_tokens: int
    temperature: float
    explore_temperature: float
    max_staleness: int
    seed: int
    loss_form: str = "regression"
    normalize_logprobs: bool = False
    updates_per_phase: int = 8
    micro_batch: int = 64
    allowed_token_ids: list[int] | None = None
    pad_id: int | None = None


@dataclass
class Pending:
    """A requested batch: refs only, plus the role → version map it sampled from."""

    step: int
    phase: int
    batch_ref: object
    info_ref: object
    used: dict[str, Version]
    samplers: list[SamplerVersion]
    workers: int = 0  # size of the rollout pool that sampled it


@dataclass
class PhaseRecord:
    step: int
    phase: int
    output: Version
    staleness: int
    rows: int
    queries: int
    prompt_ids: np.ndarray
    sampler_versions: list[SamplerVersion]
    opponent_versions: list[SamplerVersion]
    anchor: Version
    metrics: object
    seconds: float
    batch: object = None  # BatchInfo: generation/judging seconds and token counts
    workers: int = 0  # size of the rollout pool that sampled this batch


@dataclass(frozen=True)
class Resize:
    """The active rollout pool went from `old` to `new` workers before step `step` ran on."""

    step: int
    old: int
    new: int


@dataclass
class Controller:
    plan: StepPlan
    settings: ControllerSettings
    rollout: list
    judges: list
    learners: object  # LearnerGroup
    prompt_source: object  # callable(count, start_id) -> (ids, texts)
    store: PolicyStore = field(default_factory=PolicyStore)
    records: list[PhaseRecord] = field(default_factory=list)
    queries: int = 0
    cursor: int = 0
    make_worker: Callable[[], object] | None = None  # one new RolloutActor (run.py)
    autoscale: Autoscaler | None = None
    join_wait_s: float = 0.0  # how long a safe point waits for new workers to start
    control: object = None  # this run's RunControl actor, once `open_control` ran
    resizes: list[Resize] = field(default_factory=list)
    _loaded: dict[object, set] = field(default_factory=dict)  # actor handle -> versions
    _starting: list[tuple[object, object]] = field(default_factory=list)  # (actor, ready ref)
    _retiring: list[tuple[object, list]] = field(default_factory=list)  # (actor, queued batches)

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

    def _ensure_loaded(self, worker_idx: int, versions: set[Version]) -> None:
        w = self.rollout[worker_idx]
        have = self._loaded.setdefault(w, set())
        for v in sorted(versions - have):
            # Boxed ref: the worker pulls the weights, the driver never does.
            w.load.remote(v, [self.store.refs[v]])
            have.add(v)

    def _release(self, queue: deque) -> None:
        pinned = self.store.pinned_by([s for p in queue for s in p.samplers])
        for v in self.store.release_unused(pinned):
            for w, have in self._loaded.items():
                if v in have:
                    w.drop.remote(v)
                    have.discard(v)

    # ------------------------------------------------------------- elastic pool
    def open_control(self, name: str) -> None:
        """Start this run's named `RunControl`, so `selfplay scale NAME` reaches it."""
        a = self.autoscale
        self.control = start_control(name, len(self.rollout),
                                     (a.min_workers, a.max_workers) if a else None)
        if a is not None:
            request_workers(len(self.rollout), a.bundle)

    def close_control(self) -> None:
        """End of run: stop the control actor, workers still starting, and the resource ask."""
        for w, _ in self._starting:
            ray.kill(w)
        self._starting.clear()
        if self.control is not None:
            ray.kill(self.control)
            self.control = None
        if self.autoscale is not None:
            request_workers(0, self.autoscale.bundle)

    @property
    def starting(self) -> list:
        """Workers started for the pool that have not joined it yet."""
        return [w for w, _ in self._starting]

    def _queue_depth(self, queue: deque) -> int:
        """Queued batches already generated and judged, waiting for the learner."""
        refs = [p.info_ref for p in queue]
        return len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else 0

    def _resize(self, step: int, phase: int, queue: deque) -> None:
        """Safe point (no request in flight): move the pool towards the control's target."""
        if self.control is None:
            return
        want = ray.get(self.control.target.remote())
        if self.autoscale is not None and phase == 0 and not self._starting:
            new = self.autoscale.decide(want, self._queue_depth(queue))
            if new != want:
                want = ray.get(self.control.set_target.remote(new))
                request_workers(new, self.autoscale.bundle)
        old = len(self.rollout)
        have = old + len(self._starting)
        for _ in range(want - have):
            w = self.make_worker()
            self._starting.append((w, w.ready.remote()))
        for _ in range(have - want):
            if self._starting:  # never served, so no batch can depend on it
                ray.kill(self._starting.pop()[0])
            else:
                # Out of the pool now; killed once every batch queued now is trained.
                self._retiring.append((self.rollout.pop(), list(queue)))
        self._admit()
        if len(self.rollout) != old:
            self.resizes.append(Resize(step, old, len(self.rollout)))
        self.control.report.remote(len(self.rollout), len(self._starting), len(self._retiring))

    def _admit(self) -> None:
        """Started workers join the pool; waits at most `join_wait_s` for those still starting."""
        if not self._starting:
            return
        refs = [r for _, r in self._starting]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=self.join_wait_s)[0])
        for w, r in self._starting:
            if r in ready:
                ray.get(r)  # a worker whose backend failed to build fails the run here
                self.rollout.append(w)  # loads what it needs at its first request
        self._starting = [(w, r) for w, r in self._starting if r not in ready]

    def _reap(self, queue: deque) -> None:
        """Kill retired workers once no queued batch can still be waiting on their samples."""
        keep = []
        for w, pends in self._retiring:
            if any(p is q for p in pends for q in queue):
                keep.append((w, pends))
            else:
                ray.kill(w)
                self._loaded.pop(w, None)
        self._retiring = keep

    # ------------------------------------------------------------- requests
    def _seed(self, step: int, phase: int, chunk: int, draw: int) -> int:
        return int(np.random.SeedSequence([self.settings.seed, step, phase, chunk, draw])
                   .generate_state(1)[0])

    def request(self, step: int, pi: int) -> Pending:
        s, phase = self.settings, self.plan.phases[pi]
        sampler = self.store.resolve(phase.sample)
        opps = [self.store.resolve(src) for src, _ in phase.opponents]
        weights = [float(w) for _, w in phase.opponents]
        used = {r: self.store.roles[r] for src in (phase.sample, *(o for o, _ in phase.opponents))
                for r in source_roles(src)}
        needed = self.store.pinned_by([sampler, *opps])
        ids, texts = self.prompt_source(s.prompts_per_step, self.cursor)
        self.cursor += s.prompts_per_step
        judged = []
        for c, rows in enumerate(np.array_split(np.arange(len(texts)), len(self.rollout))):
            if len(rows) == 0:
                continue
            self._ensure_loaded(c, needed)
            w = self.rollout[c]
            prompts = Prompts(ids=ids[rows], texts=[texts[i] for i in rows])
            gen = dict(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                       allowed_token_ids=s.allowed_token_ids)
            # Trained-on responses may come from a hotter behaviour policy (target
            # regression is unbiased under any full-support behaviour); opponents may not.
            smp = w.generate.remote(prompts, sampler, s.k, seed=self._seed(step, pi, c, 0),
                                    **{**gen, "temperature": s.explore_temperature})
            # One seed for every opponent source (common random numbers): each draw
            # is still exact, but OMWU's 2·ĝ(π_t) − ĝ(π_{t−1}) then carries the noise
            # of about one draw instead of five (π_t ≈ π_{t−1} sample alike).
            opp_refs = [w.generate.remote(prompts, v, s.opponents_k,
                                          seed=self._seed(step, pi, c, 1), **gen)
                        for v in opps]
            judge = self.judges[c % len(self.judges)]
            judged.append(judge.judge_chunk.remote(smp, weights, *opp_refs))
        batch_ref, info_ref = assemble.options(num_returns=2).remote(s.pad_id, *judged)
        return Pending(step, pi, batch_ref, info_ref, used, [sampler, *opps], len(self.rollout))

    # ------------------------------------------------------------- training
    def _predicted_staleness(self, nxt: tuple[int, int], cur: tuple[int, int]) -> int:
        """Staleness the batch for `nxt` would have if requested now, while `cur` trains."""
        step, pi = cur
        phase = self.plan.phases[pi]
        last = pi == len(self.plan.phases) - 1
        future = self.store.future_roles(phase.output, self.plan.refresh if last else (), step)
        nphase = self.plan.phases[nxt[1]]
        roles = {r for src in (nphase.sample, *(o for o, _ in nphase.opponents))
                 for r in source_roles(src)}
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
            raise RuntimeError(f"batch for step {pend.step} phase {pend.phase} is {lag} versions "
                               f"stale (max_staleness={s.max_staleness})")
        last = pend.phase == len(self.plan.phases) - 1
        due = [rf for rf in self.plan.refresh if last and (pend.step + 1) % int(rf.every) == 0]
        pre = {rf.dst: self.store.roles[rf.src] for rf in due if rf.when == "before"}
        for rf in due:
            if rf.when == "before":
                self.learners.copy_role(rf.dst, rf.src)
        anchor = self.store.roles[phase.anchor]
        self.learners.start_phase(phase)
        metrics = self.learners.train_phase(
            phase, pend.batch_ref, form=s.loss_form, normalize_logprobs=s.normalize_logprobs,
            updates=s.updates_per_phase, micro_batch=s.micro_batch)
        out = Version(pend.step + 1 if phase.output == "main" else pend.step, phase.output)
        self.store.add(out, self.learners.publish(phase.output))
        self.store.assign(phase.output, out)
        for rf in due:
            if rf.when == "before":
                self.store.assign(rf.dst, pre[rf.dst])
            else:
                self.learners.copy_role(rf.dst, rf.src)
                self.store.assign(rf.dst, self.store.roles[rf.src])
        info = ray.get(pend.info_ref)
        self.queries += info.queries
        rec = PhaseRecord(pend.step, pend.phase, out, lag, info.rows, info.queries,
                          info.prompt_ids, [pend.samplers[0]], pend.samplers[1:], anchor,
                          metrics, time.perf_counter() - t0, info, workers=pend.workers)
        self.records.append(rec)
        return rec

    def run(self, steps: int, on_step=None) -> None:
        """Run `steps` iterations of the plan; `on_step(step, records)` after each one."""
        tasks = [(t, p) for t in range(steps) for p in range(len(self.plan.phases))]
        queue: deque[Pending] = deque()
        step_records: list[PhaseRecord] = []
        for i, task in enumerate(tasks):
            self._resize(*task, queue)
            if not queue:
                queue.append(self.request(*task))
            pend = queue.popleft()
            if i + 1 < len(tasks) and self._predicted_staleness(tasks[i + 1], task) \
                    <= self.settings.max_staleness:
                queue.append(self.request(*tasks[i + 1]))
            step_records.append(self.train(pend))
            self._release(queue)
            self._reap(queue)
            if task[1] == len(self.plan.phases) - 1:
                if on_step is not None:
                    on_step(task[0], step_records)
                step_records = []
