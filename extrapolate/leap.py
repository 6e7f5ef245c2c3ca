"""Writing predicted weights as a PEFT LoRA adapter on the base model (METHODS.md §5: a leap under LoRA stays a
LoRA). Each module's predicted update B A (scale folded into B) is written with r = its rank and
lora_alpha = r, so PEFT's scale alpha / r is 1 and the merged weight is exactly W_0 + B A. Refuses NaN/Inf and
predictions whose norm is absurd next to the window's update; writes atomically (temp dir + rename).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


class LeapError(ValueError):
    """A predicted leap that must not be written."""


def write_leap_adapter(out_dir: Path, source_adapter: Path, prediction: dict[str, tuple[torch.Tensor, torch.Tensor]],
                       reference_norms: dict[str, float], max_norm_ratio: float = 10.0, report: dict | None = None
                       ) -> Path:
    """Write prediction {module: (B, A)} as a PEFT adapter dir (config taken from source_adapter)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise LeapError(f"{out_dir} already exists; choose another --out (nothing was overwritten)")
    tensors, ranks = {}, set()
    for name, (b, a) in prediction.items():
        if not (torch.isfinite(b).all() and torch.isfinite(a).all()):
            raise LeapError(f"the prediction for {name} has NaN or Inf values; nothing was written")
        norm = float(torch.linalg.matrix_norm(b @ a))
        bound = max_norm_ratio * reference_norms.get(name, 0.0)
        if reference_norms.get(name, 0.0) > 0 and norm > bound:
            raise LeapError(f"the predicted update of {name} has norm {norm:.3g}, more than {max_norm_ratio}x the "
                            f"window's ({reference_norms[name]:.3g}); refusing it (lower the target step or raise "
                            f"the bound); nothing was written")
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.float().contiguous()
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.float().contiguous()
        ranks.add(b.shape[1])
    config = json.loads((Path(source_adapter) / "adapter_config.json").read_text())
    rank = max(ranks)
    short_types = {n.rsplit(".", 1)[-1] for n in prediction}
    pattern = {n.removeprefix("base_model.model."): int(t.shape[1]) for n, t in tensors.items() if "lora_B" in n}
    config.update(r=rank, lora_alpha=rank, rank_pattern={k: v for k, v in pattern.items() if v != rank},
                  alpha_pattern={k: v for k, v in pattern.items() if v != rank}, use_rslora=False,
                  target_modules=sorted(short_types), lora_dropout=0.0)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "adapter_model.safetensors"))
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (tmp / "report.json").write_text(json.dumps(report or {}, indent=2))
    os.rename(tmp, out_dir)
    return out_dir


def merge_adapter(adapter_dir: Path, out_dir: Path) -> Path:
    """Export base + adapter as a full HF model directory (weights merged, tokenizer copied), atomically."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise LeapError(f"{out_dir} already exists; choose another --out (nothing was overwritten)")
    base_dir = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_dir or not Path(base_dir).is_dir():
        raise LeapError(f"the adapter's base model {base_dir!r} is not a local directory; cannot merge")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                      str(adapter_dir)).merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
    shutil.copy(Path(adapter_dir) / "report.json", tmp / "report.json")
    os.rename(tmp, out_dir)
    return out_dir
