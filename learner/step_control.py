"""Step-size control during training (docs/methods.md#adaptive-step): two controllers that let one run started at a
guessed learning rate find its step size, instead of a sweep of runs.

The adaptive step controller rescales each K-step update along its own line. With anchor W_a (the weights K learner
steps ago) and W_t the weights now, d = W_t - W_a, the candidates are

    W(c') = W_a + c' d,   c' in {c / gamma, c, c gamma}  (clamped to [min_scale, max_scale])

scored by the mean token log-prob of held-out reference answers (the same problems each time, so differences are
paired; no sampling noise). The best candidate is applied and its scale becomes c: c > 1 extrapolates a step that
is too short (a leap along the last update), c < 1 pulls the weights back toward W_a (Lookahead's slow weights,
Zhang et al. 2019, arXiv 1907.08610). While the mean sampled reward of the last K steps fell more than
`reward_drop` below the K steps' before, c is not raised (the cheap brake). When every candidate scores below W_a
(the update lost ground at every length), the run returns to W_a and c falls by gamma: the K steps are lost, and
counted. W(c') is computed as W_t + (c' - 1) d, so c = 1 adds exact zeros: fixed at 1 it is plain training, bit for
bit.

The reward-trend lr controller is the same idea without the line: a bold driver (Battiti 1989) on the mean sampled
reward. Every K steps the lr multiplier m rises by `up` when the last K steps' mean reward beat the K before by more
than `margin`, and falls by `down` when it was more than `margin` below; nothing is evaluated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from learner.outer import reward_change


def scaled_update(current: torch.Tensor, anchor: torch.Tensor, scale: float) -> torch.Tensor:
    """W_a + c (W_t - W_a), computed as W_t + (c - 1)(W_t - W_a) so that c = 1 returns W_t bit for bit."""
    return current + (scale - 1.0) * (current - anchor)


def candidate_scales(scale: float, factor: float, low: float, high: float, raise_allowed: bool = True) -> list[float]:
    """The scales tried at a decision: c / gamma, c and (unless braked) c gamma, clamped to [low, high], distinct,
    ascending."""
    scales = {min(high, max(low, scale / factor)), min(high, max(low, scale))}
    if raise_allowed:
        scales.add(min(high, max(low, scale * factor)))
    return sorted(scales)


def choose_scale(scores: dict[float, float], current: float) -> float:
    """The best-scoring scale; a tie goes to the one nearest the current scale (in log space)."""
    return max(scores, key=lambda c: (scores[c], -abs(math.log(c / current))))


@dataclass
class AdaptiveStep:
    """The adaptive step controller's state over the named trainable parameters: c, the anchor W_a and its score,
    each learner step's mean sampled reward, and its accounting (decisions, probe passes and their seconds: the
    compute it spends)."""

    every: int
    factor: float
    min_scale: float
    max_scale: float
    fixed_scale: float | None
    reward_drop: float
    rollback: bool
    scale: float
    anchor: dict[str, torch.Tensor] = field(default_factory=dict)
    anchor_score: float | None = None
    reward_means: list[float] = field(default_factory=list)
    accounting: dict = field(default_factory=lambda: {
        "decisions": 0, "raised": 0, "lowered": 0, "kept": 0, "rollbacks": 0, "steps_lost": 0, "probe_passes": 0,
        "probe_s": 0.0})

    @classmethod
    def from_config(cls, cfg, params: dict[str, torch.Tensor]) -> AdaptiveStep:
        scale = cfg.fixed_scale if cfg.fixed_scale is not None else cfg.init_scale
        state = cls(cfg.every, cfg.factor, cfg.min_scale, cfg.max_scale, cfg.fixed_scale, cfg.reward_drop,
                    cfg.rollback, scale)
        state.reset(params)
        return state

    def reset(self, params: dict[str, torch.Tensor]) -> None:
        """Anchor at the current parameters (at the start, and after a leap or a resume from a run without it)."""
        self.anchor = {n: p.detach().clone() for n, p in params.items()}
        self.anchor_score = None

    def _score_at(self, scale: float, params, current, score: Callable[[], float]) -> float:
        """The probe score of W(scale), set in place for the call (the parameters hold W_t again afterwards)."""
        started = time.time()
        try:
            if scale != 1.0:
                for name, p in params.items():
                    p.copy_(scaled_update(current[name], self.anchor[name], scale))
            return score()
        finally:
            if scale != 1.0:
                for name, p in params.items():
                    p.copy_(current[name])
            self.accounting["probe_passes"] += 1
            self.accounting["probe_s"] += time.time() - started

    @torch.no_grad()
    def after_step(self, step: int, reward_mean: float, params: dict[str, torch.Tensor],
                   score: Callable[[], float]) -> dict[str, float]:
        """Record the step's reward; at every K-th learner step score the candidates with `score()` (the mean
        reference log-prob of the probe under the parameters as they are), apply the best (or roll back to W_a) in
        place and re-anchor. Returns metrics under adaptive/ (scale, score, decision, probe passes so far)."""
        self.reward_means.append(reward_mean)
        if step % self.every:
            return {"adaptive/scale": self.scale}
        current = {n: p.detach().clone() for n, p in params.items()}
        if self.fixed_scale is not None:
            scales = [self.fixed_scale]
        else:
            change = reward_change(self.reward_means, self.every)
            braked = change is not None and change < -self.reward_drop
            scales = candidate_scales(self.scale, self.factor, self.min_scale, self.max_scale, not braked)
        scores = {c: self._score_at(c, params, current, score) for c in scales}
        best = choose_scale(scores, self.scale)
        a = self.accounting
        decision = "fixed"
        if self.fixed_scale is None:
            a["decisions"] += 1
            if self.rollback and self.anchor_score is not None and scores[best] < self.anchor_score:
                decision, best = "rollback", 0.0
                a["rollbacks"] += 1
                a["steps_lost"] += self.every
                self.scale = max(self.min_scale, self.scale / self.factor)
            else:
                decision = "raised" if best > self.scale else "lowered" if best < self.scale else "kept"
                a[decision] += 1
                self.scale = best
        for name, p in params.items():
            p.copy_(scaled_update(current[name], self.anchor[name], best))
            self.anchor[name].copy_(p)
        if decision != "rollback":
            self.anchor_score = scores[best]
        return {"adaptive/scale": self.scale, "adaptive/applied_scale": best, "adaptive/score": scores[best] if
                decision != "rollback" else self.anchor_score, "adaptive/decision": decision,
                "adaptive/probe_passes": a["probe_passes"], "adaptive/probe_s": a["probe_s"],
                "adaptive/steps_lost": a["steps_lost"]}

    def state_dict(self) -> dict:
        return {"scale": self.scale, "anchor": {n: t.cpu() for n, t in self.anchor.items()},
                "anchor_score": self.anchor_score, "reward_means": list(self.reward_means),
                "accounting": dict(self.accounting)}

    def load_state_dict(self, state: dict) -> None:
        for name in self.anchor:
            self.anchor[name].copy_(state["anchor"][name])
        self.scale, self.anchor_score = state["scale"], state["anchor_score"]
        self.reward_means, self.accounting = list(state["reward_means"]), dict(state["accounting"])


@dataclass
class LrControl:
    """The reward-trend lr controller's state: the multiplier m and each learner step's mean sampled reward."""

    every: int
    up: float
    down: float
    margin: float
    min_multiplier: float
    max_multiplier: float
    multiplier: float = 1.0
    reward_means: list[float] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg) -> LrControl:
        return cls(cfg.every, cfg.up, cfg.down, cfg.margin, cfg.min_multiplier, cfg.max_multiplier)

    def after_step(self, step: int, reward_mean: float) -> dict[str, float]:
        """Record the step's reward; at every K-th learner step move m by the reward trend. Returns
        lr_control/multiplier (the multiplier of the next step's lr)."""
        self.reward_means.append(reward_mean)
        change = reward_change(self.reward_means, self.every) if step % self.every == 0 else None
        if change is not None and change > self.margin:
            self.multiplier = min(self.max_multiplier, self.multiplier * self.up)
        elif change is not None and change < -self.margin:
            self.multiplier = max(self.min_multiplier, self.multiplier * self.down)
        return {"lr_control/multiplier": self.multiplier}

    def state_dict(self) -> dict:
        return {"multiplier": self.multiplier, "reward_means": list(self.reward_means)}

    def load_state_dict(self, state: dict) -> None:
        self.multiplier, self.reward_means = state["multiplier"], list(state["reward_means"])
