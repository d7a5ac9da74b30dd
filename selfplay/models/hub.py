"""Hub names off-line: one quick reachability probe instead of minutes of retries.

A hub name (`Qwen/Qwen2-0.5B`) is fetched by `huggingface_hub`, which retries an
unreachable endpoint five times with back-off: about 50 s per name before its error.
Before the first hub lookup, `offline_unless_reachable` opens one TCP connection to
the hub's endpoint (`HF_ENDPOINT`, default https://huggingface.co) with a 3 s bound;
if that fails it switches the hub client and `datasets` to offline mode, so a name in
the local cache still loads and any other fails at once with its one-line error.
`HF_HUB_OFFLINE` set by the user is left as it is; the probe runs once per process.
"""

from __future__ import annotations

import os
import socket
import sys
from functools import cache
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0


def _reachable(url: str, timeout: float) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


@cache
def offline_unless_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when the hub is (now) in offline mode for this process."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if _reachable(endpoint, timeout):
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"  # for modules imported later, and child processes
    for mod in ("huggingface_hub.constants", "datasets.config"):
        if mod in sys.modules:
            sys.modules[mod].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_DATASETS_OFFLINE = True
    return True


def is_local(name: str) -> bool:
    """A name that is an existing local path (file or directory)."""
    from pathlib import Path

    return Path(name).expanduser().exists()
