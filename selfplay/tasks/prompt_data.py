"""Reading prompts from a dataset with `datasets`, every failure one `InputError` line.

Sources (`task.dataset`):

- a local file `.jsonl`, `.json`, `.csv` or `.parquet`: one split, named `train`;
- a directory written by `Dataset.save_to_disk` (one split, `train`) or
  `DatasetDict.save_to_disk` (its own splits);
- any other directory (data files whose names give the splits, as `load_dataset`
  infers them) or a hub name, through `datasets.load_dataset`.

A prompt is a string or a non-empty list of {role, content} messages with string
values; messages keep only those two keys.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from selfplay.errors import InputError
from selfplay.models.hub import offline_unless_reachable
from selfplay.types import RawPrompt

#: data-file suffix -> the `datasets` builder that reads it
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _first_line(e: BaseException) -> str:
    """The root cause's first line (datasets wraps the reader's error in its own)."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


#: a text data file smaller than this is read whole to see whether it holds anything
_SNIFF_BYTES = 1 << 16


def _is_empty_file(p: Path) -> bool:
    """A data file with no rows, which `datasets` cannot load (it raises, unhelpfully)."""
    size = p.stat().st_size
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_metadata(p).num_rows == 0
        except Exception:  # not parquet: datasets says so below
            return False
    if size > _SNIFF_BYTES:
        return False
    return not p.read_bytes().strip()


@contextlib.contextmanager
def _quiet():
    """No progress bars, notes or retry warnings from datasets and the hub client while
    loading: a failure is reported once, as the one-line InputError."""
    import datasets

    loggers = [logging.getLogger(n) for n in ("datasets", "huggingface_hub", "fsspec")]
    levels = [lg.level for lg in loggers]
    bars_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if bars_on:
            datasets.enable_progress_bars()


def _is_saved(p: Path) -> bool:
    """A `save_to_disk` directory: a DatasetDict's index, or a Dataset's state."""
    return (p / "dataset_dict.json").is_file() or (p / "state.json").is_file()


def load_splits(name: str) -> dict:
    """{split name: datasets.Dataset} of `task.dataset`."""
    import datasets

    p = Path(name).expanduser()
    looks_local = p.suffix.lower() in FILE_BUILDERS or name.startswith(("/", ".", "~"))
    if not p.exists() and looks_local:
        raise InputError(f"task.dataset {name!r}: no such file or directory")
    with _quiet():
        return _load(datasets, name, p)


def _check_cache(datasets) -> None:
    """`load_dataset` writes its Arrow cache under HF_DATASETS_CACHE, even for a local
    file: an unwritable one is named as the reason, not blamed on the data."""
    from selfplay.outputs import check_writable_dir

    check_writable_dir(datasets.config.HF_DATASETS_CACHE, "the datasets cache (HF_DATASETS_CACHE)")


def _load(datasets, name: str, p: Path) -> dict:
    try:
        if p.is_file():
            builder = FILE_BUILDERS.get(p.suffix.lower())
            if builder is None:
                raise InputError(
                    f"task.dataset {name!r}: unknown file type {p.suffix!r}; expected "
                    f"{', '.join(FILE_BUILDERS)}, a save_to_disk directory or a hub name"
                )
            if _is_empty_file(p):
                raise InputError(f"task.split 'train' of {name!r} is empty: the file has no rows")
            _check_cache(datasets)
            out = datasets.load_dataset(builder, data_files={"train": str(p)})
        elif p.is_dir() and _is_saved(p):
            out = datasets.load_from_disk(str(p))
        else:  # a directory of data files, or a hub name
            if not p.is_dir():
                offline_unless_reachable()
            _check_cache(datasets)
            out = datasets.load_dataset(str(p) if p.is_dir() else name)
    except InputError:
        raise
    except Exception as e:  # datasets raises many kinds (arrow, json, hub, empty data)
        where = "" if p.exists() else " (not a local path, and not loadable from the hub)"
        raise InputError(
            f"task.dataset {name!r}: cannot load it{where}: {_first_line(e)}"
        ) from None
    if isinstance(out, datasets.Dataset):
        return {"train": out}
    return dict(out)


def split_rows(splits: dict, name: str, split: str, column: str, key: str) -> list[RawPrompt]:
    """The prompts of `split` (the config key `key` names it), checked, in dataset order."""
    if split not in splits:
        raise InputError(
            f"{key} {split!r} is not a split of {name!r}; its splits: {', '.join(splits)}"
        )
    ds = splits[split]
    if column not in ds.column_names:
        raise InputError(
            f"task.prompt_column {column!r} is not a column of {name!r} [{split}]; "
            f"its columns: {', '.join(ds.column_names) or '(none)'}"
        )
    if len(ds) == 0:
        raise InputError(f"{key} {split!r} of {name!r} is empty")
    return [to_prompt(v, f"{name!r} [{split}] row {i}") for i, v in enumerate(ds[column])]


def to_prompt(value, where: str) -> RawPrompt:
    """A string, or a message list reduced to {role, content}; else one line naming the row."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and all(_is_message(m) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise InputError(
        f"{where}: a prompt must be a string or a non-empty list of {{role, content}} "
        f"messages, got {_brief(value)}"
    )


def _is_message(m) -> bool:
    return (
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
    )


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
