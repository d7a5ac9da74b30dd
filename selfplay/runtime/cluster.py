"""Joining or starting the Ray cluster a command talks to.

`init_ray` is how `selfplay train` gets its cluster (in-process, or `runtime.address`);
`connect` is how `selfplay scale` joins a running run's cluster; `check_reachable`
refuses an address whose GCS does not answer before `ray.init` could hang on it.

Loopback: an in-process cluster, and any cluster whose GCS address is a loopback
one, is a loopback-only Ray node (`use_loopback`). Ray (2.x, checked on 2.60)
rewrites every loopback address it is given, `ray.init(address="127.0.0.1:P")`,
`_node_ip_address="127.0.0.1"` and `ray start --node-ip-address 127.0.0.1`
alike, to the machine's own address (`services.resolve_ip_for_localhost`),
unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: that switch, not the name it
carries, is Ray's loopback setting. So a client dialling the GCS of a
loopback-only cluster must set it too, or it waits on the machine's address.

What a run needs from the cluster, and whether it can have it: `resources.py`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

from selfplay.config import Config
from selfplay.errors import InputError, RunError
from selfplay.runtime.cluster_auth import send_token

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def use_loopback() -> None:
    """Make this process, and the Ray processes it starts, a loopback-only Ray node.

    Sets `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (read by Ray when it is imported,
    and inherited by the raylet, GCS and workers it starts) and, when Ray is
    already imported, the constant it was read into.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    consts = sys.modules.get("ray._private.ray_constants")
    if consts is not None:
        consts.ENABLE_RAY_CLUSTER = False


def _host(address: str) -> str:
    host = address.removeprefix("ray://").rpartition(":")[0]
    return host or address


def is_loopback(address: str | None) -> bool:
    """Whether a GCS address (None: an in-process cluster; 'auto': the one Ray would
    find, from $RAY_ADDRESS or the last `ray start` on this machine) is a loopback one."""
    if address is None:
        return True
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment

            found = get_ray_address_from_environment("auto", None)
        except Exception:  # none found: `ray.init` says so itself
            return False
        if not found or found == "auto":
            return False
        address = found
    return _host(address) in LOOPBACK_HOSTS


def init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if is_loopback(cfg.runtime.address):
        use_loopback()
    with _overloaded():
        if cfg.runtime.address:
            send_token(cfg.runtime.address)
            ray.init(address=cfg.runtime.address, log_to_driver=False)
        else:
            # "local": a new cluster in this process, even where `ray start` recorded one
            # (ray.init() alone joins that, and refuses num_cpus for it).
            ray.init(
                address="local",
                num_cpus=cfg.runtime.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                dashboard_host="127.0.0.1",
            )


STARTUP_TIMEOUT = "timed out during startup"  # ray._private.node: its raylet never registered


@contextlib.contextmanager
def _overloaded():
    """`ray.init` giving up on a node that did not come up within Ray's own bound (30 s,
    `ray._private.node`) is one line: the machine is too busy to start Ray."""
    import ray

    try:
        yield
    except Exception as e:
        if STARTUP_TIMEOUT not in str(e):
            raise
        ray.shutdown()  # the processes it did start
        raise RunError(
            "Ray could not start: its node timed out during startup (Ray waits 30 s for "
            "it); the machine is overloaded: retry when it is less busy, or lower "
            "runtime.num_cpus"
        ) from None


# How long a command waits for a cluster's address to answer before it gives up in one
# line (a port that accepts connections and never answers made `ray.init` hang for
# minutes); $SELFPLAY_PROBE_TIMEOUT_S overrides it.
PROBE_TIMEOUT_S = 5.0
# The client's side of an HTTP/2 connection's start (RFC 9113 §3.4): its preface and
# an empty SETTINGS frame. A gRPC server (Ray's GCS) answers with its SETTINGS frame.
H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def probe_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("SELFPLAY_PROBE_TIMEOUT_S", PROBE_TIMEOUT_S)))
    except ValueError:
        return PROBE_TIMEOUT_S


def probe(host: str, port: int, hello: bytes, what: str, shown: str, why: bool = True) -> None:
    """Connect to `host:port`, send `hello` and wait at most `probe_timeout()` seconds
    for the server to answer it (any bytes, or closing the connection): a port that
    accepts connections but never answers is refused in one line (InputError), as is
    one that refuses them (with the reason when `why`)."""
    import select

    timeout = probe_timeout()
    try:
        sock = socket.create_connection((host.strip("[]"), port), timeout=timeout)
    except OSError as e:
        reason = f" ({e.strerror or e})" if why else ""
        raise InputError(f"cannot reach the {what} at {shown}{reason}") from None
    with sock:
        try:
            sock.sendall(hello)
            ready, _, _ = select.select([sock], [], [], timeout)
        except OSError:
            return  # reset as we spoke: something answers, not the silent kind
    if not ready:
        raise InputError(
            f"the {what} at {shown} accepts connections but did not answer within "
            f"{timeout:g} s ($SELFPLAY_PROBE_TIMEOUT_S); is that the right address?"
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
    probe(host, int(port), H2_HELLO, "Ray cluster", address)


def connect(address: str | None) -> str:
    """Join the cluster as a driver in namespace `selfplay`: `--address`, $RAY_ADDRESS, 'auto'."""
    addr = (address or os.environ.get("RAY_ADDRESS") or "auto").strip()
    if addr != "auto":
        check_reachable(addr)  # also refuses a job-server URL
    if is_loopback(addr):
        use_loopback()  # else Ray dials the machine's address, where nothing listens
    send_token(addr)
    import ray

    from selfplay.runtime.workers.control import NAMESPACE

    if not ray.is_initialized():
        try:
            ray.init(address=addr, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
        except ConnectionError as e:
            raise InputError(
                f"cannot join the Ray cluster at {addr} ({str(e).splitlines()[0]}); "
                f"with token authentication set RAY_AUTH_TOKEN"
            ) from None
    return addr
