"""Config section owned by the rollout package: `rollout` (sampling, task, engine, evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RolloutConfig(BaseModel):
    """How rollouts are generated and how the policy is evaluated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: str = Field("arith", min_length=1, description="Task name (arith, digitsum) or a user task 'module:Class'.")
    engine: Literal["auto", "hf", "vllm"] = Field("auto", description="Rollout engine: vLLM on GPU and HF on CPU "
                                                                      "when auto.")
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
