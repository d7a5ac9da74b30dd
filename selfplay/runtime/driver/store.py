"""The policy store: versioned weights as object refs, and the role table.

- A published version `(step, role)` maps to one object ref of `FlatWeights`
  (put by learner rank 0, so the weights never pass through the driver).
- The role table says which version currently plays each role: `prev` and
  `magnet` point at old `main` versions, they are not republished.
- Every publish gets a global index; staleness is measured in these indices
  ("how many versions were published since the one that sampled this").
- A version is released once no role points at it and no queued batch pins it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfplay.algos.plan import Mixture, Refresh, Role, Source, refreshed
from selfplay.types import MixtureVersion, SamplerVersion, Version


@dataclass
class PolicyStore:
    refs: dict[Version, object] = field(default_factory=dict)
    index: dict[Version, int] = field(default_factory=dict)
    roles: dict[str, Version] = field(default_factory=dict)
    published: int = 0

    def add(self, version: Version, ref: object) -> None:
        if version in self.refs:
            raise ValueError(f"version {version} was already published")
        self.published += 1
        self.refs[version] = ref
        self.index[version] = self.published

    def assign(self, role: Role, version: Version) -> None:
        if version not in self.refs:
            raise KeyError(f"cannot assign {role} to unpublished version {version}")
        self.roles[role] = version

    def resolve(self, source: Source, roles: dict[str, Version] | None = None) -> SamplerVersion:
        r = self.roles if roles is None else roles
        if isinstance(source, Mixture):
            return MixtureVersion(r[source.a], r[source.b], float(source.lam))
        return r[source]

    def future_roles(
        self, output: Role | None, refresh: tuple[Refresh, ...], step: int
    ) -> dict[str, tuple[Version | None, int]]:
        """Role → (version, index) after a phase publishing `output` (index published+1),
        followed by the step-end `refresh` rules due at `step` (when given)."""
        cur = {r: (v, self.index[v]) for r, v in self.roles.items()}
        before = dict(cur)
        if output is not None:
            cur[output] = (None, self.published + 1)
        return refreshed(cur, before, refresh, step)

    def pinned_by(self, versions: list[SamplerVersion]) -> set[Version]:
        out: set[Version] = set()
        for v in versions:
            out.update(v.parts)
        return out

    def release_unused(self, pinned: set[Version]) -> list[Version]:
        """Drop versions no role and no pinned batch needs; returns what was dropped."""
        live = set(self.roles.values()) | pinned
        dead = [v for v in self.refs if v not in live]
        for v in dead:
            del self.refs[v]
        return dead


def staleness(
    used: dict[str, Version],
    future: dict[str, tuple[Version | None, int]],
    index: dict[Version, int],
) -> int:
    """Max over sampler roles of (index the role will have) − (index of the version used)."""
    lag = 0
    for role, v in used.items():
        lag = max(lag, future[role][1] - index[v])
    return lag
