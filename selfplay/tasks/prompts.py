"""The prompts task: open-ended text from a dataset of prompts, judged by a model.

`bind(tokenizer)` loads the dataset once (`selfplay.tasks.prompt_data`), holds out
the eval prompts, renders and tokenizes every prompt with the policy's tokenizer
(`models.load.render_prompt`, the one rendering rule), and drops the prompts
longer than `task.max_prompt_tokens` (counted, reported once on stderr and in the
summary; never cut). Every bad input is an `InputError` raised there, before the
run starts.

Rendering: a message list goes through the policy's chat template with the
generation prompt; a string is used as is (tokenized with the tokenizer's own
special tokens), or wrapped as one user message with `task.chat_template: true`.

Ids and epochs: training prompt id `i` is position `i mod n` of epoch `i div n`
(n the number of kept training prompts), in the epoch's order: the dataset's order
without `task.shuffle`, else a permutation that is a pure function of
(task.seed, epoch). So `prompts(count, start_id)` is a pure function of its
arguments, the controller's cursor (the next id) is all a resumed run needs, and
epochs go on until runtime.steps. Held-out prompts (`task.eval_split`, or a
seeded `task.eval_fraction` of the split, drawn before the length filter so the
split does not depend on the tokenizer) have their own ids 0..n_eval-1
(`eval_prompts()`).

Deviation: no sampled evaluation yet (win rates against π_ref are a later
issue); `TextEvaluator` reports the per-step KL estimates the learner already
measures and the dataset's facts.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selfplay.errors import InputError
from selfplay.tasks.base import Sampling
from selfplay.tasks.prompt_data import load_splits, split_rows
from selfplay.types import Prompts, RawPrompt

#: independent random streams of one task.seed
_EVAL_STREAM, _SHUFFLE_STREAM = 1, 2


def hold_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, eval rows), each ascending: round(fraction·n) rows (at least one)
    drawn without replacement by a generator seeded with (seed, eval stream)."""
    k = max(1, round(fraction * n))
    if k >= n:
        raise InputError(f"task.eval_fraction={fraction:g} of {n} prompts leaves none to train on")
    perm = np.random.default_rng([seed, _EVAL_STREAM]).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


@functools.lru_cache(maxsize=8)
def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order of epoch `epoch` over n prompts: identity, or a permutation seeded
    with (seed, shuffle stream, epoch)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, _SHUFFLE_STREAM, epoch]).permutation(n)


@dataclass
class Rendered:
    """Prompts of one split as the policy sees them."""

    texts: list[RawPrompt] = field(default_factory=list)
    rendered: list[str] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def prompts(self, ids: np.ndarray, rows: np.ndarray) -> Prompts:
        return Prompts(
            ids=np.asarray(ids, dtype=np.int64),
            texts=[self.texts[r] for r in rows],
            tokens=[list(self.tokens[r]) for r in rows],
            rendered=[self.rendered[r] for r in rows],
        )


class DatasetPrompts:
    """A `Task` over the prompts of a dataset (config section `PromptsTask`)."""

    n = None  # an open response space

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.source = f"{cfg.dataset} [{cfg.split}]"
        self.train: Rendered | None = None
        self.held_out = Rendered()
        self.dropped = {"train": 0, "eval": 0}
        self.drawn = 0  # highest training prompt id served + 1 (this process)

    def model_words(self) -> list[str]:
        return []  # a prompts task needs a real model directory

    def bind(self, tokenizer) -> None:
        """Load, hold out, render, tokenize and filter every prompt, once."""
        from selfplay.models.load import has_chat_template

        c = self.cfg
        self.dropped = {"train": 0, "eval": 0}
        splits = load_splits(c.dataset)
        train = split_rows(splits, c.dataset, c.split, c.prompt_column, "task.split")
        held: list[RawPrompt] = []
        if c.eval_split is not None:
            held = split_rows(splits, c.dataset, c.eval_split, c.prompt_column, "task.eval_split")
        elif c.eval_fraction > 0:
            tr, ev = hold_out(len(train), c.eval_fraction, c.seed)
            train, held = [train[i] for i in tr], [train[i] for i in ev]
        if not has_chat_template(tokenizer):
            if c.chat_template:
                raise InputError(
                    "task.chat_template: true needs a chat template, and the policy's "
                    "tokenizer has none"
                )
            if any(not isinstance(p, str) for p in train + held):
                raise InputError(
                    f"task.prompt_column {c.prompt_column!r} holds messages, which need a "
                    "chat template, and the policy's tokenizer has none"
                )
        self.train, n_train = self._render(tokenizer, train, "train"), len(train)
        self.held_out = self._render(tokenizer, held, "eval")
        for part, kept, total in (
            ("train", self.train, n_train),
            ("eval", self.held_out, len(held)),
        ):
            if total and not len(kept):
                raise InputError(
                    f"every {part} prompt of {c.dataset!r} is longer than "
                    f"task.max_prompt_tokens={c.max_prompt_tokens}"
                )
        dropped = sum(self.dropped.values())
        if dropped:  # once, after the checks: a refused run prints only its error
            print(
                f"task: dropped {dropped} of {n_train + len(held)} prompts longer than "
                f"task.max_prompt_tokens={c.max_prompt_tokens} ({self.dropped['train']} "
                f"train, {self.dropped['eval']} eval); counted in the summary",
                file=sys.stderr,
            )

    def _render(self, tokenizer, raw: list[RawPrompt], part: str) -> Rendered:
        from selfplay.models.load import encode_rendered, render_prompt

        out = Rendered()
        for p in raw:
            text, templated = render_prompt(tokenizer, p, wrap=self.cfg.chat_template)
            ids = encode_rendered(tokenizer, text, templated)
            if len(ids) > self.cfg.max_prompt_tokens:
                self.dropped[part] += 1
                continue
            out.texts.append(p)
            out.rendered.append(text)
            out.tokens.append(ids)
        return out

    def _bound(self) -> Rendered:
        if self.train is None:
            raise RuntimeError("the prompts task is used before bind(tokenizer)")
        return self.train

    def prompts(self, count: int, start_id: int) -> Prompts:
        """Training prompts with ids start_id .. start_id+count-1 (see the module doc)."""
        train = self._bound()
        n = len(train)
        ids = np.arange(start_id, start_id + count, dtype=np.int64)
        rows = np.array(
            [epoch_order(n, self.cfg.seed, int(i) // n, self.cfg.shuffle)[i % n] for i in ids],
            dtype=np.int64,
        )
        self.drawn = max(self.drawn, start_id + count)
        return train.prompts(ids, rows)

    def eval_prompts(self) -> Prompts:
        """The held-out prompts, ids 0..n_eval-1 in dataset order (empty without any)."""
        self._bound()
        n = len(self.held_out)
        return self.held_out.prompts(np.arange(n), np.arange(n))

    def sampling(self, tokenizer, rollout) -> Sampling:
        """The rollout section's generation settings; every token allowed."""
        return Sampling(
            max_new_tokens=rollout.max_new_tokens,
            temperature=rollout.temperature,
            explore_temperature=rollout.explore_temperature,
            top_p=rollout.top_p,
            top_k=rollout.top_k,
            stop=tuple(rollout.stop),
        )

    def judge_spec(self, judge):
        from selfplay.judges.factory import model_judge_spec

        return model_judge_spec(judge)

    def evaluator(self, tokenizer, beta: float) -> TextEvaluator:
        return TextEvaluator(self)

    def facts(self) -> dict[str, Any]:
        """The dataset's side of the run, JSON-safe."""
        c, n = self.cfg, len(self._bound())
        held = c.eval_split or (f"fraction {c.eval_fraction:g}" if c.eval_fraction else None)
        return {
            "dataset": c.dataset,
            "split": c.split,
            "held_out": held,
            "train_prompts": n,
            "eval_prompts": len(self.held_out),
            "max_prompt_tokens": c.max_prompt_tokens,
            "dropped_over_max_prompt_tokens": sum(self.dropped.values()),
            "dropped_train": self.dropped["train"],
            "dropped_eval": self.dropped["eval"],
            "prompts_drawn": self.drawn,
            "epochs": self.drawn / n,
        }


@dataclass
class TextEvaluator:
    """Open-ended text has no exact evaluation: the headline and plot are the learner's
    per-step k3 KL estimates (`kl_ref`: to π_ref, NaN for plans without a ref role;
    `kl_anchor`: to the step's anchor), and the summary is the dataset's facts."""

    task: DatasetPrompts
    headline: str = "kl_ref"
    plot_keys: tuple[str, ...] = ("kl_ref", "kl_anchor")

    def reference(self, learners) -> dict[str, Any]:
        return {}

    def start(self, learners):
        return dict

    def summary(self, learners) -> dict[str, Any]:
        return self.task.facts()

    def format(self, s: dict[str, Any]) -> list[str]:
        held = f" ({s['held_out']})" if s["held_out"] else ""
        return [
            f"prompts: {s['train_prompts']} train, {s['eval_prompts']} held out{held}; "
            f"{s['dropped_over_max_prompt_tokens']} dropped over "
            f"max_prompt_tokens={s['max_prompt_tokens']}",
            f"drawn: {s['prompts_drawn']} prompts ({s['epochs']:.2f} epochs)",
        ]


def from_config(cfg) -> DatasetPrompts:
    return DatasetPrompts(cfg)
