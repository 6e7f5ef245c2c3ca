"""Rank-1 extraction speed: our LoRA fast path vs a dense SVD of each merged update, at Qwen2.5-7B's shapes.

Builds a random rank-64 LoRA adapter with the shapes of Qwen2.5-7B (28 layers x q, k, v, o, gate, up, down =
196 modules; hidden 3584, intermediate 18944, 4 KV heads of 128 -> k/v out 512), saved in bfloat16 as one
adapter_model.safetensors (as PEFT saves a bf16 model's adapter), then times:
- read_s: reading every LoRA tensor from the file;
- fast_s: reading + our extraction (QR of B and A^T, SVD of the r x r core) of every module, in float64;
- dense_s: torch.linalg.svd (float32, thin, with vectors) of each merged Delta = scale B A. The full set would take too long
  on 2 cores, so one module of each of the 7 types is timed and the sum is scaled by the 28 layers.

    .venv/bin/python bench/extract_speed.py [--layers 28] [--rank 64]
Last line: JSON with modules, fast_s, read_s, dense_s, dense_sampled, speedup_vs_dense, fast_over_read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"self_attn.q_proj": (3584, 3584), "self_attn.k_proj": (512, 3584), "self_attn.v_proj": (512, 3584),
          "self_attn.o_proj": (3584, 3584), "mlp.gate_proj": (18944, 3584), "mlp.up_proj": (18944, 3584),
          "mlp.down_proj": (3584, 18944)}


def main() -> None:
    import torch
    from safetensors.torch import save_file

    from extrapolate.checkpoints import read_lora
    from extrapolate.rank1 import lora_factors_difference, lora_triplets

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--rank", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="leapfrog-extract-") as tmp:
        adapter = Path(tmp) / "adapter"
        adapter.mkdir()
        tensors = {}
        for layer in range(args.layers):
            for mod, (m, n) in SHAPES.items():
                key = f"base_model.model.model.layers.{layer}.{mod}"
                tensors[f"{key}.lora_A.weight"] = (torch.randn(args.rank, n) / n**0.5).bfloat16()
                tensors[f"{key}.lora_B.weight"] = (torch.randn(m, args.rank) * 0.01).bfloat16()
        save_file(tensors, str(adapter / "adapter_model.safetensors"))
        (adapter / "adapter_config.json").write_text(json.dumps({"r": args.rank, "lora_alpha": 2 * args.rank}))
        size_mb = (adapter / "adapter_model.safetensors").stat().st_size / 1e6
        del tensors

        start = time.perf_counter()
        modules = read_lora(adapter)
        _ = [(m.b.clone(), m.a.clone()) for m in modules.values()]  # bring every byte in (the file is mmapped)
        read_s = time.perf_counter() - start

        start = time.perf_counter()
        modules = read_lora(adapter)
        s1 = {name: float(lora_triplets(*lora_factors_difference(m.b, m.a, m.scale)).s[0])
              for name, m in modules.items()}
        fast_s = time.perf_counter() - start

        sampled = 0.0
        for mod in SHAPES:
            m = modules[f"model.layers.0.{mod}"]
            delta = (m.scale * m.b.float() @ m.a.float())
            start = time.perf_counter()
            s = torch.linalg.svd(delta, full_matrices=False).S
            sampled += time.perf_counter() - start
            assert abs(float(s[0]) - s1[f"model.layers.0.{mod}"]) / float(s[0]) < 1e-3
        dense_s = sampled * args.layers
    print(f"{len(modules)} modules (rank {args.rank}, {size_mb:.0f} MB bf16): read {read_s:.2f} s, "
          f"read + fast extraction {fast_s:.2f} s, dense SVD {dense_s:.1f} s (7 timed x {args.layers} layers)")
    print(json.dumps({"modules": len(modules), "rank": args.rank, "read_s": round(read_s, 3), "fast_s": round(fast_s, 3),
                      "dense_s": round(dense_s, 2), "dense_sampled": f"one module per type, x{args.layers}",
                      "speedup_vs_dense": round(dense_s / fast_s, 1), "fast_over_read": round(fast_s / read_s, 2)}))


if __name__ == "__main__":
    main()
