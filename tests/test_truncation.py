"""The truncation rule (`rollout.truncated`: lose | keep) in the judging path, and the
per-step length / truncation logs.

Oracle: ĝ written out by hand for a small case on the rock–paper–scissors game judge,
P = [[.5, .1, .8], [.9, .5, .3], [.2, .7, .5]] (rows beat columns), with trained rows
and opponents of two sources (weights ¾, ¼) both finished and truncated.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import ray

from selfplay.judges.factory import JudgeSpec, make_judge
from selfplay.runtime.driver.report import length_stats, step_metrics
from selfplay.runtime.workers.actors import JudgeActor
from selfplay.runtime.workers.judging import JudgePolicy, estimate_g
from selfplay.types import Samples, Version

MOVES = ("rock", "paper", "scissors")
RPS = np.array([[0.5, 0.1, 0.8], [0.9, 0.5, 0.3], [0.2, 0.7, 0.5]])


def judge():
    return make_judge(JudgeSpec(kind="game", batch_size=64, matrix=RPS, moves=MOVES))


class Counting:
    """The game judge, recording every comparison it is asked."""

    def __init__(self) -> None:
        self.inner, self.asked = judge(), []

    def prob(self, prompts, a, b):
        self.asked += list(zip(a, b, strict=True))
        return self.inner.prob(prompts, a, b)


def samples(rows: list[list[tuple[str, bool]]], lengths: list[list[int]] | None = None) -> Samples:
    """rows[prompt] = [(move, truncated), ...]; prompts p0, p1, ..."""
    k, flat = len(rows[0]), [r for row in rows for r in row]
    n = len(flat)
    lens = np.ones(n, dtype=np.int64) if lengths is None else np.array(sum(lengths, []))
    return Samples(
        prompt_ids=np.arange(len(rows), dtype=np.int64),
        prompt_texts=[f"p{i}" for i in range(len(rows))],
        tokens=np.array([[MOVES.index(m) + 3] for m, _ in flat], dtype=np.int64),
        lengths=lens,
        logprobs=np.zeros((n, 1), dtype=np.float32),
        texts=[m for m, _ in flat],
        version=Version(0, "main"),
        k=k,
        prompt_tokens=[[1, 2]] * len(rows),
        truncated=np.array([t for _, t in flat]),
    )


F, T = False, True
TRAINED = samples([[("rock", F), ("paper", T)], [("scissors", T), ("rock", F)]], [[3, 8], [8, 5]])
A = samples([[("paper", F), ("scissors", T)], [("rock", T), ("paper", F)]], [[2, 8], [8, 6]])
B = samples([[("scissors", F)], [("rock", T)]], [[4], [8]])
SOURCES = [(A, 0.75), (B, 0.25)]

# By hand. lose: truncated vs finished 0, finished vs truncated 1, both truncated ½.
#   row 0 rock (fin):     A: paper .1, scissors(T) 1 -> .55;  B: scissors .8
#                         .75·.55 + .25·.8 = .6125
#   row 1 paper (T):      A: paper 0, scissors(T) ½ -> .25;   B: scissors 0  -> .1875
#   row 2 scissors (T):   A: rock(T) ½, paper 0 -> .25;       B: rock(T) ½   -> .3125
#   row 3 rock (fin):     A: rock(T) 1, paper .1 -> .55;      B: rock(T) 1   -> .6625
# keep: the matrix for every pair.
#   row 0 rock:      A: .1, .8 -> .45;   B: .8   -> .3375 + .2   = .5375
#   row 1 paper:     A: .5, .3 -> .4;    B: .3   -> .3   + .075 = .375
#   row 2 scissors:  A: .2, .7 -> .45;   B: .2   -> .3375 + .05  = .3875
#   row 3 rock:      A: .5, .1 -> .3;    B: .5   -> .225 + .125 = .35
EXPECTED = {"lose": [0.6125, 0.1875, 0.3125, 0.6625], "keep": [0.5375, 0.375, 0.3875, 0.35]}
# lose sends only finished-vs-finished pairs: row 0 vs A paper and B scissors, row 3 vs A paper.
ASKED = {
    "lose": [("rock", "paper"), ("rock", "scissors"), ("rock", "paper")],
    "keep": None,  # all 4·2 + 4·1 = 12
}


@pytest.mark.parametrize("rule", ["lose", "keep"])
def test_g_against_a_hand_computation(rule):
    j = Counting()
    est = estimate_g(j, TRAINED, SOURCES, JudgePolicy(), rule)
    np.testing.assert_allclose(est.g, EXPECTED[rule], atol=1e-12, rtol=0)
    assert est.keep.all() and est.masked_pairs == 0
    if rule == "lose":
        assert sorted(j.asked) == sorted(ASKED["lose"]) and est.queries == 3
    else:
        assert len(j.asked) == est.queries == 12


@pytest.mark.parametrize("ta", [F, T])
@pytest.mark.parametrize("tb", [F, T])
@pytest.mark.parametrize("rule", ["lose", "keep"])
def test_the_rule_keeps_the_game_constant_sum(rule, ta, tb):
    """ĝ(a vs b) + ĝ(b vs a) = 1 for one-response sources, whatever is truncated."""
    for x in MOVES:
        for y in MOVES:
            a, b = samples([[(x, ta)]]), samples([[(y, tb)]])
            ab = estimate_g(judge(), a, [(b, 1.0)], truncated=rule).g[0]
            ba = estimate_g(judge(), b, [(a, 1.0)], truncated=rule).g[0]
            assert ab + ba == pytest.approx(1.0, abs=1e-15)
            if rule == "lose" and ta != tb:
                assert ab == float(tb)  # the finished one wins outright


def test_unrecorded_truncation_counts_as_finished():
    s = samples([[("rock", F), ("paper", F)]])
    s.truncated = None  # finished: both beat a truncated opponent outright
    opp = samples([[("scissors", T)]])
    assert estimate_g(judge(), s, [(opp, 1.0)], truncated="lose").g.tolist() == [1.0, 1.0]
    np.testing.assert_allclose(estimate_g(judge(), s, [(opp, 1.0)], truncated="keep").g, [0.8, 0.3])
    with pytest.raises(ValueError, match="truncated"):
        estimate_g(judge(), s, [(opp, 1.0)], truncated="penalty")


def test_length_stats_by_hand():
    got = length_stats("response", np.array([3, 8, 8, 5]), np.array([F, T, T, F]))
    # p90 (linear): sorted 3 5 8 8, position 0.9·3 = 2.7 -> 8 + .7·(8 − 8) = 8
    assert got == {
        "response_truncated_fraction": 0.5,
        "response_length_mean": 6.0,
        "response_length_p90": 8.0,
    }
    got = length_stats("opponent", np.array([1, 2, 3, 4, 10]), np.zeros(5, bool))
    assert got["opponent_length_p90"] == pytest.approx(4 + 0.6 * 6)  # position 3.6
    assert length_stats("x", np.zeros(0), np.zeros(0))["x_length_mean"] is None


@pytest.fixture(scope="module")
def cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.ray
@pytest.mark.parametrize("rule", ["lose", "keep"])
def test_judge_actor_applies_its_rule_and_reports_lengths(cluster, rule):
    actor = JudgeActor.options(num_cpus=0).remote(judge, JudgePolicy(), rule)
    weights = [w for _, w in SOURCES]
    chunks = [actor.judge_chunk.remote(TRAINED, weights, A, B) for _ in range(2)]
    batch, info, _ = ray.get(actor.assemble.options(num_returns=3).remote(None, *chunks))
    np.testing.assert_allclose(batch.g, EXPECTED[rule] * 2, atol=1e-12)
    assert info.lengths.tolist() == [3, 8, 8, 5] * 2
    assert info.truncated.tolist() == [F, T, T, F] * 2
    # every opponent sample of both sources, per chunk: A's four then B's two
    assert info.opponent_lengths.tolist() == [2, 8, 8, 6, 4, 8] * 2
    assert info.opponent_truncated.tolist() == [F, T, T, F, F, T] * 2
    # One step of two phases: the step's logs pool both phases' responses.
    metrics = SimpleNamespace(loss=0.0, loss_initial=0.0, grad_norm=0.0, kl_anchor=0.0, kl_ref=0.0)
    metrics.tokens = 0
    recs = [
        SimpleNamespace(
            rows=8,
            seconds=1.0,
            metrics=metrics,
            staleness=0,
            workers=1,
            queries=1,
            batch=info,
            output=Version(1, "main"),
            reissues=0,
        )
        for _ in range(2)
    ]
    m = step_metrics(1, recs[:1], 1.0)
    assert m["response_truncated_fraction"] == 0.5 and m["response_length_mean"] == 6.0
    assert m["opponent_truncated_fraction"] == 0.5
    assert m["opponent_length_mean"] == pytest.approx(36 / 6)
    assert m["opponent_length_p90"] == 8.0
    assert step_metrics(1, recs, 2.0)["response_length_p90"] == 8.0
