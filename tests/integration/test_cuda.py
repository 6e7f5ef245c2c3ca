"""On a CUDA machine: the learner trains on the GPU in bfloat16 (gradient checkpointing on), the HF engine samples
there, and checkpoints hold CPU tensors only, so a GPU run resumes on a CPU machine. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.cuda]


def test_learner_on_cuda_bf16_writes_cpu_checkpoints(smollm2_dir, tmp_path):
    from learner.checkpoint import read_checkpoint
    from services.config import parse_config
    from services.loop import run_job

    cfg = parse_config({"model": {"path": str(smollm2_dir), "device": "cuda", "dtype": "bfloat16"},
                        "rollout": {"task": "sums", "prompts_per_step": 8, "group_size": 4, "eval_size": 16},
                        "learner": {"gradient_checkpointing": True},
                        "run": {"steps": 2, "checkpoint_every": 1, "eval_every": 2}})
    run_job(cfg, run_dir=tmp_path / "run", progress=False)
    state, _ = read_checkpoint(tmp_path / "run" / "checkpoints" / "step-000002")

    def devices(obj):
        if isinstance(obj, torch.Tensor):
            yield obj.device.type
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from devices(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from devices(v)

    assert set(devices(state["optimizer"])) == {"cpu"}
    cpu = parse_config({**cfg.model_dump(mode="json"), "model": {"path": str(smollm2_dir), "device": "cpu"}})
    run_job(cpu, run_dir=tmp_path / "run", resume=True, progress=False)  # a GPU run resumes on the CPU
