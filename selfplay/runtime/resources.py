"""What a run needs from the Ray cluster, checked before any actor exists.

`run_needs` lists the actors a run starts and the bundle each asks Ray for;
`check_resources` compares them with what the cluster has (an actor Ray can never
place waits forever, silently) and names the config key to lower; `scale_shortfall`
does the same for `selfplay scale`; `precheck_in_process` refuses, before Ray starts,
an in-process cluster too small for the run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from selfplay.config import Config
from selfplay.errors import InputError, RunError

# How long a run on an existing cluster (runtime.address) waits for resources it
# lacks, which an autoscaler may still add; $SELFPLAY_RESOURCE_WAIT_S overrides it.
RESOURCE_WAIT_S = 60.0


@dataclass(frozen=True)
class Need:
    """`count` actors of one kind (`what`, e.g. "rollout worker"), each asking Ray for
    `bundle` (resource name -> amount); `keys` are the config keys that set them."""

    what: str
    count: int
    bundle: dict[str, float]
    keys: dict[str, str]  # resource name -> the config key to lower (CPU: the count)


def _bundle(cpus: float, gpus: float = 0.0, extra: dict | None = None) -> dict[str, float]:
    b = {"CPU": float(cpus), "GPU": float(gpus), **{k: float(v) for k, v in (extra or {}).items()}}
    return {k: v for k, v in b.items() if v > 0}


def run_needs(cfg: Config, workers: int | None = None) -> list[Need]:
    """What a run's actors ask Ray for: learner shards, rollout workers (`workers`, else
    `rollout.workers`), preference servers. The run's control actor takes nothing."""
    lc, rc, jc = cfg.learner, cfg.rollout, cfg.judge

    def keys(section: str, count: str, extra: dict) -> dict[str, str]:
        k = {"CPU": f"{section}.{count}", "GPU": f"{section}.num_gpus"}
        return {**k, **{r: f"{section}.resources.{r}" for r in extra}}

    return [
        Need(
            "learner shard",
            lc.shards,
            _bundle(lc.num_cpus, lc.num_gpus, lc.resources),
            keys("learner", "shards", lc.resources),
        ),
        Need(
            "rollout worker",
            rc.workers if workers is None else workers,
            _bundle(rc.num_cpus, rc.num_gpus, rc.resources),
            keys("rollout", "workers", rc.resources),
        ),
        Need("judge server", jc.servers, _bundle(jc.num_cpus), keys("judge", "servers", {})),
    ]


def _num(x: float) -> str:
    return f"{x:g}"


def _unit(name: str, amount: float) -> str:
    if name in ("CPU", "GPU"):
        return f"{_num(amount)} {name}" + ("s" if amount != 1 else "")
    return f"{_num(amount)} of resource {name!r}"


def shortfall(
    needs: list[Need],
    total: dict[str, float],
    nodes: list[dict[str, float]],
    remedies: dict[str, str] | None = None,
    *,
    how: bool = True,
) -> str | None:
    """Why a cluster with `total` resources (`nodes`: each alive node's) can never place
    `needs`, as one line, or None when it can. An actor fits on one node or nowhere.
    `remedies`: resource name (or "*": any) -> a fix besides lowering the config keys;
    `how` False: the reason alone, without the fix."""
    eps = 1e-6
    remedies = remedies or {}

    def fix(r: str, keys) -> str:
        if not how:
            return ""
        *most, last = dict.fromkeys(keys)
        text = f"lower {', '.join(most)} or {last}" if most else f"lower {last}"
        text += " (or their num_cpus)" if r == "CPU" else ""
        more = remedies.get(r) or remedies.get("*")
        return text + (f", or {more}" if more else "")

    for r in dict.fromkeys(r for n in needs for r in n.bundle):  # the cluster as a whole
        parts = [n for n in needs if n.count and n.bundle.get(r, 0.0) > 0]
        want = sum(n.count * n.bundle[r] for n in parts)
        have = total.get(r, 0.0)
        if want > have + eps:
            detail = ", ".join(
                f"{n.count} {n.what}{'s' if n.count != 1 else ''} × {_num(n.bundle[r])}"
                for n in parts
            )
            return (
                f"the run needs {_unit(r, want)} ({detail}) but the cluster has "
                f"{_num(have) if have else 'none'}" + _then(fix(r, (n.keys[r] for n in parts)))
            )
    for n in needs:  # one actor on one node
        if not n.count or any(
            all(node.get(r, 0.0) + eps >= a for r, a in n.bundle.items()) for node in nodes
        ):
            continue
        most = {r: max((x.get(r, 0.0) for x in nodes), default=0.0) for r in n.bundle}
        short = [r for r, a in n.bundle.items() if most[r] + eps < a] or list(n.bundle)
        want = ", ".join(_unit(r, a) for r, a in n.bundle.items())
        return (
            f"a {n.what} needs {want} on one node, but no node has that (the most on one "
            f"node: {', '.join(_unit(r, most[r]) for r in short)})"
            + _then(fix(short[0], (n.keys[r] for r in short)))
        )
    return None


def _then(fix: str) -> str:
    return f"; {fix}" if fix else ""


def with_workers(needs: list[Need], workers: int) -> list[Need]:
    """`needs` with the rollout workers' count set to `workers`."""
    return [
        Need(n.what, workers, n.bundle, n.keys) if n.what == "rollout worker" else n for n in needs
    ]


def scale_shortfall(needs: list[Need], workers: int, view=None) -> str | None:
    """Why the cluster cannot place a run's actors (`needs`, from `run_needs`) with
    `workers` rollout workers, with the most that fit (None: they fit)."""
    total, nodes = (view or _cluster_view)()
    why = shortfall(with_workers(needs, workers), total, nodes, how=False)
    if why is None:
        return None
    lo, hi = 0, workers  # the most that fit: shortfall grows with the count
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if shortfall(with_workers(needs, mid), total, nodes) is None:
            lo = mid
        else:
            hi = mid - 1
    return f"{why}; at most {lo} rollout worker{'s' if lo != 1 else ''} fit"


def _cluster_view() -> tuple[dict[str, float], list[dict[str, float]]]:
    import ray

    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    return dict(ray.cluster_resources()), nodes


def check_resources(
    needs: list[Need],
    *,
    wait_s: float = 0.0,
    remedies: dict[str, str] | None = None,
    view: Callable[[], tuple[dict, list]] = _cluster_view,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    ask: Callable[[list[dict]], None] | None = None,
    poll_s: float = 1.0,
) -> None:
    """Refuse, in one line, a run whose actors the cluster can never place.

    With `wait_s` (a cluster that may grow: an autoscaler adds nodes), ask Ray's
    autoscaler for the run's bundles, say so once, and wait up to `wait_s` seconds
    for the cluster to have them; then `RunError`. Without it, `InputError`.
    `view`, `say`, `ask` (Ray's `request_resources(bundles=...)`) are seams for tests."""
    why = shortfall(needs, *view(), remedies)
    if why is None:
        return
    if wait_s <= 0:
        raise InputError(why)
    if ask is None:
        from ray.autoscaler.sdk import request_resources

        def ask(bundles: list[dict]) -> None:
            request_resources(bundles=bundles)

    bundles = [dict(n.bundle) for n in needs for _ in range(n.count) if n.bundle]
    say(f"waiting up to {_num(wait_s)} s for the cluster to grow: {why}")
    ask(bundles)  # what an autoscaler needs to know to add nodes
    deadline = time.monotonic() + wait_s
    try:
        while why is not None:
            if time.monotonic() >= deadline:
                raise RunError(f"{why} (waited {_num(wait_s)} s for the cluster to grow)")
            time.sleep(poll_s)
            why = shortfall(needs, *view(), remedies)
    finally:
        ask([])  # the actors themselves hold the nodes from here on


IN_PROCESS_REMEDIES = {"CPU": "raise runtime.num_cpus"}


def _local_gpus() -> float | None:
    """The GPUs Ray's in-process cluster will detect (as `ray.init` does), None if unknown."""
    try:
        from ray._private.resource_and_label_spec import ResourceAndLabelSpec

        mgr, n = ResourceAndLabelSpec._get_current_node_accelerator(None, {})
        return float(n) if mgr is not None and mgr.get_resource_name() == "GPU" else 0.0
    except Exception:  # a private API of Ray: `build`'s check covers it then
        return None


def precheck_in_process(cfg: Config) -> None:
    """The in-process cluster will have `runtime.num_cpus` CPUs, this machine's GPUs and
    no custom resources: refuse a run that cannot fit before Ray starts (seconds). A
    resumed run's own pool size is left to `build`'s `check_run_resources`."""
    r = cfg.rollout
    workers = r.workers
    if r.autoscale is not None:
        workers = max(r.autoscale.min_workers, min(r.autoscale.max_workers, workers))
    needs = run_needs(cfg, workers)
    have = {"CPU": float(cfg.runtime.num_cpus)}
    if any("GPU" in n.bundle for n in needs):
        gpus = _local_gpus()
        if gpus is None:
            needs = [
                Need(n.what, n.count, {k: a for k, a in n.bundle.items() if k != "GPU"}, n.keys)
                for n in needs
            ]
        elif gpus:
            have["GPU"] = gpus
    why = shortfall(needs, have, [have], IN_PROCESS_REMEDIES)
    if why is not None:
        raise InputError(why)


def check_run_resources(cfg: Config, workers: int) -> None:
    """`check_resources` for run `cfg` with `workers` rollout workers, as `build` starts it:
    the in-process cluster is what it is; an existing one may grow for a while."""
    if cfg.runtime.address:
        wait = float(os.environ.get("SELFPLAY_RESOURCE_WAIT_S", RESOURCE_WAIT_S))
        check_resources(
            run_needs(cfg, workers),
            wait_s=wait,
            remedies={"*": "add nodes that have them"},
        )
    else:  # the in-process cluster: runtime.num_cpus CPUs and this machine's GPUs
        check_resources(run_needs(cfg, workers), remedies=IN_PROCESS_REMEDIES)
