"""The prompts task (task.kind=prompts) on real data files and a real tiny chat model.

Datasets are written with pyarrow / `datasets` and read back through `datasets`; the
policy is the offline demo checkpoint (`models.demo`, ChatML template), loaded
from disk as a user's model is. Oracles: the tokenizer itself (`apply_chat_template`,
a plain `tokenizer(text)`), the rows as written, plain loops over token lengths.
Bad input goes through the CLI (`selfplay train` in a subprocess): exit 2, one line,
no run dir. One real text run (prompts task, reward judge) goes end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from selfplay.config import load_config
from selfplay.errors import InputError
from selfplay.models.demo import shipped_prompts_path
from selfplay.models.load import load_tokenizer
from selfplay.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
STRINGS = [f"Tell me about item number {i}." for i in range(20)]
CHATS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Why {i}?"}]
    for i in range(6)
]


@pytest.fixture(scope="module")
def tok(models):
    return load_tokenizer(str(models[0]))


def write_jsonl(path: Path, rows: list, column: str = "prompt") -> Path:
    path.write_text("".join(json.dumps({column: r}) + "\n" for r in rows))
    return path


def bound(tok, dataset, **task):
    cfg = load_config(
        None,
        [
            "task.kind=prompts",
            f"task.dataset={dataset}",
            "model.name=/x",
            "judge.kind=reward",
            "judge.model=/y",
            *[f"task.{k}={v}" for k, v in task.items()],
        ],
    )
    t = make_task(cfg.task)
    t.bind(tok)
    return t, cfg


def test_jsonl_parquet_and_save_to_disk_load_alike(tok, tmp_path):
    sources = [write_jsonl(tmp_path / "p.jsonl", STRINGS)]
    pq.write_table(pa.table({"prompt": STRINGS, "n": list(range(20))}), tmp_path / "p.parquet")
    sources.append(tmp_path / "p.parquet")
    DatasetDict({"train": Dataset.from_dict({"prompt": STRINGS})}).save_to_disk(tmp_path / "dd")
    Dataset.from_dict({"prompt": STRINGS}).save_to_disk(tmp_path / "ds")
    sources += [tmp_path / "dd", tmp_path / "ds"]
    for src in sources:
        t, _ = bound(tok, src, shuffle="false")
        p = t.prompts(20, 0)
        assert p.texts == STRINGS, src  # dataset order without shuffle
        assert p.ids.tolist() == list(range(20))
        # a string prompt is used as is: no chat template, the tokenizer's own specials
        assert p.rendered == STRINGS
        assert p.tokens == [tok(s, add_special_tokens=True)["input_ids"] for s in STRINGS]
        assert t.source == f"{src} [train]" and t.n is None and t.model_words() == []


def test_messages_get_the_chat_template_with_the_generation_prompt(tok, tmp_path):
    t, _ = bound(tok, write_jsonl(tmp_path / "c.jsonl", CHATS), shuffle="false")
    p = t.prompts(6, 0)
    assert p.texts == CHATS  # raw messages, for the judge's own template
    for msgs, ids, text in zip(CHATS, p.tokens, p.rendered, strict=True):
        want = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        assert ids == list(want["input_ids"])
        assert text == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert text.endswith("<|im_start|>assistant\n")
    # a string prompt with task.chat_template=true: one user message
    src = write_jsonl(tmp_path / "s.jsonl", STRINGS[:3])
    t, _ = bound(tok, src, shuffle="false", chat_template="true")
    p = t.prompts(3, 0)
    assert p.texts == STRINGS[:3]
    for s, ids in zip(STRINGS[:3], p.tokens, strict=True):
        msgs = [{"role": "user", "content": s}]
        assert ids == list(tok.apply_chat_template(msgs, add_generation_prompt=True)["input_ids"])


def test_max_prompt_tokens_drops_and_counts(tok, tmp_path, capsys):
    rows = [" ".join(["word"] * k) + "." for k in range(1, 13)]
    lengths = [len(tok(r)["input_ids"]) for r in rows]
    limit = sorted(lengths)[7]  # keeps 8 (lengths strictly increase), drops 4
    assert len(set(lengths)) == len(rows)
    kept = [r for r, n in zip(rows, lengths, strict=True) if n <= limit]
    t, _ = bound(
        tok, write_jsonl(tmp_path / "m.jsonl", rows), shuffle="false", max_prompt_tokens=limit
    )
    assert len(kept) == 8 and t.prompts(8, 0).texts == kept
    assert t.prompts(1, 8).texts == kept[:1]  # the next epoch: only kept prompts
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dropped 4 of 12 prompts" in err[0], err
    s = t.evaluator(tok, 0.0).summary(None)
    assert (s["dropped_over_max_prompt_tokens"], s["train_prompts"]) == (4, 8)
    assert s["prompts_drawn"] == 9 and s["epochs"] == pytest.approx(9 / 8)


def test_eval_fraction_is_seeded_and_disjoint(tok, tmp_path):
    src = write_jsonl(tmp_path / "e.jsonl", STRINGS)
    t, _ = bound(tok, src, eval_fraction=0.25, seed=3, shuffle="false")
    train, held = t.prompts(15, 0).texts, t.eval_prompts()
    assert len(held) == 5 and held.ids.tolist() == list(range(5))
    assert not set(train) & set(held.texts) and set(train) | set(held.texts) == set(STRINGS)
    assert held.texts == [s for s in STRINGS if s in held.texts]  # dataset order
    assert held.tokens == [tok(s)["input_ids"] for s in held.texts]
    again, _ = bound(tok, src, eval_fraction=0.25, seed=3, shuffle="false")
    assert again.eval_prompts().texts == held.texts
    # the seed picks the held-out prompts (four seeds agreeing: odds 1 in 15504**3)
    picks = {
        tuple(bound(tok, src, eval_fraction=0.25, seed=s)[0].eval_prompts().texts)
        for s in (4, 5, 6)
    }
    assert len(picks | {tuple(held.texts)}) > 1
    # task.eval_split: another split of the same dataset
    DatasetDict(
        {
            "train": Dataset.from_dict({"prompt": STRINGS}),
            "test": Dataset.from_dict({"prompt": ["a?", "b?"]}),
        }
    ).save_to_disk(tmp_path / "dd")
    t, _ = bound(tok, tmp_path / "dd", eval_split="test")
    assert t.eval_prompts().texts == ["a?", "b?"] and sorted(t.prompts(20, 0).texts) == sorted(
        STRINGS
    )


def test_epochs_reshuffle_but_ids_are_stable_and_resume_continues(tok, tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", STRINGS)
    t, _ = bound(tok, src, seed=7)
    n = len(STRINGS)
    e0, e1 = t.prompts(n, 0), t.prompts(n, n)
    assert sorted(e0.texts) == sorted(e1.texts) == sorted(STRINGS)  # each prompt once per epoch
    assert e0.texts != e1.texts and e0.texts != STRINGS  # a new order each epoch
    assert e1.ids.tolist() == list(range(n, 2 * n))
    whole = t.prompts(50, 0)
    for a in (0, 1, 13, 20, 33):  # a cursor: what a resumed run asks next
        fresh, _ = bound(tok, src, seed=7)  # a resumed run is a new process
        head, tail = t.prompts(a, 0), fresh.prompts(50 - a, a)
        assert head.ids.tolist() + tail.ids.tolist() == whole.ids.tolist()
        assert head.texts + tail.texts == whole.texts
        assert head.tokens + tail.tokens == whole.tokens
    other, _ = bound(tok, src, seed=8)
    assert other.prompts(n, 0).texts != e0.texts
    plain, _ = bound(tok, src, shuffle="false")
    assert plain.prompts(2 * n + 3, 0).texts == STRINGS * 2 + STRINGS[:3]


def test_sampling_and_judge_come_from_their_sections(tok, tmp_path):
    t, cfg = bound(tok, write_jsonl(tmp_path / "j.jsonl", STRINGS[:2]))
    cfg.rollout.stop = ["\n\n"]
    s = t.sampling(tok, cfg.rollout)
    r = cfg.rollout
    assert (s.max_new_tokens, s.temperature, s.explore_temperature, s.top_p, s.top_k) == (
        r.max_new_tokens,
        r.temperature,
        r.explore_temperature,
        r.top_p,
        r.top_k,
    )
    assert s.stop == ("\n\n",) and s.allowed_token_ids is None
    j = t.judge_spec(cfg.judge)
    assert (j.kind, j.model, j.template, j.batch_size) == ("reward", "/y", None, 64)


@pytest.mark.parametrize(
    "row, word",
    [(3, "row 1: a prompt must be"), ([{"role": "user"}], "row 1"), ([], "row 1")],
)
def test_a_bad_row_is_one_line(tok, tmp_path, row, word):
    with pytest.raises(InputError, match=word):
        bound(tok, write_jsonl(tmp_path / "b.jsonl", ["fine", row]))


def test_reward_judge_scores_message_prompts_through_its_template(models):
    import torch

    from selfplay.judges.factory import JudgeSpec, make_judge
    from selfplay.models.load import load_classifier

    judge = make_judge(JudgeSpec(kind="reward", batch_size=3, model=str(models[2])))
    model, rtok = load_classifier(str(models[2]))
    prompts, a, b = [CHATS[0], CHATS[1], "plain"], ["yes", "no", "x"], ["no", "no", "y"]

    def r(p, y):  # a plain forward of the reward model on the chat-rendered pair
        msgs = ([{"role": "user", "content": p}] if isinstance(p, str) else p) + [
            {"role": "assistant", "content": y}
        ]
        ids = rtok.apply_chat_template(msgs, tokenize=True)["input_ids"]
        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].double().item()

    want = [1 / (1 + np.exp(-(r(p, x) - r(p, y)))) for p, x, y in zip(prompts, a, b, strict=True)]
    got = judge.prob(prompts, a, b)
    assert got[1] == 0.5 and np.allclose(got, want, atol=1e-6)


# ---- a real text run ----------------------------------------------------------------


def test_a_text_run_end_to_end(cluster, models, tmp_path):
    """task.kind=prompts on the demo policy, judged by the demo reward model: it trains,
    draws prompts 0, 1, 2, ... from the cursor, and reports the dataset's facts."""
    from selfplay.runtime.driver.trainer import train

    chats = shipped_prompts_path("chat_prompts.jsonl")
    n = sum(1 for line in chats.read_text().splitlines() if line.strip())
    cfg = load_config(
        None,
        [
            "task.kind=prompts",
            f"task.dataset={chats}",
            "task.eval_fraction=0.25",
            f"model.name={models[0]}",
            "judge.kind=reward",
            f"judge.model={models[2]}",
            "runtime.steps=2",
            "runtime.checkpoint_every=0",
            "rollout.prompts_per_step=4",
            "rollout.k=2",
            "rollout.opponents_k=2",
            "rollout.max_new_tokens=6",
            "learner.updates_per_phase=1",
            "tracking.enabled=false",
            f"output_dir={tmp_path}",
        ],
    )
    res = train(cfg, progress=False)
    s, held = res.summary, round(0.25 * n)
    assert (s["train_prompts"], s["eval_prompts"], s["prompts_drawn"]) == (n - held, held, 8)
    assert [r.prompt_ids.tolist() for r in res.records] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [h["step"] for h in res.history] == [0, 1, 2]
    assert all(np.isfinite(h["kl_ref"]) and h["kl_ref"] >= 0 for h in res.history[1:])
    assert (res.run_dir / "kl_ref.png").is_file()
    assert f"prompts: {n - held} train, {held} held out" in res.text
