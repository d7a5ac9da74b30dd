"""Joining or starting the Ray cluster a command talks to.

`init_ray` is how `selfplay train` gets its cluster (in-process, or `runtime.address`);
`connect` is how `selfplay scale` joins a running run's cluster; `check_reachable`
refuses an address whose GCS does not answer before `ray.init` could hang on it.
"""

from __future__ import annotations

import os
import socket

import ray

from selfplay.config import Config
from selfplay.errors import InputError
from selfplay.runtime.workers.control import NAMESPACE


def init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if cfg.runtime.address:
        ray.init(address=cfg.runtime.address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=cfg.runtime.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            dashboard_host="127.0.0.1",
        )


def check_reachable(address: str) -> None:
    """A GCS that does not answer makes `ray.init` hang for minutes: probe it first."""
    if address.startswith(("http://", "https://")):
        raise InputError(
            f"address must be the Ray GCS (HOST:6379) or 'auto', not the job server URL {address!r}"
        )
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address must be HOST:PORT of the Ray GCS or 'auto', got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        raise InputError(f"cannot reach the Ray cluster at {address} ({e.strerror or e})") from None


def connect(address: str | None) -> str:
    """Join the cluster as a driver in namespace `selfplay`: `--address`, $RAY_ADDRESS, 'auto'."""
    addr = (address or os.environ.get("RAY_ADDRESS") or "auto").strip()
    if addr != "auto":
        check_reachable(addr)  # also refuses a job-server URL
    if not ray.is_initialized():
        try:
            ray.init(address=addr, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
        except ConnectionError as e:
            raise InputError(
                f"cannot join the Ray cluster at {addr} ({str(e).splitlines()[0]}); "
                f"with token authentication set RAY_AUTH_TOKEN"
            ) from None
    return addr
