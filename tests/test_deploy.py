"""deploy/: the fields that tie the KubeRay manifests, the cluster-launcher YAML and the
Dockerfile to the code.

- every `selfplay ...` command they run or document is a real subcommand, its config path
  exists in conf/ and its overrides load (the same `load_config` as `selfplay train`);
- the custom resources the config requests (`rollout.resources`, `learner.resources`) are the
  ones the rollout and learner node groups advertise, in enough quantity, GPUs likewise;
- one image and one Ray version everywhere, matching the Dockerfile and pyproject.toml;
- the cluster-launcher YAML validates against Ray's own schema; loopback dashboard, token auth.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from selfplay.cli import cli
from selfplay.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RAYCLUSTER = DEPLOY / "kuberay" / "raycluster.yaml"
RAYJOB = DEPLOY / "kuberay" / "rayjob.yaml"
LAUNCHER = DEPLOY / "cluster.yaml"
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


def load(path: Path) -> dict:
    (doc,) = list(yaml.safe_load_all(path.read_text()))
    return doc


def dockerfile_arg(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=\"?([^\"\n]+)\"?$", DOCKERFILE, re.M)
    return value


def workdir() -> str:
    (value,) = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE, re.M)
    return value


def kuberay_groups(spec: dict) -> dict[str, dict]:
    """groupName -> {"resources": custom resources, "gpus": nvidia.com/gpu limit}."""
    out = {}
    for g in spec["workerGroupSpecs"]:
        raw = g.get("rayStartParams", {}).get("resources", '"{}"')
        # KubeRay's format: a quoted JSON object with literal backslashes before the quotes.
        custom = json.loads(raw.strip('"').replace('\\"', '"'))
        (ctr,) = g["template"]["spec"]["containers"]
        out[g["groupName"]] = {
            "resources": custom,
            "gpus": int(ctr["resources"]["limits"].get("nvidia.com/gpu", 0)),
        }
    return out


def parse_selfplay(command: str) -> tuple[str, Path, list[str], list[str]]:
    """(subcommand, config path in the repo, overrides, options) of a `selfplay` command line."""
    argv = shlex.split(command)
    argv = argv[argv.index("selfplay") :]
    sub, cfg = argv[1], argv[2]
    if cfg.startswith(workdir() + "/"):  # inside the image the repo is at WORKDIR
        cfg = cfg[len(workdir()) + 1 :]
    overrides = [a for a in argv[3:] if "=" in a and not a.startswith("-")]
    options = [a for a in argv[3:] if a.startswith("-")]
    return sub, ROOT / cfg, overrides, options


def documented_commands(path: Path) -> list[str]:
    """`selfplay ...` lines in a file's header comments, backslash continuations joined."""
    text = "\n".join(
        line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")
    )
    text = text.replace("\\\n", " ")
    # A command line: optional VAR=value prefixes, then `selfplay submit|train` (not prose).
    return [
        line[line.index("selfplay ") :]
        for line in text.splitlines()
        if re.match(r"(?:[A-Z_]+=\S+\s+)*selfplay (submit|train)\b", line)
    ]


def commands() -> list[tuple[str, str]]:
    out = [("rayjob entrypoint", load(RAYJOB)["spec"]["entrypoint"])]
    for p in (RAYCLUSTER, RAYJOB, LAUNCHER):
        out += [(f"{p.name} comment", c) for c in documented_commands(p)]
    return out


def test_every_file_documents_or_runs_a_command():
    names = {n.split()[0] for n, _ in commands()}
    assert names >= {"rayjob", "raycluster.yaml", "cluster.yaml"}


@pytest.mark.parametrize("where, command", commands(), ids=[n for n, _ in commands()])
def test_commands_are_real_and_their_configs_load(where, command):
    sub, cfg_path, overrides, options = parse_selfplay(command)
    help_ = CliRunner().invoke(cli, [sub, "--help"])
    assert help_.exit_code == 0, help_.output
    for opt in options:
        assert opt.split("=")[0] in help_.output, f"{where}: {sub} has no option {opt}"
    assert cfg_path.is_file() and cfg_path.parent == ROOT / "conf", cfg_path
    cfg = load_config(cfg_path, overrides)
    if sub == "train":  # a job's driver must join the cluster, not start its own
        assert cfg.runtime.address == "auto"
    _check_resources(cfg)


def _check_resources(cfg: Config) -> None:
    """What the config requests per worker / shard fits one node of its group, by name."""
    assert cfg.rollout.resources and cfg.learner.resources, "deploy configs name their groups"
    for spec in (load(RAYCLUSTER)["spec"], load(RAYJOB)["spec"]["rayClusterSpec"]):
        groups = kuberay_groups(spec)
        for role, req in (("rollout", cfg.rollout), ("learner", cfg.learner)):
            g = groups[role]
            for name, amount in req.resources.items():
                assert g["resources"].get(name, 0) >= amount, (role, name, g)
            assert g["gpus"] >= req.num_gpus, (role, g)
    nodes = load(LAUNCHER)["available_node_types"]
    for node, req in (("rollout_gpu", cfg.rollout), ("learner_gpu", cfg.learner)):
        res = nodes[node]["resources"]
        for name, amount in req.resources.items():
            assert res.get(name, 0) >= amount, (node, name, res)
        assert res.get("GPU", 0) >= req.num_gpus


def test_custom_resource_names_are_the_same_everywhere():
    assert {"resources"} <= Config.model_fields["rollout"].annotation.model_fields.keys()
    assert {"resources"} <= Config.model_fields["learner"].annotation.model_fields.keys()
    kuberay = {n for g in kuberay_groups(load(RAYCLUSTER)["spec"]).values() for n in g["resources"]}
    launcher = {
        n for t in load(LAUNCHER)["available_node_types"].values() for n in t["resources"]
    } - BUILTIN
    assert kuberay == launcher == {"rollout", "learner"}


def test_rayjob_runs_on_the_raycluster_spec():
    assert load(RAYCLUSTER)["kind"] == "RayCluster" and load(RAYJOB)["kind"] == "RayJob"
    assert load(RAYJOB)["spec"]["rayClusterSpec"] == load(RAYCLUSTER)["spec"]


def test_kuberay_autoscaling_auth_and_groups():
    spec = load(RAYCLUSTER)["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    groups = kuberay_groups(spec)
    assert set(groups) == {"rollout", "learner"}
    assert groups["rollout"]["gpus"] >= 1  # the GPU group for rollout workers
    rollout = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "rollout")
    assert rollout["minReplicas"] <= rollout["replicas"] <= rollout["maxReplicas"]
    assert rollout["maxReplicas"] > rollout["minReplicas"]  # room for the autoscaler


def test_one_image_and_ray_version_everywhere():
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    images = set()
    for spec in (load(RAYCLUSTER)["spec"], load(RAYJOB)["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == dockerfile_arg("RAY_VERSION")
        for g in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
            images |= {c["image"] for c in g["template"]["spec"]["containers"]}
    images.add(load(LAUNCHER)["docker"]["image"])
    assert images == {f"selfplay:{version}-gpu"}
    # token auth in KubeRay's authOptions needs Ray >= 2.52
    assert tuple(int(x) for x in dockerfile_arg("RAY_VERSION").split(".")[:2]) >= (2, 52)


def test_dockerfile_carries_the_code_and_probe_tools():
    assert "COPY conf ./conf" in DOCKERFILE and "COPY selfplay ./selfplay" in DOCKERFILE
    assert re.search(r"install .*\bwget\b", DOCKERFILE)  # KubeRay's probes call wget


def test_launcher_yaml_validates_and_binds_loopback():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = load(LAUNCHER)
    jsonschema.validate(cfg, schema)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in LAUNCHER.read_text()
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert cmd.startswith("RAY_AUTH_MODE=token ")
    assert cfg["head_node_type"] in cfg["available_node_types"]
