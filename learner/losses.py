"""GRPO-family losses as pure tensor functions (docs/methods.md#grpo), registered by name.

Shapes: per-token tensors are [B, T] over completion tokens (B sequences, T = longest completion), with a 0/1
`mask` marking real tokens; per-sequence tensors are [B].

- Advantages (`ADVANTAGES`, DeepSeekMath GRPO, arXiv 2402.03300): A_i = (R_i - mean_G R) / (std_G R + eps);
  Dr. GRPO (arXiv 2503.20783) drops the std division: A_i = R_i - mean_G R.
- Importance log-ratio d = log pi_theta - log pi_old, at one of three levels (`importance_log_ratio`): per token;
  per sequence (GSPO, arXiv 2507.18071: every token of sequence i gets mean_t d_{i,t}); per segment (Rank-GRPO,
  learner/rank_grpo.py: every token gets the mean of d over its rank). rho = exp(d).
- Policy losses (`POLICY_LOSSES`, keys = TRL's `loss_type`): the per-token objective and its normalisation, as
  TRL 1.16 GRPOTrainer._compute_loss computes them (docs/methods.md): grpo, dapo, dr_grpo and bnpo share the
  clipped surrogate (PPO, arXiv 1707.06347) -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) and differ in
  normalisation; cispo (MiniMax-M1, arXiv 2506.13585) and sapo (SAPO, arXiv 2511.20347) change the objective.
- KL penalty (`KL_ESTIMATORS`, Schulman 2020, "Approximating KL divergence"; default k3 as TRL): added per token as
  beta * k before the loss type's normalisation (as TRL does); optionally weighted by the importance ratio rho at
  the chosen level (rho * k, DeepSeek-V3.2, arXiv 2512.02556: the unbiased reverse-KL gradient off-policy at token
  level). TRL 1.16's `use_bias_correction_kl` defaults to True; here `kl_ratio_correction` is off unless asked for
  (docs/methods.md#kl-penalty).
- Rollout correction (`rollout_correction_weights`, TRL 1.16's vllm_importance_sampling_correction; truncated IS,
  Yao et al. 2025): w = exp(old_logp - sampling_logp) per token or per sequence, truncated or masked at
  [C_min, C_max], multiplying the per-token policy loss (not the KL) before normalisation.
- Entropy bonus (TRL 1.16 entropy_coef): loss - c * H, H the mean per-token entropy of the (micro-)batch, the same
  for every loss type; c adapted per step by Skywork-OR1's rule (arXiv 2505.22312) when asked
  (`adaptive_entropy_coef`).

Normalisation: `num_sequences` and `num_tokens` are those of the whole batch one optimizer step covers, so the
losses of its micro-batches add up to the loss of the whole batch (TRL divides by the gradient-accumulation steps
instead; equal for equal micro-batches). The parity tests (tests/integration/test_trl_parity.py,
tests/integration/test_trl_parity_losses.py) check equality with TRL, loss and LoRA gradients, on the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from common.registry import Registry

RATIO_LEVELS = ("token", "sequence", "segment")


ADVANTAGES: Registry[Callable[..., torch.Tensor]] = Registry("advantage estimator")
KL_ESTIMATORS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("KL estimator")
CORRECTION_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass(frozen=True)
class LossSettings:
    """The knobs of a policy loss; names follow TRL's GRPOConfig where they mean the same thing (loss_type,
    epsilon -> eps_low, epsilon_high -> eps_high, beta, use_bias_correction_kl -> kl_ratio_correction,
    importance_sampling_level -> ratio_level, sapo_temperature_pos / _neg with TRL's defaults 1.0 / 1.05).
    For cispo, eps_high is the cap on the ratio itself (TRL's use: ScaleRL's eps_max, 5.0 recommended there)."""

    loss_type: str = "dapo"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0
    kl_ratio_correction: bool = False
    ratio_level: str = "token"
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0  # the coefficient this step applies (the adaptive controller sets it per step)
    correction: str | None = None  # rollout correction mode (CORRECTION_MODES), None: off
    correction_min: float | None = None
    correction_max: float | None = 3.0


@dataclass
class LossInputs:
    """One (micro-)batch. logp, old_logp, mask (0/1, converted to logp's dtype), ref_logp, segments: [B, T];
    advantages: [B] or [B, T]. num_sequences / num_tokens: of the whole optimizer-step batch; max_completion_length:
    the configured completion limit (dr_grpo's constant). segments: each token's segment id (ratio_level segment)."""

    logp: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    num_sequences: int
    num_tokens: int
    max_completion_length: int
    ref_logp: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    correction_weights: torch.Tensor | None = None  # [B, T] or [B, 1], rollout_correction_weights (None: off)
    entropy: torch.Tensor | None = None  # [B, T] per-token entropy with its gradient (entropy bonus only)

    def __post_init__(self):
        self.mask = self.mask.to(self.logp.dtype)

    @property
    def token_advantages(self) -> torch.Tensor:
        """Advantages as [B, T] (a [B] tensor broadcast over each sequence's tokens)."""
        adv = self.advantages[:, None] if self.advantages.dim() == 1 else self.advantages
        return adv.expand_as(self.logp)


PolicyLoss = Callable[[LossInputs, torch.Tensor, LossSettings], torch.Tensor]
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


@ADVANTAGES.register("group")
def group_normalized_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (R_i - mean_G R) / (std_G R + eps), std unbiased as in TRL. rewards: [num_prompts * G], grouped."""
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    return (centered / (grouped.std(dim=1, keepdim=True) + eps)).reshape(-1)


@ADVANTAGES.register("none")
def group_centered_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Dr. GRPO: A_i = R_i - mean_G R (no std division)."""
    grouped = rewards.view(-1, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)


@ADVANTAGES.register("batch")
def batch_normalized_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Group-centred, divided by the std of the whole batch's rewards (TRL scale_rewards="batch")."""
    grouped = rewards.view(-1, group_size)
    return ((grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)) / (rewards.std() + eps)


@ADVANTAGES.register("rloo")
def leave_one_out_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024, arXiv 2402.14740): A_i = R_i - (1 / (G - 1)) sum_{j != i} R_j,
    the mean of the group's other rewards as the baseline (= G / (G - 1) (R_i - mean_G R))."""
    grouped = rewards.view(-1, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp_baseline_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """REINFORCE++ with baseline (Hu et al. 2025, arXiv 2501.03262): the group mean subtracted, A'_i = R_i - mean_G R,
    then whitened over the whole batch, A_i = (A'_i - mean_B A') / (std_B A' + eps) (std unbiased)."""
    grouped = rewards.view(-1, group_size)
    centered = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    return (centered - centered.mean()) / (centered.std() + eps)


@KL_ESTIMATORS.register("k1")
def k1_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = logp - ref: unbiased for KL(pi || ref) under samples of pi, high variance, can be negative."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def k2_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (logp - ref)^2 / 2: >= 0, biased, low variance (its gradient is the reverse KL's on-policy)."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1: >= 0 and unbiased for KL(pi || ref) (TRL's estimator)."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


@KL_ESTIMATORS.register("low_var_kl")
def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """verl's low_var_kl: k3 with ref - logp clamped to [-20, 20] first and the result clamped to [-10, 10], so a
    token the reference finds far likelier than the policy cannot blow the penalty up."""
    diff = torch.clamp(ref_logp - logp, min=-20, max=20)
    return torch.clamp(torch.exp(diff) - diff - 1, min=-10, max=10)


def rollout_correction_weights(old_logp: torch.Tensor, sampling_logp: torch.Tensor, mask: torch.Tensor, mode: str,
                               clip_min: float | None, clip_max: float | None) -> torch.Tensor:
    """The training-inference mismatch correction of TRL 1.16 (vllm_importance_sampling_correction), detached:
    d = (old_logp - sampling_logp) * mask per token (old: the learner's pi_old, sampling: the engine's log-probs of
    the sampled tokens); token_*: w = exp(d) [B, T]; sequence_*: w = exp(sum_t d) [B, 1].
    *_truncate: w <- clamp(w, clip_min, clip_max); *_mask: w <- 0 where w < clip_min or w > clip_max (a bound of
    None is no bound). The per-token policy loss is multiplied by w."""
    if mode not in CORRECTION_MODES:
        raise ValueError(f"unknown rollout correction mode {mode!r}; valid: {', '.join(CORRECTION_MODES)}")
    diff = torch.nan_to_num((old_logp - sampling_logp) * mask, nan=0.0).detach()
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    weights = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(weights, min=clip_min, max=clip_max)
    low = clip_min if clip_min is not None else -math.inf
    high = clip_max if clip_max is not None else math.inf
    return weights.masked_fill((weights < low) | (weights > high), 0.0)


def mismatch_metrics(old_logp: torch.Tensor, sampling_logp: torch.Tensor, mask: torch.Tensor,
                     weights: torch.Tensor | None, mode: str | None, clip_min: float | None,
                     clip_max: float | None) -> dict[str, float]:
    """How far the engine's sampling distribution is from the learner's pi_old on the sampled tokens: mismatch/kl
    = mean_t (sampling_logp - old_logp) (k1 of KL(engine || learner)), mismatch/k3_kl, mismatch/max_abs_logp_diff;
    the ratios exp(old - sampling) at the correction's level (token unless a sequence_* mode), min / mean / max,
    and the share of them the correction truncated or masked (mismatch/corrected_fraction; 0 when off)."""
    with torch.no_grad():
        live = mask.bool()
        delta = (sampling_logp - old_logp)[live]
        if delta.numel() == 0:
            return {}
        out = {"mismatch/kl": float(delta.mean()), "mismatch/k3_kl": float(k3_kl(sampling_logp, old_logp)[live].mean()),
               "mismatch/max_abs_logp_diff": float(delta.abs().max())}
        diff = ((old_logp - sampling_logp) * mask)
        sequence = mode is not None and mode.startswith("sequence")
        raw = torch.exp(diff.sum(-1)) if sequence else torch.exp(diff)[live]
        out.update({"mismatch/ratio_min": float(raw.min()), "mismatch/ratio_mean": float(raw.mean()),
                    "mismatch/ratio_max": float(raw.max())})
        changed = 0.0
        if weights is not None:
            applied = weights.squeeze(-1) if sequence else weights[live]
            changed = float((applied != raw).float().mean())
        out["mismatch/corrected_fraction"] = changed
        return out


def importance_log_ratio(inputs: LossInputs, level: str) -> torch.Tensor:
    """[B, T] log importance weight d at `level`:
    token:    d_{i,t} = logp_{i,t} - old_logp_{i,t};
    sequence: d_{i,t} = sum_t m_{i,t} (logp - old_logp)_{i,t} / max(sum_t m_{i,t}, 1) for every t (GSPO,
              arXiv 2507.18071: s_i = exp of it; TRL's importance_sampling_level="sequence", gradient through the
              mean into every token, nothing detached);
    segment:  d_{i,t} = the mean of (logp - old_logp) over the masked tokens of t's segment (Rank-GRPO,
              learner/rank_grpo.py `segment_log_ratio`; needs inputs.segments)."""
    log_ratio = inputs.logp - inputs.old_logp
    if level == "token":
        return log_ratio
    if level == "sequence":
        mean = (log_ratio * inputs.mask).sum(-1) / inputs.mask.sum(-1).clamp(min=1.0)
        return mean[:, None].expand_as(log_ratio)
    if level == "segment":
        if inputs.segments is None:
            raise ValueError("ratio_level 'segment' needs inputs.segments (each token's segment id)")
        from learner.rank_grpo import segment_log_ratio

        return segment_log_ratio(log_ratio, inputs.segments, inputs.mask)
    raise ValueError(f"unknown ratio_level {level!r}; valid: {', '.join(RATIO_LEVELS)}")


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
                      ) -> torch.Tensor:
    """Per-token -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), rho = exp(log_ratio); advantages [B] (broadcast
    over tokens) or [B, T] (per token, e.g. Rank-GRPO's per-rank advantages)."""
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    return -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)


def with_kl(per_token: torch.Tensor, inputs: LossInputs, log_ratio: torch.Tensor, settings: LossSettings
            ) -> torch.Tensor:
    """per_token x w (the rollout correction's weights, when on) + beta x k (KL_ESTIMATORS[settings.kl_estimator],
    times rho = exp(log_ratio) at the chosen level when kl_ratio_correction; nothing when beta == 0). TRL applies
    both this way, in this order, before the loss type's normalisation."""
    if inputs.correction_weights is not None:
        per_token = per_token * inputs.correction_weights
    if settings.beta == 0.0:
        return per_token
    if inputs.ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (log-probs of the reference policy)")
    kl = KL_ESTIMATORS.get(settings.kl_estimator)(inputs.logp, inputs.ref_logp)
    if settings.kl_ratio_correction:
        kl = kl * torch.exp(log_ratio)
    return per_token + settings.beta * kl


# Normalisations: a [B, T] per-token loss -> the scalar loss of this micro-batch.

def sequence_mean(per_token: torch.Tensor, inputs: LossInputs) -> torch.Tensor:
    """sum_i (sum_t m_{i,t} l_{i,t} / sum_t m_{i,t}) / num_sequences: each sequence's token mean, averaged."""
    mask = inputs.mask
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / inputs.num_sequences


def token_mean(per_token: torch.Tensor, inputs: LossInputs) -> torch.Tensor:
    """sum_{i,t} m l / num_tokens of the whole batch (TRL's dapo and cispo: num_items_in_batch)."""
    return (per_token * inputs.mask).sum() / max(inputs.num_tokens, 1)


def local_token_mean(per_token: torch.Tensor, inputs: LossInputs) -> torch.Tensor:
    """(sum_{i,t} m l / sum_{i,t} m of this micro-batch) x B / num_sequences: the micro-batch's own token mean,
    weighted by its share of the sequences (TRL's bnpo: local token mean / gradient-accumulation steps). On the
    whole batch at once it equals `token_mean`."""
    mask = inputs.mask
    return (per_token * mask).sum() / mask.sum().clamp(min=1) * (mask.shape[0] / inputs.num_sequences)


def constant_normalizer(per_token: torch.Tensor, inputs: LossInputs) -> torch.Tensor:
    """sum_{i,t} m l / (num_sequences x max_completion_length) (Dr. GRPO, arXiv 2503.20783)."""
    return (per_token * inputs.mask).sum() / (inputs.num_sequences * inputs.max_completion_length)


# Policy losses: fn(inputs, log_ratio, settings) -> scalar loss (objective + KL, normalised).

@POLICY_LOSSES.register("grpo")
def grpo(inputs: LossInputs, log_ratio: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """GRPO (DeepSeekMath, arXiv 2402.03300): clipped surrogate, each sequence's token mean, then the mean over
    sequences. With ratio_level sequence this is GSPO's objective (arXiv 2507.18071, docs/methods.md#gspo)."""
    per_token = clipped_surrogate(log_ratio, inputs.advantages, settings.eps_low, settings.eps_high)
    return sequence_mean(with_kl(per_token, inputs, log_ratio, settings), inputs)


@POLICY_LOSSES.register("dapo")
def dapo(inputs: LossInputs, log_ratio: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """DAPO (arXiv 2503.14476): clipped surrogate (clip-higher: eps_high > eps_low), summed over all tokens / the
    whole batch's token count. With ratio_level sequence every token carries its sequence's ratio, so a sequence
    weighs by its length (TRL warns of this; GSPO proper is grpo + sequence)."""
    per_token = clipped_surrogate(log_ratio, inputs.advantages, settings.eps_low, settings.eps_high)
    return token_mean(with_kl(per_token, inputs, log_ratio, settings), inputs)


@POLICY_LOSSES.register("dr_grpo")
def dr_grpo(inputs: LossInputs, log_ratio: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """Dr. GRPO (arXiv 2503.20783): clipped surrogate, summed over all tokens / (num_sequences x
    max_completion_length), a constant, so no length bias."""
    per_token = clipped_surrogate(log_ratio, inputs.advantages, settings.eps_low, settings.eps_high)
    return constant_normalizer(with_kl(per_token, inputs, log_ratio, settings), inputs)


@POLICY_LOSSES.register("bnpo")
def bnpo(inputs: LossInputs, log_ratio: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """TRL's bnpo (docs/methods.md#bnpo): clipped surrogate, token mean over the local (micro-)batch, the
    micro-batches weighted by their share of the sequences. A normalisation choice with no paper of its own in TRL;
    not BNPO, "Beta Normalization Policy Optimization" (arXiv 2506.02864), which rescales advantages instead."""
    per_token = clipped_surrogate(log_ratio, inputs.advantages, settings.eps_low, settings.eps_high)
    return local_token_mean(with_kl(per_token, inputs, log_ratio, settings), inputs)


@POLICY_LOSSES.register("cispo")
def cispo(inputs: LossInputs, log_ratio: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """CISPO (MiniMax-M1, arXiv 2506.13585; docs/methods.md#cispo): l_{i,t} = -sg(min(rho_{i,t}, eps_high)) A_i
    logp_{i,t}, normalised by the whole batch's token count. The clip acts on the detached importance weight, not on
    the update, so every token keeps a gradient; eps_high is the cap on rho itself (TRL: ScaleRL's eps_max,
    arXiv 2510.13786, 5.0 recommended), there is no lower bound."""
    weight = torch.clamp(torch.exp(log_ratio), max=settings.eps_high).detach()
    per_token = -weight * inputs.token_advantages * inputs.logp
    return token_mean(with_kl(per_token, inputs, log_ratio, settings), inputs)


@POLICY_LOSSES.register("sapo")
def sapo(inputs: LossInputs, log_ratio: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347; docs/methods.md#sapo): the hard clip replaced
    by a soft gate, l_{i,t} = -(4 / tau) sigmoid(tau (rho_{i,t} - 1)) A_i with tau = sapo_temperature_pos where
    A > 0 and sapo_temperature_neg otherwise (gradient rho A at rho = 1, decaying smoothly away from it);
    each sequence's token mean, then the mean over sequences (as TRL's sapo)."""
    adv = inputs.token_advantages
    tau = torch.where(adv > 0, adv.new_tensor(settings.sapo_temperature_pos),
                      adv.new_tensor(settings.sapo_temperature_neg))
    gate = torch.sigmoid(tau * (torch.exp(log_ratio) - 1)) * 4 / tau
    return sequence_mean(with_kl(-gate * adv, inputs, log_ratio, settings), inputs)


def clip_fraction(inputs: LossInputs, log_ratio: torch.Tensor, settings: LossSettings) -> float:
    """Share of the masked tokens whose ratio is clipped: (rho < 1 - eps_low, A < 0) or (rho > 1 + eps_high, A > 0);
    for cispo rho > eps_high with A > 0 (TRL's cispo_clip_ratio). For sapo, which does not clip, the share the hard
    clip would have cut."""
    with torch.no_grad():
        ratio, adv = torch.exp(log_ratio), inputs.token_advantages
        if settings.loss_type == "cispo":
            clipped = (ratio > settings.eps_high) & (adv > 0)
        else:
            clipped = ((ratio < 1 - settings.eps_low) & (adv < 0)) | ((ratio > 1 + settings.eps_high) & (adv > 0))
        mask = inputs.mask
        return float((clipped.to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1))


def policy_loss(inputs: LossInputs, settings: LossSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one (micro-)batch: the log-ratio at settings.ratio_level, then POLICY_LOSSES[settings.loss_type]
    (its objective plus beta * k3 KL, normalised as that loss type does). Stats: clip_ratio, and kl (the mean k3
    over the masked tokens, unweighted) when beta > 0."""
    loss_fn = POLICY_LOSSES.get(settings.loss_type)
    if settings.beta > 0.0 and inputs.ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (log-probs of the reference policy)")
    log_ratio = importance_log_ratio(inputs, settings.ratio_level)
    loss = loss_fn(inputs, log_ratio, settings)
    if settings.entropy_coef != 0.0:
        if inputs.entropy is None:
            raise ValueError("entropy_coef != 0 needs inputs.entropy (the per-token entropy, with its gradient)")
        loss = loss - settings.entropy_coef * local_token_mean(inputs.entropy, inputs)
    stats = {"clip_ratio": clip_fraction(inputs, log_ratio, settings)}
    if settings.beta > 0.0:
        mask = inputs.mask
        kl = KL_ESTIMATORS.get(settings.kl_estimator)(inputs.logp.detach(), inputs.ref_logp)
        stats["kl"] = float((kl * mask).sum() / mask.sum().clamp(min=1))
    return loss, stats


def adaptive_entropy_coef(coef: float, entropy: float, target: float, delta: float, low: float, high: float
                          ) -> float:
    """Skywork-OR1's adaptive entropy control (arXiv 2505.22312), as TRL 1.16 steps it after each optimizer step:
    c <- min(c + delta, high) when the step's mean token entropy H <= target, else max(c - delta, low). The bonus
    applies c only while the last step's H <= target (TRL's gate)."""
    return min(coef + delta, high) if entropy <= target else max(coef - delta, low)
