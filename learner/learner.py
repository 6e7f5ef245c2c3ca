"""The learner: one step on a batch of scored rollouts that the job's algorithm made (learner/algorithms.py), with its
advantages and loss settings (docs/methods.md#grpo):

    advantages A = batch.advantages   (per sequence for GRPO, per token for Rank-GRPO)
    for mu optimizer steps:
        logp = log pi_theta(o_t | q, o_<t)   (LoRA policy, tokens of the completions)
        old  = log pi_old   (= logp.detach() when mu = 1, so rho = 1; else computed once before the updates; or,
                             without the rollout correction, the rollout engine's for a batch an older version sampled)
        w    = rollout correction weights from old and the engine's log-probs (learner.rollout_correction)
        ref  = log pi_ref   (adapter disabled, or a frozen copy of the base under full-parameter RL; beta > 0 only)
        loss = policy_loss(logp, old, A, ref, w; batch.loss) - entropy_coef x H   (learner/losses.py POLICY_LOSSES)
        optimizer step (learner.optimizer: AdamW, Prodigy or Schedule-Free AdamW) with gradient clipping and the
        LR schedule (times the reward-trend controller's multiplier, learner.lr_control)
    every K learner steps, with learner.outer_momentum: the outer update of learner/outer.py; with
    learner.adaptive_step: the adaptive step controller of learner/step_control.py

Schedule-Free AdamW (Defazio et al. 2024, arXiv 2405.15682) trains at y and reports the average x: the model holds x
outside a step (rollouts, evaluation, leaps, checkpoints and export all see x) and y only inside it.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from common.weights import is_lora, load_weights, read_weights, swapped_weights
from learner.algorithms import RolloutBatch, pad_rows
from learner.checkpoint import read_checkpoint, write_checkpoint
from learner.config import LearnerConfig, ModelConfig
from learner.distributed import LearnerGroup
from learner.losses import (
    LossInputs,
    adaptive_entropy_coef,
    mismatch_metrics,
    policy_loss,
    rollout_correction_weights,
)
from learner.outer import OuterMomentum
from learner.policy import completion_logprobs, load_policy, packed_completion_logprobs, pad_sequences
from learner.step_control import AdaptiveStep, LrControl

__all__ = ["Learner", "RolloutBatch"]


def to_cpu(obj):
    """The same nested structure with every tensor on the CPU: checkpoints of a GPU run load on a CPU machine."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def build_optimizer(cfg: LearnerConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """learner.optimizer: torch's AdamW, prodigyopt's Prodigy (Mishchenko & Defazio 2023, arXiv 2306.06101; lr
    multiplies its step-size estimate d, which starts at prodigy_d0 and only grows) or schedulefree's
    AdamWScheduleFree (its warmup is warmup_steps; no schedule)."""
    if cfg.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay, d0=cfg.prodigy_d0,
                       use_bias_correction=True, safeguard_warmup=cfg.warmup_steps > 0)
    if cfg.optimizer == "schedule_free_adamw":
        from schedulefree import AdamWScheduleFree

        return AdamWScheduleFree(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
                                 warmup_steps=cfg.warmup_steps, foreach=False)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)


def lr_lambda(cfg: LearnerConfig, total_steps: int):
    def factor(step: int) -> float:
        if cfg.optimizer == "schedule_free_adamw":  # its own warmup, no schedule
            return 1.0
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def combine_mismatch(parts: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """The step's mismatch metrics from its micro-batches' (share of the sequences, metrics): min of the minima, max
    of the maxima, the rest weighted by share."""
    parts = [(w, m) for w, m in parts if m]
    if not parts:
        return {}
    total = sum(w for w, _ in parts)
    out = {}
    for key in parts[0][1]:
        values = [m[key] for _, m in parts]
        if key.endswith("_min"):
            out[key] = min(values)
        elif key.endswith("_max") or key.endswith("max_abs_logp_diff"):
            out[key] = max(values)
        else:
            out[key] = sum(w * m[key] for w, m in parts) / total
    return out


class Learner:
    def __init__(self, model_dir: str | Path, model_cfg: ModelConfig, cfg: LearnerConfig, *, seed: int,
                 total_steps: int, max_new_tokens: int, temperature: float = 1.0, num_threads: int | None = None,
                 probe: tuple[list[list[int]], list[list[int]]] | None = None, rank: int = 0,
                 group_address: str | None = None):
        """probe: (prompt ids, reference completion ids) of the problems that score learner.adaptive_step's
        candidates (services/prepare.py builds them; needed with adaptive_step only). rank, group_address: this
        process's rank in a learner group of learner.num_workers ranks and the group's rendezvous (tcp://host:port,
        learner/distributed.py); every rank is given the same calls, rank 0 writes and answers."""
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.cfg = cfg
        self.base_model = str(Path(model_dir).resolve())  # recorded in every checkpoint's meta.json
        self.group = LearnerGroup(rank, cfg.num_workers, cfg.sharding, group_address,
                                  device_type=model_cfg.resolved_device())
        self.model, self.tokenizer = load_policy(model_dir, model_cfg, cfg.lora, seed, cfg.gradient_checkpointing)
        self.device = next(self.model.parameters()).device
        self.model.train()
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        # pi_ref of the KL term: the base is the LoRA model with its adapter off; a full-parameter policy keeps a
        # frozen copy of the base (one more model in memory, only when beta > 0)
        self.reference = None
        if cfg.beta > 0 and not is_lora(self.model):
            import copy

            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        # fsdp: the roots that every forward pass of the policy (and of the frozen reference) goes through
        self.sharded = self.group.shard(self.model)
        self.sharded_reference = self.group.shard(self.reference) if self.reference is not None else None
        self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}  # (fsdp: the shards)
        self.optimizer = build_optimizer(cfg, list(self.trainable.values()))
        self.schedule_free = cfg.optimizer == "schedule_free_adamw"
        self.outer = OuterMomentum.from_config(cfg.outer_momentum, self.trainable) if cfg.outer_momentum else None
        if cfg.adaptive_step is not None and probe is None:
            raise ValueError("learner.adaptive_step needs the probe problems (prompt and reference completion ids)")
        self.adaptive = AdaptiveStep.from_config(cfg.adaptive_step, self.trainable) if cfg.adaptive_step else None
        self.probe = probe
        self.lr_control = LrControl.from_config(cfg.lr_control) if cfg.lr_control else None
        schedule = lr_lambda(cfg, total_steps * cfg.updates_per_batch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: schedule(s) * self.lr_multiplier())
        self.step_count = 0
        self.entropy_control = (cfg.entropy_coef, math.inf)  # adaptive entropy: (coefficient, last update's entropy)

    def lr_multiplier(self) -> float:
        """The reward-trend lr controller's multiplier of the schedule (1 without it)."""
        return self.lr_control.multiplier if self.lr_control is not None else 1.0

    def _refresh_lr(self) -> None:
        """Set each parameter group's lr from the schedule at its current position and the multiplier now."""
        lrs = [base * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch) for base in self.scheduler.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self.scheduler._last_lr = lrs

    def _probe_score(self) -> float:
        """The adaptive step controller's signal: the probe's mean reference-answer token log-prob now."""
        scores = self.mean_logprobs(*self.probe)
        return sum(scores) / len(scores)

    def _logprobs(self, rows, t_max: int, with_entropy: bool = False, entropy_grad: bool = False, model=None):
        input_ids, attention, prompt_lengths = rows
        logprobs = packed_completion_logprobs if self.cfg.padding_free else completion_logprobs
        args = (input_ids, attention, prompt_lengths, t_max, self.temperature, self.cfg.logprob_chunk_tokens,
                with_entropy, entropy_grad)
        if self.sharded is not None:
            root = self.sharded_reference if model is not None and model is self.reference else self.sharded
            return root(logprobs, *args)
        return logprobs(model or self.model, *args)

    def _entropy_settings(self, settings):
        """The loss settings of one optimizer update: with adaptive entropy control, its coefficient, applied only
        while the last update's mean token entropy was <= entropy_target (TRL's gate)."""
        if not self.cfg.use_adaptive_entropy:
            return settings
        coef, last_entropy = self.entropy_control
        return dataclasses.replace(settings, entropy_coef=coef if last_entropy <= self.cfg.entropy_target else 0.0)

    def _reference_logprobs(self, rows, t_max: int):
        if self.reference is not None:
            return self._logprobs(rows, t_max, model=self.reference)
        with self.model.disable_adapter():
            return self._logprobs(rows, t_max)

    def step(self, batch: RolloutBatch) -> dict[str, float]:
        """One learner step (mu optimizer updates) on a scored batch; returns its metrics: loss, clip_ratio, kl
        (0 when beta = 0), grad_norm (before clipping), entropy (the policy's mean per-token entropy over the
        completion tokens, of softmax(logits / temperature), averaged over the mu updates), lr, reward_mean,
        reward_std, completion_tokens, learner_s (this call's wall time) and on a GPU gpu_peak_mb (rank 0's peak
        allocated memory; in a learner group also gpu_peak_mb/rank<r> for every rank)."""
        started = time.perf_counter()
        cfg = self.cfg
        rewards = torch.tensor(batch.rewards, dtype=torch.float32)
        input_ids, attention, sampled = pad_sequences(batch.prompt_ids, batch.completion_ids,
                                                      self.tokenizer.pad_token_id)
        completion_mask = batch.loss_mask(sampled)  # the model's own tokens (multi-turn: not the environment's)
        width = completion_mask.shape[1]
        advantages = batch.advantage_tensor(width).to(self.device)
        segments = batch.segment_tensor(width)
        settings = batch.loss
        completion_mask = completion_mask.to(self.device)
        segments = segments.to(self.device) if segments is not None else None
        prompt_lengths = [len(p) for p in batch.prompt_ids]
        num_seq, num_tok = len(batch.rewards), int(completion_mask.sum())
        micro = [slice(i, i + cfg.micro_batch_size) for i in range(0, num_seq, cfg.micro_batch_size)]
        plan = self.group.plan(len(micro))  # this rank's micro-batches and their loss weights (learner/distributed.py)

        def rows(s: slice):
            t_max = int(sampled[s].sum(-1).max())
            width = max(prompt_lengths[i] for i in range(num_seq)[s]) + t_max
            return (input_ids[s, :width], attention[s, :width], prompt_lengths[s]), t_max

        # pi_old: the policy that sampled the batch. Without the rollout correction, a batch sampled by an older
        # version (asynchronous rollouts) takes the engine's log-probs as pi_old; with it, pi_old is the learner's
        # policy before this step and the engine's log-probs enter through the correction's weights (AReaL's
        # decoupled objective). With mu > 1 the learner's pi_old is computed once here.
        stale = batch.policy_version is not None and batch.policy_version != self.step_count
        correct = settings.correction is not None
        sampler_logp = None
        if batch.sampling_logprobs is not None:
            sampler_logp = pad_rows(batch.sampling_logprobs, width, torch.float32).to(self.device)
        elif stale or correct:
            raise ValueError("an off-policy or corrected batch needs the rollout engine's sampling log-probs")
        engine_as_old = stale and not correct
        need_old = cfg.updates_per_batch > 1 and not engine_as_old
        old, ref = {}, {}
        with torch.no_grad():
            for k, _ in plan:
                r, t_max = rows(micro[k])
                if need_old:
                    old[k] = self._logprobs(r, t_max)
                if cfg.beta > 0:
                    ref[k] = self._reference_logprobs(r, t_max)
        stats = {"loss": 0.0, "clip_ratio": 0.0, "kl": 0.0, "grad_norm": 0.0, "entropy": 0.0}
        mismatch = []  # (its share of the sequences, its metrics) per micro-batch, from the first update
        entropy_grad = settings.entropy_coef != 0.0 or cfg.use_adaptive_entropy
        if self.schedule_free:  # gradients at y; the model holds x outside the step
            self.optimizer.train()
        for update in range(cfg.updates_per_batch):
            update_settings = self._entropy_settings(settings)
            totals = [0.0] * 4  # this rank's contributions to loss, clip_ratio, kl and entropy
            for k, weight in plan:
                s = micro[k]
                r, t_max = rows(s)
                logp, entropy = self._logprobs(r, t_max, with_entropy=True, entropy_grad=entropy_grad)
                mask = completion_mask[s, :t_max]
                sampled_logp = sampler_logp[s, :t_max] if sampler_logp is not None else None
                old_logp = sampled_logp if engine_as_old else old[k] if need_old else logp.detach()
                weights = None
                if correct:
                    weights = rollout_correction_weights(old_logp, sampled_logp, mask, settings.correction,
                                                         settings.correction_min, settings.correction_max)
                if update == 0 and sampled_logp is not None and weight:
                    mismatch.append((len(range(num_seq)[s]) / num_seq, mismatch_metrics(
                        logp.detach(), sampled_logp, mask, weights, settings.correction, settings.correction_min,
                        settings.correction_max)))
                loss, st = policy_loss(LossInputs(
                    logp=logp, old_logp=old_logp,
                    advantages=advantages[s] if advantages.dim() == 1 else advantages[s, :t_max],
                    mask=mask, num_sequences=num_seq, num_tokens=num_tok,
                    max_completion_length=self.max_new_tokens, ref_logp=ref.get(k),
                    segments=segments[s, :t_max] if segments is not None else None,
                    correction_weights=weights, entropy=entropy if entropy_grad else None), update_settings)
                (loss * weight).backward()
                share = weight * len(range(num_seq)[s]) / num_seq
                token_entropy = weight * float((entropy.detach() * mask).sum()) / max(num_tok, 1)
                for i, value in enumerate((weight * float(loss.detach()), st["clip_ratio"] * share,
                                           st.get("kl", 0.0) * share, token_entropy)):
                    totals[i] += value
            self.group.reduce_gradients(list(self.trainable.values()))
            totals = self.group.sum(totals[:4])
            update_entropy = totals[3]
            for key, value in zip(("loss", "clip_ratio", "kl", "entropy"), totals, strict=True):
                stats[key] += value / cfg.updates_per_batch
            grad_norm = torch.nn.utils.clip_grad_norm_(
                list(self.trainable.values()), cfg.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # fsdp: a DTensor over the shards
                grad_norm = grad_norm.full_tensor()
            stats["grad_norm"] += float(grad_norm) / cfg.updates_per_batch
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if entropy_grad:
                stats["entropy_coef"] = update_settings.entropy_coef
            if cfg.use_adaptive_entropy:
                self.entropy_control = (adaptive_entropy_coef(
                    self.entropy_control[0], update_entropy, cfg.entropy_target, cfg.entropy_coef_delta,
                    cfg.entropy_coef_min, cfg.entropy_coef_max), update_entropy)
        if self.schedule_free:
            self.optimizer.eval()
        stats.update(combine_mismatch([part for parts in self.group.gather(mismatch) for part in parts]))
        self.step_count += 1
        stats["lr"] = self.scheduler.get_last_lr()[0]
        if cfg.optimizer == "prodigy":
            stats["prodigy_d"] = float(self.optimizer.param_groups[0]["d"])
        stats["reward_mean"] = float(rewards.mean())
        if self.outer is not None:
            stats.update(self.outer.after_step(self.step_count, stats["reward_mean"], self.trainable))
        if self.adaptive is not None:
            stats.update(self.adaptive.after_step(self.step_count, stats["reward_mean"], self.trainable,
                                                  self._probe_score))
        if self.lr_control is not None:
            stats.update(self.lr_control.after_step(self.step_count, stats["reward_mean"]))
            self._refresh_lr()
        stats["reward_std"] = float(rewards.std())
        stats["completion_tokens"] = num_tok
        if self.device.type == "cuda":
            peaks = self.group.gather(torch.cuda.max_memory_allocated(self.device) / 2**20)
            stats["gpu_peak_mb"] = peaks[0]
            if self.group.distributed:
                stats.update({f"gpu_peak_mb/rank{r}": peak for r, peak in enumerate(peaks)})
        stats["learner_s"] = time.perf_counter() - started
        return stats

    @torch.no_grad()
    def logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """The current policy's log-probs of each completion token (what the loss's ratio uses), for comparing
        with a rollout engine's sampling log-probs."""
        input_ids, attention, mask = pad_sequences(prompt_ids, completion_ids, self.tokenizer.pad_token_id)
        logp = self._logprobs((input_ids, attention, [len(p) for p in prompt_ids]), mask.shape[1]).float().cpu()
        return [logp[b, :len(c)].tolist() for b, c in enumerate(completion_ids)]

    @torch.no_grad()
    def mean_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                      adapter_path: str | Path | None = None, batch_size: int = 64) -> list[float]:
        """Each completion's mean per-token log-prob under the current policy, or under a candidate adapter of the
        same shape or a full-parameter leap's weights (swapped in for the call): the smooth leap-decision metric (extrapolate.decision_metric)."""
        def score() -> list[float]:
            out = []
            for i in range(0, len(prompt_ids), batch_size):
                rows = self.logprobs(prompt_ids[i:i + batch_size], completion_ids[i:i + batch_size])
                out += [sum(r) / len(r) for r in rows]
            return out

        if adapter_path is None:
            return score()
        if not self.group.fsdp:
            with swapped_weights(self.model, adapter_path):
                return score()
        current = {n: p.full_tensor().detach().clone() for n, p in self.trainable.items()}
        self._load_weights(read_weights(adapter_path))
        try:
            return score()
        finally:
            self.group.load_full_state(self.sharded, current)

    def publish_weights(self, adapters_dir: str | Path) -> tuple[str, str]:
        """Write the current policy for the rollout workers (atomically): its LoRA adapter, or under full-parameter
        RL the whole model; returns (path, version)."""
        import os
        import shutil

        version = f"{self.step_count:06d}"
        final = Path(adapters_dir) / f"v{version}"
        if final.exists():
            return str(final), version
        full = self.group.full_state(self.sharded) if self.group.fsdp else None  # a collective: every rank
        if self.group.writes:
            tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(str(tmp), **({"state_dict": full} if full is not None else {}))
            os.replace(tmp, final)
        if self.group.fsdp:  # every rank returns once the adapter is there
            self.group.barrier()
        return str(final), version

    def apply_leap(self, adapter_path: str | Path, horizon: int, reset_optimizer: bool = False) -> int:
        """Continue from a leap: load its weights (an adapter of our shape, extrapolate.leap_writer.write_learner_leap, or a
        full model's, write_full_leap), advance the step counter and the learning-rate schedule by `horizon`, keep
        Adam's moments unless reset_optimizer (then the moments of the weights a leap changes start afresh: the
        LoRA B matrices, or the full model's projection matrices). Returns the new step."""
        from common.weights import module_name

        before = {n: p.detach().clone() for n, p in self.trainable.items()} if self.schedule_free else None
        self._load_weights(read_weights(adapter_path))
        if before is not None:  # move Schedule-Free's z with x, so that the leap carries over to y
            self._shift_schedule_free(before)
        if reset_optimizer:
            lora = is_lora(self.model)
            for name, p in self.trainable.items():
                changed = "lora_B" in name if lora else module_name(name) is not None
                if changed and p in self.optimizer.state:
                    del self.optimizer.state[p]
        for _ in range(horizon * self.cfg.updates_per_batch):
            self.scheduler.step()
        self.step_count += horizon
        if self.outer is not None:  # the next outer update extrapolates from the leap, not across it
            self.outer.reset(self.trainable)
        if self.adaptive is not None:  # likewise the next rescaled update starts at the leap
            self.adaptive.reset(self.trainable)
        return self.step_count

    @torch.no_grad()
    def _shift_schedule_free(self, before: dict[str, torch.Tensor]) -> None:
        """Translate Schedule-Free's z by the change of x (y and x are interpolations of z and x)."""
        for name, p in self.trainable.items():
            z = self.optimizer.state.get(p, {}).get("z")
            if z is not None:
                z.add_(p - before[name])

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Set the policy's weights from a saved policy's (an adapter's or a full model's tensors); under fsdp each
        rank keeps its shard of them."""
        if not self.group.fsdp:
            load_weights(self.model, weights)
            return
        names = set(self.trainable)
        if is_lora(self.model):  # PEFT's saved keys leave out the adapter's name: ...lora_A.weight
            weights = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                       for k, v in weights.items()}
        unknown = sorted(set(weights) - names - {n for n, _ in self.model.named_parameters(remove_duplicate=False)})
        if unknown:
            raise ValueError(f"these weights do not fit the policy (unexpected {unknown[:5]}): not from a run on "
                             f"this base model")
        self.group.load_full_state(self.sharded, weights)

    def _optimizer_state(self) -> dict:
        """The optimizer's state_dict in torch's format (parameters numbered in the order of `trainable`), whole on
        the CPU: under fsdp gathered from the shards (a collective), so that any number of ranks resumes it."""
        if not self.group.fsdp:
            return to_cpu(self.optimizer.state_dict())
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        from learner.distributed import resharded

        resharded(self.sharded)
        full = get_optimizer_state_dict(self.model, self.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.group.writes:  # the gathered state is rank 0's alone
            return {}
        index = {name: i for i, name in enumerate(self.trainable)}
        return {"state": {index[n]: v for n, v in full.get("state", {}).items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]}

    def _load_optimizer_state(self, state: dict) -> None:
        if not self.group.fsdp:
            self.optimizer.load_state_dict(state)  # moments move to the parameters' device
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = list(self.trainable)
        full = {"state": {names[i]: v for i, v in state["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(self.model, self.optimizer, full,
                                 options=StateDictOptions(full_state_dict=True))

    def pid(self) -> int:
        import os

        return os.getpid()

    def state_dict(self, extra: dict) -> dict:
        return {"optimizer": self._optimizer_state(), "scheduler": self.scheduler.state_dict(),
                "step": self.step_count, "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                                 "torch": torch.get_rng_state()},
                **({"outer": self.outer.state_dict()} if self.outer is not None else {}),
                **({"adaptive": self.adaptive.state_dict()} if self.adaptive is not None else {}),
                **({"lr_control": self.lr_control.state_dict()} if self.lr_control is not None else {}),
                **({"entropy_control": self.entropy_control} if self.cfg.use_adaptive_entropy else {}), **extra}

    def save_checkpoint(self, run_dir: Path, meta: dict, extra_state: dict | None = None) -> Path | None:
        """Rank 0 writes the checkpoint and returns its path (under fsdp the other ranks give their shards first, and
        return None)."""
        state = self.state_dict(extra_state or {})
        weights = self.group.full_state(self.sharded) if self.group.fsdp else None
        if not self.group.writes:
            return None
        return write_checkpoint(run_dir, self.step_count, self.model, state, {**meta, "base_model": self.base_model},
                                tokenizer=None if is_lora(self.model) else self.tokenizer, weights=weights)

    def load_checkpoint(self, path: Path) -> dict:
        """Restore weights (adapter or full), optimizer, scheduler, step and RNG from a checkpoint; returns its full
        state."""
        state, meta = read_checkpoint(path)
        if self.schedule_free and state["optimizer"]["param_groups"][0].get("train_mode") is None:
            raise ValueError(f"{path} is a checkpoint of a run with another optimizer; optimizer "
                             f"schedule_free_adamw resumes only its own checkpoints")
        self._load_weights(read_weights(path))
        self._load_optimizer_state(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = state["step"]
        if self.outer is not None:
            if "outer" in state:
                self.outer.load_state_dict(state["outer"])
            else:  # a checkpoint of a run without outer momentum: start the outer loop here
                self.outer.reset(self.trainable)
        if self.adaptive is not None:
            self.adaptive.reset(self.trainable)
            if "adaptive" in state:
                self.adaptive.load_state_dict(state["adaptive"])
        if self.lr_control is not None and "lr_control" in state:
            self.lr_control.load_state_dict(state["lr_control"])
        if self.cfg.use_adaptive_entropy and "entropy_control" in state:
            self.entropy_control = tuple(state["entropy_control"])
        self._refresh_lr()
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        return {**state, "meta": meta}
