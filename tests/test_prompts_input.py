"""The prompts task's bad input through the CLI: exit 2, one line, no run dir, nothing
logged past it (in this process, and once in a real `selfplay train` process). The
data files and the demo models are test_prompts_task's."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, Features, Value
from test_prompts_task import CHATS, ROOT, STRINGS, write_jsonl

from selfplay.errors import InputError

# ---- the CLI: bad input is one line, exit 2, nothing written -------------------------


def _config(tmp_path: Path, models, name: str) -> tuple[Path, Path]:
    """A config of its own for one case: (config file, its output_dir, not yet made)."""
    out, conf = tmp_path / name / "runs", tmp_path / name / "c.yaml"
    conf.parent.mkdir()
    conf.write_text(
        f"model: {{name: {models[0]}}}\njudge: {{kind: reward, model: {models[2]}}}\n"
        f"task: {{kind: prompts}}\ntracking: {{enabled: false}}\noutput_dir: {out}\n"
    )
    return conf, out


def _one_line_exit_2(rc: int, err: str, word: str, out: Path) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written: no run dir, not even output_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "chats.jsonl", CHATS)
    write_jsonl(d / "strings.jsonl", STRINGS)
    (d / "empty.jsonl").write_text("\n")
    write_jsonl(d / "long.jsonl", [f"word {i} " * 700 for i in range(3)])  # > 1024 tokens
    DatasetDict({"train": Dataset.from_dict({"prompt": STRINGS})}).save_to_disk(d / "dd")
    return d


BAD_INPUT = [  # (case, overrides (`{data}`, `{bare}`: filled in), word in the message)
    ("missing-dataset", ["task.dataset={data}/nope.jsonl"], "no such file"),
    (
        "missing-column",
        ["task.dataset={data}/strings.jsonl", "task.prompt_column=question"],
        "'question' is not a column of",
    ),
    (
        "no-chat-template",
        ["task.dataset={data}/chats.jsonl", "model.name={bare}"],
        "need a chat template",
    ),
    (
        "all-too-long",
        ["task.dataset={data}/strings.jsonl", "task.max_prompt_tokens=2"],
        "every train prompt",
    ),
    (
        "wrap-without-chat-template",
        ["task.dataset={data}/strings.jsonl", "task.chat_template=true", "model.name={bare}"],
        "task.chat_template: true needs a chat template",
    ),
    ("empty-split", ["task.dataset={data}/empty.jsonl"], "is empty"),
    # longer than the model's 1024 positions too: transformers' own warning stays quiet
    ("longer-than-the-model", ["task.dataset={data}/long.jsonl"], "every train prompt"),
    # refused by the config's validation, before the model loads and Ray starts
    (
        "empty-stop-string",
        ["task.dataset={data}/strings.jsonl", "rollout.stop=['']"],
        "config: rollout.stop: stop strings must be non-empty",
    ),
    (
        "template-field-in-a-spec",
        [
            "task.dataset={data}/strings.jsonl",
            "judge.kind=pairwise",
            "judge.template='{{a:{{b}}}} {{b}}'",
        ],
        "config: judge.template: {a:{b}} puts a field inside a format spec",
    ),
    (
        "template-unknown-field-in-a-spec",
        [
            "task.dataset={data}/strings.jsonl",
            "judge.kind=llm",
            "judge.template='{{a:{{__class__}}}} {{b}}'",
        ],
        "config: judge.template: unknown field {__class__} in the format spec of {a}",
    ),
    ("unknown-split", ["task.dataset={data}/dd", "task.split=validation"], "its splits: train"),
    (
        "unknown-eval-split",
        ["task.dataset={data}/dd", "task.eval_split=test"],
        "task.eval_split 'test' is not a split",
    ),
]


@pytest.mark.parametrize("case, overrides, word", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_and_writes_nothing(
    models, data, tmp_path, capfd, caplog, case, overrides, word
):
    """Through the CLI's entry point in this process (the task is bound before Ray
    starts); capfd sees every byte written to the real stdout/stderr, caplog what the
    libraries log (a handler made before the test writes past capfd)."""
    from selfplay.cli import main

    conf, out = _config(tmp_path, models, case)
    args = [o.format(data=data, bare=models[1]) for o in overrides]
    with pytest.raises(SystemExit) as e:
        main(["train", str(conf), *args])
    _one_line_exit_2(e.value.code, capfd.readouterr().err, word, out)
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not logged, logged


def test_an_unwritable_datasets_cache_is_named_as_the_reason(
    models, data, tmp_path, capfd, monkeypatch
):
    """Not "cannot load the dataset": the data is fine, the cache is not (/proc takes
    no new files; HF_DATASETS_CACHE sets this attribute when datasets is imported)."""
    import datasets

    from selfplay.cli import main

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", "/proc/hf-cache")
    conf, out = _config(tmp_path, models, "cache")
    with pytest.raises(SystemExit) as e:
        main(["train", str(conf), f"task.dataset={data}/strings.jsonl"])
    word = "the datasets cache (HF_DATASETS_CACHE) /proc/hf-cache is not writable (/proc is on"
    _one_line_exit_2(e.value.code, capfd.readouterr().err, word, out)


def test_bad_input_in_a_real_process(models, data, tmp_path):
    """`selfplay train` as a user runs it: messages without a chat template."""
    conf, out = _config(tmp_path, models, "proc")
    cmd = [sys.executable, "-m", "selfplay.cli", "train", str(conf)]
    cmd += [f"task.dataset={data}/chats.jsonl", f"model.name={models[1]}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    _one_line_exit_2(proc.returncode, proc.stderr, "need a chat template", out)


def test_an_empty_split_of_a_dataset_dict_is_one_line():
    """(`datasets` cannot reload an empty split it saved, so this one is in memory.)"""
    from selfplay.tasks.prompt_data import split_rows

    splits = {
        "test": Dataset.from_dict({"prompt": []}, features=Features({"prompt": Value("string")}))
    }
    with pytest.raises(InputError, match="task.split 'test' of 'd' is empty"):
        split_rows(splits, "d", "test", "prompt", "task.split")
