"""A run's relative paths made absolute against the directory it is started from.

A config names files relative to where `selfplay train` runs: `model.name`,
`judge.model`, `task.dataset`, `task.matrix`, `output_dir` and a file-based
`tracking.uri`. A run records its config with these made absolute
(`absolute_paths`), so whatever reads the run dir later (`selfplay eval RUN`,
`--resume`, from any directory) finds the same files the run trained on.

A model or dataset name is a path only when it exists as one from `base`: a hub
name (`Qwen/Qwen2-0.5B`) that is no local path is left as it is, and so are
`tiny` and `tiny:<spec>`. `output_dir` is always a path (it may not exist yet).
"""

from __future__ import annotations

import os
from pathlib import Path

from selfplay.config import Config


def _abs(value: str | None, base: Path, *, must_exist: bool = True) -> str | None:
    if not value or value == "tiny" or value.startswith("tiny:"):
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    if must_exist and not (base / p).exists():
        return value  # a hub name, or a path that fails later with its own message
    return os.path.normpath(base / p)


def absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """`cfg` with its relative paths resolved against `base` (default: the current
    directory); a new Config, `cfg` is left as it is. Idempotent."""
    from selfplay.jobs import absolute_uri

    base = Path(base if base is not None else os.getcwd()).resolve()
    update: dict = {
        "output_dir": _abs(cfg.output_dir, base, must_exist=False),
        "model": cfg.model.model_copy(update={"name": _abs(cfg.model.name, base)}),
        "judge": cfg.judge.model_copy(update={"model": _abs(cfg.judge.model, base)}),
    }
    task = cfg.task
    for key in ("dataset", "matrix"):
        if getattr(task, key, None):
            task = task.model_copy(update={key: _abs(getattr(task, key), base)})
    update["task"] = task
    uri = cfg.tracking.uri
    if uri and (uri.startswith(("sqlite:///", "file:")) or (base / uri).exists()):
        update["tracking"] = cfg.tracking.model_copy(
            update={"uri": absolute_uri(cfg.tracking.uri, base)}
        )
    return cfg.model_copy(update=update)
