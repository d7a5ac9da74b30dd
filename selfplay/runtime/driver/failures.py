"""A run that fails on Ray, told in one line: what failed, at which step, how to go on.

`run_failure` turns the Ray errors a run can end with into a `RunError` (exit 1):

- out of memory: Ray's memory monitor killed an actor's process
  (`ray.exceptions.OutOfMemoryError`, raised for the call it was running, or an
  actor death whose cause says so). Ray's message names the task or actor
  (`name=LearnerActor.state`), its `pid` and `memory used`; those are parsed,
  whatever of them is there;
- a learner that died (`RayActorError`) or raised (`RayTaskError`).

`wait_failure` does it for a wait for replacements that ran out (`RunError`) or
was ended by a stop signal (`Stopped`, exit 128 + signal).

Each message ends with how to go on from the run's newest checkpoint, or says that
there is none yet.
"""

from __future__ import annotations

import re
from pathlib import Path

import ray

from selfplay.errors import RunError


def resume_hint(run_dir: Path) -> str:
    """'its last checkpoint (step N) is intact: continue with ...', or that there is none."""
    steps = sorted(
        int(p.name.split("-", 1)[1])
        for p in (Path(run_dir) / "checkpoints").glob("step-*")
        if p.name.split("-", 1)[1].isdigit()
    )
    if not steps:
        return "no checkpoint was written yet, so there is nothing to resume"
    return (
        f"its last checkpoint (step {steps[-1]}) is intact: continue with "
        f"`selfplay train --resume {run_dir}`"
    )


def oom_cause(e: BaseException) -> str | None:
    """The text of Ray's out-of-memory error inside `e`, or None if `e` is not one."""
    for x in (getattr(e, "cause", None), e):  # the cause: Ray's message, not a task's header
        if isinstance(x, ray.exceptions.OutOfMemoryError):
            return str(x)
    text = str(e)
    # Ray's memory monitor's own words ("... running low on memory", exit type
    # NODE_OUT_OF_MEMORY); a plain death's message also lists "the OOM killer" among its
    # possible causes, so "OOM" alone says nothing.
    if isinstance(e, ray.exceptions.RayActorError) and re.search(
        r"low on memory|NODE_OUT_OF_MEMORY", text
    ):
        return text
    return None


def describe_oom(text: str) -> str:
    """'<actor> (pid P, memory used 18.9GB)' from Ray's message: whatever it names."""
    name = re.search(r"name=([\w.]+)", text)
    pid = re.search(r"pid=(\d+)", text)
    used = re.search(r"memory used=([\d.]+\s*[KMGT]i?B)", text)
    who = name.group(1).split(".")[0] if name else "an actor"
    facts = [f"pid {pid.group(1)}"] if pid else []
    if used:
        facts.append(f"RSS {used.group(1)}")
    return who + (f" ({', '.join(facts)})" if facts else "")


def run_failure(e: BaseException, step: int, run_dir: Path) -> RunError:
    """One line for a run that ended at `step` with Ray error `e`."""
    hint = resume_hint(run_dir)
    if (text := oom_cause(e)) is not None:
        return RunError(
            f"out of memory at step {step}: Ray's memory monitor killed {describe_oom(text)}; "
            f"give it a node with more memory or lower learner.micro_batch, "
            f"rollout.prompts_per_step or the model's size; {hint}"
        )
    if isinstance(e, ray.exceptions.RayActorError):
        return RunError(f"a learner died at step {step} ({type(e).__name__}); {hint}")
    cause = str(getattr(e, "cause", None) or e).strip().splitlines()
    return RunError(f"a learner failed at step {step}: {cause[-1] if cause else e!r}; {hint}")


def wait_failure(e, step: int, run_dir: Path) -> RunError:
    """One line for a `waits.WaitAborted` at `step`: a `Stopped` when a signal ended it."""
    hint = resume_hint(run_dir)
    if e.signum is not None:
        import signal

        from selfplay.runtime.driver.rundir import Stopped

        name = signal.Signals(e.signum).name
        return Stopped(
            f"stopped by {name} at step {step} while waiting for {e.what}; {hint}", e.signum
        )
    return RunError(
        f"no node could host {e.what} at step {step}: waited {e.waited_s:.0f} s "
        f"(runtime.node_wait_s); {hint}"
    )
