"""`leapfrog export`: a checkpoint's LoRA adapter as a directory to serve, or merged into its base model.

- adapter (default): adapter_model.safetensors and adapter_config.json, with `base_model_name_or_path` set to the
  base model's absolute directory (vLLM `--enable-lora --lora-modules`, PEFT `PeftModel.from_pretrained`).
- merged (`--merge`): the base model with the adapter folded into its weights (PEFT `merge_and_unload`, computed
  in float32 and saved in the base's dtype), as a plain HF model directory (safetensors) with the base's tokenizer,
  chat template and generation config: `AutoModelForCausalLM.from_pretrained(DIR)` and `vllm.LLM(DIR)` load it.
The base is the one the adapter records (adapter_config.json), or `--base`. A full-parameter checkpoint
(learner.lora: null) is already a model directory: it is exported as it is, without the learner's state. Both write `leapfrog_export.json` (what
was exported from what). The directory is built beside `--out` and renamed into place, so it appears complete or
not at all; an existing non-empty `--out` is refused before any work.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from common.run_dir import CHECKPOINTS, list_checkpoints
from learner.models import saved_chat_template, seal_tree

EXPORT_RECORD = "leapfrog_export.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


class ExportError(ValueError):
    """An export that cannot be made; says what was given and what to give instead."""


def adapter_base_dir(adapter: Path, base: str | None) -> Path:
    """The base model of a PEFT adapter: `--base` when given (it overrides), else the one the adapter records."""
    if base is not None:
        if not (Path(base) / "config.json").is_file():
            raise ExportError(f"--base {base}: not an HF model directory (no config.json); give the directory of the "
                              f"model the adapter {adapter} was trained on")
        return Path(base)
    recorded = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not recorded or not (Path(recorded) / "config.json").is_file():
        raise ExportError(f"{adapter}: its recorded base model {recorded!r} is not a local HF model directory; pass "
                          f"--base DIR (the model the adapter was trained on)")
    return Path(recorded)


def is_full_checkpoint(checkpoint: Path) -> bool:
    return (checkpoint / "config.json").is_file() and any(checkpoint.glob("model*.safetensors"))


def write_full(checkpoint: Path, out: Path) -> None:
    """A full-parameter checkpoint's model files (weights, config, tokenizer), without the learner's state."""
    for f in checkpoint.iterdir():
        if f.is_file() and f.name not in ("state.pt", "meta.json"):
            shutil.copy2(f, out / f.name)


def check_checkpoint(checkpoint: Path) -> None:
    missing = [f for f in ADAPTER_FILES if not (checkpoint / f).is_file()]
    if not missing:
        return
    hint = "give a checkpoint directory such as RUN_DIR/checkpoints/step-000100"
    if (checkpoint / CHECKPOINTS).is_dir():
        checkpoints = list_checkpoints(checkpoint)
        hint = f"{checkpoint} is a run directory; give one of its checkpoints" + (
            f", e.g. the newest: {checkpoints[-1][1]}" if checkpoints else " (it has none yet)")
    raise ExportError(f"{checkpoint} is not a LoRA checkpoint (missing {', '.join(missing)}); {hint}")


def write_adapter(checkpoint: Path, base_dir: Path, out: Path) -> None:
    shutil.copy2(checkpoint / "adapter_model.safetensors", out / "adapter_model.safetensors")
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base_dir)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_merged(checkpoint: Path, base_dir: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_config = json.loads((base_dir / "config.json").read_text())
    dtype = getattr(torch, str(base_config.get("dtype") or base_config.get("torch_dtype") or "float32"))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
    merged.to(dtype).save_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    tokenizer.save_pretrained(str(out))
    if tokenizer.chat_template and not saved_chat_template(out):
        raise ExportError(f"{out}: the saved tokenizer lost the chat template of {base_dir}")
    if (base_dir / "generation_config.json").is_file():
        shutil.copy2(base_dir / "generation_config.json", out / "generation_config.json")


def export_checkpoint(checkpoint: str | Path, out: str | Path, merge: bool = False, base: str | None = None) -> Path:
    """Write the checkpoint's adapter (or, with merge, the merged full model) to `out`; returns `out`."""
    checkpoint, out = Path(checkpoint).expanduser(), Path(out).expanduser()
    if not checkpoint.is_dir():
        raise ExportError(f"checkpoint {checkpoint} does not exist; give a checkpoint directory such as "
                          f"RUN_DIR/checkpoints/step-000100")
    full = is_full_checkpoint(checkpoint)
    if not full:
        check_checkpoint(checkpoint)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} already exists and is not empty; give a new or empty directory "
                          f"(nothing was written)")
    base_dir = None if full else adapter_base_dir(checkpoint, base).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if full:
            write_full(checkpoint, tmp)
        else:
            (write_merged if merge else write_adapter)(checkpoint, base_dir, tmp)
        meta = json.loads((checkpoint / "meta.json").read_text()) if (checkpoint / "meta.json").is_file() else {}
        record = {"checkpoint": str(checkpoint.resolve()), "step": meta.get("step"),
                  "base_model": meta.get("base_model") if full else str(base_dir), "merged": merge or full, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        seal_tree(tmp)
        tmp.rename(out)  # onto a missing or empty directory
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
