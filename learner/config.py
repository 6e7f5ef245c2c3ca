"""Config sections owned by the learner package: `model` and `learner` (pydantic, unknown fields rejected)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator


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
    dtype: Literal["float32", "bfloat16", "float64"] = Field("float32", description=(
        "Parameter dtype of the policy, in the learner and both rollout engines (float64: exact-parity checks on "
        "CPU)."))
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


class OuterMomentumConfig(Section):
    """Outer momentum every K learner steps: d = W_t - W_{t-K}, b <- mu b + d, W <- W_{t-K} + eta (mu b + d)
    (Lookahead with eta > 1 / SNOO, arXiv 2510.15830; learner/outer.py). eta = 1, mu = 0 is plain training."""

    every: int = Field(5, ge=1, description="K: learner steps between outer updates.")
    eta: float = Field(1.5, gt=0, le=8, description="Outer learning rate: > 1 extrapolates the last K steps' "
                                                    "displacement; 1 with mu = 0 is plain training.")
    mu: float = Field(0.0, ge=0, lt=1, description="Outer (Nesterov) momentum of the displacement buffer b.")
    guard_margin: float | None = Field(0.0, ge=0, description=(
        "Skip the outer update (and clear b) when the mean sampled reward of the last K steps is more than this "
        "below the K steps' before; null: never skip."))


class AdaptiveStepConfig(Section):
    """The adaptive step controller (learner/step_control.py): every K learner steps the K-step update d = W_t - W_a
    is rescaled, W <- W_a + c d, with c chosen on the line by the reference answers' log-prob; c > 1 lengthens a step
    that is too short, c < 1 pulls the weights back toward W_a (Lookahead's slow weights). c fixed at 1 is plain
    training, bit for bit."""

    every: int = Field(2, ge=1, description="K: learner steps between decisions.")
    init_scale: float = Field(1.0, gt=0, description="c at the start.")
    factor: float = Field(2.0, gt=1, le=16, description="gamma: the candidates are c / gamma, c, c gamma (clamped "
                                                        "to [min_scale, max_scale]).")
    min_scale: float = Field(0.1, gt=0, description="c never falls below this.")
    max_scale: float = Field(16.0, gt=0, le=64, description="c never rises above this.")
    fixed_scale: float | None = Field(None, gt=0, description="Hold c at this value and make no decisions (the "
                                                              "probe is still scored); 1 is plain training.")
    probe_size: int = Field(64, ge=4, description="Held-out problems whose reference answers' mean token log-prob "
                                                 "scores the candidates (paired).")
    probe_seed: int = Field(4242, ge=0, description="Seed of the probe problems (differs from the evaluation sets).")
    reward_drop: float = Field(0.0, ge=0, description=(
        "The sampled-reward brake: while the mean sampled reward of the last K steps is more than this below the K "
        "steps' before, c is not raised."))
    rollback: bool = Field(True, description=(
        "When every candidate scores below the anchor W_a, return to W_a (the K steps are lost, and counted) and "
        "lower c by gamma."))

    @model_validator(mode="after")
    def _check(self) -> AdaptiveStepConfig:
        if self.min_scale > self.max_scale:
            raise ValueError("adaptive_step.min_scale must be <= max_scale")
        if not self.min_scale <= self.init_scale <= self.max_scale:
            raise ValueError("adaptive_step.init_scale must lie in [min_scale, max_scale]")
        return self


class LrControlConfig(Section):
    """The reward-trend learning-rate controller (a bold driver on the mean sampled reward; learner/step_control.py):
    every K learner steps the lr multiplier m rises by `up` when the mean reward of the last K steps beats the K
    before by more than `margin`, and falls by `down` when it is more than `margin` below."""

    every: int = Field(2, ge=1, description="K: learner steps between decisions.")
    up: float = Field(1.5, ge=1, le=16, description="m <- m x up after a rise.")
    down: float = Field(0.5, gt=0, le=1, description="m <- m x down after a fall.")
    margin: float = Field(0.0, ge=0, description="Rises and falls smaller than this leave m as it is.")
    min_multiplier: float = Field(0.01, gt=0, description="m never falls below this.")
    max_multiplier: float = Field(100.0, gt=0, description="m never rises above this.")


class LearnerCommon(Section):
    """Fields every algorithm's learner has: the policy loss, the optimizer, LoRA and the actor's resources. Field
    names follow TRL's GRPOConfig where they mean the same thing."""

    loss_type: str = Field(
        "dapo", description="Policy loss (learner/losses.py POLICY_LOSSES): grpo = per-sequence token mean, then mean; "
                            "dapo = token mean over the batch; bnpo = token mean over each micro-batch; dr_grpo = sum "
                            "/ (batch x max_new_tokens); cispo = clipped, detached IS weight x A x log-prob (MiniMax-M1); "
                            "sapo = soft sigmoid gate instead of the clip (SAPO). See docs/methods.md.")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Lower clip range eps_low of the ratio.")
    epsilon_high: float | None = Field(None, gt=0, lt=10, description="Upper clip range eps_high (DAPO clip-higher "
                                                                      "uses 0.28; CISPO's eps_max); unset = epsilon.")
    beta: float = Field(0.0, ge=0, description="k3 KL penalty coefficient against the base model (adapter off).")
    use_bias_correction_kl: bool = Field(False, description="Weight the k3 KL by the ratio rho (the unbiased reverse-KL "
                                                              "gradient of DeepSeek-V3.2). Off here; TRL 1.16 defaults "
                                                              "it to true.")
    sapo_temperature_pos: float = Field(1.0, gt=0, description="SAPO gate temperature for tokens with positive "
                                                               "advantage (loss_type sapo).")
    sapo_temperature_neg: float = Field(1.05, gt=0, description="SAPO gate temperature for tokens with non-positive "
                                                                "advantage (loss_type sapo).")
    updates_per_batch: int = Field(1, ge=1, le=16, description="mu: optimizer steps per rollout batch (TRL num_iterations).")
    optimizer: Literal["adamw", "prodigy", "schedule_free_adamw"] = Field("adamw", description=(
        "adamw (torch); prodigy (prodigyopt: lr is a multiplier of its own step-size estimate, documented 1.0, "
        "starting from prodigy_d0); schedule_free_adamw (schedulefree: no schedule; evaluation, checkpoints, leaps and "
        "export use its averaged weights x)."))
    lr: float = Field(5e-4, gt=0, le=1, description="Peak learning rate of the trained parameters (prodigy: the "
                                                    "multiplier of its estimate, documented 1.0).")
    prodigy_d0: float = Field(1e-6, gt=0, le=1, description="Prodigy's initial step-size estimate d0 (documented "
                                                            "1e-6).")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="Decay after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup (optimizer steps).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping by global norm.")
    micro_batch_size: int = Field(256, ge=1, description="Sequences per forward/backward (gradient accumulation).")
    gradient_checkpointing: bool = Field(False, description="Recompute the decoder's activations in the backward pass "
                                                            "(less memory, ~30% more compute).")
    padding_free: bool = Field(False, description=(
        "Pack each micro-batch's sequences into rows without padding (position ids restart per sequence; the model "
        "attends within each sequence only): less compute and memory when lengths vary (bench/packing.py)."))
    logprob_chunk_tokens: int = Field(1024, ge=1, description="Completion tokens per chunk of the selective "
                                                              "log-softmax: peak logits memory is this x vocabulary.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each learner rank (Ray runtime).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved by each learner rank (Ray runtime).")
    resources: dict[str, float] = Field(default_factory=dict, description=(
        "Custom Ray resources each learner rank reserves, e.g. {learner: 1} to place the ranks on the nodes that "
        "advertise it (deploy/k8s/raycluster.yaml's learner-gpu group)."))
    num_workers: int = Field(1, ge=1, le=1024, description=(
        "N: learner ranks in one torch.distributed process group (gloo on CPU, NCCL on CUDA), each given num_cpus "
        "and num_gpus; the step's micro-batches are split across them and their gradients summed, so N ranks make "
        "the update one rank makes on the whole batch (docs/architecture.md#learner-group)."))
    sharding: Literal["none", "ddp", "fsdp"] = Field("none", description=(
        "How N > 1 ranks hold the policy: ddp = a full replica on every rank, gradients all-reduced; fsdp = "
        "parameters, gradients and optimizer state sharded with FSDP2's fully_shard (a model that does not fit one "
        "device). none: one rank."))
    lora: LoraConfig | None = Field(default_factory=LoraConfig, description=(
        "The LoRA adapter that is trained; null: full-parameter RL (every weight trains; checkpoints and leaps are "
        "whole models; beta > 0 keeps a frozen copy of the base; HF rollout engine only)."))
    kl_estimator: Literal["k1", "k2", "k3", "low_var_kl"] = Field("k3", description=(
        "Per-token estimator of KL(pi || ref) in the beta penalty (learner/losses.py KL_ESTIMATORS, Schulman 2020): "
        "k1 = logp - ref; k2 = (logp - ref)^2 / 2; k3 = exp(ref - logp) - (ref - logp) - 1 (TRL's); low_var_kl = "
        "k3 clamped to [-10, 10] (verl's)."))
    entropy_coef: float = Field(0.0, ge=0, le=10, description=(
        "Entropy bonus c: loss - c x the mean per-token entropy, the same for every loss type (TRL's entropy_coef); "
        "with use_adaptive_entropy, the starting c."))
    use_adaptive_entropy: bool = Field(False, description=(
        "Skywork-OR1's adaptive entropy control (arXiv 2505.22312, as TRL): after each optimizer step c rises by "
        "entropy_coef_delta while the mean token entropy is <= entropy_target and falls by it otherwise; the bonus "
        "applies only while the entropy is <= entropy_target."))
    entropy_target: float = Field(0.2, ge=0, description="Target mean token entropy (nats) of adaptive entropy "
                                                         "control.")
    entropy_coef_delta: float = Field(0.005, gt=0, description="Step of c under adaptive entropy control.")
    entropy_coef_min: float = Field(0.0, ge=0, description="Lower bound of c under adaptive entropy control.")
    entropy_coef_max: float = Field(1.0, ge=0, description="Upper bound of c under adaptive entropy control.")
    mask_truncated_completions: bool = Field(False, description=(
        "Leave completions cut at the length limit (no end token; multi-turn: cut by a turn or the episode budget) "
        "out of the loss; they still count in their group's advantages (TRL's mask_truncated_completions, DAPO)."))
    rollout_correction: Literal["auto", "off", "token_truncate", "token_mask", "sequence_truncate",
                                "sequence_mask"] = Field("auto", description=(
        "Training-inference mismatch correction (TRL 1.16's vllm_importance_sampling_correction / _mode): the "
        "policy loss is weighted by w = exp(learner pi_old - engine sampling log-prob), per token or per sequence "
        "(exp of the summed difference), truncated at [rollout_correction_min, _max] or masked outside it; pi_old "
        "is then the learner's own policy before the update (AReaL's decoupled PPO for stale samples). auto: "
        "token_truncate where the engine and the learner can differ (the vLLM engine, or "
        "rollout.max_off_policy_steps > 0), off otherwise."))
    rollout_correction_min: float | None = Field(None, ge=0, description="C_min of the rollout correction (null: "
                                                                          "no lower bound).")
    rollout_correction_max: float | None = Field(3.0, gt=0, description="C_max of the rollout correction (TRL's "
                                                                        "default 3.0; null: no upper bound).")
    outer_momentum: OuterMomentumConfig | None = Field(None, description="Outer momentum on the trainable "
                                                                         "parameters every K steps (off when unset).")
    adaptive_step: AdaptiveStepConfig | None = Field(None, description="The adaptive step controller: rescale each "
                                                                       "K-step update (off when unset).")
    lr_control: LrControlConfig | None = Field(None, description="The reward-trend learning-rate controller (off "
                                                                 "when unset).")

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        from learner.losses import POLICY_LOSSES

        if name not in POLICY_LOSSES:
            raise ValueError(f"unknown policy loss {name!r}; valid: {', '.join(POLICY_LOSSES.names())} (register "
                             f"more in learner.losses.POLICY_LOSSES)")
        return name

    @model_validator(mode="after")
    def _check_optimizer(self):
        if self.outer_momentum is not None and self.adaptive_step is not None:
            raise ValueError("learner.outer_momentum and learner.adaptive_step both rescale the K-step update; "
                             "set one of them")
        if self.optimizer == "schedule_free_adamw":
            if self.lr_schedule != "constant":
                raise ValueError("optimizer schedule_free_adamw replaces the lr schedule (its averaging is the "
                                 "schedule); set lr_schedule: constant (warmup_steps is its own warmup)")
            if self.outer_momentum is not None or self.adaptive_step is not None:
                raise ValueError("optimizer schedule_free_adamw averages its own iterates; outer_momentum and "
                                 "adaptive_step need optimizer adamw or prodigy")
        return self

    @model_validator(mode="after")
    def _check_group(self):
        if self.num_workers > 1 and self.sharding == "none":
            raise ValueError(f"learner.num_workers: {self.num_workers} needs learner.sharding: ddp (a replica per "
                             f"rank) or fsdp (sharded parameters)")
        if self.num_workers == 1 and self.sharding != "none":
            raise ValueError(f"learner.sharding: {self.sharding} needs learner.num_workers >= 2; with one rank set "
                             f"sharding: none")
        if self.sharding == "fsdp":
            if self.optimizer != "adamw":
                raise ValueError(f"learner.sharding: fsdp shards the optimizer state, which optimizer {self.optimizer} "
                                 f"reduces over whole tensors; use optimizer: adamw, or sharding: ddp")
            if self.outer_momentum is not None or self.adaptive_step is not None:
                raise ValueError("learner.outer_momentum and learner.adaptive_step act on whole parameter tensors; "
                                 "use them with sharding: ddp, not fsdp")
        return self

    @model_validator(mode="after")
    def _check_entropy(self):
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ValueError("entropy_coef_min must be <= entropy_coef_max")
        if (self.rollout_correction_min is not None and self.rollout_correction_max is not None
                and self.rollout_correction_min > self.rollout_correction_max):
            raise ValueError("rollout_correction_min must be <= rollout_correction_max")
        return self

    @model_validator(mode="after")
    def _check_clip(self):
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError("epsilon_high must be >= epsilon (clip-higher widens the upper range only)")
        if self.loss_type == "cispo" and self.epsilon_high is None:
            raise ValueError("loss_type cispo caps the importance weight at epsilon_high (eps_max), which would default "
                             "to epsilon, a cap below 1; set epsilon_high (ScaleRL, arXiv 2510.13786, uses 5.0)")
        return self


class GRPOConfig(LearnerCommon):
    """GRPO (Shao et al. 2024, arXiv 2402.03300): one advantage per sequence, from the group's rewards."""

    algorithm: Literal["grpo"] = Field("grpo", description="grpo: one advantage per sequence (the default).")
    advantage_estimator: Literal["grpo", "rloo", "reinforce_pp"] = Field("grpo", description=(
        "grpo: the group-mean baseline, scaled by scale_rewards; rloo: the leave-one-out baseline, R_i minus the "
        "mean of the group's other rewards (RLOO, arXiv 2402.14740); reinforce_pp: the group mean subtracted, then "
        "whitened over the batch (REINFORCE++ with baseline, arXiv 2501.03262)."))
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantage scaling of advantage_estimator grpo: group std (GRPO), batch std, or none "
                             "(Dr. GRPO).")
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="Importance ratio per token, or per sequence (GSPO, Zheng et al. 2025, arXiv 2507.18071: "
                             "exp of the mean token log-ratio).")
    reward_shaping: Literal["none", "unlikeliness"] = Field(
        "none", description="Reward shaping before advantages: unlikeliness = R (1 - beta_u rank / G), rank by "
                            "length-normalised sampling log-prob (He et al. 2025, arXiv 2506.02355).")
    unlikeliness_beta: float = Field(0.25, ge=0, le=1, description="beta_u of the unlikeliness reward.")
    drop_uniform_groups: bool = Field(False, description="Drop groups whose rewards are all equal (DAPO dynamic "
                                                         "sampling; part of the unlikeliness recipe).")

    @model_validator(mode="after")
    def _check_estimator(self):
        if self.advantage_estimator != "grpo" and "scale_rewards" in self.model_fields_set:
            raise ValueError(f"scale_rewards scales advantage_estimator grpo's advantages; {self.advantage_estimator} "
                             f"has its own scaling: remove scale_rewards, or use advantage_estimator: grpo")
        return self


# Fields of GRPO that have no meaning for Rank-GRPO, and why (Rank-GRPO is refused with them rather than ignoring them).
RANK_GRPO_REFUSES = {
    "advantage_estimator": "Rank-GRPO's advantages are per rank, normalised within each rank's group",
    "scale_rewards": "Rank-GRPO normalises each rank's reward within its group; there is no sequence reward to scale",
    "importance_sampling_level": "Rank-GRPO's ratio is per rank (the mean token log-ratio of each line)",
    "reward_shaping": "the unlikeliness reward reshapes one reward per sequence; Rank-GRPO has one per rank",
    "unlikeliness_beta": "the unlikeliness reward reshapes one reward per sequence; Rank-GRPO has one per rank",
    "drop_uniform_groups": "Rank-GRPO's advantages are per rank, so a group with equal sequence rewards still teaches",
}


class RankGRPOConfig(LearnerCommon):
    """Rank-GRPO (ConvRec-R1, Zhu et al. 2025, arXiv 2510.20150) for ranked-list tasks: per-rank rewards and
    advantages, rank-level importance ratios, and the authors' asymmetric clip."""

    algorithm: Literal["rank_grpo"] = Field("rank_grpo", description="rank_grpo: per-rank advantages and rank-level "
                                                                     "ratios for ranked-list tasks.")
    epsilon: float = Field(0.06, gt=0, lt=1, description="Lower clip range of the rank-level ratio (the authors' 0.06).")
    epsilon_high: float | None = Field(0.08, gt=0, lt=10, description="Upper clip range of the rank-level ratio (the "
                                                                      "authors' 0.08).")
    rank_reward: Literal["exp_inf", "log_decay"] = Field(
        "exp_inf", description="Rank reward: exp_inf = rel_k; log_decay = sum_{j>=k} rel_j / log2(j+1).")

    @model_validator(mode="before")
    @classmethod
    def _refuse_grpo_fields(cls, data):
        if isinstance(data, dict):
            for name in RANK_GRPO_REFUSES:
                if name in data:
                    raise ValueError(f"{name} does not apply to algorithm rank_grpo: {RANK_GRPO_REFUSES[name]}; "
                                     f"remove it, or use algorithm: grpo")
        return data


def _algorithm_of(data) -> str:
    if isinstance(data, dict):
        return data.get("algorithm", "grpo")
    return getattr(data, "algorithm", "grpo")


LearnerConfig = Annotated[Annotated[GRPOConfig, Tag("grpo")] | Annotated[RankGRPOConfig, Tag("rank_grpo")],
                          Discriminator(_algorithm_of)]
"""The `learner` section: one config class per algorithm (`algorithm` chooses; grpo when unset)."""
ALGORITHM_CONFIGS = {"grpo": GRPOConfig, "rank_grpo": RankGRPOConfig}
