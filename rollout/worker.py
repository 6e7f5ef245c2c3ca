"""RolloutWorker: holds one engine, generates for a shard of prompts, loads new adapter versions when told.

A plain class; the Ray driver wraps it with `ray.remote(...)`. If Ray restarts a dead worker, its constructor
reads the run's adapter pointer file and loads the current adapter version before serving again, so a retried
`generate` call samples from the same policy the lost one would have.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rollout.engines import make_engine
from rollout.engines.base import Completion, SamplingParams


def read_adapter_pointer(pointer: Path) -> tuple[str, str] | None:
    """(adapter path, version) of the currently published adapter, or None before the first publish."""
    if not pointer.is_file():
        return None
    data = json.loads(pointer.read_text())
    return data["path"], data["version"]


def write_adapter_pointer(pointer: Path, path: str, version: str) -> None:
    tmp = pointer.with_name(pointer.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"path": path, "version": version}))
    os.replace(tmp, pointer)


class RolloutWorker:
    def __init__(self, engine: str, model_path: str, *, adapter_pointer: str | None = None, max_lora_rank: int = 16,
                 seed: int = 0, num_threads: int = 1, device: str = "auto", dtype: str = "float32",
                 attn_implementation: str = "sdpa", vllm_settings=None):
        """device is resolved here, in the worker's own process (auto: the GPU Ray gave this actor, if any)."""
        if not (Path(model_path) / "config.json").is_file():
            raise ValueError(f"rollout worker cannot read the model directory {model_path} (no config.json): "
                             f"put the model on storage every node can read")
        torch.set_num_threads(max(1, num_threads))
        self.engine = make_engine(engine, model_path, max_lora_rank=max_lora_rank, seed=seed, device=device,
                                  dtype=dtype, attn_implementation=attn_implementation, vllm_settings=vllm_settings)
        self.adapter_pointer = Path(adapter_pointer) if adapter_pointer else None
        current = read_adapter_pointer(self.adapter_pointer) if self.adapter_pointer else None
        if current is not None:
            self.engine.load_adapter(*current)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 adapter: tuple[str, str] | None = None) -> list[list[Completion]]:
        """Generate for a shard of prompts (token ids), first switching to `adapter` = (path, version) if newer."""
        if adapter is not None and adapter[1] != self.engine.adapter_version:
            self.engine.load_adapter(*adapter)
        return self.engine.generate(prompt_ids, params)

    def load_adapter(self, path: str, version: str) -> str:
        self.engine.load_adapter(path, version)
        return version

    def adapter_version(self) -> str | None:
        return self.engine.adapter_version

    def pid(self) -> int:
        return os.getpid()
