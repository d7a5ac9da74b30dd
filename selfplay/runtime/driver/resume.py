"""Checkpoint and resume a run without losing or repeating any work.

A checkpoint is taken at a step boundary (`Controller.run`'s `on_step`) and
holds everything the rest of the run depends on:

- every learner rank's `LearnerState`: the trainable weights, AdamW state and
  every role the algorithm still needs (π_{t−1} for OMWU, the magnet for MPO,
  π_ref), as safetensors;
- the policy store: which version plays each role, and the publish index of
  every version (staleness is measured in it);
- the controller: `next_step`, the prompt `cursor` (the data cursor), the
  preference-query count, the trained-phase records (prompt accounting), the
  pool size;
- the `queue`: batches already sampled and judged but not yet trained on (the
  prefetched next batch when `max_staleness` ≥ 1). They are waited for, then
  stored whole (TrainBatch + BatchInfo), so a resumed run trains on exactly
  them and takes new prompts from the cursor: no prompt is lost or trained on
  twice;
- RNG states of the driver. Sampling seeds are counter-based — a pure
  function of (seed, step, phase, chunk, draw) — and the learner draws no
  random numbers (eval mode, no dropout), so with `max_staleness: 0` a resumed
  run's weights equal an uninterrupted run's bit for bit.

On resume the versions the roles point at are republished from the learners'
role weights (the same bytes that were published first), so rollout workers
load them as before. Ray is imported only where needed: `check_resume` runs in
the CLI before Ray starts. Nothing is unpickled: tensors come from safetensors,
the rest from JSON (`selfplay.runtime.checkpoint.format`).
"""

from __future__ import annotations

import functools
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from selfplay.config import Config, load_config
from selfplay.config_paths import absolute_paths
from selfplay.errors import InputError
from selfplay.runtime.checkpoint.codec import (
    pack_arrays,
    rng_state,
    set_rng_state,
    unpack_arrays,
    unpack_learner_state,
    version_from_json,
    version_to_json,
)
from selfplay.runtime.checkpoint.format import (
    CHECKPOINT_DIR,
    Checkpoint,
    load_latest,
    write_checkpoint,
)

# Config keys a resumed run may change: where and how big it runs, not what it computes.
RESUMABLE = (
    "runtime.steps",
    "runtime.address",
    "runtime.num_cpus",
    "runtime.checkpoint_every",
    "runtime.checkpoint_keep",
    "runtime.keep_policies_every",
    "runtime.max_reissues",
    "runtime.node_wait_s",
    "rollout.workers",
    "rollout.autoscale",
    "rollout.join_wait_s",
    "eval",
    "tracking",
    "output_dir",
)


# ------------------------------------------------------------------ run dir
def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resumable(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RESUMABLE)


def _config_of(ckpt: Checkpoint, d: Path) -> Config:
    """The config the checkpoint was written with (its meta.json), validated."""
    try:
        return Config.model_validate(ckpt.meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"--resume {d}: {ckpt.path.name} holds no valid config ({msg})") from None


def check_resume(
    cfg: Config | None, overrides: list[str], run_dir: str | Path, warn=None
) -> tuple[Config, Checkpoint]:
    """Lock `run_dir`; return the config to resume with and its newest usable checkpoint.

    The requested config is `cfg`, or (`cfg` None) the run dir's config.yaml plus
    `overrides`. It must equal the config stored in the checkpoint itself (its
    meta.json, not config.yaml, which a user can edit) except for the `RESUMABLE`
    keys, and `runtime.steps` must exceed the checkpoint's step. Anything else raises
    InputError (one line naming every differing key) before anything is started or
    written; the only trace a refusal can leave is an empty RUN_DIR/.lock in a run
    dir made before run dirs were locked.
    """
    from selfplay.runtime.driver.rundir import lock_run_dir

    d = Path(run_dir)
    if not d.is_dir():
        raise InputError(f"--resume {d}: no such run directory")
    if not (d / "config.yaml").is_file():
        raise InputError(f"--resume {d}: not a selfplay run directory (no config.yaml)")
    lock_run_dir(d)  # a second process stops here; the checks below read a quiet run dir
    want = cfg if cfg is not None else load_config(d / "config.yaml", overrides)
    # Paths compared absolute, from here (a run made before runs recorded them so was
    # started here too, or its relative paths name other files now).
    want = absolute_paths(want)
    ckpt = load_latest(d / CHECKPOINT_DIR, warn=warn)
    have = absolute_paths(_config_of(ckpt, d))
    a, b = _flat(have.model_dump(mode="json")), _flat(want.model_dump(mode="json"))
    diff = [k for k in sorted(set(a) | set(b)) if not _resumable(k) and a.get(k) != b.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {a.get(k)!r} in it, {b.get(k)!r} asked" for k in diff[:4])
        more = f"; and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise InputError(
            f"--resume {d}: checkpoint {ckpt.path.name} was made with another config "
            f"({shown}{more}); a resume may change only {', '.join(RESUMABLE)}"
        )
    if ckpt.step >= want.runtime.steps:
        raise InputError(
            f"--resume {d}: its checkpoint {ckpt.path.name} has {ckpt.step} steps done and "
            f"runtime.steps={want.runtime.steps}; pass runtime.steps above {ckpt.step} to "
            f"continue it"
        )
    return want, ckpt


# ------------------------------------------------------------------ save
def record_json(r) -> dict:
    return {
        "step": r.step,
        "phase": r.phase,
        "output": version_to_json(r.output),
        "staleness": r.staleness,
        "rows": r.rows,
        "queries": r.queries,
        "prompt_ids": [int(x) for x in r.prompt_ids],
        "workers": r.workers,
        "reissues": r.reissues,
        "seconds": r.seconds,
        "anchor": version_to_json(r.anchor),
        "samplers": [version_to_json(v) for v in r.sampler_versions],
        "opponents": [version_to_json(v) for v in r.opponent_versions],
    }


def _pending_json(p) -> dict:
    return {
        "step": p.step,
        "phase": p.phase,
        "start": p.start,
        "workers": p.workers,
        "used": {r: version_to_json(v) for r, v in p.used.items()},
        "samplers": [version_to_json(v) for v in p.samplers],
        "weights": p.weights,
    }


def controller_state(ctl) -> tuple[dict, dict[str, dict]]:
    """(JSON meta, safetensors files) of the controller at a step boundary."""
    import ray

    st = ctl.store
    meta: dict[str, Any] = {
        "next_step": ctl.next_step,
        "cursor": ctl.cursor,
        "queries": ctl.queries,
        "workers": len(ctl.rollout),
        "store": {
            "published": st.published,
            "index": [[version_to_json(v), i] for v, i in st.index.items()],
            "roles": {r: version_to_json(v) for r, v in st.roles.items()},
        },
        "records": [record_json(r) for r in ctl.records],
        "resizes": [[z.step, z.old, z.new] for z in ctl.resizes],
        "learners": [],
        "queue": [],
    }
    files: dict[str, Any] = {}
    for rank, actor in enumerate(ctl.learners.actors):
        # Streamed: each part (one role's weights, one AdamW moment) is fetched when
        # its file is written and released after.
        m, parts = ray.get(actor.checkpoint_meta.remote())
        meta["learners"].append(m)
        for name in parts:
            files[f"learner-{rank}.{name}"] = functools.partial(
                lambda a, n: ray.get(a.checkpoint_part.remote(n)), actor, name
            )
    for i, p in enumerate(ctl.queue):
        info = ctl.collect(p)  # waits for it; a batch lost with a dead worker is reissued
        bt, bm = pack_arrays(ray.get(p.batch_ref))
        it, im = pack_arrays(info)
        files[f"queue-{i}"] = {
            **{f"batch.{k}": v for k, v in bt.items()},
            **{f"info.{k}": v for k, v in it.items()},
        }
        if p.rows_ref is not None:  # its rollout rows, so a resumed run still writes them
            files[f"queue-{i}"][ROWS_KEY] = table_to_array(ray.get(p.rows_ref))
        meta["queue"].append({**_pending_json(p), "batch": bm, "info": im})
    files["rng"], meta["rng"] = rng_state()
    return meta, files


ROWS_KEY = "rows.arrow"


def table_to_array(table):
    """A pyarrow Table as a uint8 tensor of its Arrow IPC stream, storable in the
    checkpoint's safetensors file."""
    import pyarrow as pa
    import torch

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return torch.frombuffer(bytearray(sink.getvalue().to_pybytes()), dtype=torch.uint8)


def array_to_table(a):
    import pyarrow as pa

    raw = a.numpy().tobytes() if hasattr(a, "numpy") else np.asarray(a).tobytes()
    return pa.ipc.open_stream(pa.py_buffer(raw)).read_all()


# ------------------------------------------------------------------ restore
def learner_files(files: dict, rank: int) -> dict:
    """Rank `rank`'s tensors, merged from its part files (learner-R.<part>) or its one file."""
    out: dict = {}
    for stem, group in files.items():
        if stem == f"learner-{rank}" or stem.startswith(f"learner-{rank}."):
            out.update(group)
    return out


def _split(files: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in files.items() if k.startswith(prefix)}


def restore_controller(ctl, ckpt: Checkpoint) -> None:
    """Put a freshly built controller (and its learners) in the checkpoint's state."""
    import ray

    from selfplay.runtime.driver.phases import Pending, PhaseRecord
    from selfplay.runtime.learner.batch import TrainBatch
    from selfplay.runtime.workers.actors import BatchInfo
    from selfplay.runtime.workers.pool import Resize

    meta, files = ckpt.meta["controller"], ckpt.tensors
    ctl.learners.load_state(
        [unpack_learner_state(learner_files(files, r), m) for r, m in enumerate(meta["learners"])]
    )
    st = ctl.store
    st.index = {version_from_json(v): int(i) for v, i in meta["store"]["index"]}
    st.published = int(meta["store"]["published"])
    st.roles = {r: version_from_json(v) for r, v in meta["store"]["roles"].items()}
    st.refs = {}
    for role, v in st.roles.items():
        if v not in st.refs:  # republished from the role's weights: the same bytes as before
            st.refs[v] = ctl.learners.publish(role)
    ctl.next_step, ctl.cursor = int(meta["next_step"]), int(meta["cursor"])
    ctl.queries = int(meta["queries"])
    ctl.resizes.extend(Resize(*z) for z in meta["resizes"])
    vj = version_from_json
    ctl.records = [
        PhaseRecord(
            r["step"],
            r["phase"],
            vj(r["output"]),
            r["staleness"],
            r["rows"],
            r["queries"],
            np.asarray(r["prompt_ids"], dtype=np.int64),
            [vj(v) for v in r["samplers"]],
            [vj(v) for v in r["opponents"]],
            vj(r["anchor"]),
            None,
            r["seconds"],
            workers=r["workers"],
            reissues=r["reissues"],
        )
        for r in meta["records"]
    ]
    ctl.queue = deque()
    for i, q in enumerate(meta["queue"]):
        f = files[f"queue-{i}"]
        batch = unpack_arrays(TrainBatch, _split(f, "batch."), q["batch"])
        info = unpack_arrays(BatchInfo, _split(f, "info."), q["info"])
        ctl.queue.append(
            Pending(
                q["step"],
                q["phase"],
                q["start"],
                {r: vj(v) for r, v in q["used"].items()},
                [vj(v) for v in q["samplers"]],
                [float(w) for w in q["weights"]],
                batch_ref=ray.put(batch),
                info_ref=ray.put(info),
                rows_ref=ray.put(array_to_table(f[ROWS_KEY])) if ROWS_KEY in f else None,
                workers=q["workers"],
            )
        )
    set_rng_state(files["rng"], meta["rng"])


def save_checkpoint(ctl, cfg: Config, run_dir: Path, trainer: dict) -> Path:
    """Write RUN_DIR/checkpoints/step-N atomically (N = steps done); keeps the newest few."""
    meta_c, files = controller_state(ctl)
    meta = {"controller": meta_c, "trainer": trainer, "config": cfg.model_dump(mode="json")}
    return write_checkpoint(
        run_dir / CHECKPOINT_DIR, ctl.next_step, meta, files, keep=cfg.runtime.checkpoint_keep
    )
