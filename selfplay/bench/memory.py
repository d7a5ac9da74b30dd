"""`selfplay bench memory`: peak memory of a selfplay run, driver plus Ray actors, against TRL.

Each side runs as a child process; a poller reads, every `interval` seconds, every
process of that child's process tree from /proc (Linux only): the driver, and the
Ray processes it starts (gcs_server, raylet, dashboard and monitor processes, and
the worker processes the raylet forks, whose command lines read `ray::ClassName`
once they host an actor and `ray::IDLE` before). Per process it keeps the kernel's
own peak resident set, `VmHWM` of /proc/PID/status (exact, not sampled; read until
the process exits, so the last reading is its peak up to one interval), and at each
poll the tree's summed `VmRSS` and `Pss` (/proc/PID/smaps_rollup: each shared page
counted once in total, split between the processes mapping it).

What is reported:
- `driver_plus_actors_mb`: Σ VmHWM over the driver and the worker processes that
  host the run's actors (rollout, judge, learner, run control). This counts the
  shared libraries (torch's ~200 MB of .so files) once per process: an upper bound
  on what they need together.
- `idle_workers_mb`: Σ VmHWM of `ray::IDLE` worker processes (Ray pre-starts
  them, and a worker that ran a task returns to idle).
- `ray_system_mb`: Σ VmHWM of Ray's own processes (gcs_server, raylet, dashboard,
  log monitor, the dashboard and runtime-env agents), which TRL does not have.
- `peak_pss_mb`: the largest summed Pss of the whole tree at one poll: the
  memory the run held at its fullest, shared pages counted once.
- TRL (`selfplay/bench/trl_nash_md.py`, the script of `selfplay bench trl`, same
  saved llama policy/reward, 8 prompts per step, 8 new tokens) is one process:
  its VmHWM, which is also its RSS peak (= its `ru_maxrss`).

Two selfplay runs: `trl_setting` is `selfplay bench trl`'s sync configuration
(`trl_compare.selfplay_overrides`, same models as TRL: like for like); `text_demo`
is `conf/text_quickstart.yaml` on `selfplay demo text`'s models (qwen2, vocab 512),
with fewer steps and without MLflow. Both: one rollout worker, one judge server, one
learner shard, each an actor in its own process (plus the driver).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from selfplay.errors import InputError, RunError

REPO = Path(__file__).resolve().parents[2]
#: Ray's own per-node agents run in worker-like processes titled ray::<Agent>.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            stat = _read(f"/proc/{d}/stat")
            if stat:  # "pid (comm) state ppid ...": comm may hold spaces, split after ')'
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _kb(text: str | None, field: str) -> int | None:
    for line in (text or "").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def kind(pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    return classify((_read(f"/proc/{pid}/cmdline") or "").split("\0"))


def classify(argv: list[str]) -> str:
    """A non-root process by its argv: worker (a Ray worker process hosting an actor:
    `ray::Name` once it has set its title, `default_worker.py` before), idle_worker
    (`ray::IDLE`: no actor), ray_system (Ray's agents and every other Ray process), other."""
    if argv[0] in RAY_AGENTS:
        return "ray_system"
    if argv[0] == "ray::IDLE":
        return "idle_worker"
    if argv[0].startswith("ray::") or any(a.endswith("default_worker.py") for a in argv[:3]):
        return "worker"
    if any("/ray/" in a for a in argv[:3]):  # Ray's binaries and scripts: site-packages/ray/
        return "ray_system"
    return "other"


class TreeMonitor(threading.Thread):
    """Polls a process tree until `stop()`: per-pid last VmHWM and the peak summed Pss."""

    def __init__(self, root: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.procs: dict[int, dict] = {}
        self.peak_pss_kb = self.peak_rss_kb = 0
        self._halt = threading.Event()

    def poll(self) -> None:
        pss = rss = 0
        for pid in tree(self.root):
            status = _read(f"/proc/{pid}/status")
            hwm = _kb(status, "VmHWM")
            if hwm is None:  # gone, or a kernel thread
                continue
            rec = self.procs.setdefault(pid, {})
            rec["kind"] = kind(pid, self.root)  # a worker renames itself once it hosts an actor
            argv = (_read(f"/proc/{pid}/cmdline") or "").split("\0")
            rec["name"] = argv[0] if argv[0].startswith("ray::") else Path(argv[0]).name
            rec["hwm_kb"] = max(hwm, rec.get("hwm_kb", 0))
            rss += _kb(status, "VmRSS") or 0
            pss += _kb(_read(f"/proc/{pid}/smaps_rollup"), "Pss") or 0
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def report(self) -> dict:
        by: dict[str, float] = {}
        for r in self.procs.values():
            by[r["kind"]] = by.get(r["kind"], 0.0) + r.get("hwm_kb", 0) / 1024
        actors = sorted(
            (
                {"name": r["name"], "peak_rss_mb": round(r["hwm_kb"] / 1024, 1)}
                for r in self.procs.values()
                if r["kind"] == "worker"
            ),
            key=lambda a: -a["peak_rss_mb"],
        )
        return {
            "driver_mb": round(by.get("driver", 0.0), 1),
            "actors_mb": round(by.get("worker", 0.0), 1),
            "driver_plus_actors_mb": round(by.get("driver", 0.0) + by.get("worker", 0.0), 1),
            "idle_workers_mb": round(by.get("idle_worker", 0.0), 1),
            "ray_system_mb": round(by.get("ray_system", 0.0), 1),
            "other_mb": round(by.get("other", 0.0), 1),
            "peak_pss_mb": round(self.peak_pss_kb / 1024, 1),
            "peak_concurrent_rss_mb": round(self.peak_rss_kb / 1024, 1),
            "processes": len(self.procs),
            "workers": actors,
        }


def measure(cmd: list[str], env: dict, *, interval: float = 0.2, timeout: float = 1800) -> dict:
    """Run `cmd`, poll its process tree until it exits; the report plus its wall time."""
    if not Path("/proc/self/status").is_file():
        raise InputError("selfplay bench memory reads /proc: Linux only")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mon = TreeMonitor(p.pid, interval)
    mon.start()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        mon.stop()
        raise RunError(f"{Path(cmd[1]).name} ran past {timeout:.0f} s") from None
    mon.stop()
    if p.returncode != 0:
        tail = (err.strip().splitlines() or ["(no output)"])[-1]
        raise RunError(f"{' '.join(cmd[:4])} failed (exit {p.returncode}): {tail}")
    return {
        **mon.report(),
        "seconds": round(time.perf_counter() - t0, 1),
        "stdout_tail": out[-4000:],
    }


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(TOKENIZERS_PARALLELISM="false", RAY_ADDRESS="")
    return env


def _train(overrides: list[str], config: str | None = None) -> list[str]:
    cfg = [config] if config else []
    return [sys.executable, "-m", "selfplay.cli", "train", *cfg, *overrides, "--no-progress"]


def run(trl_python: str | None, *, steps: int = 10, interval: float = 0.2) -> dict:
    """TRL (if its Python is given and exists), selfplay on TRL's setting, the text demo."""
    from selfplay.bench import trl_compare as t

    out: dict = {"steps": steps, "interval_s": interval}
    with tempfile.TemporaryDirectory() as root:
        root_p = Path(root)
        paths = t.write_models(root_p / "trl")
        if trl_python and Path(trl_python).is_file():
            cmd = [trl_python, str(t.TRL_SCRIPT)]
            cmd += ["--policy", paths["policy"], "--reward", paths["reward"]]
            cmd += ["--prompts", paths["prompts"], "--steps", str(steps), "--warmup", "1"]
            cmd += ["--threads", "2", "--batch", str(t.PROMPTS_PER_STEP)]
            cmd += ["--max-new-tokens", str(t.MAX_NEW_TOKENS), "--beta", str(t.BETA)]
            cmd += ["--mixture-coef", str(t.ETA * t.BETA), "--lr", str(t.LR)]
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            env.update(TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false")
            trl = measure(cmd, env, interval=interval)
            trl["versions"] = {k: v for k, v in _last_json(trl).items() if k in ("trl", "torch")}
            out["trl"] = trl
        ov = t.selfplay_overrides(paths, str(root_p / "run-trl"), steps=steps, cpus=2, staleness=0)
        base = root_p / "base.yaml"
        base.write_text("seed: 0\n")  # everything else: the overrides (trl_compare's)
        out["selfplay_trl_setting"] = measure(_train(ov, str(base)), _env(), interval=interval)
        demo = root_p / "demo"
        subprocess.run(
            [sys.executable, "-m", "selfplay.cli", "demo", "text", "--out", str(demo)],
            env=_env(),
            check=True,
            capture_output=True,
        )
        ov = [
            f"model.name={demo / 'policy'}",
            f"task.dataset={demo / 'chat_prompts.jsonl'}",
            f"judge.model={demo / 'reward'}",
            f"runtime.steps={steps}",
            "tracking.enabled=false",
            f"output_dir={root_p / 'run-demo'}",
        ]
        conf = str(REPO / "conf" / "text_quickstart.yaml")
        out["selfplay_text_demo"] = measure(_train(ov, conf), _env(), interval=interval)
    for r in out.values():
        if isinstance(r, dict):
            r.pop("stdout_tail", None)
    return out


def _last_json(r: dict) -> dict:
    lines = r.get("stdout_tail", "").strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}


def format_report(r: dict) -> str:
    lines = [f"peak memory, {r['steps']} steps, /proc polled every {r['interval_s']} s:"]
    if "trl" in r:
        x = r["trl"]
        lines.append(
            f"  TRL NashMDTrainer (one process): peak RSS {x['driver_mb']:.0f} MB "
            f"(peak PSS {x['peak_pss_mb']:.0f} MB)"
        )
    for key, label in (
        ("selfplay_trl_setting", "selfplay, TRL's setting"),
        ("selfplay_text_demo", "selfplay, text demo"),
    ):
        x = r[key]
        acts = ", ".join(f"{a['name']} {a['peak_rss_mb']:.0f}" for a in x["workers"])
        lines.append(
            f"  {label}: driver + actors {x['driver_plus_actors_mb']:.0f} MB (driver "
            f"{x['driver_mb']:.0f}; {acts}); idle workers {x['idle_workers_mb']:.0f} MB; "
            f"Ray system processes {x['ray_system_mb']:.0f} MB; "
            f"whole tree peak PSS {x['peak_pss_mb']:.0f} MB"
        )
    return "\n".join(lines)
