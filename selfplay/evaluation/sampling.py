"""Sampling policies and judging sample pairs on the runtime's actors, for evaluation.

Reusable with any rollout workers and preference servers: `selfplay eval` starts its
own and waits (`sample_policy`, `compare`); evaluation during training
(`selfplay.runtime.driver.evaluate`) issues the same calls (`issue_draws`,
`issue_compare`) on the live controller's actors and reads them steps later.

(an identity is any string: it keys the cache and seeds the draws).

The rules:
- a unit is one prompt; each policy draws S responses per unit at the policy's
  temperature (`RolloutActor.generate`, explore=False), one generate call per unit
  so the draw is a function of (weights, prompt, S, seed) alone (the hf backend's
  draw depends on the batch layout);
- the seed of a unit is `unit_seed(seed, policy identity, prompt key)`: two policies
  never share random numbers (a shared stream would couple y_i and y_j, and
  E P(y_i ≻ y_j) over coupled draws is not the win rate), and the G draws of a game's
  one prompt are independent (their prompt keys differ by id);
- sample r of policy i is judged against sample r of policy j (S sample pairs per
  unit), with the judge's truncation rule and failure policy (`JudgeActor.compare`).

`SampleCache` keeps each (policy, unit, seed) draw on disk as JSON (tokens, texts,
lengths, truncation flags), under a directory keyed by the sampling settings, so a rerun
draws nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from selfplay.types import Prompts, Samples, Version

PLACEHOLDER = Version(0, "main")  # the version a cached sample reports


GAME_UNITS = 64  # independent draws of a game's one prompt, by default


def eval_units(task, kind: str, n: int | None, *, every_prompt: bool = False) -> Prompts:
    """The units of an evaluation: a game's one prompt drawn n times (ids 0..n−1, so
    each draw has its own seed), else the bound prompts task's held-out prompts (all
    of its prompts with `every_prompt`: a prompts file given to `selfplay eval`), the
    first n when n is given. Empty when a text task holds none out."""
    if kind != "prompts":
        return task.prompts(n or GAME_UNITS, 0)
    prompts = task.prompts(len(task.train), 0) if every_prompt else task.eval_prompts()
    return prompts.take(range(min(n or len(prompts), len(prompts))))


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def prompt_keys(prompts: Prompts) -> list[str]:
    """One key per prompt: its id and a digest of what the policy is conditioned on."""
    what = prompts.tokens if prompts.tokens is not None else prompts.texts
    return [f"{int(i)}-{_digest(w)[:16]}" for i, w in zip(prompts.ids, what, strict=True)]


def unit_seed(seed: int, identity: str, key: str) -> int:
    """The generation seed of one (policy, prompt) unit: a pure function of the three."""
    words = [int(seed), int(_digest(identity)[:8], 16), int(_digest(key)[:8], 16)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def settings_key(sampling, k: int, dtype: str) -> str:
    """What else a draw depends on: the sampling settings, S and the dtype."""
    return _digest(asdict(sampling), int(k), dtype)[:16]


class SampleCache:
    """ROOT/<settings key>/<policy identity>/<prompt key>-<seed>.json, written atomically.

    root None: no cache (nothing read, nothing written). k: the responses each entry
    must hold (the S of the settings key). An entry that is not what `put` writes
    (not JSON, a field missing, fewer than k rows, lengths that disagree with the
    tokens) is a miss: the draw is made again, and said once per entry on stderr
    (`say`), up to `NOTES` entries."""

    NOTES = 3

    def __init__(self, root: str | Path | None, settings: str, k: int | None = None, say=None):
        self.dir = None if root is None else Path(root) / settings
        self.k = k
        self.say = say or (lambda m: print(m, file=sys.stderr, flush=True))
        self.bad = 0  # entries found unusable, drawn again

    def _path(self, identity: str, key: str, seed: int) -> Path:
        return self.dir / _digest(identity)[:32] / f"{key}-{seed}.json"

    def _reject(self, path: Path, why: str) -> None:
        self.bad += 1
        if self.bad <= self.NOTES:
            self.say(f"note: eval cache entry {path} {why}; drawing it again")
        elif self.bad == self.NOTES + 1:
            self.say("note: more eval cache entries are unusable; each is drawn again")

    def get(self, identity: str, prompts: Prompts, row: int, key: str, seed: int):
        if self.dir is None:
            return None
        p = self._path(identity, key, seed)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # unreadable, or not UTF-8
            self._reject(p, f"cannot be read ({getattr(e, 'strerror', None) or e})")
            return None
        try:
            d = json.loads(text)
        except ValueError:
            self._reject(p, "is not valid JSON")
            return None
        why = entry_problem(d, self.k)
        if why is not None:
            self._reject(p, why)
            return None
        n = len(d["lengths"])
        width = max((len(t) for t in d["tokens"]), default=0)
        tokens = np.zeros((n, width), dtype=np.int64)
        for r, t in enumerate(d["tokens"]):
            tokens[r, : len(t)] = t
        return Samples(
            prompt_ids=np.asarray(prompts.ids[row : row + 1], dtype=np.int64),
            prompt_texts=[prompts.texts[row]],
            tokens=tokens,
            lengths=np.asarray(d["lengths"], dtype=np.int64),
            logprobs=np.zeros((n, 0), dtype=np.float32),
            texts=None if d["texts"] is None else list(d["texts"]),
            version=PLACEHOLDER,
            k=n,
            truncated=np.asarray(d["truncated"], dtype=bool),
        )

    def put(self, identity: str, key: str, seed: int, s: Samples) -> None:
        if self.dir is None:
            return
        p = self._path(identity, key, seed)
        p.parent.mkdir(parents=True, exist_ok=True)
        flags = np.zeros(len(s), bool) if s.truncated is None else s.truncated
        body = {
            "tokens": [
                [int(t) for t in row[:n]] for row, n in zip(s.tokens, s.lengths, strict=True)
            ],
            "texts": None if s.texts is None else list(s.texts),
            "lengths": [int(x) for x in s.lengths],
            "truncated": [bool(x) for x in flags],
        }
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(body), encoding="utf-8")
        os.replace(tmp, p)


def entry_problem(d, k: int | None) -> str | None:
    """Why a parsed cache entry is not one `SampleCache.put` writes (None: it is one).
    k: the rows it must hold (None: any number, at least one)."""
    if not isinstance(d, dict):
        return "is not a JSON object"
    missing = [f for f in ("tokens", "texts", "lengths", "truncated") if f not in d]
    if missing:
        return f"has no {missing[0]!r}"
    tokens, texts, lengths, flags = d["tokens"], d["texts"], d["lengths"], d["truncated"]
    if not all(isinstance(x, list) for x in (tokens, lengths, flags)):
        return "has a field of the wrong type"
    want = k if k is not None else len(lengths)
    rows = {len(tokens), len(lengths), len(flags), want}
    if texts is not None:
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return "has texts that are not strings"
        rows.add(len(texts))
    if len(rows) != 1 or not want:
        return f"holds {len(lengths)} of {want} responses (tokens {len(tokens)})"
    for t, n, f in zip(tokens, lengths, flags, strict=True):
        ints = isinstance(t, list) and all(type(x) is int and x >= 0 for x in t)
        if not ints or type(n) is not int or n != len(t) or type(f) is not bool:
            return "has a response whose tokens, length or truncation flag do not agree"
    return None


def issue_draws(workers: list, version, prompts: Prompts, k: int, seeds: list[int]) -> list:
    """`k` responses to each prompt from `version`: one generate call per prompt with
    its seed, round-robin over `workers` (the version loaded there); the refs of one
    full `Samples` per prompt, in order, not waited on."""
    return [
        workers[u % len(workers)].generate.remote(prompts.take([u]), version, k, seed=int(sd))
        for u, sd in enumerate(seeds)
    ]


def sample_policy(
    workers: list,
    version,
    prompts: Prompts,
    k: int,
    seeds: list[int],
    *,
    prepare=None,
    bar=None,
    each=None,
    stop=None,
) -> list[Samples]:
    """`issue_draws`, waited on: slim `Samples` per prompt, in order.

    prepare(worker): called once per worker before its first call (load the version);
    bar: a tqdm bar advanced by one per prompt done; each(i, samples): called as
    prompt i's draw comes in; stop: a `StopRequest` (`_gather`)."""
    for w in workers if prepare is not None else ():
        prepare(w)
    refs = issue_draws(workers, version, prompts, k, seeds)
    slim = None if each is None else (lambda i, s: each(i, s.slim()))
    return [s.slim() for s in _gather(refs, bar, each=slim, stop=stop)]


def lookup(cache: SampleCache, identity: str, prompts: Prompts, seed: int) -> list:
    """Per prompt, the policy's cached draw (slim `Samples`), or None where it has none."""
    keys = prompt_keys(prompts)
    return [
        cache.get(identity, prompts, u, k, unit_seed(seed, identity, k)) for u, k in enumerate(keys)
    ]


def draw_missing(
    workers: list,
    version,
    identity: str,
    prompts: Prompts,
    k: int,
    seed: int,
    cache: SampleCache,
    got: list,
    *,
    prepare=None,
    bar=None,
    stop=None,
) -> int:
    """Fill the None entries of `got` (from `lookup`) by sampling `version` on
    `workers` (`sample_policy`), caching each draw as it comes in (a stopped
    evaluation keeps what it drew); returns the number of responses drawn."""
    rows = [u for u, g in enumerate(got) if g is None]
    if not rows:
        return 0
    keys = prompt_keys(prompts)
    seeds = [unit_seed(seed, identity, keys[u]) for u in rows]

    def keep(i: int, smp) -> None:
        cache.put(identity, keys[rows[i]], seeds[i], smp)
        got[rows[i]] = smp

    sample_policy(
        workers,
        version,
        prompts.take(rows),
        k,
        seeds,
        prepare=prepare,
        bar=bar,
        each=keep,
        stop=stop,
    )
    return k * len(rows)


def issue_compare(judges: list, a: list, b: list, *, chunk: int = 16) -> list[tuple[int, object]]:
    """P(a_u,r ≻ b_u,r) of each unit u, `chunk` units per call, spread over `judges`
    (`JudgeActor.compare`: a's units then b's, `Samples` or their refs); [(units in
    the call, ref of its [units·S] array)], not waited on."""
    if len(a) != len(b):
        raise ValueError("compare: the two sides must cover the same units")
    spans = [(i, min(i + chunk, len(a))) for i in range(0, len(a), chunk)]
    return [
        (j - i, judges[c % len(judges)].compare.remote(*a[i:j], *b[i:j]))
        for c, (i, j) in enumerate(spans)
    ]


def compare(
    judges: list, a: list[Samples], b: list[Samples], *, chunk: int = 16, bar=None, stop=None
):
    """[U, S] P(a_u,r ≻ b_u,r) (`issue_compare`, waited on); NaN where the judge's
    failure policy masked a comparison."""
    if not a:
        return np.zeros((0, 0))
    calls = issue_compare(judges, a, b, chunk=chunk)
    out = _gather([r for _, r in calls], bar, [n for n, _ in calls], stop=stop)
    return np.concatenate(out).reshape(len(a), a[0].k)


def _gather(refs: list, bar, weights: list[int] | None = None, *, each=None, stop=None) -> list:
    """ray.get of `refs` in order, advancing `bar` and calling each(i, value) as each one
    finishes. It waits in slices of `waits.POLL_S` (a blocking ray.get would hold the
    signal handlers) and raises `Stopped` once `stop` (a `StopRequest`) is set."""
    import ray

    from selfplay.runtime.driver.rundir import Stopped
    from selfplay.runtime.waits import POLL_S

    w = dict(zip(refs, weights or [1] * len(refs), strict=True))
    at = {r: i for i, r in enumerate(refs)}
    out: list = [None] * len(refs)
    pending = list(refs)
    while pending:
        if stop:
            raise Stopped(f"stopped by {stop.name}", stop.signum)
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        if bar is not None:
            bar.update(sum(w[r] for r in done))
        for r, value in zip(done, ray.get(done, timeout=60), strict=True):
            out[at[r]] = value
            if each is not None:
                each(at[r], value)
    return out
