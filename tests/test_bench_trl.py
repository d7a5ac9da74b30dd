"""`selfplay bench trl`: the comparison's own plumbing (its timings are reported in the
README, not asserted). TRL itself is not installed here: its side is exercised through
a stand-in Python that prints what the real script prints, and the runtime patch of
TRL's mixture wrapper on stand-in classes."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from selfplay.bench import trl_compare as t
from selfplay.bench import trl_nash_md
from selfplay.cli import main
from selfplay.config import load_config
from selfplay.errors import InputError, RunError

PATHS = {"policy": "/p/policy", "reward": "/p/reward", "prompts": "/p/prompts.jsonl"}


def test_marginal_rate_is_prompts_over_the_span_after_warmup():
    elapsed = {1: 4.0, 5: 6.0, 39: 14.5}  # step 1 carries the start-up
    # 8 prompts × (39 − 5) steps in 14.5 − 6.0 s, by hand
    assert t.marginal(elapsed, 5, 39) == pytest.approx(8 * 34 / 8.5)
    assert t.marginal(elapsed, 0, 5) == pytest.approx(8 * 5 / 6.0)


def test_selfplay_settings_match_the_trl_side():
    cfg = load_config(None, t.selfplay_overrides(PATHS, "/tmp/x", steps=12, cpus=2, staleness=1))
    assert cfg.algo.name == "nash-md" and cfg.task.kind == "prompts"
    assert (cfg.model.name, cfg.judge.kind, cfg.judge.model) == (
        "/p/policy",
        "reward",
        "/p/reward",
    )
    assert cfg.task.dataset == "/p/prompts.jsonl" and cfg.task.chat_template
    r = cfg.rollout
    assert (r.prompts_per_step, r.max_new_tokens, r.k, r.opponents_k) == (8, 8, 2, 1)
    assert cfg.learner.updates_per_phase == 1 and cfg.learner.lr == t.LR
    assert (cfg.runtime.num_cpus, cfg.runtime.max_staleness, cfg.runtime.eval_every) == (2, 1, 12)
    # the mixture weight handed to TRL is selfplay's λ = ηβ
    assert cfg.algo.eta * cfg.algo.beta == pytest.approx(0.01)


def test_mixture_wrapper_patch_delegates_only_what_is_missing():
    class Model:
        def get_experts_implementation(self):
            return {"mlp": "eager"}

    class Wrapper:  # TRL 1.0's GeometricMixtureWrapper lacks the method
        def __init__(self):
            self.model = Model()

    assert trl_nash_md._patch_mixture_wrapper(Wrapper) == ["get_experts_implementation"]
    assert Wrapper().get_experts_implementation() == {"mlp": "eager"}

    class Fixed:  # a TRL that has it is left alone
        def get_experts_implementation(self):
            return "own"

    assert trl_nash_md._patch_mixture_wrapper(Fixed) == []
    assert Fixed().get_experts_implementation() == "own"


def _fake_python(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "python"
    exe.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def test_trl_side_reads_the_last_json_line_and_passes_the_settings(tmp_path):
    exe = _fake_python(
        tmp_path,
        "import json\nprint('noise')\n"
        "a = sys.argv[2:]\n"
        "print(json.dumps({'argv': a, 'prompts_per_s': 3.5}))",
    )
    r = t.trl_side(exe, PATHS, steps=12, warmup=3, threads=1)
    assert r["prompts_per_s"] == 3.5
    args = dict(zip(r["argv"][::2], r["argv"][1::2], strict=True))
    assert args["--batch"] == "8" and args["--max-new-tokens"] == "8"
    assert float(args["--mixture-coef"]) == pytest.approx(t.ETA * t.BETA)
    assert (args["--steps"], args["--warmup"], args["--policy"]) == ("12", "3", "/p/policy")


def test_trl_side_failure_is_one_line(tmp_path):
    exe = _fake_python(tmp_path, "sys.stderr.write('x\\nModuleNotFoundError: trl\\n'); sys.exit(3)")
    with pytest.raises(RunError, match=r"exit 3\): ModuleNotFoundError: trl"):
        t.trl_side(exe, PATHS, steps=4, warmup=1, threads=1)


def test_missing_trl_venv_is_an_input_error(tmp_path, capsys):
    with pytest.raises(InputError, match="make bench-trl"):
        t.run(str(tmp_path / "nope"))
    with pytest.raises(SystemExit) as e:  # the CLI: one line, exit 2, nothing run
        main(["bench", "trl", "--trl-python", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "make bench-trl" in err[0]


def test_summary_is_json_with_both_rates_and_the_ratio():
    r = {
        "trl_prompts_per_s": 80.0,
        "selfplay_prompts_per_s": 40.0,
        "selfplay_async_prompts_per_s": 60.0,
        "ratio": 0.5,
        "ratio_async": 0.75,
        "target": 1.5,
        "cpus": 2,
        "versions": {"trl": "1.0.0"},
        "rounds": [],
    }
    line = json.loads(json.dumps(t.summary_json(r)))
    assert line["ratio"] == 0.5 and "rounds" not in line


def test_selfplay_side_runs_with_the_bench_settings(cluster, tmp_path):
    pytest.importorskip("selfplay.tasks.prompts")  # the text task (merged separately)
    paths = t.write_models(tmp_path)
    r = t.selfplay_side(paths, steps=4, warmup=1, cpus=2, staleness=0)
    assert (r["k"], r["opponents_k"], r["steps"]) == (2, 1, 4)
    # steps 2..3 (the last step, with the final evaluation, is left out)
    assert r["prompts_per_s"] == pytest.approx(8 * 2 / r["seconds_marginal"])
