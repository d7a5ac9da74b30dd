"""Model judges on raw prompts (a string or a list of {role, content} messages), each
through its own chat template, and the judge model checked on the driver.

Oracles: the demo checkpoints' ChatML written out by hand as text, then one plain
forward pass of the judge model per row (reward: σ(r_a − r_b); pairwise: the
symmetrised σ(logit) of the template; llm: the symmetrised softmax over the A/B
answer logits).
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import demo_models

from selfplay.cli import main
from selfplay.errors import InputError
from selfplay.judges.base import as_messages, check_template, prompt_key, prompt_text
from selfplay.judges.factory import JudgeSpec, check_judge_spec, make_judge

SYSTEM = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "say hi"}]
TURNS = [
    {"role": "user", "content": "name a fruit"},
    {"role": "assistant", "content": "apple"},
    {"role": "user", "content": "another one"},
]
PROMPTS = [SYSTEM, "say hi", [{"role": "user", "content": "say hi"}], TURNS, SYSTEM]
A = ["hello there", "hi", "hi", "pear", "hello there"]
B = ["hey", "hello", "hello", "a banana", "hello there"]


def chatml(messages) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_models(tmp_path_factory)


@pytest.fixture(scope="module")
def judges(demo):
    policy, reward = (str(p) for p in demo)
    return {
        "reward": make_judge(JudgeSpec(kind="reward", batch_size=3, model=reward)),
        "pairwise": make_judge(JudgeSpec(kind="pairwise", batch_size=4, model=reward)),
        "llm": make_judge(JudgeSpec(kind="llm", batch_size=4, model=policy)),
    }


def _forward(model, tok, text: str, add_special: bool) -> torch.Tensor:
    ids = torch.tensor([tok(text, add_special_tokens=add_special)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits[0]


def test_prompt_forms():
    assert as_messages("x") == [{"role": "user", "content": "x"}]
    assert prompt_text("x") == prompt_text([{"role": "user", "content": "x"}]) == "x"
    assert prompt_text(SYSTEM) == "system: Be brief.\nuser: say hi"
    keys = [prompt_key(p) for p in PROMPTS]
    assert len(set(keys)) == 4 and sorted(keys)[0] == (0, "say hi")  # hashable, ordered
    with pytest.raises(ValueError, match="role"):
        as_messages([{"role": "user"}])


def test_reward_judge_renders_messages_with_its_own_template(judges):
    j = judges["reward"]

    def r(prompt, resp):
        msgs = as_messages(prompt) + [{"role": "assistant", "content": resp}]
        return _forward(j.model, j.tokenizer, chatml(msgs), False)[0].item()

    want = [1 / (1 + np.exp(r(p, b) - r(p, a))) for p, a, b in zip(PROMPTS, A, B, strict=True)]
    got = j.prob(PROMPTS, A, B)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert got[1] == got[2]  # a string is the same prompt as one user message
    assert got[4] == 0.5 and np.abs(got[:4] - 0.5).min() > 1e-4  # ties itself; not constant
    np.testing.assert_allclose(got + j.prob(PROMPTS, B, A), 1.0, atol=1e-12, rtol=0)


def test_pairwise_judge_fills_the_template_with_the_prompt_text(judges):
    j = judges["pairwise"]

    def p(prompt, a, b):
        text = f"{prompt} [SEP] A: {a} [SEP] B: {b}"
        return torch.sigmoid(_forward(j.model, j.tokenizer, text, True)[0]).item()

    texts = ["system: Be brief.\nuser: say hi", "say hi", "say hi", None, None]
    texts[3] = "user: name a fruit\nassistant: apple\nuser: another one"
    texts[4] = texts[0]
    want = [0.5 * (p(q, a, b) + 1 - p(q, b, a)) for q, a, b in zip(texts, A, B, strict=True)]
    want[4] = 0.5
    np.testing.assert_allclose(j.prob(PROMPTS, A, B), want, atol=1e-6, rtol=0)


def test_llm_judge_reads_answer_logits_under_its_chat_template(judges):
    j = judges["llm"]
    ia, ib = j.answer_ids

    def p(prompt, a, b):
        q = f"Question: {prompt_text(prompt)} Answer A: {a} Answer B: {b} Which is better? A or B"
        last = _forward(
            j.model, j.tokenizer, chatml(as_messages(q)) + "<|im_start|>assistant\n", False
        )
        return torch.softmax(last[-1, [ia, ib]].double(), 0)[0].item()

    want = [0.5 * (p(q, a, b) + 1 - p(q, b, a)) for q, a, b in zip(PROMPTS, A, B, strict=True)]
    want[4] = 0.5
    np.testing.assert_allclose(j.prob(PROMPTS, A, B), want, atol=1e-6, rtol=0)


def test_templates_are_checked():
    check_template("{prompt} | {a} | {b} {{literal}}")
    check_template("{a!r} {b:>3}")  # a conversion and a text spec format text
    for bad, word in (
        ("{prompt} {a}", "both"),
        ("{a} {b} {c}", "{c}"),
        ("{a} {b} {", "formatted"),
        # a field inside a format spec: known or not, it is refused
        ("{a:{b}} {b}", "inside a format spec"),
        ("{a:{__class__}} {b}", "unknown field {__class__}"),
        ("{a:{__class__}}", "unknown field {__class__}"),
        ("{a.upper} {b}", "unknown field {a.upper}"),
        ("{a!x} {b}", "formatted"),
        ("{a:d} {b}", "formatted"),
    ):
        with pytest.raises(InputError, match=re.escape(word)):
            check_template(bad)


@pytest.fixture(scope="module")
def bad_dirs(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_judges")
    pickles = root / "pickles"
    shutil.copytree(demo[1], pickles)
    for f in pickles.glob("*.safetensors"):
        f.unlink()
    (pickles / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    two = root / "two_labels"
    shutil.copytree(demo[1], two)
    cfg = json.loads((two / "config.json").read_text())
    cfg["id2label"], cfg["label2id"] = {"0": "bad", "1": "good"}, {"bad": 0, "good": 1}
    (two / "config.json").write_text(json.dumps(cfg))
    return {"missing": str(root / "missing"), "pickles": str(pickles), "two": str(two)}


def test_check_judge_spec(demo, bad_dirs):
    policy, reward = (str(p) for p in demo)
    for kind, model in (("reward", reward), ("pairwise", reward), ("llm", policy)):
        check_judge_spec(JudgeSpec(kind=kind, batch_size=1, model=model))
    check_judge_spec(JudgeSpec(kind="game", batch_size=1))  # nothing to load
    cases = [
        (JudgeSpec(kind="reward", batch_size=1, model=bad_dirs["missing"]), "no such directory"),
        (JudgeSpec(kind="pairwise", batch_size=1, model=bad_dirs["pickles"]), "no safetensors"),
        (JudgeSpec(kind="reward", batch_size=1, model=bad_dirs["two"]), "2 labels"),
        (JudgeSpec(kind="reward", batch_size=1, model=reward, template="{a}{b}"), "template"),
        (JudgeSpec(kind="llm", batch_size=1, model=policy, template="{a} {x} {b}"), "{x}"),
        (JudgeSpec(kind="llm", batch_size=1), "needs judge.model"),
    ]
    for spec, word in cases:
        with pytest.raises(InputError, match=word):
            check_judge_spec(spec)


@pytest.mark.parametrize(
    "which, word",
    [("missing", "no such directory"), ("pickles", "no safetensors"), ("two", "2 labels")],
)
def test_train_refuses_a_bad_judge_before_anything_starts(
    demo, bad_dirs, tmp_path, capsys, which, word
):
    """One line, exit 2, nothing written, before Ray starts (the prompts task is not needed:
    the judge is checked first)."""
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "say hi"}\n')
    out_dir = tmp_path / "runs"
    conf = tmp_path / "text.yaml"
    conf.write_text("task:\n  kind: prompts\n")
    args = [
        "train",
        str(conf),
        f"task.dataset={data}",
        f"model.name={demo[0]}",
        "judge.kind=reward",
        f"judge.model={bad_dirs[which]}",
        f"output_dir={out_dir}",
        "tracking.enabled=false",
    ]
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], err
    assert not out_dir.exists() or not any(out_dir.iterdir())
    import ray

    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "policy, judge, word",
    [
        (0, ("llm", 1), "judge.model (judge.kind=llm) "),  # a reward model as the llm judge
        (1, ("reward", 1), "model.name "),  # a reward model as the policy
    ],
)
def test_train_refuses_a_model_whose_weights_are_missing(
    demo, tmp_path, capsys, policy, judge, word
):
    """Random weights are never trained or judged with: one line naming the key, exit 2,
    before Ray starts."""
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "say hi"}\n')
    out_dir = tmp_path / "runs"
    conf = tmp_path / "text.yaml"
    conf.write_text("task:\n  kind: prompts\n")
    args = [
        "train",
        str(conf),
        f"task.dataset={data}",
        f"model.name={demo[policy]}",
        f"judge.kind={judge[0]}",
        f"judge.model={demo[judge[1]]}",
        f"output_dir={out_dir}",
        "tracking.enabled=false",
    ]
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {word}") and "lacks weights" in line, line
    assert "(lm_head.weight)" in line
    import ray

    assert not ray.is_initialized()
