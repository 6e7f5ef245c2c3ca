"""RL algorithms as small objects, each in one place: `make_batch` turns a step's scored groups into the learner's
batch with its final advantages and its loss settings, so the learner trains on what it is given and looks nothing
up. `ALGORITHMS.get(cfg.algorithm)(cfg)`.

    GRPO        one advantage per sequence from the group's rewards (optionally unlikeliness-shaped, uniform
                groups dropped), scaled by learner.scale_rewards (learner/losses.py ADVANTAGES); the loss's ratio
                per token or per sequence (GSPO).
    Rank-GRPO   per-rank advantages from each line's relevance, the ratio per rank (docs/methods.md#rank-grpo).

A new algorithm: a subclass with `make_batch` (and `ratio_level`, or its own `loss_settings`), registered under the
name its config class (learner/config.py) gives `algorithm`. A new advantage estimator or policy loss: one function
registered in learner/losses.py (ADVANTAGES, POLICY_LOSSES) and its name in the config's Literal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.registry import Registry
from learner.losses import ADVANTAGES, LossSettings
from learner.rank_grpo import parsed_items, rank_advantages, rank_rewards, rank_segments, token_advantages
from learner.reward_shaping import informative_groups, unlikeliness_rewards


@dataclass
class RolloutBatch:
    """Scored rollouts of one step, ready to train on: completions grouped consecutively, with their final
    advantages (one per sequence, or one per token) and the loss settings of the algorithm that made them."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    rewards: list[float]  # the rewards the advantages came from (reported as reward_mean / reward_std)
    group_size: int
    loss: LossSettings
    advantages: list[float] | None = None  # per sequence (GRPO), or
    token_advantages: list[list[float]] | None = None  # per token (Rank-GRPO)
    segments: list[list[int]] | None = None  # per-token segment ids for segment-level ratios (Rank-GRPO ranks)
    sampling_logprobs: list[list[float]] | None = None  # the rollout engine's log-probs (pi_old when off-policy)
    policy_version: int | None = None  # learner step whose weights sampled this batch
    model_masks: list[list[int]] | None = None  # multi-turn: 1 where the model sampled the token (the loss counts
    #                                             those only), 0 for the environment's tokens
    truncated: list[bool] | None = None  # learner.mask_truncated_completions: the completions left out of the loss

    def __post_init__(self):
        if (self.advantages is None) == (self.token_advantages is None):
            raise ValueError("a RolloutBatch has advantages per sequence or per token: exactly one of the two")

    def advantage_tensor(self, width: int) -> torch.Tensor:
        """[B] per-sequence or [B, width] per-token advantages."""
        if self.token_advantages is not None:
            return pad_rows(self.token_advantages, width, torch.float32)
        return torch.tensor(self.advantages, dtype=torch.float32)

    def segment_tensor(self, width: int) -> torch.Tensor | None:
        return pad_rows(self.segments, width, torch.long) if self.segments is not None else None

    def loss_mask(self, completion_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] 0/1: the completion tokens that carry loss, KL and entropy: every sampled token, or in a
        multi-turn batch the model's own (completion_mask x model_mask, TRL's completion_mask x tool_mask); none of a
        truncated completion's with learner.mask_truncated_completions."""
        mask = completion_mask
        if self.model_masks is not None:
            mask = mask * pad_rows(self.model_masks, completion_mask.shape[1], completion_mask.dtype)
        if self.truncated is not None:  # TRL: completion_mask * ~is_truncated
            mask = mask * torch.tensor([not t for t in self.truncated], dtype=mask.dtype)[:, None]
        return mask


def pad_rows(rows: list[list], width: int, dtype) -> torch.Tensor:
    """[len(rows), width] tensor, each row left-aligned and zero-padded."""
    out = torch.zeros((len(rows), width), dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=dtype)
    return out


class Algorithm:
    """Base: `make_batch` turns scored groups into the learner's batch (advantages and loss settings included)."""

    def __init__(self, cfg, correction: str | None = None):
        """correction: the rollout correction mode the job resolved (services/prepare.py), None: off."""
        self.cfg, self.correction = cfg, correction

    def check_task(self, task_class: type) -> None:
        """Raise ValueError when the algorithm cannot train on tasks of this class (checked before any instance)."""

    def make_batch(self, groups: list[list], rewards: list[float], policy_version: int | None = None, *,
                   task=None, examples: list | None = None, tokenizer=None) -> RolloutBatch:
        """The learner's batch from groups[i] (Completions of examples[i]) and their rewards, flattened in order."""
        raise NotImplementedError

    def batch_of(self, completions: list, rewards: list[float], group_size: int, policy_version: int | None,
                 **fields) -> RolloutBatch:
        masks = [c.model_mask for c in completions]
        return RolloutBatch(prompt_ids=[c.prompt_ids for c in completions],
                            completion_ids=[c.token_ids for c in completions], rewards=rewards, group_size=group_size,
                            loss=self.loss_settings, sampling_logprobs=[c.logprobs for c in completions],
                            policy_version=policy_version,
                            model_masks=None if all(m is None for m in masks) else
                            [m if m is not None else [1] * len(c.token_ids) for m, c in zip(masks, completions,
                                                                                           strict=True)],
                            truncated=[c.finish_reason == "length" for c in completions]
                            if self.cfg.mask_truncated_completions else None,
                            **fields)

    @property
    def loss_settings(self) -> LossSettings:
        c = self.cfg
        return LossSettings(loss_type=c.loss_type, eps_low=c.epsilon, eps_high=c.epsilon_high or c.epsilon, beta=c.beta,
                            kl_ratio_correction=c.use_bias_correction_kl, ratio_level=self.ratio_level,
                            sapo_temperature_pos=c.sapo_temperature_pos, sapo_temperature_neg=c.sapo_temperature_neg,
                            kl_estimator=c.kl_estimator, entropy_coef=c.entropy_coef, correction=self.correction,
                            correction_min=c.rollout_correction_min, correction_max=c.rollout_correction_max)

    @property
    def ratio_level(self) -> str:
        raise NotImplementedError


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")


@ALGORITHMS.register("grpo")
class GRPO(Algorithm):
    """GRPO (arXiv 2402.03300) with the reward shaping of "Rewarding the Unlikely" (arXiv 2506.02355), DAPO's
    uniform-group filter (arXiv 2503.14476) and the RLOO / REINFORCE++ baselines (learner.advantage_estimator) as
    options."""

    def make_batch(self, groups, rewards, policy_version=None, *, task=None, examples=None, tokenizer=None):
        completions, group_size = [c for group in groups for c in group], len(groups[0])
        raw = torch.tensor(rewards, dtype=torch.float32)
        shaped = raw
        if self.cfg.reward_shaping == "unlikeliness":
            mean_logp = torch.tensor([c.mean_logprob for c in completions], dtype=torch.float32)
            shaped = unlikeliness_rewards(raw, mean_logp, group_size, self.cfg.unlikeliness_beta)
        rows = range(len(completions))
        if self.cfg.drop_uniform_groups:
            keep = informative_groups(raw, group_size)
            if bool(keep.any()):  # a batch with no signal at all is kept whole (its advantages are all zero)
                rows = [i for i in rows if bool(keep[i // group_size])]
        kept = [float(shaped[i]) for i in rows]
        estimator = self.cfg.scale_rewards if self.cfg.advantage_estimator == "grpo" else self.cfg.advantage_estimator
        advantages = ADVANTAGES.get(estimator)(torch.tensor(kept, dtype=torch.float32), group_size)
        return self.batch_of([completions[i] for i in rows], kept, group_size, policy_version,
                             advantages=advantages.tolist())

    @property
    def ratio_level(self) -> str:
        return self.cfg.importance_sampling_level


@ALGORITHMS.register("rank_grpo")
class RankGRPO(Algorithm):
    """Rank-GRPO (ConvRec-R1, arXiv 2510.20150): ranks and parsed lines come from the same per-token decoding, so
    they cannot disagree."""

    def check_task(self, task_class: type) -> None:
        from rollout.tasks.base import ListTask

        if not issubclass(task_class, ListTask):
            raise ValueError(f"learner.algorithm: rank_grpo needs a ranked-list task (a rollout.tasks.base.ListTask "
                             f"with relevance() and list_length, e.g. ranklist); {task_class.name!r} is not one")

    def make_batch(self, groups, rewards, policy_version=None, *, task=None, examples=None, tokenizer=None):
        k, group_size = task.list_length, len(groups[0])
        relevance, segments, n_items, ended = [], [], [], []
        for ex, group in zip(examples, groups, strict=True):
            for c in group:
                stop = c.finish_reason == "stop"
                texts = [tokenizer.decode([t]) for t in (c.token_ids[:-1] if stop else c.token_ids)]
                seg = rank_segments(texts, k)
                if stop:  # the end token sits in the rank of the text before it
                    seg.append(min(sum(t.count("\n") for t in texts), k))
                segments.append(seg)
                relevance.append(task.relevance(ex, parsed_items(texts, k)))
                n_items.append(sum(1 for line in "".join(texts).split("\n") if line.strip()))
                ended.append(stop)
        advantages = rank_advantages(rank_rewards(torch.tensor(relevance), self.cfg.rank_reward), group_size)
        return self.batch_of([c for group in groups for c in group], rewards, group_size, policy_version,
                             token_advantages=token_advantages(advantages, segments, n_items, k, ended),
                             segments=segments)

    @property
    def ratio_level(self) -> str:
        return "segment"
