"""Reading the checkpoints of a run: LoRA runs — ours (`checkpoints/step-N/`), TRL's (`checkpoint-N/`) and verl's
(`global_step_N/actor/lora_adapter/`), each a standard PEFT adapter directory — and full-parameter runs whose
checkpoints are HF model directories (`checkpoint-N/`, `step-N/` or verl's `global_step_N/actor/huggingface/`
with config.json and model*.safetensors, sharded or not).

A LoRA state is read per target module (the 2-D attention and MLP projections) as its factors (B, A) and the PEFT
scale lora_alpha / r (rank_pattern / alpha_pattern honoured); a full checkpoint as the target modules' weight
matrices, and its update W_t - W_0 as exact dense factors in the same form. Both lazily with safetensors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from common.run_dir import CHECKPOINTS, LEAPFROG_LAYOUT, list_step_dirs
from common.weights import TARGET_TYPES, module_name


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


def find_run_checkpoints(run_dir: Path) -> tuple[str, list[tuple[int, Path]]]:
    """The run's kind, "lora" or "full" (a full-parameter run: no adapters, only HF model directories), and its
    checkpoints (step, path)."""
    lora = find_adapter_checkpoints(run_dir)
    full = [] if lora else find_full_checkpoints(run_dir)
    return ("full", full) if full else ("lora", lora)


def full_base_dir(run_dir: Path, checkpoint: Path, base: Path | None) -> Path:
    """The base model a full-parameter run started from: `base` when given, else the directory the checkpoint
    records (Leapfrog's meta.json `base_model`, or config.json `_name_or_path` where another framework kept it); a
    clear error when none is a local directory."""
    if base is not None:
        return Path(base)
    meta = Path(checkpoint) / "meta.json"
    named = json.loads(meta.read_text()).get("base_model") if meta.is_file() else None
    named = named or json.loads((Path(checkpoint) / "config.json").read_text()).get("_name_or_path")
    if not named or not Path(named).is_dir():
        raise CheckpointReadError(f"{run_dir} holds full-model checkpoints; give the base model they started from "
                                  f"with --base DIR (their config names {named!r}, not a local directory)")
    return Path(named)


def dense_factors(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An exact factorisation B A = Delta of a dense m x n update with inner dimension min(m, n): (Delta, I_n) when
    n <= m, else (I_m, Delta). It lets every low-rank routine (triplets, extrapolators, forecast errors) take a
    full-parameter update as it is, exactly; their cost grows with the inner dimension."""
    m, n = delta.shape
    if n <= m:
        return delta, torch.eye(n, dtype=delta.dtype)
    return torch.eye(m, dtype=delta.dtype), delta


def read_full_update(model_dir: Path, weights_0: dict[str, torch.Tensor]) -> dict[str, LoraModule]:
    """A full checkpoint's update W_t - W_0 of every target module, as exact factors (dense_factors) in the form of
    a LoRA state (scale 1), so the extrapolators and backtests read a full-parameter run like a LoRA one."""
    weights = read_full(model_dir)
    if set(weights) != set(weights_0) or any(w.shape != weights_0[n].shape for n, w in weights.items()):
        raise CheckpointReadError(f"{model_dir} does not match the base model (different modules or shapes); give "
                                  f"the base this run started from with --base")
    return {n: LoraModule(n, *dense_factors(w.double() - weights_0[n].double()), 1.0) for n, w in weights.items()}


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
                name = module_name(key)
                if name:
                    out[name] = handle.get_tensor(key)
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
