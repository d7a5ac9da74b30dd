"""The cluster token: sent exactly when the cluster a command joins asks for it.

Ray (>= 2.52) keeps the token in $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token (`find_token`). A client joining a cluster by address sends it only
with RAY_AUTH_MODE=token, and Ray turns that on by itself for a cluster found by
'auto' whenever a token file exists, whether that cluster asks for one or not; a
client in token mode then fails against a cluster without token authentication.
`send_token` asks the GCS first (`needs_token`) and sets RAY_AUTH_MODE to match.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from selfplay.errors import InputError


def find_token() -> str | None:
    """The cluster token where Ray keeps it: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH,
    else ~/.ray/auth_token (which `ray start --head` and a local `ray.init()` use)."""
    if tok := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return tok
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def send_token(address: str | None = None) -> None:
    """Send the cluster token exactly when the cluster at `address` asks for it.

    With RAY_AUTH_MODE set, Ray does as it says. Else the GCS is asked once, without a
    token (`needs_token`): one that asks for it gets the token where Ray keeps it
    (`find_token`; none there is one line saying what to set); one that does not gets
    none (RAY_AUTH_MODE=disabled: Ray itself would send a token it finds in ~/.ray to a
    cluster found by 'auto', which then fails). When the GCS cannot be asked, a token
    that exists is sent, as before."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token = find_token()
    needs = needs_token(address) if address else None
    if needs is None:
        if token is not None:
            _auth_mode("token")
        return
    if needs and token is None:
        raise InputError(
            f"the Ray cluster at {address} asks for its token: set RAY_AUTH_TOKEN (or "
            f"RAY_AUTH_TOKEN_PATH to a file holding it)"
        )
    if needs or token is not None:
        _auth_mode("token" if needs else "disabled")


def _auth_mode(mode: str) -> None:
    os.environ["RAY_AUTH_MODE"] = mode
    if "ray._raylet" in sys.modules:  # Ray read its config already: read it again
        from ray._raylet import Config

        Config.initialize("")


def needs_token(address: str, timeout: float = 3.0) -> bool | None:
    """Whether the GCS at `address` (HOST:PORT, or 'auto') refuses a call without the
    cluster token: True, False, or None when it cannot be told (no answer in `timeout`
    seconds, a Ray client address, another error)."""
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment

            address = get_ray_address_from_environment("auto", None)
        except Exception:
            return None
    if not address or address.startswith("ray://") or ":" not in address:
        return None
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:
        return None
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
        except grpc.RpcError as e:
            return True if e.code() == grpc.StatusCode.UNAUTHENTICATED else None
    return False
