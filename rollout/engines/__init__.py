"""Rollout engines: `hf` (transformers + PEFT) and `vllm` (vLLM Python API with LoRA), same Completion record."""

from __future__ import annotations

from pathlib import Path


def resolve_engine_name(name: str) -> str:
    """`auto` = vLLM when a GPU and vLLM are present, else HF (faster than vLLM-CPU for small models on CPU)."""
    if name != "auto":
        return name
    import torch

    from rollout.engines.vllm import vllm_available

    return "vllm" if torch.cuda.is_available() and vllm_available() else "hf"


def make_engine(name: str, model_path: str | Path, *, max_lora_rank: int = 16, seed: int = 0, max_model_len: int | None = None):
    name = resolve_engine_name(name)
    if name == "hf":
        from rollout.engines.hf import HFEngine

        return HFEngine(model_path)
    if name == "vllm":
        from rollout.engines.vllm import VLLMEngine

        return VLLMEngine(model_path, max_lora_rank=max_lora_rank, seed=seed, max_model_len=max_model_len)
    raise ValueError(f"unknown rollout engine {name!r}; use 'hf', 'vllm' or 'auto'")
