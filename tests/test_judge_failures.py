"""Judge failures: bounded retries, then a one-line RunError or masked, counted comparisons.

A real game judge (`make_judge`, kind=game, on a rock–paper–scissors matrix) is
wrapped by `Flaky`, which misbehaves on a script: raise, sleep past the
timeout, return the wrong shape, or answer NaN / inf / 1.3 on chosen
comparisons for its first few calls. Oracle: a plain Python loop over the
pairs that reads the matrix directly and averages each source over the valid
opponents only (see `selfplay.runtime.workers.judging`).
"""

from __future__ import annotations

import functools
import os
import sys
import time

import numpy as np
import pytest
import ray

from selfplay.errors import RunError
from selfplay.judges.factory import JudgeSpec, make_judge
from selfplay.runtime.workers.actors import JudgeActor
from selfplay.runtime.workers.judging import Judged, JudgePolicy, estimate_g, to_train_batch
from selfplay.types import Samples, Version

MOVES = ("rock", "paper", "scissors")
RPS = np.array([[0.5, 0.1, 0.8], [0.9, 0.5, 0.3], [0.2, 0.7, 0.5]])  # P + Pᵀ = 1
BAD = frozenset({("scissors", "paper")})  # the comparisons Flaky spoils


def game_judge():
    return make_judge(JudgeSpec(kind="game", batch_size=64, matrix=RPS, moves=MOVES))


class Flaky:
    """The game judge, misbehaving during its first `*_calls` calls (counted from 1)."""

    def __init__(
        self,
        *,
        raise_calls: int = 0,
        sleep_calls: int = 0,
        sleep_s: float = 0.0,
        short_calls: int = 0,
        bad_calls: int = 0,
        value: float = np.nan,
        bad_pairs: frozenset = BAD,
        bad_prompts: frozenset = frozenset(),
    ) -> None:
        self.inner, self.calls = game_judge(), 0
        self.raise_calls, self.sleep_calls, self.sleep_s = raise_calls, sleep_calls, sleep_s
        self.short_calls, self.bad_calls, self.value = short_calls, bad_calls, value
        self.bad_pairs, self.bad_prompts = bad_pairs, bad_prompts

    def prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        self.calls += 1
        c = self.calls
        if c <= self.sleep_calls:
            time.sleep(self.sleep_s)
        if c <= self.raise_calls:
            raise RuntimeError("judge server down\n(connection reset)")
        p = self.inner.prob(prompts, a, b)
        if c <= self.bad_calls:
            sel = [
                (x, y) in self.bad_pairs or q in self.bad_prompts
                for q, x, y in zip(prompts, a, b, strict=True)
            ]
            p[np.array(sel, dtype=bool)] = self.value
        return p[:-1] if c <= self.short_calls else p


def samples(texts: list[list[str]], prompts: tuple[str, ...] = ("p0", "p1", "p2")) -> Samples:
    """One row per text, prompt-major; token = move index + 3 (one token per response)."""
    k, flat = len(texts[0]), [t for row in texts for t in row]
    tokens = np.array([[MOVES.index(t) + 3] for t in flat], dtype=np.int64)
    return Samples(
        prompt_ids=np.arange(len(texts), dtype=np.int64),
        prompt_texts=list(prompts),
        tokens=tokens,
        lengths=np.ones(len(flat), dtype=np.int64),
        logprobs=np.zeros(tokens.shape, dtype=np.float32),
        texts=flat,
        version=Version(0, "main"),
        k=k,
        prompt_tokens=[[1, 2]] * len(texts),
    )


# Row 0 (scissors) meets only paper in source A: it has no valid opponent there and is dropped.
TRAINED = samples(
    [["scissors", "rock", "paper"], ["paper", "scissors", "rock"], ["rock", "rock", "scissors"]]
)
SOURCES = [
    (samples([["paper", "paper"], ["rock", "paper"], ["scissors", "paper"]]), 0.6),
    (
        samples(
            [
                ["rock", "scissors", "paper"],
                ["paper", "paper", "scissors"],
                ["rock", "paper", "scissors"],
            ]
        ),
        0.4,
    ),
]
PAIRS = [len(TRAINED) * opp.k for opp, _ in SOURCES]  # comparisons per source: 9·2, 9·3


def oracle(bad_pairs=BAD) -> tuple[list[float | None], list[int]]:
    """ĝ per row (None: no valid opponent in some source) and masked comparisons per source."""
    g, masked = [], [0] * len(SOURCES)
    for i, y in enumerate(TRAINED.texts):
        total, dropped = 0.0, False
        for s, (opp, w) in enumerate(SOURCES):
            vals = []
            for m in range(opp.k):
                z = opp.texts[(i // TRAINED.k) * opp.k + m]
                if (y, z) in bad_pairs:
                    masked[s] += 1
                else:
                    vals.append(RPS[MOVES.index(y), MOVES.index(z)])
            if vals:
                total += w * sum(vals) / len(vals)
            else:
                dropped = True
        g.append(None if dropped else total)
    return g, masked


@pytest.mark.parametrize(
    ("flaky", "kind", "failed"),
    [
        (dict(bad_calls=99), "(NaN)", 4),
        (dict(bad_calls=99, value=1.3), "(outside [0, 1])", 4),
        (dict(bad_calls=99, value=-np.inf), "(inf)", 4),
        (
            dict(raise_calls=99),
            "(exception RuntimeError: judge server down (connection reset))",
            18,
        ),
        (dict(sleep_calls=99, sleep_s=0.4), "(timeout after 0.2s)", 18),
        (dict(short_calls=99), "(wrong shape (17,) for 18 comparisons)", 18),
    ],
)
def test_raise_names_the_failure_on_one_line(flaky, kind, failed):
    _, masked = oracle()
    assert failed in (masked[0], PAIRS[0])  # source A fails first: its count is reported
    with pytest.raises(RunError) as err:
        estimate_g(Flaky(**flaky), TRAINED, SOURCES, JudgePolicy(retries=1, timeout_s=0.2))
    msg = str(err.value)
    assert "\n" not in msg and kind in msg
    assert msg.startswith(f"judge failed on {failed} of {PAIRS[0]} comparisons after 1 retries")
    assert msg.endswith("set judge.on_failure=mask to mask them")


def test_mask_matches_loop_oracle():
    g_ref, masked = oracle()
    judge = Flaky(bad_calls=99)
    est = estimate_g(judge, TRAINED, SOURCES, JudgePolicy(retries=2, on_failure="mask"))
    keep = np.array([x is not None for x in g_ref])
    np.testing.assert_array_equal(est.keep, keep)
    assert list(keep).count(False) == 1 and not keep[0]  # only row 0 lost every source-A opponent
    np.testing.assert_allclose(est.g[keep], [x for x in g_ref if x is not None], rtol=0, atol=1e-12)
    assert np.isnan(est.g[~keep]).all()
    assert est.masked_pairs == sum(masked) == 8 and est.masked_rows == 1
    # Both sources had failures: each was retried twice, re-sending only its failed pairs.
    assert est.judge_retries == judge.calls - len(SOURCES) == 4
    assert est.queries == sum(PAIRS) + 2 * sum(masked)


def test_call_failing_every_retry_is_masked_whole():
    # Calls 1-3 (source A and its 2 retries) raise; source B's call succeeds.
    est = estimate_g(Flaky(raise_calls=3), TRAINED, SOURCES, JudgePolicy(on_failure="mask"))
    assert est.masked_pairs == PAIRS[0] and est.masked_rows == len(TRAINED)
    assert not est.keep.any() and np.isnan(est.g).all() and est.judge_retries == 2


@pytest.mark.parametrize(
    ("flaky", "retries"),
    [
        (dict(raise_calls=1), 1),
        (dict(bad_calls=2), 2),  # NaN on the first call and on its first retry
        (dict(bad_calls=1, value=1.3), 1),
        (dict(short_calls=1), 1),
        (dict(sleep_calls=1, sleep_s=0.6), 1),  # the abandoned call finishes in the background
    ],
)
def test_transient_failures_recover_exactly(flaky, retries):
    clean = estimate_g(game_judge(), TRAINED, SOURCES)
    g_ref, _ = oracle(bad_pairs=frozenset())
    np.testing.assert_allclose(clean.g, g_ref, rtol=0, atol=1e-12)
    est = estimate_g(Flaky(**flaky), TRAINED, SOURCES, JudgePolicy(retries=2, timeout_s=0.3))
    np.testing.assert_array_equal(est.g, clean.g)
    assert est.keep.all() and est.masked_pairs == est.masked_rows == 0
    assert est.judge_retries == retries
    assert est.queries > clean.queries == sum(PAIRS)  # the retried comparisons are paid for


def test_dropped_row_leaves_its_group_in_the_batch():
    g_ref, _ = oracle()
    est = estimate_g(Flaky(bad_calls=99), TRAINED, SOURCES, JudgePolicy(on_failure="mask"))
    judged = Judged(
        samples=TRAINED,
        g=est.g,
        queries=est.queries,
        judge_s=0.0,
        keep=est.keep,
        masked_pairs=est.masked_pairs,
        masked_rows=est.masked_rows,
    )
    batch = to_train_batch([judged])
    kept = [i for i, x in enumerate(g_ref) if x is not None]
    assert len(batch) == len(kept) == 8
    np.testing.assert_allclose(batch.g, [g_ref[i] for i in kept], rtol=0, atol=1e-12)
    # Row i's response token sits right after the 2 prompt tokens.
    np.testing.assert_array_equal(batch.input_ids[:, 2], TRAINED.tokens[kept, 0])
    np.testing.assert_array_equal(batch.prompt_ids, [i // TRAINED.k for i in kept])
    # Pairs only within a prompt: prompt 0 keeps 2 rows (1 pair), prompts 1, 2 keep 3 (3 each).
    sizes = [sum(1 for i in kept if i // TRAINED.k == p) for p in range(3)]
    assert batch.num_pairs == sum(s * (s - 1) // 2 for s in sizes) == 7
    assert len(set(batch.group[:2])) == 1 and batch.group[0] not in batch.group[2:]


@pytest.fixture(scope="module")
def cluster():
    # Workers cannot import this test module: ship `Flaky` by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.ray
def test_judge_actor_retries_a_timeout_and_raises_past_retries(cluster):
    # First call hangs past the timeout; every comparison on the prompt "poison" is NaN.
    judge_fn = functools.partial(
        Flaky,
        sleep_calls=1,
        sleep_s=1.0,
        bad_calls=99,
        bad_pairs=frozenset(),
        bad_prompts=frozenset({"poison"}),
    )
    actor = JudgeActor.options(num_cpus=0).remote(judge_fn, JudgePolicy(retries=1, timeout_s=0.3))
    assert ray.get(actor.pid.remote()) != os.getpid()
    opps, weights = [s for s, _ in SOURCES], [w for _, w in SOURCES]
    batch_ref, info_ref, _ = actor.assemble.options(num_returns=3).remote(
        None, actor.judge_chunk.remote(TRAINED, weights, *opps)
    )
    batch, info = ray.get([batch_ref, info_ref])
    clean = estimate_g(game_judge(), TRAINED, SOURCES)
    np.testing.assert_array_equal(batch.g, clean.g)
    assert (info.judge_retries, info.masked_pairs, info.masked_rows) == (1, 0, 0)
    assert info.rows == len(TRAINED) and info.queries == sum(PAIRS) + PAIRS[0]

    poisoned = [samples([s.texts[: s.k]], prompts=("poison",)) for s in (TRAINED, *opps)]
    with pytest.raises(ray.exceptions.RayTaskError) as err:
        ray.get(actor.judge_chunk.remote(poisoned[0], weights, *poisoned[1:]))
    # The driver gets the actor's RunError as the cause: one line, ready for the CLI.
    assert isinstance(err.value.cause, RunError)
    assert str(err.value.cause).startswith(
        "judge failed on 6 of 6 comparisons after 1 retries (NaN)"
    )
