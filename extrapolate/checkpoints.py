"""Reading the checkpoints of a run: LoRA runs — ours (`checkpoints/step-N/`), TRL's (`checkpoint-N/`) and verl's
(`global_step_N/actor/lora_adapter/`), each a standard PEFT adapter directory — and full-parameter runs whose
checkpoints are HF model directories (`checkpoint-N/`, `step-N/` or verl's `global_step_N/actor/huggingface/`
with config.json and model*.safetensors, sharded or not).

A LoRA state is read per target module (the 2-D attention and MLP projections) as its factors (B, A) and the PEFT
scale lora_alpha / r (rank_pattern / alpha_pattern honoured); a full checkpoint as the target modules' weight
matrices. Both lazily with safetensors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from learner.checkpoint import LEAPFROG_LAYOUT, list_step_dirs
from learner.run_dir import CHECKPOINTS

TARGET_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def numbered(prefix: str):
    """A directory-name parser for `<prefix><digits>` (TRL's checkpoint-N, verl's global_step_N): the step or None."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)$")

    def parse(name: str) -> int | None:
        match = pattern.match(name)
        return int(match.group(1)) if match else None

    return parse


# (parse, sub) per framework, for learner.checkpoint.list_step_dirs: ours, TRL's, verl's.
ADAPTER_LAYOUTS = (LEAPFROG_LAYOUT, (numbered("checkpoint-"), ""), (numbered("global_step_"), "actor/lora_adapter"))
FULL_LAYOUTS = (LEAPFROG_LAYOUT, (numbered("checkpoint-"), ""), (numbered("global_step_"), "actor/huggingface"))

WEIGHT_KEY = re.compile(r"^(?:model\.)?(.*layers\.\d+\.(?:self_attn|mlp)\.(?:" + "|".join(TARGET_TYPES) + r"))\.weight$")


class CheckpointReadError(ValueError):
    """A run directory or checkpoint that cannot be analysed; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class LoraModule:
    name: str  # e.g. model.layers.0.self_attn.q_proj
    b: torch.Tensor  # [m, r]
    a: torch.Tensor  # [r, n]
    scale: float

    @property
    def layer(self) -> int:
        return module_layer(self.name)

    @property
    def module_type(self) -> str:
        return self.name.rsplit(".", 1)[-1]


def _find_step_dirs(run_dir: Path, layouts, is_complete) -> list[tuple[int, Path]]:
    if not Path(run_dir).is_dir():
        raise CheckpointReadError(f"{run_dir} is not a directory; give a run directory with checkpoints")
    return list_step_dirs(run_dir, layouts, roots=(CHECKPOINTS, ""), is_complete=is_complete)


def find_adapter_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, adapter dir) of every complete LoRA checkpoint under run_dir or run_dir/checkpoints (ours, TRL or verl
    layout)."""
    return _find_step_dirs(run_dir, ADAPTER_LAYOUTS, lambda d: (d / "adapter_config.json").is_file() and
                           (d / "adapter_model.safetensors").is_file())


def find_full_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, model dir) of every full HF model checkpoint under run_dir (a full-parameter run)."""
    return _find_step_dirs(run_dir, FULL_LAYOUTS, lambda d: (d / "config.json").is_file() and
                           any(d.glob("model*.safetensors")))


def read_full(model_dir: Path) -> dict[str, torch.Tensor]:
    """Target-module weight matrices of an HF model directory, keyed like LoRA module names
    (model.layers.0.self_attn.q_proj), from model.safetensors or its shards."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    out = {}
    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise CheckpointReadError(f"{model_dir} has no model*.safetensors; not a full HF model checkpoint")
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt")
            for key in handle.keys():
                match = WEIGHT_KEY.match(key)
                if match:
                    out["model." + match.group(1).removeprefix("model.")] = handle.get_tensor(key)
        except Exception as err:  # corrupt safetensors bytes surface as several exception types
            raise CheckpointReadError(f"{file} is unreadable ({type(err).__name__}: {err}); drop this checkpoint "
                                      f"or re-save it") from err
    if not out:
        raise CheckpointReadError(f"{model_dir} has no q/k/v/o/gate/up/down projection weights")
    return out


def module_layer(name: str) -> int:
    match = re.search(r"layers\.(\d+)\.", name)
    return int(match.group(1)) if match else -1


def pattern_value(patterns: dict, module_name: str, default):
    """A PEFT rank_pattern / alpha_pattern lookup: the value of the first key that matches the end of the module
    name at a "." boundary (re.match(rf"(.*\\.)?({key})$", name), as PEFT's get_pattern_key and vLLM's PEFTHelper
    do); keys are module names (model.layers.0.self_attn.q_proj), types (q_proj) or regular expressions."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


def read_lora(adapter_dir: Path) -> dict[str, LoraModule]:
    """Target modules of a PEFT LoRA adapter, keyed by module name."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        handle = safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt")
        keys = list(handle.keys())
    except Exception as err:  # unreadable JSON or safetensors bytes surface as several exception types
        raise CheckpointReadError(f"adapter {adapter_dir} is unreadable ({type(err).__name__}: {err}); "
                                  f"drop this checkpoint or re-save it") from err
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    modules = {}
    for key in keys:
        if not key.endswith("lora_A.weight"):
            continue
        name = key[:-len(".lora_A.weight")].removeprefix("base_model.model.")
        if name.rsplit(".", 1)[-1] not in TARGET_TYPES:
            continue
        b_key = key.replace("lora_A", "lora_B")
        r_mod = pattern_value(config.get("rank_pattern") or {}, name, r)
        alpha_mod = pattern_value(config.get("alpha_pattern") or {}, name, alpha)
        scale = alpha_mod / (r_mod**0.5 if config.get("use_rslora") else r_mod)
        modules[name] = LoraModule(name, handle.get_tensor(b_key), handle.get_tensor(key), float(scale))
    if not modules:
        raise CheckpointReadError(f"adapter {adapter_dir} has no LoRA weights on q/k/v/o/gate/up/down projections")
    return modules
