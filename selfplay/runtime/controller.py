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
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import ray

from selfplay.algos.plan import StepPlan, source_roles
from selfplay.runtime.actors import assemble
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
    _loaded: dict[int, set] = field(default_factory=dict)

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
        self.store.add(v0, ref)
        self.store.add(Version(0, "ref"), ref)  # same weights, its own name
        self.store.assign("main", v0)
        self.store.assign("ref", Version(0, "ref"))
        for role in self.plan.roles_kept:
            if role not in ("main", "ref"):
                self.store.assign(role, v0)

    def _ensure_loaded(self, worker_idx: int, versions: set[Version]) -> None:
        have = self._loaded.setdefault(worker_idx, set())
        for v in sorted(versions - have):
            # Boxed ref: the worker pulls the weights, the driver never does.
            self.rollout[worker_idx].load.remote(v, [self.store.refs[v]])
            have.add(v)

    def _release(self, queue: deque) -> None:
        pinned = self.store.pinned_by([s for p in queue for s in p.samplers])
        for v in self.store.release_unused(pinned):
            for i, have in self._loaded.items():
                if v in have:
                    self.rollout[i].drop.remote(v)
                    have.discard(v)

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
            opp_refs = [w.generate.remote(prompts, v, s.opponents_k,
                                          seed=self._seed(step, pi, c, 1 + j), **gen)
                        for j, v in enumerate(opps)]
            judge = self.judges[c % len(self.judges)]
            judged.append(judge.judge_chunk.remote(smp, weights, *opp_refs))
        batch_ref, info_ref = assemble.options(num_returns=2).remote(s.pad_id, *judged)
        return Pending(step, pi, batch_ref, info_ref, used, [sampler, *opps])

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
                          metrics, time.perf_counter() - t0, info)
        self.records.append(rec)
        return rec

    def run(self, steps: int, on_step=None) -> None:
        """Run `steps` iterations of the plan; `on_step(step, records)` after each one."""
        tasks = [(t, p) for t in range(steps) for p in range(len(self.plan.phases))]
        queue: deque[Pending] = deque()
        step_records: list[PhaseRecord] = []
        for i, task in enumerate(tasks):
            if not queue:
                queue.append(self.request(*task))
            pend = queue.popleft()
            if i + 1 < len(tasks) and self._predicted_staleness(tasks[i + 1], task) \
                    <= self.settings.max_staleness:
                queue.append(self.request(*tasks[i + 1]))
            step_records.append(self.train(pend))
            self._release(queue)
            if task[1] == len(self.plan.phases) - 1:
                if on_step is not None:
                    on_step(task[0], step_records)
                step_records = []
