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
- KL penalty, k3 estimator (Schulman 2020): k3 = exp(ref - logp) - (ref - logp) - 1, added per token as beta * k3
  before the loss type's normalisation (as TRL does); optionally weighted by the importance ratio rho at the chosen
  level (rho * k3, DeepSeek-V3.2, arXiv 2512.02556: the unbiased reverse-KL gradient off-policy at token level).
  TRL 1.16's `use_bias_correction_kl` defaults to True; here `kl_ratio_correction` is off unless asked for
  (docs/methods.md#kl-penalty).

Normalisation: `num_sequences` and `num_tokens` are those of the whole batch one optimizer step covers, so the
losses of its micro-batches add up to the loss of the whole batch (TRL divides by the gradient-accumulation steps
instead; equal for equal micro-batches). The parity tests (tests/integration/test_trl_parity.py,
tests/integration/test_trl_parity_losses.py) check equality with TRL, loss and LoRA gradients, on the same batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from common.registry import Registry

RATIO_LEVELS = ("token", "sequence", "segment")


ADVANTAGES: Registry[Callable[..., torch.Tensor]] = Registry("advantage scaling")


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


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased for KL(pi || ref))."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


def with_kl(per_token: torch.Tensor, inputs: LossInputs, log_ratio: torch.Tensor, settings: LossSettings
            ) -> torch.Tensor:
    """per_token + beta * k3 (times rho = exp(log_ratio) at the chosen level when kl_ratio_correction), or
    per_token unchanged when beta == 0. TRL adds the KL this way, before the loss type's normalisation."""
    if settings.beta == 0.0:
        return per_token
    if inputs.ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (log-probs of the reference policy)")
    kl = k3_kl(inputs.logp, inputs.ref_logp)
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
    stats = {"clip_ratio": clip_fraction(inputs, log_ratio, settings)}
    if settings.beta > 0.0:
        mask = inputs.mask
        kl = k3_kl(inputs.logp.detach(), inputs.ref_logp)
        stats["kl"] = float((kl * mask).sum() / mask.sum().clamp(min=1))
    return loss, stats
