"""Sampled evaluation during training (`eval.every`, `eval.exploiter`).

Oracles:
- `eval_metrics` against the statistics written out here: the mean of per-prompt
  means, the t-interval over prompts from scipy's t quantile, the mean log-ratio;
- a real `selfplay train` of a transitive token game, where the policy moves well away
  from π_ref: the sampled win rate and KL against the exact π P π_ref and
  Σ π log(π/π_ref) computed here from the run's own exact policy table (a flipped
  sign would put the estimate near 1 − exact); MLflow's metric history and the plot;
  π_ref's draws cached once and reused by the second evaluation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import bernstein_half, wide_band
from scipy import stats
from test_resume import QUICKSTART, run

from selfplay.runtime.driver.evaluate import eval_metrics
from selfplay.types import Samples, Version


def _samples(lengths, truncated) -> Samples:
    n = len(lengths)
    return Samples(
        prompt_ids=np.zeros(1, np.int64),
        prompt_texts=["x"],
        tokens=np.zeros((n, max(lengths)), np.int64),
        lengths=np.asarray(lengths, np.int64),
        logprobs=np.zeros((n, 0), np.float32),
        texts=None,
        version=Version(1, "main"),
        k=n,
        truncated=np.asarray(truncated, bool),
    )


def test_eval_metrics_against_the_statistics_written_out():
    rng = np.random.default_rng(3)
    U, S = 7, 5
    p = rng.random((U, S))
    p[2, 1] = np.nan  # a masked comparison leaves its prompt's other samples
    cur = [_samples(rng.integers(1, 9, S), rng.random(S) < 0.3) for _ in range(U)]
    ref = [_samples(rng.integers(1, 9, S), rng.random(S) < 0.5) for _ in range(U)]
    logq = [rng.normal(-3, 1, S) for _ in range(U)]
    logr = [rng.normal(-4, 1, S) for _ in range(U)]
    m = eval_metrics(p, cur, ref, logq, logr)

    means = np.array([np.nanmean(row) for row in p])
    half = stats.t.ppf(0.975, U - 1) * means.std(ddof=1) / np.sqrt(U)
    assert m["eval/win_rate"] == pytest.approx(means.mean(), abs=1e-12)
    assert m["eval/win_rate_low"] == pytest.approx(means.mean() - half, abs=1e-12)
    assert m["eval/win_rate_high"] == pytest.approx(means.mean() + half, abs=1e-12)
    kl = np.mean(
        [q - r for a, b in zip(logq, logr, strict=True) for q, r in zip(a, b, strict=True)]
    )
    assert m["eval/kl_ref"] == pytest.approx(kl, abs=1e-12)
    assert m["eval/length"] == pytest.approx(np.mean([s.lengths for s in cur]))
    assert m["eval/length_ref"] == pytest.approx(np.mean([s.lengths for s in ref]))
    assert m["eval/truncated"] == pytest.approx(np.mean([s.truncated for s in cur]))
    assert m["eval/truncated_ref"] == pytest.approx(np.mean([s.truncated for s in ref]))
    assert 0 < m["eval/win_rate_lc"] < 1


STEPS, EVERY, UNITS, SAMPLES, CANDIDATES = 4, 2, 32, 8, 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_eval")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    res = run(
        str(QUICKSTART),
        "task.generate=transitive",
        f"runtime.steps={STEPS}",
        "rollout.opponents_k=64",
        "learner.updates_per_phase=8",
        "model.tiny.hidden=8",
        "model.tiny.layers=1",
        f"eval.every={EVERY}",
        f"eval.prompts={UNITS}",
        f"eval.samples={SAMPLES}",
        f"eval.exploiter=best-of-{CANDIDATES}",
        f"tracking.uri={uri}",
        f"output_dir={out / 'runs'}",
        "--json",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # the closing line names the exploiter's lower bound (`report.format_eval`)
    assert "(best-of-N from π_ref)" in res.stdout + res.stderr, res.stderr[-2000:]
    run_dir = next((out / "runs").iterdir())
    history = json.loads((run_dir / "history.json").read_text())
    return run_dir, history, json.loads(res.stdout.strip().splitlines()[-1]), uri


def _exact(summary, policy) -> tuple[float, float, float]:
    """(π P π_ref, KL(π‖π_ref), the Bernstein half-width of the KL estimate): the
    estimate is the mean of log π(y)/π_ref(y) over UNITS·SAMPLES iid y ~ π, whose
    variance and range are known exactly here."""
    from selfplay.config import load_config
    from selfplay.tasks.token_game import from_config

    cfg = load_config(QUICKSTART)
    P = from_config(cfg.task.model_copy(update={"generate": "transitive"})).P
    pi, ref = np.asarray(policy), np.asarray(summary["reference_policy"])
    x = np.log(pi / ref)
    kl = float(np.sum(pi * x))
    var = float(np.sum(pi * (x - kl) ** 2))
    spread = float(np.abs(x - kl)[pi > 0].max())
    return float(pi @ P @ ref), kl, bernstein_half(var, spread, UNITS * SAMPLES)


def test_estimates_sit_beside_the_exact_values(trained):
    _, history, summary, _ = trained
    evaluated = [h for h in history if "eval/win_rate" in h]
    assert [h["step"] for h in evaluated] == list(range(EVERY, STEPS + 1, EVERY))
    for h in evaluated:
        win, kl, kl_half = _exact(summary, h["policy"])
        assert h["eval/win_rate_exact"] == pytest.approx(win, abs=1e-9)
        assert h["eval/kl_ref_exact"] == pytest.approx(kl, abs=1e-9)
        # The exact win rate within z·se of the estimate, z = 6.9 (t_31 at 1e-7, 32
        # prompts; se ≈ 0.015 from the ±0.03 interval): a false failure 1e-7 per
        # evaluation on any random stream (helpers.wide_band).
        est, low, high = h["eval/win_rate"], h["eval/win_rate_low"], h["eval/win_rate_high"]
        z, se = wide_band(est, low, high, UNITS)
        assert abs(est - win) <= z * se, (est, win, z * se)
        assert low <= est <= high
        # The KL estimate within Bernstein's 1e-7 half-width of the exact KL.
        assert abs(h["eval/kl_ref"] - kl) <= kl_half, (h["eval/kl_ref"], kl, kl_half)
        assert h["eval/length"] == h["eval/length_ref"] == 1.0  # one move per response
    # The policy left π_ref far enough that a flipped win rate (1 − exact, a sign
    # error) lies outside the last evaluation's band, and a KL of 0 outside its bound.
    assert abs(est - (1 - win)) > z * se, (est, win, z * se)
    assert kl > kl_half, (kl, kl_half)
    assert summary["eval"]["step"] == STEPS


def test_the_exploiters_estimate_against_its_procedures_value(trained):
    """eval/exploitability_lb (best-of-4 π_ref candidates, cross-fitted on 8 samples)
    within the 6-SE band of the procedure's true value, computed by the plain Monte
    Carlo loop of test_exploiter from the run's exact policy and π_ref tables; and
    below the exact gap's band."""
    from test_exploiter import _procedure_value

    from selfplay.config import load_config
    from selfplay.tasks.token_game import from_config

    _, history, summary, _ = trained
    P = from_config(load_config(QUICKSTART).task.model_copy(update={"generate": "transitive"})).P
    ref = np.asarray(summary["reference_policy"])
    rng = np.random.default_rng(5)
    for h in (h for h in history if "eval/win_rate" in h):
        pi = np.asarray(h["policy"]) / np.sum(h["policy"])
        truth = _procedure_value(P, pi, ref, CANDIDATES, SAMPLES, 20_000, rng)
        w, lb = h["eval/exploiter_win_rate"], h["eval/exploitability_lb"]
        lo, hi = (
            (h["eval/exploitability_lb_low"] + 1) / 2,
            (h["eval/exploitability_lb_high"] + 1) / 2,
        )
        assert lb == pytest.approx(2 * w - 1)
        z, se = wide_band(w, lo, hi, UNITS)
        assert abs(w - truth) <= z * se, (h["step"], w, truth, z * se)
        assert w <= float((P @ pi).max()) + z * se  # a lower bound on the best response


def test_mlflow_holds_the_eval_metrics_and_the_plot(trained):
    from mlflow.tracking import MlflowClient

    run_dir, history, _, uri = trained
    client = MlflowClient(tracking_uri=uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "selfplay"]
    (r,) = client.search_runs([exp.experiment_id])
    got = client.get_metric_history(r.info.run_id, "eval/win_rate")
    want = {h["step"]: h["eval/win_rate"] for h in history if "eval/win_rate" in h}
    assert {m.step: m.value for m in got} == pytest.approx(want)
    assert (run_dir / "eval" / "win_rate.png").stat().st_size > 10_000
    arts = [a.path for a in client.list_artifacts(r.info.run_id)]
    assert "win_rate.png" in arts


def test_reference_draws_are_cached_once_and_reused(trained):
    run_dir, *_ = trained
    files = list((run_dir / "eval" / "cache").rglob("*.json"))
    # π_ref's draws only (one file per prompt, for the win rate and for the exploiter's
    # candidates), written by the first evaluation
    assert len(files) == 2 * UNITS
    assert len({f.parent for f in files}) == 2
    draws = sorted(len(json.loads(f.read_text())["tokens"]) for f in files)
    assert draws == [CANDIDATES] * UNITS + [SAMPLES] * UNITS
    # drawn before training started (`SampledEval.prepare`), not ahead of a later step
    first_step = (run_dir / "rollouts" / "step-000001.parquet").stat().st_mtime
    assert max(f.stat().st_mtime for f in files) < first_step


def test_eval_without_held_out_prompts_is_one_line(tmp_path_factory):
    from helpers import demo_models

    policy, reward = demo_models(tmp_path_factory)
    data = policy.parent / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}"}) + "\n" for i in range(6)))
    res = run(
        str(QUICKSTART.parent / "text_quickstart.yaml"),
        f"model.name={policy}",
        f"judge.model={reward}",
        f"task.dataset={data}",
        "task.eval_fraction=0",
        "eval.every=5",
        f"output_dir={policy.parent / 'runs'}",
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "needs at least 2 held-out prompts" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (policy.parent / "runs").exists()  # refused before anything was written


class _Method:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def remote(self, *args):
        self.log.append((self.name, args[0]))


class _Worker:
    """Records the calls the pool makes on a rollout worker, in order."""

    def __init__(self):
        self.log = []
        self.load, self.drop = _Method(self.log, "load"), _Method(self.log, "drop")


def test_pool_lends_versions_for_evaluation_and_takes_them_back():
    from selfplay.runtime.workers.pool import RolloutPool

    w = _Worker()
    pool = RolloutPool([w])
    a, b, ref = Version(1, "main"), Version(2, "main"), Version(0, "ref")
    refs = {a: "ra", b: "rb", ref: "rref"}
    pool.prepare(w, {a}, refs)  # training loaded π_1 with a `sample` call
    pool.drop([a])  # released: due with the worker's next call
    lent = pool.lend(w, {b, ref}, refs)
    assert sorted(lent) == sorted([b, ref])
    assert w.log[0] == ("drop", a)  # the due drop first
    assert sorted(w.log[1:]) == sorted([("load", b), ("load", ref)])
    pool.unload(w, [ref])
    assert w.log[-1] == ("drop", ref)
    # the pool knows π_ref is gone: a later call that needs it loads it again, not π_2
    load, drop = pool.prepare(w, {b, ref}, refs)
    assert [v for v, _ in load] == [ref] and drop == []


def test_a_batched_draw_splits_into_per_prompt_units():
    """`Samples.split`: the evaluation's batched draw handed on per prompt, every
    per-row field cut to the prompt's rows and every per-prompt field to its own."""
    s = Samples(
        prompt_ids=np.array([4, 9]),
        prompt_texts=["a", "b"],
        tokens=np.arange(6)[:, None],
        lengths=np.array([1, 1, 1, 2, 2, 2]),
        logprobs=-np.arange(6, dtype=np.float32)[:, None],
        texts=list("uvwxyz"),
        version=Version(3, "main"),
        k=3,
        prompt_tokens=[[1, 2], [5]],
        truncated=np.array([0, 0, 1, 0, 1, 1], bool),
        prompt_rendered=["A", "B"],
    )
    a, b = s.split()
    assert b.prompt_ids.tolist() == [9] and b.prompt_texts == ["b"] and b.k == 3
    assert b.tokens[:, 0].tolist() == [3, 4, 5] and b.lengths.tolist() == [2, 2, 2]
    assert b.logprobs[:, 0].tolist() == [-3, -4, -5] and b.texts == ["x", "y", "z"]
    assert b.prompt_tokens == [[5]] and b.prompt_rendered == ["B"]
    assert a.truncated.tolist() == [False, False, True] and a.version == s.version
