"""Rollout throughput of the HF and vLLM engines on the same prompts and sampling settings.

Three models: the bootstrapped default model (arith prompts), a ~20M-parameter Llama of the same tokenizer with
random weights (throughput does not depend on the weights), and SmolLM2-135M-Instruct on `sums` prompts through its
chat template. Generation runs to max_new_tokens unless EOS is sampled, and only generated tokens are counted. Each
engine generates the same batch (the same token ids) `--repeats` times after a warm-up. This is the measurement
behind `rollout.engine: auto` on CPU (rollout/engines/__init__.py): on GPU vLLM is the engine to use.

    .venv/bin/python bench/rollout_engines.py [--prompts 64] [--n 8] [--max-new-tokens 32] [--models ...]
    .venv/bin/python bench/rollout_engines.py --models smollm2_135M --prompts 16 --n 4 --max-new-tokens 16 --repeats 1
Last line: JSON {"<model>": {"parameters", "hf_tokens_per_s", "vllm_tokens_per_s", "vllm_over_hf"}, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_20m(default_dir: Path, out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(default_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tokens_per_s(engine, prompts, params, repeats: int) -> float:
    engine.generate(prompts, params)  # warm-up
    total, start = 0, time.perf_counter()
    for r in range(repeats):
        groups = engine.generate(prompts, params.__class__(**{**params.__dict__, "seed": r}))
        total += sum(len(c.token_ids) for g in groups for c in g)
    return total / (time.perf_counter() - start)


def main() -> None:
    import torch

    from learner.bootstrap import bootstrap
    from learner.models import resolve_model
    from rollout.config import VLLMSettings
    from rollout.engines.base import SamplingParams
    from rollout.engines.hf import HFEngine
    from rollout.engines.vllm import VLLMEngine
    from rollout.prompts import PromptEncoder
    from rollout.tasks import load_task

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["default_0.6M", "llama_20M", "smollm2_135M"],
                        help="which of the three models to measure")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    default_dir = bootstrap("arith", 0, progress=False)
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"default_0.6M": (default_dir, "arith"),
                  "llama_20M": (build_20m(default_dir, Path(tmp) / "m20") if "llama_20M" in args.models else None,
                                "arith"),
                  "smollm2_135M": (resolve_model("smollm2-135m-instruct", progress=False), "sums")}
        for name, (path, task) in [(m, models[m]) for m in args.models]:
            prompts = PromptEncoder.from_model_dir(path).ids(load_task(task).examples("test", args.prompts, seed=0))
            params_count = sum(p.numel() for p in HFEngine(path).model.parameters())
            hf = tokens_per_s(HFEngine(path), prompts, params, args.repeats)
            limit = min(256, json.loads((Path(path) / "config.json").read_text())["max_position_embeddings"])
            vllm_engine = VLLMEngine(path, settings=VLLMSettings(max_model_len=limit, cpu_kv_cache_gib=2))
            vl = tokens_per_s(vllm_engine, prompts, params, args.repeats)
            del vllm_engine
            result[name] = {"parameters": params_count, "hf_tokens_per_s": round(hf, 1),
                            "vllm_tokens_per_s": round(vl, 1), "vllm_over_hf": round(vl / hf, 3)}
            print(f"{name:14s} {params_count / 1e6:6.1f}M params  HF {hf:9.1f} tok/s  vLLM {vl:9.1f} tok/s  "
                  f"vLLM/HF {vl / hf:.2f}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
