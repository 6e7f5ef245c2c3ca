"""Config sections owned by the learner package: `model` and `learner` (pydantic, unknown fields rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """Which policy to train."""

    path: str | None = Field(None, description="Local HF model directory, a .gguf file (converted once into "
                                               "$LEAPFROG_HOME/models/), or a registered model name (`leapfrog models "
                                               "list`, e.g. smollm2-135m-instruct). Unset: the bootstrapped default "
                                               "model of the job's task ($LEAPFROG_HOME/models/<task>-s<seed>, built on "
                                               "first use).")
    bootstrap_seed: int = Field(0, ge=0, description="Seed of the bootstrapped default model (used when path is unset).")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Parameter dtype of the policy, in the learner "
                                                                         "and both rollout engines.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the learner and the HF engine run; auto: "
                                                                       "cuda when the process sees a GPU.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel of the learner and the HF engine (transformers attn_implementation).")


    def resolved_device(self) -> str:
        """`cpu` or `cuda` for this process (auto: cuda when torch sees a GPU); cuda without one is an error."""
        from rollout.engines import resolve_device

        return resolve_device(self.device)


class LoraConfig(Section):
    """PEFT LoRA adapter trained on top of the frozen base model (Hu et al. 2021, arXiv 2106.09685)."""

    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="Module names that get adapters (all attention and MLP projections by default).")


class LearnerConfig(Section):
    """GRPO learner (Shao et al. 2024, arXiv 2402.03300, and its loss variants). Field names follow TRL's GRPOConfig
    where they mean the same thing."""

    algorithm: Literal["grpo", "rank_grpo"] = Field(
        "grpo", description="grpo: one advantage per sequence; rank_grpo: per-rank advantages and rank-level ratios "
                            "for ranked-list tasks (Zhu et al. 2025, arXiv 2510.20150; clip 0.06/0.08 by default).")
    rank_reward: Literal["exp_inf", "log_decay"] = Field(
        "exp_inf", description="Rank-GRPO rank reward: exp_inf = rel_k; log_decay = sum_{j>=k} rel_j / log2(j+1).")
    reward_shaping: Literal["none", "unlikeliness"] = Field(
        "none", description="Reward shaping before advantages: unlikeliness = R (1 - beta_u rank / G), rank by "
                            "length-normalised sampling log-prob (He et al. 2025, arXiv 2506.02355).")
    unlikeliness_beta: float = Field(0.25, ge=0, le=1, description="beta_u of the unlikeliness reward.")
    drop_uniform_groups: bool = Field(False, description="Drop groups whose rewards are all equal (DAPO dynamic "
                                                         "sampling; part of the unlikeliness recipe).")
    loss_type: Literal["grpo", "dapo", "dr_grpo"] = Field(
        "dapo", description="Loss aggregation: grpo = per-sequence token mean then mean; dapo = token mean over the "
                            "batch; dr_grpo = sum / (batch x max_new_tokens).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantage scaling: group std (GRPO), batch std, or none (Dr. GRPO).")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Lower clip range eps_low of the ratio.")
    epsilon_high: float | None = Field(None, gt=0, lt=10, description="Upper clip range eps_high (DAPO clip-higher "
                                                                      "uses 0.28); unset = epsilon.")
    beta: float = Field(0.0, ge=0, description="k3 KL penalty coefficient against the base model (adapter off).")
    use_bias_correction_kl: bool = Field(False, description="Weight the k3 KL by the ratio rho (DeepSeek-V3.2 unbiased "
                                                              "reverse-KL gradient; TRL's default is true).")
    updates_per_batch: int = Field(1, ge=1, le=16, description="mu: optimizer steps per rollout batch (TRL num_iterations).")
    lr: float = Field(5e-4, gt=0, le=1, description="Peak AdamW learning rate of the LoRA parameters.")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="Decay after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup (optimizer steps).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping by global norm.")
    micro_batch_size: int = Field(256, ge=1, description="Sequences per forward/backward (gradient accumulation).")
    gradient_checkpointing: bool = Field(False, description="Recompute the decoder's activations in the backward pass "
                                                            "(less memory, ~30% more compute).")
    logprob_chunk_tokens: int = Field(1024, ge=1, description="Completion tokens per chunk of the selective "
                                                              "log-softmax: peak logits memory is this x vocabulary.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved by the learner actor (Ray runtime).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved by the learner actor (Ray runtime).")
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @model_validator(mode="after")
    def _check_clip(self):
        if self.algorithm == "rank_grpo":  # the authors' asymmetric rank-level clip unless set explicitly
            if "epsilon" not in self.model_fields_set:
                object.__setattr__(self, "epsilon", 0.06)
            if "epsilon_high" not in self.model_fields_set:
                object.__setattr__(self, "epsilon_high", 0.08)
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError("epsilon_high must be >= epsilon (clip-higher widens the upper range only)")
        return self
