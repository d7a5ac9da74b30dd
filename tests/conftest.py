"""Suite-wide settings: one torch thread (2-core CI), no GPU tests without a GPU, and
`cluster`, the local Ray cluster of one test module."""

from __future__ import annotations

import os

import pytest

from selfplay.runtime.cluster import use_loopback

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every Ray cluster of the suite (and the CLI subprocesses, which inherit this env)
# binds to loopback, as `selfplay train`'s in-process one does.
use_loopback()


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    for item in items:  # a test on the shared cluster starts Ray: `make test-fast` skips it
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster per test module (2 CPUs, no dashboard); yields its GCS address."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)  # loopback: see use_loopback above
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The prompts task's demo models (test_prompts_task, test_prompts_input): (policy
    dir, the same policy without a chat template, reward model dir)."""
    import json
    import shutil

    from selfplay.models.demo import write_chat_policy, write_reward_model
    from selfplay.models.load import load_tokenizer

    root = tmp_path_factory.mktemp("models")
    policy = write_chat_policy(root / "policy")
    bare = root / "bare"
    shutil.copytree(policy, bare)
    (bare / "chat_template.jinja").unlink()
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert not load_tokenizer(str(bare)).chat_template
    return policy, bare, write_reward_model(root / "reward")
