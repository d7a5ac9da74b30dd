"""The `Task` protocol: the only link between the training loop and the problem.

The runtime asks a task these things and nothing else:

- `bind(tokenizer)`: called once by `build`, with the policy's tokenizer, before
  anything below; the task renders and encodes its prompts with it (and refuses bad
  input there, as an `InputError`).
- `prompts(count, start_id)`: the next prompts (`Prompts`: raw texts for the judge,
  token ids for the policy), each with a stable integer id. The controller's prompt
  cursor is the next id, so a resumed run continues exactly where it left off.
- `sampling(tokenizer, rollout)`: the constraints every rollout worker applies to
  generation (allowed tokens, response length, temperatures, top-p/k, stop strings),
  handed to each worker once at construction.
- `judge_spec(judge)`: the preference model the task is judged by, from the
  `judge` config section (the games ignore its kind: their judge is the matrix).
- `evaluator(tokenizer, beta)`: how to score the learner's policy, exactly (the
  duality gap of the games) or, for open-ended text tasks, by sampling.

A task also names the words a tiny demo model needs (`model_words`), so that
`model.name: tiny` builds a vocabulary that covers the prompts and responses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from selfplay.types import Prompts


@dataclass(frozen=True)
class Sampling:
    """What every rollout worker applies to generation, given once at construction.

    temperature:          of the policy (opponent draws).
    explore_temperature:  of the behaviour policy of the trained-on responses.
    allowed_token_ids:    generation is restricted to these ids (None: all). The
                          learner's policy is restricted the same way (the policy *is*
                          the masked LM), so sampler and learner log-probs agree.
    top_p, top_k:         nucleus / top-k cuts of each token's distribution (1.0 / 0: off).
    stop:                 stop strings: a response ends at the first one (not included).
    texts:                decode the responses to text in the worker (`Samples.texts`);
                          off where the judge reads token ids and no rollout rows are
                          written (`build` decides: `judges.factory.judges_text`).
    """

    max_new_tokens: int
    temperature: float
    explore_temperature: float
    allowed_token_ids: tuple[int, ...] | None = None
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    texts: bool = True


class Evaluator(Protocol):
    """Scores the learner group's policy roles; metric values are floats, None or lists."""

    headline: str  # the metric shown on the progress bar, and the plot's name
    plot_keys: tuple[str, ...]  # metrics plotted per step (log scale), headline first

    def reference(self, learners) -> dict[str, Any]:
        """Evaluate π_ref (the `ref` role) and remember it; the metrics of step 0."""
        ...

    def start(self, learners) -> Callable[[], dict[str, Any]]:
        """Start evaluating the current policy (the `main` role): the learner calls are
        issued now and not waited on; the returned callable waits and gives the
        metrics. An evaluator that knows the exact win rate against π_ref and
        KL(π‖π_ref) names them `win_rate_ref` and `kl_ref_exact`: the sampled
        evaluation reports them beside its estimates."""
        ...

    def summary(self, learners) -> dict[str, Any]:
        """The final report's task-specific entries (JSON-safe)."""
        ...

    def format(self, summary: dict[str, Any]) -> list[str]:
        """Human-readable lines for the end of `selfplay train`."""
        ...


class Task(Protocol):
    source: str  # one line naming the problem instance, for summaries and plots
    n: int | None  # number of distinct responses when finite (algorithm defaults check it)

    def model_words(self) -> list[str]: ...

    def bind(self, tokenizer) -> None: ...

    def prompts(self, count: int, start_id: int) -> Prompts: ...

    def sampling(self, tokenizer, rollout) -> Sampling: ...

    def judge_spec(self, judge): ...

    def evaluator(self, tokenizer, beta: float) -> Evaluator: ...
