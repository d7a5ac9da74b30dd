"""A full disk while a run writes, and `selfplay export`, run as a user runs them (the
CLI's `main`, in this module's Ray cluster).

The disk fills where it cannot be arranged portably in a test: the safetensors writer
raises what it raises on a full file system (`SafetensorError: No space left on device
(os error 28)`) for the one checkpoint, or for the final model, under test.

Oracles: the previous checkpoint verifies (its manifest's sizes and SHA-256); the model
`selfplay export` writes from a finished run's checkpoint equals, bit for bit, the one the
run itself exported from its learners.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from safetensors import SafetensorError
from safetensors.torch import load_file

from selfplay.cli import main
from selfplay.runtime.checkpoint.format import verify

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "runtime.steps=3",
    "runtime.checkpoint_every=1",
    "rollout.prompts_per_step=4",
    "rollout.k=2",
    "rollout.opponents_k=2",
    "learner.updates_per_phase=2",
    "model.tiny.hidden=8",
    "model.tiny.layers=1",
    "tracking.enabled=false",
]
FULL = "No space left on device (os error 28)"


def _train(out: Path, capsys) -> tuple[int, list[str], Path]:
    """(exit status, stderr lines, run dir) of `selfplay train` of a 3-step token game."""
    capsys.readouterr()
    code = 0
    try:
        main(["train", str(ROOT / "conf" / "quickstart.yaml"), *TINY, f"output_dir={out}"])
    except SystemExit as e:
        code = e.code
    (run_dir,) = out.iterdir()
    return code, capsys.readouterr().err.strip().splitlines(), run_dir


def _fill(monkeypatch, module, name: str, where: str, error: Exception | None = None) -> None:
    """`module.name` (a safetensors writer) fails as on a full disk for paths with `where`,
    with `error` (default: the safetensors library's own error)."""
    real = getattr(module, name)

    def save(tensors, filename, *args, **kwargs):
        if where in str(filename):
            raise error or SafetensorError(FULL)
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(module, name, save)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last(
    cluster, tmp_path, capsys, monkeypatch
):
    import selfplay.runtime.checkpoint.format as fmt

    # the checkpoint writer streams each file itself: a full disk is ENOSPC from write()
    full = OSError(errno.ENOSPC, "No space left on device")
    _fill(monkeypatch, fmt, "save_tensors", ".tmp-step-000003", full)
    code, err, run_dir = _train(tmp_path / "runs", capsys)
    assert code == 1, err
    (line,) = err[-1:]
    assert not any("Traceback" in e for e in err), err
    ckpts = run_dir / "checkpoints"
    assert line.startswith(f"error: no space left on the device of {ckpts} ("), line
    # the final model is written before the final checkpoint: a full disk there keeps it
    assert f" free) while writing it; the model is in {run_dir / 'model'}; " in line
    assert "the last checkpoint step-000002 is intact" in line
    assert f"`selfplay train --resume {run_dir}`" in line
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000001", "step-000002"]
    assert verify(ckpts / "step-000002") is None
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_a_full_disk_at_the_model_export_then_selfplay_export(
    cluster, tmp_path, capsys, monkeypatch
):
    import transformers.modeling_utils as mu

    code, err, done = _train(tmp_path / "done", capsys)  # the oracle: an export that worked
    assert code == 0, err
    with monkeypatch.context() as m:
        _fill(m, mu, "safe_save_file", "/.model-")
        code, err, run_dir = _train(tmp_path / "runs", capsys)
    assert code == 1, err
    (line,) = err[-1:]
    assert line.startswith(f"error: no space left on the device of {run_dir / 'model'} (")
    assert (
        f"step-000003 is intact: free space, then write the model with `selfplay export {run_dir}`"
        in line
    )
    assert not (run_dir / "model").exists()
    assert not any(p.name.startswith(".model-") for p in run_dir.iterdir())

    capsys.readouterr()
    main(["export", str(run_dir)])
    assert capsys.readouterr().out.strip() == str(run_dir / "model")
    main(["export", str(done), "--out", str(tmp_path / "again")])
    want = load_file(done / "model" / "model.safetensors")
    for got in (run_dir / "model", tmp_path / "again"):
        have = load_file(got / "model.safetensors")
        assert have.keys() == want.keys()
        assert all(have[k].equal(want[k]) for k in want)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "model")


def test_export_refusals_are_one_line(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}\n")
    for args, word in (
        ([str(tmp_path / "nope")], "not a selfplay run directory"),
        ([str(tmp_path)], "no usable checkpoint"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["export", *args])
        assert e.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert word in line, line
