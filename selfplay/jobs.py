"""Ray jobs for `selfplay submit | status | logs | stop`.

Plain logic over Ray's Job Submission SDK (`ray.job_submission.JobSubmissionClient`,
the REST job server a head node's dashboard serves, by default on :8265). A
submission is built and validated on the caller's machine before anything is
sent: the config and overrides are loaded exactly as `selfplay train` would
load them, so a bad key, a missing file or an unknown algorithm is a one-line
`InputError` and no job is created.

The job runs `selfplay train CONFIG [overrides] runtime.address=auto` with a
runtime env that uploads the working dir (minus virtualenvs, VCS data, run
outputs and local tracking stores), optional pip packages, and the caller's
MLflow tracking URI (`tracking.uri`, else `$MLFLOW_TRACKING_URI`) in
`env_vars`, so the run lands in the caller's tracking store. A relative sqlite
or file URI is made absolute first; it only means something to a head that
shares the caller's filesystem (a local head, or a shared mount).

Token authentication: a default head (`ray start --head`, Ray >= 2.52) asks for
the cluster token once one exists in ~/.ray/auth_token, while the SDK sends it
only with `RAY_AUTH_MODE=token`. So when the job server asks for a token and
RAY_AUTH_MODE is unset, `connect` reads it where Ray keeps it ($RAY_AUTH_TOKEN,
the file $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token, in that order) and sends it
as the `Authorization` header of every request. A request still refused is one
line saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfplay.errors import InputError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# gitignore-style patterns Ray's working_dir upload leaves out.
EXCLUDES = (
    ".venv",
    "venv",
    ".git",
    "runs",
    "mlruns",
    "mlartifacts",
    "mlflow.db",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass(frozen=True)
class Submission:
    """Everything `submit_job` is called with; built and validated locally."""

    entrypoint: str
    runtime_env: dict[str, Any]
    tracking_uri: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    output_dir: str = "runs"  # where the job writes its run dir, as the config says


@dataclass(frozen=True)
class JobState:
    job_id: str
    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    message: str


def job_address(address: str | None) -> str:
    """`--address`, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS (Ray's job CLI order),
    else the loopback job server; it must be an http(s) URL."""
    source, addr = "--address", address
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        if not addr and os.environ.get(var):
            source, addr = f"${var}", os.environ[var]
    addr = (addr or DEFAULT_ADDRESS).strip().rstrip("/")
    if not addr.startswith(("http://", "https://")):
        # A GCS address (host:6379) would make the SDK wait ~30 s for a GCS; say what is wanted.
        raise InputError(
            f"{source} must be the Ray job server URL, e.g. http://HEAD:8265; got {addr!r}"
        )
    return addr


def absolute_uri(uri: str, base: Path) -> str:
    """Make a relative `sqlite:///x.db`, `file:x` or bare-path store absolute against `base`."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        return uri if path.startswith("/") else f"sqlite:///{(base / path).resolve()}"
    if uri.startswith("file:"):
        path = uri[len("file:") :]
        return uri if path.startswith("/") else f"file://{(base / path).resolve()}"
    if "://" not in uri and not uri.startswith("/"):
        return str((base / uri).resolve())  # MLflow reads a bare path as a file store
    return uri


def build_submission(
    config: str,
    overrides: list[str],
    *,
    working_dir: str | None = None,
    pip: list[str] | None = None,
    resume: str | None = None,
) -> Submission:
    """Validate CONFIG + overrides here, then describe the job that trains it on the cluster.

    `resume`: a run dir on the cluster's storage (absolute: the job's working dir is a
    fresh temporary copy) that the job continues with `selfplay train --resume`."""
    from selfplay.config import load_config

    wd = Path(working_dir or ".").resolve()
    if not wd.is_dir():
        raise InputError(f"working dir not found: {wd}")
    cfg_path = Path(config)
    extra = ["runtime.address=auto"]
    cfg = load_config(cfg_path, [*overrides, *extra])  # same checks as `selfplay train`
    try:
        rel = cfg_path.resolve().relative_to(wd)
    except ValueError:
        raise InputError(
            f"config {config} is outside the working dir {wd} that is uploaded; "
            f"move it there or pass --working-dir"
        ) from None
    hidden = [part for part in rel.parts for pat in EXCLUDES if fnmatch.fnmatch(part, pat)]
    if hidden:
        raise InputError(
            f"config {config} is under {hidden[0]}/, which is not uploaded; "
            f"move it elsewhere in the working dir"
        )
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    env_vars: dict[str, str] = {}
    if uri and cfg.tracking.enabled:
        uri = absolute_uri(uri, Path.cwd())
        env_vars["MLFLOW_TRACKING_URI"] = uri
        if cfg.tracking.uri:  # the config's value wins over the env in the job: pass it resolved
            extra.insert(0, f"tracking.uri={uri}")
    runtime_env: dict[str, Any] = {
        "working_dir": str(wd),
        "excludes": list(EXCLUDES),
        "env_vars": env_vars,
    }
    if pip:
        runtime_env["pip"] = list(pip)
    argv = ["selfplay", "train", rel.as_posix(), *overrides, *extra, "--no-progress"]
    if resume is not None:
        if not resume.startswith("/"):
            raise InputError(
                f"--resume {resume}: give the run dir's absolute path on the "
                f"cluster (a job runs in a temporary copy of the working dir)"
            )
        argv += ["--resume", resume]
    return Submission(
        entrypoint=shlex.join(argv),
        runtime_env=runtime_env,
        tracking_uri=uri if cfg.tracking.enabled else None,
        metadata={"selfplay.config": rel.as_posix(), "selfplay.algo": cfg.algo.name},
        output_dir=cfg.output_dir,
    )


@contextlib.contextmanager
def _sdk_errors(address: str, job_id: str | None = None) -> Iterator[None]:
    """Turn the SDK's connection, auth and not-found errors into one-line `InputError`s."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as e:
        text = str(e)
        if "Authentication failed" in text or "403" in text:  # a token was sent, and refused
            raise InputError(
                f"the Ray job server at {address} rejected the cluster token "
                f"({_token_source()}); use the token the head was started with"
            ) from None
        mode = os.environ.get("RAY_AUTH_MODE")
        where = (
            f"RAY_AUTH_MODE is {mode!r}: set it to 'token'"
            if mode and mode.lower() != "token"
            else "put it in RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or "
            "~/.ray/auth_token (none found)"
        )
        raise InputError(
            f"the Ray job server at {address} rejected the request: it needs the "
            f"cluster token; {where}"
        ) from None
    except ConnectionError:
        raise InputError(f"cannot reach the Ray job server at {address}") from None
    except RuntimeError as e:
        text = str(e)
        if text.startswith("Version check returned"):  # GET /api/version: 404
            raise _not_ray(address, text.split(".")[0].removeprefix("Version check ")) from None
        if job_id is not None and ("does not exist" in text or "404" in text):
            raise InputError(f"no job {job_id} at {address}") from None
        raise


def _not_ray(address: str, why: str) -> InputError:
    return InputError(
        f"{address} is not a Ray job server (GET /api/version {why}); give the head's "
        f"dashboard address, e.g. http://HEAD:8265"
    )


def _first(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _token_source() -> str:
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "from $RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"from {os.environ['RAY_AUTH_TOKEN_PATH']}"
    return "from ~/.ray/auth_token"


def connect(address: str | None = None):
    """A `JobSubmissionClient` for the job server at `address` (checked to answer); when
    the server asks for a token that the SDK did not send, send the cluster's (above)."""
    addr = job_address(address)
    _probe(addr)  # a server that accepts and never answers would hold the SDK for minutes
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient
    from requests.exceptions import HTTPError

    from selfplay.runtime.cluster_auth import find_token

    with _sdk_errors(addr):
        try:
            return JobSubmissionClient(addr)
        except (HTTPError, ValueError, KeyError) as e:  # a server that answers, but not as Ray
            raise _not_ray(addr, f"gave {_first(e)}") from None
        except AuthenticationError as e:
            token = find_token()
            if (
                "RAY_AUTH_MODE" in os.environ
                or token is None
                or "Authentication required" not in str(e)
            ):
                raise
        return JobSubmissionClient(addr, headers={"Authorization": f"Bearer {token}"})


def _probe(url: str) -> None:
    """Refuse in one line a job server URL whose port accepts connections but does not
    answer an HTTP request within `cluster.probe_timeout()` seconds."""
    from urllib.parse import urlsplit

    from selfplay.runtime.cluster import probe

    u = urlsplit(url)
    try:
        host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        raise InputError(f"bad job server URL {url!r}") from None
    if not host:
        raise InputError(f"bad job server URL {url!r}")
    hello = f"GET /api/version HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n\r\n"
    probe(host, port, hello.encode(), "Ray job server", url, why=False)


def submit(client, sub: Submission) -> str:
    with _sdk_errors(client.get_address()):
        return client.submit_job(
            entrypoint=sub.entrypoint, runtime_env=sub.runtime_env, metadata=sub.metadata
        )


def status(client, job_id: str) -> JobState:
    with _sdk_errors(client.get_address(), job_id):
        info = client.get_job_info(job_id)
    return JobState(job_id, str(info.status.value), one_line(info.message or ""))


def one_line(message: str) -> str:
    """Ray's job message on one line: a failed job's carries its last logs after a first
    line; keep that line (less its ", last available logs ..." tail) and the run's own
    one-line `error: ...`, if the logs have one (the whole logs: `selfplay logs`)."""
    first, *rest = message.strip().splitlines() or [""]
    first = first.split(", last available logs")[0].rstrip(":")
    errors = [ln.strip() for ln in rest if ln.strip().startswith("error: ")]
    return first + (f"; {errors[-1]}" if errors else "")


def logs(client, job_id: str) -> str:
    with _sdk_errors(client.get_address(), job_id):
        return client.get_job_logs(job_id)


def stop(client, job_id: str) -> bool:
    """Ask the job to stop; False when it had already ended."""
    with _sdk_errors(client.get_address(), job_id):
        return bool(client.stop_job(job_id))


def follow(client, job_id: str, write: Callable[[str], None], *, poll_s: float = 0.5) -> JobState:
    """Stream the job's logs through `write` until it ends; return its terminal state."""

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    # The SDK logs every websocket close at INFO on stderr; the caller prints the outcome.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
    with _sdk_errors(client.get_address(), job_id):
        asyncio.run(_tail())
        # The log stream closes as the job ends; its status may trail by a moment.
        while (st := status(client, job_id)).status not in TERMINAL:
            time.sleep(poll_s)
    return st
