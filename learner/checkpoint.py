"""Checkpoints in the run-directory layout of docs/architecture.md#run-directory, written atomically (temp dir + rename).

<run_dir>/checkpoints/step-000010/
    adapter_model.safetensors, adapter_config.json   the PEFT LoRA adapter
    state.pt                                         optimizer, scheduler, RNG and data position
    meta.json                                        step, metrics, wall time, tokens
A checkpoint directory exists under its final name only once complete; `*.tmp*` directories are partial
writes and are never read. Existing checkpoints are never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

REQUIRED_FILES = ("adapter_model.safetensors", "adapter_config.json", "state.pt", "meta.json")


class CheckpointError(ValueError):
    """A checkpoint is missing, partial or corrupt."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, by step (partial `.tmp` directories are skipped)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step-") and ".tmp" not in d.name and d.name[5:].isdigit():
            out.append((int(d.name[5:]), d))
    return sorted(out)


def write_checkpoint(run_dir: Path, step: int, model, state: dict, meta: dict) -> Path:
    """Write adapter + state + meta to <run_dir>/checkpoints/step-<step>/ atomically; returns its path."""
    final = checkpoint_dir(run_dir, step)
    if final.exists():
        raise CheckpointError(f"checkpoint {final} already exists; refusing to overwrite it "
                              f"(resume from it with --resume, or use a new run directory)")
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
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
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
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
