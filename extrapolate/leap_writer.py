"""Writing predicted weights as a PEFT LoRA adapter on the base model (docs/methods.md#extrapolators: a leap under LoRA stays a
LoRA), or, for a full-parameter run, as a full model directory (write_full_leap). Each module's predicted update B A (scale folded into B) is written with r = its rank and
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


def project_onto_adapter(b_t: torch.Tensor, a_t: torch.Tensor, pred_b: torch.Tensor, pred_a: torch.Tensor,
                         scale: float = 1.0) -> tuple[torch.Tensor, float]:
    """Write a predicted update into the learner's own rank-r adapter, A held fixed (how a leap continues training).

    With the current update B_t A_t and a prediction Delta^ = B^ A^ (scales folded into B), the least-squares B'
    for B' A_t ~ W_t + scale (Delta^ - W_t) is B' = B_t + scale (B^ A^ A_t^T (A_t A_t^T)^-1 - B_t). Exact when the
    predicted displacement lies in the row space of A_t — true for rl_extra, growth (B scaled) and alpharl (its
    v_1 is a combination of A_t's rows); a projection for relex and next. Returns (B', share of the predicted
    displacement's squared norm lost by the projection)."""
    b_t, a_t, pred_b, pred_a = b_t.double(), a_t.double(), pred_b.double(), pred_a.double()
    gram = a_t @ a_t.T
    target_b = pred_b @ torch.linalg.solve(gram, a_t @ pred_a.T).T  # B^ A^ A_t^T (A_t A_t^T)^-1
    new_b = b_t + scale * (target_b - b_t)
    # lost share: ||D - P D||^2 / ||D||^2 with D = Delta^ - B_t A_t and P D = (target_b - B_t) A_t
    disp_b, disp_a = torch.cat([pred_b, -b_t], 1), torch.cat([pred_a, a_t], 0)
    total = float(((disp_b.T @ disp_b) * (disp_a @ disp_a.T)).sum())
    kept_b = target_b - b_t
    kept = float(((kept_b.T @ kept_b) * gram).sum())
    return new_b, max(0.0, 1.0 - kept / total) if total > 0 else 0.0


def write_learner_leap(out_dir: Path, source_adapter: Path, prediction: dict[str, tuple[torch.Tensor, torch.Tensor]],
                       scale: float, report: dict) -> tuple[Path, float]:
    """A candidate leap as an adapter of the learner's own shape (same r, alpha, A): lora_B = B' / lora scale
    (project_onto_adapter), lora_A copied. Returns (path, mean lost share over modules). Refuses NaN/Inf."""
    from safetensors.torch import save_file

    from extrapolate.checkpoints import read_lora

    out_dir = Path(out_dir)
    current = read_lora(source_adapter)
    tensors, lost = {}, []
    for name, mod in current.items():
        new_b, lost_share = project_onto_adapter(mod.scale * mod.b.double(), mod.a, *prediction[name], scale)
        if not torch.isfinite(new_b).all():
            raise LeapError(f"the leap for {name} has NaN or Inf values; nothing was written")
        tensors[f"base_model.model.{name}.lora_B.weight"] = (new_b / mod.scale).to(mod.b.dtype).contiguous()
        tensors[f"base_model.model.{name}.lora_A.weight"] = mod.a.contiguous()
        lost.append(lost_share)
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "adapter_model.safetensors"))
    shutil.copy(Path(source_adapter) / "adapter_config.json", tmp / "adapter_config.json")
    mean_lost = sum(lost) / len(lost)
    (tmp / "report.json").write_text(json.dumps({**report, "scale": scale, "projection_lost_share": mean_lost},
                                                indent=2))
    if out_dir.exists():
        shutil.rmtree(tmp)
        raise LeapError(f"{out_dir} already exists; leaps are never overwritten")
    os.rename(tmp, out_dir)
    return out_dir, mean_lost


def write_full_leap(out_dir: Path, source_checkpoint: Path, weights_0: dict[str, torch.Tensor],
                    prediction: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float, report: dict
                    ) -> tuple[Path, float]:
    """A candidate leap of a full-parameter run, as a full HF model directory the learner loads: each target
    module's weight W' = W_t + scale (W_0 + B^ A^ - W_t) (W_t from the source checkpoint, B^ A^ the predicted
    update), every other tensor (embeddings, norms) as in the source; its config and tokenizer copied. Returns
    (path, 0.0): a dense leap loses nothing to a projection. Refuses NaN/Inf; writes atomically."""
    from safetensors.torch import load_file, save_file

    from common.weights import module_name

    out_dir, source = Path(out_dir), Path(source_checkpoint)
    tensors = {k: v for f in sorted(source.glob("model*.safetensors")) for k, v in load_file(str(f)).items()}
    for key, w_t in tensors.items():
        name = module_name(key)
        if name is None or name not in prediction:
            continue
        b, a = prediction[name]
        target = weights_0[name].double() + b.double() @ a.double()
        new = w_t.double() + scale * (target - w_t.double())
        if not torch.isfinite(new).all():
            raise LeapError(f"the leap for {name} has NaN or Inf values; nothing was written")
        tensors[key] = new.to(w_t.dtype).contiguous()
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for f in source.iterdir():  # config, generation config, tokenizer
        if f.is_file() and not f.name.startswith("model") and f.name not in ("state.pt", "meta.json"):
            shutil.copy(f, tmp / f.name)
    (tmp / "report.json").write_text(json.dumps({**report, "scale": scale, "projection_lost_share": 0.0}, indent=2))
    if out_dir.exists():
        shutil.rmtree(tmp)
        raise LeapError(f"{out_dir} already exists; leaps are never overwritten")
    os.rename(tmp, out_dir)
    return out_dir, 0.0


def leap_adapter_ranks(ranks: dict[str, int]) -> dict:
    """The PEFT config fields of an adapter whose modules have ranks {module name: r} and scale 1 (B carries the
    scale): r = lora_alpha = the largest rank, and rank_pattern = alpha_pattern = {module name: r} for the others.
    Pattern keys are module names (model.layers.0.self_attn.q_proj), which PEFT and vLLM match against the end of
    each module's name; a tensor name (... .lora_B.weight) would match no module."""
    rank = max(ranks.values())
    others = {name: r for name, r in sorted(ranks.items()) if r != rank}
    return {"r": rank, "lora_alpha": rank, "rank_pattern": others, "alpha_pattern": dict(others)}


def check_prediction(prediction: dict[str, tuple[torch.Tensor, torch.Tensor]], reference_norms: dict[str, float],
                     max_norm_ratio: float) -> None:
    """Refuse a prediction {module: (B, A)} with NaN/Inf values, or whose update norm ||B A||_F exceeds
    max_norm_ratio x the window's (reference_norms)."""
    for name, (b, a) in prediction.items():
        if not (torch.isfinite(b).all() and torch.isfinite(a).all()):
            raise LeapError(f"the prediction for {name} has NaN or Inf values; nothing was written")
        norm = float(torch.linalg.matrix_norm(b @ a))
        bound = max_norm_ratio * reference_norms.get(name, 0.0)
        if reference_norms.get(name, 0.0) > 0 and norm > bound:
            raise LeapError(f"the predicted update of {name} has norm {norm:.3g}, more than {max_norm_ratio}x the "
                            f"window's ({reference_norms[name]:.3g}); refusing it (lower the target step or raise "
                            f"the bound); nothing was written")


def write_leap_adapter(out_dir: Path, source_adapter: Path, prediction: dict[str, tuple[torch.Tensor, torch.Tensor]],
                       reference_norms: dict[str, float], max_norm_ratio: float = 10.0, report: dict | None = None
                       ) -> Path:
    """Write prediction {module: (B, A)} as a PEFT adapter dir (config taken from source_adapter)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise LeapError(f"{out_dir} already exists; choose another --out (nothing was overwritten)")
    check_prediction(prediction, reference_norms, max_norm_ratio)
    tensors, ranks = {}, {}
    for name, (b, a) in prediction.items():
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.float().contiguous()
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.float().contiguous()
        ranks[name] = int(b.shape[1])
    config = json.loads((Path(source_adapter) / "adapter_config.json").read_text())
    config.update(leap_adapter_ranks(ranks), use_rslora=False,
                  target_modules=sorted({n.rsplit(".", 1)[-1] for n in prediction}), lora_dropout=0.0)
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
