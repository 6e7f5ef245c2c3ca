"""Checkpoints in the run-directory layout of docs/architecture.md#run-directory, written atomically (temp dir + rename).

<run_dir>/checkpoints/step-000010/
    adapter_model.safetensors, adapter_config.json   the PEFT LoRA adapter, or (full-parameter RL, learner.lora:
    model*.safetensors, config.json, tokenizer       null) the whole model as an HF model directory
    state.pt                                         optimizer, scheduler, RNG and data position
    meta.json                                        step, metrics, wall time, tokens
A checkpoint directory exists under its final name only once complete; `*.tmp*` directories are partial
writes and are never read. Existing checkpoints are never overwritten. `prune_checkpoints` (run.keep_checkpoints)
deletes old ones, each step recorded in checkpoints/pruned.jsonl.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from common.run_dir import CHECKPOINTS, PRUNED, append_jsonl, checkpoint_dir, list_checkpoints

PRUNING = ".tmp-pruned"  # the suffix a checkpoint gets while it is deleted (a partial name: never read)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
STATE_FILES = ("state.pt", "meta.json")


class CheckpointError(ValueError):
    """A checkpoint is missing, partial or corrupt."""


def prune_checkpoints(run_dir: Path, keep: int, protect: set[int] = frozenset()) -> list[int]:
    """Delete the complete checkpoints of run_dir/checkpoints older than its `keep` newest (the newest always stays),
    except the steps in `protect`; returns the deleted steps. Each is first renamed to a partial-write name, so no
    reader ever sees it half deleted, and its step is recorded in checkpoints/pruned.jsonl. Checkpoints elsewhere in
    the run directory (rolled_back/) are not looked at."""
    root = Path(run_dir) / CHECKPOINTS
    for leftover in root.glob(f"*{PRUNING}"):  # a deletion interrupted by a crash
        shutil.rmtree(leftover)
    deleted = []
    for step, path in list_checkpoints(run_dir)[:-max(keep, 1)]:
        if step in protect:
            continue
        doomed = path.with_name(path.name + PRUNING)
        os.rename(path, doomed)
        shutil.rmtree(doomed)
        append_jsonl(root / PRUNED, {"step": step, "time": time.time()})
        deleted.append(step)
    return deleted


def missing_files(path: Path) -> list[str]:
    """The files a complete checkpoint has that `path` lacks: the adapter's (or, for a full-parameter checkpoint,
    config.json and model*.safetensors) and the learner state's."""
    path = Path(path)
    if (path / "adapter_config.json").is_file() or not (path / "config.json").is_file():
        weights = [f for f in ADAPTER_FILES if not (path / f).is_file()]
    else:
        weights = [] if any(path.glob("model*.safetensors")) else ["model.safetensors"]
    return weights + [f for f in STATE_FILES if not (path / f).is_file()]


def write_checkpoint(run_dir: Path, step: int, model, state: dict, meta: dict, tokenizer=None,
                     weights: dict | None = None) -> Path:
    """Write the policy's weights (`model.save_pretrained`: a PEFT adapter, or a full model, then with its
    `tokenizer` so that the checkpoint is a loadable HF model directory) + state + meta to
    <run_dir>/checkpoints/step-<step>/ atomically; returns its path. weights: the model's full state dict when the
    model itself holds shards of it (a sharded learner group)."""
    final = checkpoint_dir(run_dir, step)
    if final.exists():
        raise CheckpointError(f"checkpoint {final} already exists; refusing to overwrite it "
                              f"(resume from it with --resume, or use a new run directory)")
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), **({"state_dict": weights} if weights is not None else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    os.rename(tmp, final)
    return final


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state, meta) of a complete checkpoint; a clear CheckpointError for a partial or corrupt one."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if ".tmp" in path.name:
        raise CheckpointError(f"{path} is a partial (unfinished) checkpoint write; use a complete step-* directory")
    missing = missing_files(path)
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {', '.join(missing)}); "
                              f"resume from an earlier complete checkpoint")
    try:
        meta = json.loads((path / "meta.json").read_text())
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt bytes surface as many exception types
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(err).__name__}: {err}); "
                              f"resume from an earlier complete checkpoint") from err
    return state, meta


def update_checkpoint_record(path: Path, state_record: dict, meta_record: dict) -> None:
    """Replace the run's bookkeeping (evaluations, learner steps, leap state, log positions) in a complete checkpoint:
    the keys of `state_record` in state.pt, of `meta_record` in meta.json; its weights, optimizer, scheduler and RNG
    stay as written. For a run that switched branch to this checkpoint: a resume from it must continue the run as it
    is now, not as it was when the checkpoint was written. Each file is replaced atomically."""
    state, meta = read_checkpoint(path)
    tmp = Path(path) / f".state.pt.tmp-{os.getpid()}"
    torch.save({**state, **state_record}, tmp)
    os.replace(tmp, Path(path) / "state.pt")
    tmp = Path(path) / f".meta.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({**meta, **meta_record}, indent=2))
    os.replace(tmp, Path(path) / "meta.json")
