"""Text NLHF through `selfplay train`, as a user runs it: the demo chat policy on the
shipped chat prompts, judged by each model judge kind; and a resumed run that
continues the prompt order.

Oracles: the rollout files themselves. Every trained-on row of step s answers a prompt
id in [(s−1)·P, s·P) (the cursor, one id per prompt), each id K times; over a run
resumed midway the ids are 0..steps·P−1, each exactly K times (nothing lost, nothing
repeated). The exported model loads with plain transformers.
"""

from __future__ import annotations

import collections
import json

import pyarrow.parquet as pq
import pytest
from helpers import demo_models
from test_resume import ENV, ROOT, SELFPLAY
from transformers import AutoModelForCausalLM

from selfplay.models.demo import shipped_prompts_path

pytestmark = pytest.mark.ray
P, K = 4, 2


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_models(tmp_path_factory, "qwen2")


def _resume(run_dir, *extra, timeout=400):
    import subprocess

    args = [SELFPLAY, "train", "--resume", str(run_dir), "--no-progress", "--json", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV)


def _train(demo, out, *extra, timeout=400):
    import subprocess

    policy, reward = demo
    args = [
        SELFPLAY,
        "train",
        str(ROOT / "conf" / "text_quickstart.yaml"),
        f"task.dataset={shipped_prompts_path('chat_prompts.jsonl')}",
        f"model.name={policy}",
        f"judge.model={reward}",
        "judge.kind=reward",
        f"rollout.prompts_per_step={P}",
        f"rollout.k={K}",
        "rollout.opponents_k=2",
        "rollout.max_new_tokens=6",
        "rollout.truncated=keep",
        "learner.updates_per_phase=1",
        "learner.lr=0.001",
        "runtime.checkpoint_every=1",
        "tracking.enabled=false",
        f"output_dir={out}",
        "--no-progress",
        "--json",
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV)


def _trained_ids(run_dir, steps):
    ids = []
    for s in range(1, steps + 1):
        rows = pq.read_table(run_dir / "rollouts" / f"step-{s:06d}.parquet").to_pylist()
        got = [r["prompt_id"] for r in rows if r["role"] == "trained"]
        assert sorted(set(got)) == list(range((s - 1) * P, s * P)), (s, got)
        ids += got
    return ids


def test_a_resumed_text_run_continues_the_prompt_order(demo, tmp_path):
    res = _train(demo, tmp_path, "runtime.steps=2")
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    res = _resume(run_dir, "runtime.steps=4")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = collections.Counter(_trained_ids(run_dir, 4))
    assert counts == {i: K for i in range(4 * P)}
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["preference_queries"] > 0
    rows = pq.read_table(run_dir / "rollouts" / "step-000004.parquet").to_pylist()
    assert all("<|im_start|>assistant" in r["prompt"] for r in rows)  # the rendered prompt
    assert all(len(r["response_tokens"]) <= 6 for r in rows)
    AutoModelForCausalLM.from_pretrained(run_dir / "model")


@pytest.mark.parametrize("kind", ["pairwise", "llm"])
def test_each_model_judge_kind_trains_end_to_end(demo, tmp_path, kind):
    policy, reward = demo
    model = reward if kind == "pairwise" else policy  # a one-logit classifier / a causal LM
    res = _train(demo, tmp_path, f"judge.kind={kind}", f"judge.model={model}", "runtime.steps=1")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["preference_queries"] > 0 and summary["samples"] == P * K
    (run_dir,) = tmp_path.iterdir()
    g = [r["g"] for r in pq.read_table(next((run_dir / "rollouts").iterdir())).to_pylist()]
    assert all(x is None or 0.0 <= x <= 1.0 for x in g) and any(x is not None for x in g)
