"""Out of memory at the final checkpoint: one line, the model kept, the last good
checkpoint intact and resumable.

Ray's memory monitor is not made to fire (that needs a machine run out of memory):
the learner's `state()`, which the checkpoint calls, raises the error Ray raises
for a process it killed, `ray.exceptions.OutOfMemoryError`, with Ray's message,
from the learner's own actor process, at the second checkpoint (the final one).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray

from selfplay.config import load_config
from selfplay.errors import RunError
from selfplay.runtime.checkpoint import format as ck
from selfplay.runtime.learner import group
from selfplay.runtime.learner.learner import Learner

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
RAY_OOM = (  # Ray's memory monitor's message (ray/src/ray/raylet/node_manager.cc)
    "Task was killed due to the node running low on memory.\n"
    "Memory on the node (IP: 10.0.0.7, ID: 3f2a) where the task (actor ID: 9c1e, "
    "name=LearnerActor.state, pid=4242, memory used=18.90GB) was running was "
    "30.72GB / 31.00GB (0.990968), which exceeds the memory usage threshold of 0.95. "
    "Ray killed this worker (ID: 77ab) because it was the most recently scheduled task."
)


class OutOfMemoryAtSecondState(Learner):
    """A learner whose second `state()` (the second checkpoint) is killed for memory."""

    calls = 0

    def state(self, copy: bool = True):
        type(self).calls += 1
        if type(self).calls == 2:
            raise ray.exceptions.OutOfMemoryError(RAY_OOM)
        return super().state(copy=copy)


def test_oom_at_the_final_checkpoint_is_one_line_and_loses_nothing(cluster, tmp_path, monkeypatch):
    from ray import cloudpickle

    from selfplay.runtime.driver.resume import check_resume
    from selfplay.runtime.driver.trainer import train

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor gets the class
    real = group.LearnerGroup

    def learners(*args, **kw):
        return real(*args, **kw, learner_cls=OutOfMemoryAtSecondState)

    monkeypatch.setattr(group, "LearnerGroup", learners)
    cfg = load_config(
        ROOT / "conf" / "quickstart.yaml",
        [
            "tracking.enabled=false",
            "runtime.steps=3",
            "runtime.checkpoint_every=2",
            "rollout.prompts_per_step=4",
            "rollout.opponents_k=8",
            "learner.updates_per_phase=2",
            "model.tiny.hidden=8",
            "model.tiny.layers=1",
            "rollout.num_cpus=0.25",
            "judge.num_cpus=0.25",
            "learner.num_cpus=0.5",
            f"output_dir={tmp_path}",
        ],
    )
    with pytest.raises(RunError) as e:
        train(cfg, progress=False)
    (d,) = list(tmp_path.iterdir())
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == (
        "out of memory at step 3: Ray's memory monitor killed LearnerActor (pid 4242, "
        "RSS 18.90GB); give it a node with more memory or lower learner.micro_batch, "
        "rollout.prompts_per_step or the model's size; its last checkpoint (step 2) is "
        f"intact: continue with `selfplay train --resume {d}`"
    ), msg
    # The final policy was written before the checkpoint that failed.
    assert (d / "model" / "config.json").is_file()
    assert any((d / "model").glob("*.safetensors"))
    # The last good checkpoint verifies and a resume accepts it.
    (newest,) = ck.list_checkpoints(d / "checkpoints")
    assert newest.name == "step-000002" and ck.verify(newest) is None
    _, resumed = check_resume(None, [], d)
    assert resumed.step == 2
