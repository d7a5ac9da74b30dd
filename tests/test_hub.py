"""The hub probe: an unreachable endpoint switches the hub client to offline mode at
once (instead of ~50 s of retries per name); a reachable one leaves it alone."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from selfplay.models import hub


@pytest.fixture
def fresh(monkeypatch):
    import datasets.config
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hub.offline_unless_reachable.cache_clear()
    yield hc
    hub.offline_unless_reachable.cache_clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_goes_offline(fresh, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")  # nothing listens
    t0 = time.perf_counter()
    assert hub.offline_unless_reachable() is True
    assert time.perf_counter() - t0 < hub.PROBE_TIMEOUT_S + 1
    assert fresh.HF_HUB_OFFLINE is True
    assert sys.modules["datasets.config"].HF_HUB_OFFLINE is True
    from huggingface_hub import is_offline_mode

    assert is_offline_mode()


def test_reachable_endpoint_stays_online(fresh, monkeypatch):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
        assert hub.offline_unless_reachable() is False
    assert fresh.HF_HUB_OFFLINE is False


def test_hub_name_fails_fast_offline(fresh, monkeypatch):
    """A hub name that is not cached: the one-line InputError within seconds."""
    from selfplay.errors import InputError
    from selfplay.models.load import load_tokenizer

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="cannot load tokenizer 'nobody/no-such-model'"):
        load_tokenizer("nobody/no-such-model")
    assert time.perf_counter() - t0 < 20  # ~50 s of retries before the probe
