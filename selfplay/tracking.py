"""MLflow tracking.

The embedded default is a local sqlite store, `mlflow.db` in the working
directory. `MLFLOW_TRACKING_URI` (or an explicit `uri`, e.g. the config's
`tracking.uri`) points it at a server instead.

MLflow is imported lazily (it is slow to import), and everything it prints
goes to stderr so that `--json` output on stdout stays one clean object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "selfplay"


def tracking_uri(uri: str | None = None) -> str:
    """Explicit uri, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]  # MLflow's param value limit
    return out


class Tracker:
    """A thin handle on one active MLflow run."""

    def __init__(self, mlflow: Any, run_id: str):
        self._mlflow = mlflow
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        with contextlib.redirect_stdout(sys.stderr):
            self._mlflow.log_metrics(clean, step=step)

    def log_curve(self, key: str, steps: list[int], values: list[float]) -> None:
        """Log a whole metric history in batches (one call per 1000 points, not per point)."""
        import time as _time

        from mlflow.entities import Metric

        ts = int(_time.time() * 1000)
        ms = [Metric(key, float(v), ts, int(s)) for s, v in zip(steps, values, strict=True)]
        client = self._mlflow.MlflowClient()
        with contextlib.redirect_stdout(sys.stderr):
            for i in range(0, len(ms), 1000):
                client.log_batch(self.run_id, metrics=ms[i : i + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            self._mlflow.log_params(_flatten(params))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Every file under the directory `path`."""
        with contextlib.redirect_stdout(sys.stderr):
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)

    def log_dict(self, d: Mapping[str, Any], name: str) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            self._mlflow.log_dict(dict(d), name)


@contextlib.contextmanager
def mlflow_run(
    run_name: str,
    params: Mapping[str, Any] | None = None,
    *,
    uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> Iterator[Tracker]:
    """Start a run, log `params` (flattened with dots), yield a Tracker, end the run.

    With `run_id` (a resumed training run) the existing run is reopened and its
    params are left as they were; if the store does not know it, a new run starts."""
    with contextlib.redirect_stdout(sys.stderr):
        import mlflow

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(tracking_uri(uri))
        mlflow.set_experiment(experiment)
        run = None
        if run_id is not None:
            try:
                run = mlflow.start_run(run_id=run_id)
            except mlflow.exceptions.MlflowException:
                run = None  # another tracking store than the first run's
        reopened = run is not None
        if run is None:
            run = mlflow.start_run(run_name=run_name, tags=dict(tags or {}))
    status = "FAILED"
    try:
        tracker = Tracker(mlflow, run.info.run_id)
        if params and not reopened:
            tracker.log_params(params)
        yield tracker
        status = "FINISHED"
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            mlflow.end_run(status=status)
