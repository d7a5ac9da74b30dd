"""How the driver waits on Ray: in slices, so that signals are honoured, and with bounds.

A blocking `ray.get(ref)` with no timeout holds Python's signal handlers until it
returns (checked on Ray 2.60: a SIGTERM sent during a 20 s `ray.get` ran its
handler only when the get returned). So the driver never makes one:

- `get(refs)` waits in slices of `POLL_S` with `ray.wait`, then reads the results,
  which are local by then. Between slices Python runs the `stop_on_signals`
  handlers: a second SIGTERM/SIGINT stops the run at once, whatever it waits on.
  The work waited on is bounded by its own owner (a judge call by
  `judge.timeout_s`, a learner or a rollout call by Ray's detection of a dead
  process or a lost node, about 30 s with Ray's default health checks).
- `await_ready(actors, ...)` waits for actors just started in place of dead ones.
  When their node was lost and no other node can host them, Ray keeps them pending
  forever: this wait is bounded by `runtime.node_wait_s`, says once what it waits
  for, and ends early on the first stop signal (the step in progress cannot finish
  without them).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import ray

POLL_S = 0.5  # one slice of a wait: the latency of a signal
SAY_AFTER_S = 2.0  # a replacement not up by then is announced (one starts in about 1-5 s)


class WaitAborted(Exception):
    """A wait for replacement actors ended without them: ran out of its bound
    (`signum` None) or was ended by a stop signal (`signum`)."""

    def __init__(self, what: str, waited_s: float, signum: int | None = None):
        super().__init__(what)
        self.what, self.waited_s, self.signum = what, waited_s, signum


def get(refs, *, poll_s: float = POLL_S):
    """`ray.get(refs)` (one ref or a list), waiting in slices of `poll_s` seconds so
    that signal handlers run meanwhile. Raises what `ray.get` raises."""
    one = not isinstance(refs, list | tuple)
    todo = list(dict.fromkeys([refs] if one else refs))
    while todo:
        _, todo = ray.wait(todo, num_returns=len(todo), timeout=poll_s)
    out = ray.get([refs] if one else list(refs), timeout=60)  # all done: local reads
    return out[0] if one else out


def await_ready(
    actors: list,
    *,
    what: str,
    wait_s: float,
    stop=None,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    poll_s: float = POLL_S,
) -> None:
    """Wait until each of `actors` (started to replace dead ones; each has `ready()`)
    answers: at most `wait_s` seconds, saying so in one line once they are not up
    after `SAY_AFTER_S`. Raises `WaitAborted` when the bound runs out or `stop`
    (a `StopRequest`) is set; an actor that fails to start raises its Ray error."""
    if not actors:
        return
    refs = [a.ready.remote() for a in actors]
    t0 = time.monotonic()
    todo = list(refs)
    said = False
    while todo:
        _, todo = ray.wait(todo, num_returns=len(todo), timeout=poll_s)
        if not todo:
            break
        waited = time.monotonic() - t0
        if stop:
            raise WaitAborted(what, waited, stop.signum)
        if not said and waited >= SAY_AFTER_S:
            say(
                f"waiting up to {wait_s:g} s (runtime.node_wait_s) for {what} to start again "
                f"(its process or node was lost; it needs a node that can host it)"
            )
            said = True
        if waited >= wait_s:
            raise WaitAborted(what, waited)
    ray.get(refs, timeout=60)
    if said:
        say(f"{what}: started again after {time.monotonic() - t0:.0f} s")
