"""A policy's weights as saved and loaded: a PEFT LoRA adapter directory, or (full-parameter RL) a full HF model
directory's model*.safetensors. No project imports: the learner, the rollout engines and the extrapolation service share it,
and module_name names the target-module matrices the same way for all of them."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import torch

TARGET_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
WEIGHT_KEY = re.compile(r"^(?:model\.)?(.*layers\.\d+\.(?:self_attn|mlp)\.(?:" + "|".join(TARGET_TYPES) + r"))\.weight$")

def module_name(key: str) -> str | None:
    """The target-module name (model.layers.0.self_attn.q_proj) of a weight's key in a model's state dict or
    safetensors (model.layers.0.self_attn.q_proj.weight, with or without the model. prefix); None for a weight that
    is not a target module's matrix (embeddings, norms, biases)."""
    match = WEIGHT_KEY.match(key)
    return "model." + match.group(1).removeprefix("model.") if match else None


def is_lora(model) -> bool:
    """Whether the policy is a PEFT LoRA model (else a full-parameter one)."""
    return hasattr(model, "peft_config")


def is_adapter_dir(path: str | Path) -> bool:
    """A PEFT adapter directory (else a full HF model directory: config.json and model*.safetensors)."""
    return (Path(path) / "adapter_config.json").is_file()


def policy_weights(model) -> dict[str, torch.Tensor]:
    """The weights that make this policy (references, not copies): the LoRA adapter's, or every tensor of a
    full-parameter model."""
    if is_lora(model):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return model.state_dict()


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved policy on the CPU: a PEFT adapter directory, or a full model's model*.safetensors."""
    if is_adapter_dir(path):
        from peft.utils import load_peft_weights

        return load_peft_weights(str(path), device="cpu")
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} holds neither a PEFT adapter (adapter_config.json) nor full model weights "
                                f"(model*.safetensors)")
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def load_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Set the policy's weights (a LoRA adapter's, or a full model's) from `weights` of the same shapes. A full
    model's saved weights may omit tensors tied to others (lm_head = embed_tokens); any other gap is an error."""
    if is_lora(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
        return
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    if unexpected or set(missing) - tied:
        raise ValueError(f"these weights do not fit the policy (missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}): not from a run on this base model")


@contextmanager
def swapped_weights(model, path: str | Path):
    """Inside the block the policy carries other weights of the same shape (a leap candidate: an adapter, or a full
    model's weights); its own are restored on the way out."""
    current = {k: v.detach().clone() for k, v in policy_weights(model).items()}
    load_weights(model, read_weights(path))
    try:
        yield model
    finally:
        load_weights(model, current)
