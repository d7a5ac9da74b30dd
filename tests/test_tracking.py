"""`selfplay train` tracking, read back from a real MLflow server and from the default local store.

The server is a real `mlflow server` subprocess on 127.0.0.1 (sqlite backend,
served artifacts) started by the fixture and stopped afterwards; the run is a
tiny token-game training on a module-level Ray cluster. The logged numbers
are checked against plain-numpy formulas for the duality gap and the win rate
against π_ref, computed from the logged policies, not against the trainer's
own helpers.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import stop_server, wait_http_ok

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "conf" / "quickstart.yaml"
STEPS = 3
TINY = [
    f"runtime.steps={STEPS}",
    "rollout.prompts_per_step=4",
    "rollout.k=2",
    "rollout.opponents_k=2",
    "learner.updates_per_phase=2",
    "model.tiny.hidden=8",
    "model.tiny.layers=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(d / "server.log", "w")
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{d / 'db.sqlite'}",
        "--artifacts-destination",
        str(d / "art"),
    ]
    # Own session: teardown signals this server's process group and nothing else.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{uri}/health", proc, d / "server.log", "mlflow server")
        yield uri
    finally:
        stop_server(proc, group=True, timeout=15)
        log.close()


def _train(overrides: list[str]):
    from selfplay.config import load_config
    from selfplay.runtime.driver.trainer import train

    return train(load_config(QUICKSTART, [*TINY, *overrides]), progress=False)


def _only_run(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} not found"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def _game_matrix() -> np.ndarray:
    from selfplay.config import load_config
    from selfplay.tasks.token_game import from_config

    return from_config(load_config(QUICKSTART).task).P


def test_train_logs_to_mlflow_server(ray_cluster, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    _train(
        [
            f"tracking.uri={mlflow_server}",
            "tracking.experiment=test-server",
            f"output_dir={tmp_path / 'runs'}",
        ]
    )
    client = MlflowClient(mlflow_server)
    run = _only_run(client, "test-server")
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["algo.name"] == "mpo" and p["runtime.steps"] == str(STEPS)
    assert p["task.generate"] == "bt-cyclic" and p["rollout.k"] == "2"

    def series(key: str) -> list[float]:
        hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in hist] == list(range(1, STEPS + 1)), key
        return [m.value for m in hist]

    for key in (
        "loss",
        "kl_anchor",
        "kl_ref",
        "staleness",
        "train_samples_per_s",
        "train_tokens_per_s",
    ):
        assert all(np.isfinite(series(key))), key
    assert series("policy_version") == [float(t) for t in range(1, STEPS + 1)]
    assert series("staleness") == [0.0] * STEPS  # quickstart is synchronous

    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "gap.png", "summary.json", "history.json", "checkpoint"} <= names
    # The final checkpoint, byte for byte the one in the run dir.
    (run_dir,) = (tmp_path / "runs").iterdir()
    final = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    got = Path(client.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path / "dl")))
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in final.iterdir())
    for f in final.iterdir():
        assert (got / f.name).read_bytes() == f.read_bytes(), f.name
    hist = json.loads(
        Path(client.download_artifacts(run.info.run_id, "history.json", str(tmp_path))).read_text()
    )
    # Oracle: gap = 2·max_y (Pπ)_y − 1 and P(π ≻ π_ref) = πᵀ P π_ref, in plain numpy.
    P = _game_matrix()
    pi_ref = np.array(hist[0]["policy"])
    pis = [np.array(h["policy"]) for h in hist[1:]]
    np.testing.assert_allclose(series("gap"), [2 * (P @ pi).max() - 1 for pi in pis], atol=1e-9)
    np.testing.assert_allclose(series("win_rate_ref"), [pi @ P @ pi_ref for pi in pis], atol=1e-9)


def test_default_store_is_local_mlflow_db(ray_cluster, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    _train(["algo.name=omwu", "runtime.steps=2", "tracking.experiment=test-local"])
    db = tmp_path / "mlflow.db"
    assert db.is_file()
    client = MlflowClient(f"sqlite:///{db}")
    run = _only_run(client, "test-local")
    assert run.data.params["algo.name"] == "omwu"
    for key in ("gap", "loss", "policy_version"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    assert str(tmp_path) in run.info.artifact_uri  # artifacts next to the store, not elsewhere


def test_resume_continues_the_same_mlflow_run(ray_cluster, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from selfplay.config import load_config
    from selfplay.runtime.driver.resume import check_resume
    from selfplay.runtime.driver.trainer import train

    over = [
        f"tracking.uri={mlflow_server}",
        "tracking.experiment=test-resume",
        f"output_dir={tmp_path / 'runs'}",
    ]
    first = _train(over)
    more = load_config(QUICKSTART, [*TINY, *over, f"runtime.steps={STEPS + 2}"])
    cfg, ckpt = check_resume(more, [], first.run_dir)
    train(cfg, progress=False, resume=ckpt)
    client = MlflowClient(mlflow_server)
    run = _only_run(client, "test-resume")  # one run, reopened, not a second one
    assert run.info.status == "FINISHED"
    hist = client.get_metric_history(run.info.run_id, "policy_version")
    assert sorted(m.step for m in hist) == list(range(1, STEPS + 3))
    assert sorted(m.value for m in hist) == [float(t) for t in range(1, STEPS + 3)]
