"""Step plans: what each algorithm asks of the runtime, as data.

Every update `selfplay` implements has the closed form (docs/algorithms.md)

    log π_out(y) = a·log π_anchor(y) + b·log μ(y) + c·ĝ(y) + const,
    ĝ(y)         = Σ_k w_k · P(y ≻ opponent_k),

so one `Phase` names the roles that fill those slots and the three
coefficients. A `StepPlan` is the ordered phases of one iteration plus the
role bookkeeping between iterations (OMWU keeps π_{t−1}, MPO refreshes its
magnet). The tabular runner (`selfplay.algos.tabular`), the LLM losses
(`selfplay.algos.losses`) and the Ray controller all execute the same plan,
which is what makes "the LLM loss minimiser equals the tabular update" a
testable statement rather than a hope.

Coefficients may be Python floats or torch tensors broadcastable to `[B, 1]`
(the batched tabular sweep runs many hyperparameters at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

import torch

#: A coefficient or hyperparameter: a Python number, or a tensor broadcastable to [B, 1].
Num = Union[float, int, torch.Tensor]
Role = Literal["main", "lead", "prev", "magnet", "ref"]
ROLES: tuple[Role, ...] = ("main", "lead", "prev", "magnet", "ref")


@dataclass(frozen=True)
class Mixture:
    """Geometric mixture π ∝ π_a^{1−λ} · π_b^{λ} (Nash-MD's π^μ_t)."""

    a: Role
    b: Role
    lam: Num


Source = Union[Role, Mixture]


@dataclass(frozen=True)
class Phase:
    """One phase: sample, judge against opponents, regress onto the target.

    sample:    who samples the trained-on responses (any full-support policy
               works for target regression; the plan names the paper's choice).
    opponents: ((source, weight), ...) with ĝ(y) = Σ w·P(y ≻ source).
    anchor:    role whose log-probs fill the `a` slot; the learner also starts
               this phase from the anchor's weights (EGPO restores θ_t).
    mu:        role in the `b` slot (`ref` or `magnet`), or None when b = 0.
    output:    role the result is published as (`lead` or `main`).
    """

    sample: Source
    opponents: tuple[tuple[Source, Num], ...]
    anchor: Role
    mu: Role | None
    a: Num
    b: Num
    c: Num
    output: Role


@dataclass(frozen=True)
class Refresh:
    """After a step, `dst` becomes a copy of `src` (taken before or after the update).

    when="before": dst gets the pre-update policy (OMWU's π_{t−1}).
    when="after":  dst gets the post-update policy (MPO's magnet refresh).
    every:         apply on steps t with (t+1) % every == 0 (1 = every step);
                   an int, or a tensor [B, 1] of per-game periods (tabular).
    tol:           optional adaptive refresh (MPO's magnet): also refresh, per
                   game, as soon as the regularized gap of src in the game
                   regularized by `tol_beta` towards dst has fallen to tol ×
                   its value right after the previous refresh (the inexact
                   proximal-point criterion). Checked on the payoff of src that
                   the next step queries anyway; the tabular runner implements
                   it, a runtime that cannot estimate the gap may use `every`.
    """

    dst: Role
    src: Role
    when: Literal["before", "after"]
    every: Num = 1
    tol: Num | None = None
    tol_beta: Num | None = None

    def due(self, step: int):
        """Whether the periodic refresh fires at the end of step `step`: the one place
        the rule (step + 1) % every == 0 is written (a bool tensor for a tensor `every`)."""
        return (step + 1) % self.every == 0


def refreshed(roles: dict, before: dict, refresh: tuple[Refresh, ...], step: int) -> dict:
    """The role table after step `step`'s periodic refreshes: `roles` as the step left
    it, `before` as it started it. Values may be anything (versions, tensors)."""
    out = dict(roles)
    for rf in refresh:
        if rf.due(step):
            out[rf.dst] = (before if rf.when == "before" else out)[rf.src]
    return out


@dataclass(frozen=True)
class StepPlan:
    phases: tuple[Phase, ...]
    refresh: tuple[Refresh, ...] = field(default_factory=tuple)

    @property
    def roles_kept(self) -> tuple[Role, ...]:
        """Roles that must survive between steps (and go in a checkpoint)."""
        kept: list[Role] = ["main"]
        for ph in self.phases:
            for r in (
                ph.anchor,
                ph.mu,
                *source_roles(ph.sample),
                *(r for s, _ in ph.opponents for r in source_roles(s)),
            ):
                if r is not None and r not in kept and r != "lead":
                    kept.append(r)
        for rf in self.refresh:
            if rf.dst not in kept:
                kept.append(rf.dst)
        return tuple(kept)


def source_roles(s: Source) -> tuple[Role, ...]:
    """The stored roles a source needs (a mixture needs both ends)."""
    return (s.a, s.b) if isinstance(s, Mixture) else (s,)
