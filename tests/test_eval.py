"""`selfplay eval`, run as a user runs it (the CLI's `main`, in this module's Ray
cluster): a short token-game run that keeps its policies, and a short text run.

Oracles:
- the exact win rate between two policies of the token game, W = π_iᵀ P π_j, from the
  policies' move distributions (a plain forward of each saved model, softmax over the
  move tokens) and the game matrix: the estimate must lie within 6 standard errors
  of it (a false failure 1e-7 per cell), and not within 6 of the swapped value;
- the cache: a rerun samples nothing (the report's own count, and the cache files
  untouched) and reproduces W exactly;
- bad input: exit status 2, one line on stderr, nothing written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import demo_models, wide_band, within_band

from selfplay.cli import main
from selfplay.config import load_config
from selfplay.games.league import exact_win_rates
from selfplay.models.demo import shipped_prompts_path
from selfplay.types import Samples, Version

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "tests" / "converge.yaml"
MATRIX = CONF.with_name("weighted_rps.csv")
STEPS, KEEP = 4, 2


def _train(overrides: list[str], conf: Path = CONF) -> Path:
    from selfplay.runtime.driver.trainer import train

    cfg = load_config(conf, overrides)
    return train(cfg, progress=False).run_dir


@pytest.fixture(scope="module")
def game_run(cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("game")
    return _train(
        [
            f"task.matrix={MATRIX}",
            f"runtime.steps={STEPS}",
            f"runtime.keep_policies_every={KEEP}",
            "rollout.workers=1",
            "rollout.opponents_k=64",
            "algo.name=omwu",
            "algo.eta=2",
            "learner.updates_per_phase=16",
            f"output_dir={out}",
        ]
    )


def _eval(capsys, *args: str, mlflow: bool = False) -> tuple[dict, str]:
    """(the JSON report on stdout's last line, stderr) of `selfplay eval ARGS --json`."""
    capsys.readouterr()
    main(["eval", *args, "--json", "--no-progress", *([] if mlflow else ["--no-mlflow"])])
    out = capsys.readouterr()
    return json.loads(out.out.strip().splitlines()[-1]), out.err


def _moves(source) -> np.ndarray:
    """π(move | prompt) of a saved model (or tiny spec): its next-token softmax over the
    move tokens, computed here with a plain forward pass."""
    import torch

    from selfplay.models.load import encode_prompts, load_policy
    from selfplay.tasks.token_game import PROMPT, move_names

    model, tok = load_policy(source)
    ids = tok.convert_tokens_to_ids(move_names(3))
    x = torch.tensor([encode_prompts(tok, [PROMPT])[0]])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, -1, ids].double()
    return torch.softmax(logits, 0).numpy()


def _exact(run_dir: Path, names: list[str]) -> np.ndarray:
    from selfplay.evaluation.policies import read_run_config, reference_policy

    cfg = read_run_config(run_dir)
    src = {"reference": reference_policy(cfg).source, "final": str(run_dir / "model")}
    src.update({f"step-{s}": str(run_dir / "policies" / f"step-{s}") for s in (2, 4)})
    pis = np.stack([_moves(src[n]) for n in names])
    return exact_win_rates(pis, np.loadtxt(MATRIX, delimiter=","))


def _check_table(r: dict, m: int) -> np.ndarray:
    W = np.array(r["win_rate"])
    assert W.shape == (m, m) and len(r["policies"]) == m
    assert np.allclose(W + W.T, 1.0) and np.allclose(np.diag(W), 0.5)
    assert len(r["exploitability"]) == len(r["league_nash"]) == len(r["elo"]) == m
    assert abs(sum(r["league_nash"]) - 1) < 1e-6
    return W


def test_final_against_reference_covers_the_exact_win_rate_and_caches(game_run, capsys):
    t0 = time.perf_counter()
    r, _ = _eval(capsys, str(game_run))
    first_s = time.perf_counter() - t0
    assert r["policies"] == ["reference", "final"]
    W = _check_table(r, 2)
    exact = _exact(game_run, r["policies"])
    # The exact value lies within z·se of the estimate, z = 6.0 for U = 64 units: the
    # 95% t-interval itself would miss it 5% of the time; this misses it with
    # probability 1e-7 on any random stream (helpers.wide_band has the arithmetic).
    z, se = wide_band(W[1, 0], r["ci_low"][1][0], r["ci_high"][1][0], r["units"][1][0])
    assert abs(W[1, 0] - exact[1, 0]) <= z * se, (W, exact, z * se)
    # With reference and final swapped (a transposed table) the estimate sits near
    # exact[0, 1] = 1 − exact[1, 0], outside the same band: the run moved π from π_ref
    # by |exact − ½| ≈ 0.21 and the band needs > z·se ≈ 0.11 (se ≈ 0.018).
    assert abs(W[1, 0] - exact[0, 1]) > z * se, (W, exact, z * se)
    assert r["prompts"] == 64 and r["samples"] == 4
    assert r["sampled"] == 2 * 64 * 4 and r["cached"] == 0
    assert Path(r["plot"]).is_file() and (game_run / "eval" / "report.json").is_file()

    files = sorted((game_run / "eval" / "cache").rglob("*.json"))
    assert len(files) == 2 * 64
    stamps = [f.stat().st_mtime_ns for f in files]
    t0 = time.perf_counter()
    again, _ = _eval(capsys, str(game_run))
    second_s = time.perf_counter() - t0
    assert again["sampled"] == 0 and again["cached"] == 2 * 64 * 4
    assert again["win_rate"] == r["win_rate"]  # the same draws, judged again
    assert [f.stat().st_mtime_ns for f in files] == stamps
    with capsys.disabled():
        print(f"\neval: first {first_s:.1f}s, cached rerun {second_s:.1f}s")


def test_unusable_cache_entries_are_drawn_again_and_said(game_run, capsys):
    """Entries that are not what the cache writes: each one is a miss, drawn again
    (the same seeded draw, so the same bytes come back), and named on stderr."""
    files = sorted((game_run / "eval" / "cache").rglob("*.json"))
    assert len(files) == 2 * 64  # made by the test above
    before = {f: f.read_bytes() for f in files[:4]}
    whole = json.loads(before[files[2]])
    files[0].write_text(json.dumps({"tokens": []}))
    files[1].write_bytes(before[files[1]][: len(before[files[1]]) // 2])  # cut short
    files[2].write_text(json.dumps({k: v[:2] for k, v in whole.items()}))  # 2 of 4 rows
    rows = json.loads(before[files[3]])
    rows["lengths"][0] += 1  # disagrees with its tokens
    files[3].write_text(json.dumps(rows))
    r, err = _eval(capsys, str(game_run))
    assert r["sampled"] == 4 * 4 and r["cached"] == 2 * 64 * 4 - 4 * 4
    why = {
        files[0]: "has no 'texts'",
        files[1]: "is not valid JSON",
        files[2]: "holds 2 of 4 responses",
        files[3]: "do not agree",
    }
    notes = [line for line in err.splitlines() if line.startswith("note: eval cache entry")]
    assert len(notes) == 3 and "more eval cache entries are unusable" in err, err
    for line in notes:  # (in the order they are looked up, not the files' order)
        (f,) = [f for f in why if f"entry {f} " in line]
        assert f"entry {f} {why[f]}" in line and line.endswith("drawing it again"), line
    assert {f: f.read_bytes() for f in before} == before


def test_plot_in_a_directory_not_yet_made(game_run, capsys, tmp_path):
    plot = tmp_path / "sub" / "deeper" / "w.png"
    r, _ = _eval(capsys, str(game_run), "--plot", str(plot))
    assert r["cached"] == 2 * 64 * 4 and plot.stat().st_size > 1000
    assert r["plot"] == str(plot)


def test_league_of_kept_policies(game_run, capsys):
    r, err = _eval(capsys, "--league", str(game_run))
    # step-4 is the final policy (the last step): listed once, as `final`
    assert r["policies"] == ["reference", "step-2", "final"]
    W = _check_table(r, 3)
    exact = _exact(game_run, r["policies"])
    lo, hi = np.array(r["ci_low"]), np.array(r["ci_high"])
    # Each of the 3 pairs' exact value within its widened band (W[j, i] = 1 − W[i, j]
    # is the same check): P(a false failure) ≤ 3·1e-7 (helpers.wide_band). All three
    # 95% intervals covering would fail about 1 − 0.95³ ≈ 14% of the time.
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        ok = within_band(W[i, j], lo[i, j], hi[i, j], r["units"][i][j], exact[i, j])
        assert ok, (i, j, W, exact, lo, hi)
    # exploitability 2·max_{j≠i} W[j][i] − 1, from the table itself
    for i in range(3):
        expect = 2 * max(W[j, i] for j in range(3) if j != i) - 1
        assert abs(r["exploitability"][i] - expect) < 1e-9
    assert "win rate W[i][j]" in err and "league NE" in err  # the table, on stderr


def test_a_kept_step_by_name(game_run, capsys):
    r, _ = _eval(capsys, f"{game_run}:2", f"{game_run}")
    assert r["policies"] == ["reference", "step-2", "final"]
    assert r["cached"] == 3 * 64 * 4  # every draw was made by the tests above


def _bad(capsys, tmp_path, *args: str) -> str:
    capsys.readouterr()
    cache, plot = tmp_path / "cache", tmp_path / "p.png"
    with pytest.raises(SystemExit) as e:
        main(["eval", *args, "--cache", str(cache), "--plot", str(plot), "--no-mlflow"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert not cache.exists() and not plot.exists()
    return err


def test_bad_input_is_one_line_and_writes_nothing(game_run, capsys, tmp_path):
    before = sorted(p.name for p in game_run.rglob("*"))
    err = _bad(capsys, tmp_path, str(tmp_path / "nope"))
    assert "nope" in err and "no such run dir or model directory" in err
    err = _bad(capsys, tmp_path, f"{game_run}:3")
    assert "kept no policy at step 3; kept steps: 2, 4" in err
    assert "no such file" in _bad(capsys, tmp_path, str(game_run), "--prompts", "/nope.jsonl")
    model = str(game_run / "model")
    err = _bad(
        capsys,
        tmp_path,
        model,
        "--prompts",
        str(shipped_prompts_path("prompts.jsonl")),
        "--judge.kind",
        "reward",
        "--judge.model",
        model,
    )
    assert "at least 2 policies" in err
    assert sorted(p.name for p in game_run.rglob("*")) == before


@pytest.fixture(scope="module")
def text_run(cluster, tmp_path_factory):
    """Trained from the demo models' directory, naming them by relative paths."""
    import os
    import shutil

    policy, reward = demo_models(tmp_path_factory, "qwen2")
    shutil.copy(shipped_prompts_path("chat_prompts.jsonl"), policy.parent / "prompts.jsonl")
    out = tmp_path_factory.mktemp("text")
    here = os.getcwd()
    os.chdir(policy.parent)
    try:
        run_dir = _train(
            [
                "task.dataset=prompts.jsonl",
                f"model.name={policy.name}",
                f"judge.model={reward.name}",
                "rollout.prompts_per_step=4",
                "rollout.k=2",
                "rollout.opponents_k=2",
                "rollout.max_new_tokens=8",
                "learner.updates_per_phase=1",
                "runtime.steps=2",
                "tracking.enabled=false",
                f"output_dir={out}",
            ],
            ROOT / "conf" / "text_quickstart.yaml",
        )
    finally:
        os.chdir(here)
    return run_dir, policy


def test_a_run_is_evaluated_from_another_directory(text_run, capsys, tmp_path, monkeypatch):
    """The run recorded its relative paths absolute, so its config means the same files
    from anywhere: its base model, tokenizer and judge load from tmp_path too."""
    run_dir, policy = text_run
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.model.name == str(policy)
    assert cfg.judge.model == str(policy.parent / "reward")
    assert cfg.task.dataset == str(policy.parent / "prompts.jsonl")
    monkeypatch.chdir(tmp_path)
    r, _ = _eval(capsys, str(run_dir), "--reference", str(policy), "--num-prompts", "2")
    assert r["policies"] == ["reference", "final"] and r["prompts"] == 2


def test_text_run_against_its_reference(text_run, capsys, game_run, tmp_path, monkeypatch):
    import mlflow

    run_dir, policy = text_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    t0 = time.perf_counter()
    r, _ = _eval(capsys, str(run_dir), "--exploiter", "best-of-2", mlflow=True)
    seconds = time.perf_counter() - t0
    assert r["policies"] == ["reference", "final"]
    _check_table(r, 2)
    assert r["prompts"] == 8  # eval_fraction 0.25 of the 32 shipped chat prompts
    assert r["judge"] == "reward" and 0 < r["mean_length"]["final"] <= 8
    assert len(r["lc_win_rate"]) == 2
    # the MLflow run holds the table: W's columns, as in the report
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(
        experiment_names=["selfplay"], filter_string="tags.`selfplay.command` = 'eval'"
    ).run_id
    table = mlflow.load_table("win_rates.json", run_ids=[run])
    assert list(table["final"]) == pytest.approx([row[1] for row in r["win_rate"]])
    # the exploiter on text: 2 π_ref candidates a prompt against each policy's 4 samples,
    # its lower bound in the report and in MLflow
    ex = r["exploiter"]
    assert ex["judgments"] == 8 * 2 * 4 * 2 and set(ex["policies"]) == {"reference", "final"}
    lb = ex["policies"]["final"]["exploitability_lb"]
    assert -1 <= lb <= 1
    logged = mlflow.get_run(run).data.metrics
    assert logged["final.exploitability_lb"] == pytest.approx(lb)
    with capsys.disabled():
        print(f"\ntext eval: {seconds:.1f}s")
    # a policy of another architecture (and tokenizer) than the run's: one line
    err = _bad(capsys, tmp_path, str(run_dir), "--reference", str(game_run / "model"))
    assert "another architecture" in err


class _Judge:
    """P(a ≻ b) = len(a) / (len(a) + len(b)) by characters; NaN when a says 'nan'."""

    def prob(self, prompts, a, b):
        return np.array(
            [
                np.nan if x == "nan" else len(x) / (len(x) + len(y))
                for x, y in zip(a, b, strict=True)
            ]
        )


def _samples(texts: list[str], truncated: list[bool], k: int) -> Samples:
    n = len(texts)
    return Samples(
        prompt_ids=np.arange(n // k),
        prompt_texts=[f"q{i}" for i in range(n // k)],
        tokens=np.zeros((n, 0), dtype=np.int64),
        lengths=np.array([len(t) for t in texts]),
        logprobs=np.zeros((n, 0), dtype=np.float32),
        texts=texts,
        version=Version(0, "main"),
        k=k,
        truncated=np.array(truncated),
    )


def test_compare_pairs_row_by_row_with_the_truncation_rule_and_masking():
    from selfplay.errors import RunError
    from selfplay.runtime.workers.judging import JudgePolicy, compare_pairs

    a = _samples(["aaa", "a", "nan", "aa"], [False, True, False, True], k=2)
    b = _samples(["b", "bbb", "bb", "b"], [False, False, False, True], k=2)
    mask = JudgePolicy(retries=1, on_failure="mask")
    got = compare_pairs(_Judge(), a, b, mask, "lose")
    # by hand: judged 3/4; truncated vs finished 0; NaN masked; both truncated ½
    assert np.allclose(got.p, [0.75, 0.0, np.nan, 0.5], equal_nan=True)
    assert got.masked_pairs == 1 and got.judge_retries == 1
    keep = compare_pairs(_Judge(), a, b, mask, "keep")
    assert np.allclose(keep.p, [0.75, 0.25, np.nan, 2 / 3], equal_nan=True)
    with pytest.raises(RunError, match="judge failed on 1 of"):
        compare_pairs(_Judge(), a, b, JudgePolicy(retries=0), "lose")
