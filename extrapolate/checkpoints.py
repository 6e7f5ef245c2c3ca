"""Reading the checkpoints of a LoRA run: ours (`checkpoints/step-N/`), TRL's (`checkpoint-N/`) and verl's
(`global_step_N/actor/lora_adapter/`), each a standard PEFT adapter directory.

A LoRA state is read per target module (the 2-D attention and MLP projections) as its factors (B, A) and the PEFT
scale lora_alpha / r (rank_pattern / alpha_pattern honoured), lazily with safetensors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

TARGET_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STEP_DIR_PATTERNS = [(re.compile(r"^step-(\d+)$"), ""), (re.compile(r"^checkpoint-(\d+)$"), ""),
                     (re.compile(r"^global_step_(\d+)$"), "actor/lora_adapter")]


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
        match = re.search(r"layers\.(\d+)\.", self.name)
        return int(match.group(1)) if match else -1

    @property
    def module_type(self) -> str:
        return self.name.rsplit(".", 1)[-1]


def find_adapter_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, adapter dir) of every complete LoRA checkpoint under run_dir (ours, TRL or verl layout)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointReadError(f"{run_dir} is not a directory; give a run directory with LoRA checkpoints")
    roots = [run_dir / "checkpoints", run_dir]
    found = {}
    for root in roots:
        if not root.is_dir():
            continue
        for d in root.iterdir():
            for pattern, sub in STEP_DIR_PATTERNS:
                match = pattern.match(d.name)
                adapter = d / sub if sub else d
                if match and (adapter / "adapter_config.json").is_file() and \
                        (adapter / "adapter_model.safetensors").is_file():
                    found[int(match.group(1))] = adapter
    return sorted(found.items())


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
        short = name.rsplit(".", 1)[-1]
        r_mod = config.get("rank_pattern", {}).get(short, r)
        alpha_mod = config.get("alpha_pattern", {}).get(short, alpha)
        scale = alpha_mod / (r_mod**0.5 if config.get("use_rslora") else r_mod)
        modules[name] = LoraModule(name, handle.get_tensor(b_key), handle.get_tensor(key), float(scale))
    if not modules:
        raise CheckpointReadError(f"adapter {adapter_dir} has no LoRA weights on q/k/v/o/gate/up/down projections")
    return modules
