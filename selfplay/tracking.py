"""MLflow tracking.

The embedded default is a local sqlite store, `mlflow.db` in the working
directory. `MLFLOW_TRACKING_URI` (or an explicit `uri`, e.g. the config's
`tracking.uri`) points it at a server instead.

MLflow is imported lazily (it is slow to import), and everything it prints
goes to stderr so that `--json` output on stdout stays one clean object.

`check_store` is called by `train` and `game` before any work: a server that
does not answer, an unwritable sqlite/file store or an unknown scheme fails in
one line within seconds. MLflow's own HTTP retries are kept short
(`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `MLFLOW_HTTP_REQUEST_TIMEOUT`, unless set),
so a server that dies mid-run fails the run in seconds, not minutes; any
tracking failure is then a one-line `RunError`.
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

#: MLflow's HTTP client defaults are 7 retries with exponential backoff and a 120 s
#: timeout per request (minutes against a dead server); ours, unless already set.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
#: Seconds `check_store` waits for a server's /health.
HEALTH_TIMEOUT_S = 5.0
#: Database stores MLflow reaches through SQLAlchemy: accepted, not probed.
DB_SCHEMES = ("postgresql", "mysql", "mssql")


def tracking_uri(uri: str | None = None) -> str:
    """Explicit uri, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_store(uri: str | None = None) -> str:
    """The tracking URI (see `tracking_uri`), once it is known to be usable: an
    http(s) server answers GET /health within HEALTH_TIMEOUT_S, a sqlite or file
    store's directory is writable. Anything else is an `InputError`, one line."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    from selfplay.errors import InputError
    from selfplay.outputs import check_writable_dir

    u = tracking_uri(uri)
    try:
        parsed = urlparse(u)
    except ValueError as e:
        raise InputError(f"tracking URI {u!r}: {e}") from None
    scheme = parsed.scheme.lower().split("+")[0]
    if scheme in ("http", "https"):
        health = u.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=HEALTH_TIMEOUT_S) as r:
                ok = r.status == 200
        except urllib.error.HTTPError as e:
            ok, why = False, f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            why = getattr(reason, "strerror", None) or str(reason) or type(e).__name__
            ok = False
        else:
            why = "not an MLflow server"
        if not ok:
            raise InputError(
                f"MLflow tracking server {u} does not answer ({why}); start it, or set "
                f"tracking.uri / MLFLOW_TRACKING_URI, or turn tracking off"
            )
    elif scheme == "sqlite":
        path = u[len("sqlite:///") :] if u.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise InputError(f"tracking URI {u}: use sqlite:///PATH to a database file")
        check_writable_dir(Path(path).parent, f"tracking store {u}: directory")
    elif scheme == "file" or (scheme == "" and u):
        path = parsed.path if scheme == "file" else u
        check_writable_dir(path, f"tracking store {u}:")
    elif scheme not in DB_SCHEMES:
        raise InputError(
            f"tracking URI {u!r}: unknown scheme; use http(s)://HOST:PORT, "
            f"sqlite:///PATH, file:///PATH or a directory"
        )
    for k, v in HTTP_ENV.items():
        os.environ.setdefault(k, v)
    return u


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]  # MLflow's param value limit
    return out


@contextlib.contextmanager
def _guard(uri: str) -> Iterator[None]:
    """Around MLflow calls only: their prints go to stderr, and any failure of the store
    (a server gone, a full disk) becomes a one-line RunError."""
    from selfplay.errors import RunError

    with contextlib.redirect_stdout(sys.stderr):
        try:
            yield
        except Exception as e:
            text = str(e).strip()
            first = (text.splitlines() or [type(e).__name__])[0]
            if "Connection refused" in text or "Max retries exceeded" in text:
                # "API request to URL failed with exception <a page of urllib3>"
                first = first.split(" with exception")[0] + " (the server does not answer)"
            first = first[:300]
            raise RunError(f"MLflow tracking at {uri} failed: {first}") from None


class Tracker:
    """A thin handle on one active MLflow run."""

    def __init__(self, mlflow: Any, run_id: str, uri: str = ""):
        self._mlflow = mlflow
        self.run_id = run_id
        self.uri = uri

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        with _guard(self.uri):
            self._mlflow.log_metrics(clean, step=step)

    def log_curve(self, key: str, steps: list[int], values: list[float]) -> None:
        """Log a whole metric history in batches (one call per 1000 points, not per point)."""
        import time as _time

        from mlflow.entities import Metric

        ts = int(_time.time() * 1000)
        ms = [Metric(key, float(v), ts, int(s)) for s, v in zip(steps, values, strict=True)]
        client = self._mlflow.MlflowClient()
        with _guard(self.uri):
            for i in range(0, len(ms), 1000):
                client.log_batch(self.run_id, metrics=ms[i : i + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        with _guard(self.uri):
            self._mlflow.log_params(_flatten(params))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with _guard(self.uri):
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Every file under the directory `path`."""
        with _guard(self.uri):
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)

    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None:
        """A table (column -> values) MLflow shows in its UI (`mlflow.log_table`)."""
        with _guard(self.uri):
            self._mlflow.log_table(data=dict(data), artifact_file=artifact_file)

    def log_dict(self, d: Mapping[str, Any], name: str) -> None:
        with _guard(self.uri):
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
    for k, v in HTTP_ENV.items():
        os.environ.setdefault(k, v)
    uri = tracking_uri(uri)
    with _guard(uri):
        import mlflow

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(uri)
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
        tracker = Tracker(mlflow, run.info.run_id, uri)
        if params and not reopened:
            tracker.log_params(params)
        yield tracker
        status = "FINISHED"
    finally:
        try:
            with _guard(uri):
                mlflow.end_run(status=status)
        except Exception:
            if status == "FINISHED":
                raise  # else the run's own error is the one to report
