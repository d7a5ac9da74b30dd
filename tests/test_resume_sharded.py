"""Resume with a sharded learner: every rank's state comes back exactly.

Oracle: an uninterrupted run. A 2-rank FSDP2 learner (each rank holds its own
parameter and AdamW shards) runs 4 steps; a second run stops after 2 steps
and is resumed to 4 from its final checkpoint. Both ranks' saved states must
be equal bit for bit (`max_staleness: 0`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfplay.config import load_config
from selfplay.runtime.checkpoint.format import list_checkpoints
from selfplay.runtime.driver.resume import check_resume
from selfplay.runtime.driver.trainer import train

pytestmark = pytest.mark.ray

QUICKSTART = Path(__file__).resolve().parents[1] / "conf" / "quickstart.yaml"
SMALL = [
    "tracking.enabled=false",
    "rollout.prompts_per_step=4",
    "rollout.k=4",
    "rollout.opponents_k=8",
    "learner.updates_per_phase=2",
    "model.tiny.hidden=8",
    "model.tiny.layers=1",
    "learner.shards=2",
    "learner.strategy=fsdp2",
    "learner.num_cpus=0.5",
    "rollout.num_cpus=0.25",
    "judge.num_cpus=0.25",
    "algo.name=omwu",
    "algo.eta=1",
]


def _final(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    newest = list_checkpoints(run_dir / "checkpoints")[0]
    out = []
    for r in (0, 1):  # each rank's part files (learner-R.<part>.safetensors), merged
        out.append(
            {
                k: v
                for f in newest.glob(f"learner-{r}.*.safetensors")
                for k, v in load_file(f).items()
            }
        )
    assert all(out)
    return out


def test_fsdp2_resume_is_bitwise(cluster, tmp_path):
    full = train(
        load_config(QUICKSTART, [*SMALL, "runtime.steps=4", f"output_dir={tmp_path / 'a'}"]),
        progress=False,
    )
    half = train(
        load_config(QUICKSTART, [*SMALL, "runtime.steps=2", f"output_dir={tmp_path / 'b'}"]),
        progress=False,
    )
    cfg, ckpt = check_resume(None, ["runtime.steps=4"], half.run_dir)
    assert ckpt.step == 2 and cfg.runtime.steps == 4
    rest = train(cfg, progress=False, resume=ckpt)
    assert rest.run_dir == half.run_dir and len(rest.records) == 4
    for a, b in zip(_final(full.run_dir), _final(half.run_dir), strict=True):
        assert a.keys() == b.keys() and any(k.startswith("optim/") for k in a)
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert rest.summary["policy"] == full.summary["policy"]
