"""`selfplay bench trl`: Nash-MD prompts/s, selfplay against TRL 1.0's `NashMDTrainer`.

Both sides train the very same saved directories: the demo Llama policy (2 layers,
hidden 64, 4 heads, vocab 64; `models.demo.write_chat_policy(arch="llama")`), the demo
Llama Bradley–Terry reward model (`write_reward_model(arch="llama")`) and the shipped
prompt file (`selfplay/data/prompts.jsonl`, each string one user message in the ChatML
template, so both feed the policy the same token ids), with 8 prompts per step and 8 new
tokens, on `cpus` cores (2).

- TRL: `selfplay/bench/trl_nash_md.py`, run by the Python of a separate venv
  (`make bench-trl` makes `.venv-trl`; TRL is not a dependency and selfplay never imports
  it). Per prompt: 1 policy and 1 mixture completion, 2 reward scores, one REINFORCE+KL
  gradient step on the policy completion. TRL is measured at each torch thread count in
  `trl_threads` and its fastest is the figure (on a loaded 2-core box one thread is far
  faster than two); TRL's own default `gradient_checkpointing=True` is turned off (4.5×
  slower here, and it disables the policy's KV cache).
- selfplay: `selfplay train` in-process (`runtime.num_cpus` = cpus), `algo.name=nash-md`,
  `task.kind=prompts`, `judge.kind=reward`, hf rollout, one rollout worker, one
  preference server, one learner shard, `learner.updates_per_phase=1` (one optimizer step
  per batch, as TRL), nothing written per step (rollout.save=none, no tracking, only
  the final checkpoint, evaluation only at the last step).
  `rollout.k=2` (the config's minimum: the regression loss fits differences between
  pairs of responses to the same prompt) and `rollout.opponents_k=1`: 3 mixture completions and 3 reward scores
  per prompt, each mixture token costing two forward passes (policy and reference), and
  2 trained rows per prompt, against TRL's 2 completions (one of them from the policy
  alone), 2 scores and 1 trained row. selfplay does more work per prompt, so the
  comparison leans against it. `sync` (`max_staleness=0`) is on-policy like TRL and is
  the headline; `async` (`max_staleness=1`) overlaps the next batch's sampling and
  judging with learning, selfplay's pipelined mode.
- Same β (0.1) and mixture weight (selfplay's ηβ = 0.01 = TRL's `mixture_coef`), same
  learning rate (1e-4); they do not change the work per step.

Throughput is marginal, start-up excluded: prompts/s over the steps after `warmup`,
8·(N2 − N1)/(t[N2] − t[N1]), from per-step wall-clock marks (TRL: a callback at each
optimizer step's end; selfplay: the history's `elapsed`; its last step, which also runs
the final evaluation, is left out). The two sides run back to back, `rounds` times; the
figures are the medians over rounds and `ratio` = selfplay sync / TRL.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from selfplay.errors import InputError, RunError

TRL_SCRIPT = Path(__file__).with_name("trl_nash_md.py")
PROMPTS_PER_STEP = 8
MAX_NEW_TOKENS = 8
BETA, ETA, LR = 0.1, 0.1, 1e-4
TARGET = 1.5


def write_models(root: Path) -> dict[str, str]:
    """The saved policy and reward model both sides load, and the prompt file."""
    from selfplay.models.demo import shipped_prompts_path, write_chat_policy, write_reward_model

    return {
        "policy": str(write_chat_policy(root / "policy", arch="llama")),
        "reward": str(write_reward_model(root / "reward", arch="llama")),
        "prompts": str(shipped_prompts_path("prompts.jsonl")),
    }


def trl_side(python: str, paths: dict, *, steps: int, warmup: int, threads: int) -> dict:
    """One TRL run in its own venv's Python; its last stdout line is the JSON result."""
    cmd = [
        python,
        str(TRL_SCRIPT),
        *("--policy", paths["policy"], "--reward", paths["reward"], "--prompts", paths["prompts"]),
        *("--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads)),
        *("--batch", str(PROMPTS_PER_STEP), "--max-new-tokens", str(MAX_NEW_TOKENS)),
        *("--beta", str(BETA), "--mixture-coef", str(ETA * BETA), "--lr", str(LR)),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    except subprocess.TimeoutExpired:
        raise RunError("the TRL side ran past 30 minutes") from None
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RunError(f"the TRL side failed (exit {p.returncode}): {tail}")
    return json.loads(lines[-1])


def selfplay_overrides(paths: dict, out: str, *, steps: int, cpus: int, staleness: int):
    return [
        "algo.name=nash-md",
        f"algo.beta={BETA}",
        f"algo.eta={ETA}",
        f"model.name={paths['policy']}",
        "task.kind=prompts",
        f"task.dataset={paths['prompts']}",
        "task.chat_template=true",
        "judge.kind=reward",
        f"judge.model={paths['reward']}",
        "judge.servers=1",
        "rollout.backend=hf",
        "rollout.workers=1",
        f"rollout.prompts_per_step={PROMPTS_PER_STEP}",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS}",
        "rollout.k=2",
        "rollout.opponents_k=1",
        "rollout.save=none",
        "learner.shards=1",
        "learner.updates_per_phase=1",
        f"learner.lr={LR}",
        f"runtime.steps={steps}",
        f"runtime.eval_every={steps}",
        "runtime.checkpoint_every=0",
        f"runtime.max_staleness={staleness}",
        f"runtime.num_cpus={cpus}",
        "tracking.enabled=false",
        f"output_dir={out}",
    ]


def marginal(elapsed: dict[int, float], first: int, last: int) -> float:
    """Prompts/s between the ends of steps `first` and `last` (1-based; first may be 0,
    the start of the loop at elapsed 0)."""
    t0 = 0.0 if first == 0 else elapsed[first]
    return PROMPTS_PER_STEP * (last - first) / (elapsed[last] - t0)


def selfplay_side(paths: dict, *, steps: int, warmup: int, cpus: int, staleness: int) -> dict:
    from selfplay.config import load_config
    from selfplay.runtime.driver.trainer import train

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(
            None, selfplay_overrides(paths, out, steps=steps, cpus=cpus, staleness=staleness)
        )
        res = train(cfg, progress=False)
    elapsed = {int(h["step"]): float(h["elapsed"]) for h in res.history if "elapsed" in h}
    last = steps - 1  # the last step also runs the final evaluation
    return {
        "side": "selfplay",
        "max_staleness": staleness,
        "steps": steps,
        "warmup": warmup,
        "k": cfg.rollout.k,
        "opponents_k": cfg.rollout.opponents_k,
        "seconds_total": res.summary["seconds"],
        "seconds_marginal": elapsed[last] - (elapsed[warmup] if warmup else 0.0),
        "prompts_per_s": marginal(elapsed, warmup, last),
    }


def run(
    trl_python: str,
    *,
    steps: int = 40,
    warmup: int = 10,
    rounds: int = 2,
    cpus: int = 2,
    trl_threads: tuple[int, ...] = (1, 2),
) -> dict:
    """`rounds` × (TRL at each thread count, selfplay sync, selfplay async), back to back."""
    if not Path(trl_python).is_file():
        raise InputError(
            f"no TRL Python at {trl_python}: run `make bench-trl` (creates .venv-trl "
            "with trl==1.0.*), or pass --trl-python"
        )
    if not 1 <= warmup < steps - 1:
        raise InputError(f"need 1 <= --warmup < --steps - 1, got {warmup} and {steps}")
    from selfplay.runtime.cluster import use_loopback

    use_loopback()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        paths = write_models(Path(root))
        for _ in range(rounds):
            trl = {
                t: trl_side(trl_python, paths, steps=steps, warmup=warmup, threads=t)
                for t in trl_threads
            }
            best = max(trl.values(), key=lambda r: r["prompts_per_s"])
            sync = selfplay_side(paths, steps=steps, warmup=warmup, cpus=cpus, staleness=0)
            asyn = selfplay_side(paths, steps=steps, warmup=warmup, cpus=cpus, staleness=1)
            rows.append({"trl": list(trl.values()), "trl_best": best, "sync": sync, "async": asyn})
    med = {
        "trl": statistics.median(r["trl_best"]["prompts_per_s"] for r in rows),
        "sync": statistics.median(r["sync"]["prompts_per_s"] for r in rows),
        "async": statistics.median(r["async"]["prompts_per_s"] for r in rows),
    }
    v = rows[0]["trl_best"]
    return {
        "rounds": rows,
        "versions": {k: v[k] for k in ("trl", "transformers", "torch")},
        "cpus": cpus,
        "trl_prompts_per_s": med["trl"],
        "selfplay_prompts_per_s": med["sync"],
        "selfplay_async_prompts_per_s": med["async"],
        "ratio": med["sync"] / med["trl"],
        "ratio_async": med["async"] / med["trl"],
        "target": TARGET,
    }


def summary_json(r: dict) -> dict:
    """The last line: both throughputs and the ratios."""
    keys = ("trl_prompts_per_s", "selfplay_prompts_per_s", "selfplay_async_prompts_per_s")
    return {k: r[k] for k in (*keys, "ratio", "ratio_async", "target", "cpus", "versions")}


def format_report(r: dict) -> str:
    lines = []
    for i, row in enumerate(r["rounds"], 1):
        trl = ", ".join(f"{x['threads']} thread(s) {x['prompts_per_s']:.1f}" for x in row["trl"])
        lines.append(
            f"round {i}: TRL NashMDTrainer {trl} prompts/s; selfplay nash-md "
            f"max_staleness=0 {row['sync']['prompts_per_s']:.1f}, "
            f"max_staleness=1 {row['async']['prompts_per_s']:.1f} prompts/s"
        )
    v = r["versions"]
    lines.append(
        f"median: TRL {v['trl']} {r['trl_prompts_per_s']:.1f} prompts/s, selfplay "
        f"{r['selfplay_prompts_per_s']:.1f} (sync) / {r['selfplay_async_prompts_per_s']:.1f} "
        f"(async): ratio {r['ratio']:.2f}x sync, {r['ratio_async']:.2f}x async "
        f"(target >= {r['target']}x) on {r['cpus']} CPUs"
    )
    return "\n".join(lines)


if __name__ == "__main__":  # python -m selfplay.bench.trl_compare PYTHON
    res = run(sys.argv[1])
    print(format_report(res))
    print(json.dumps(summary_json(res)))
