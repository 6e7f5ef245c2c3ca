"""Outer momentum on the trainable parameters (docs/methods.md#outer-momentum): every K learner steps the
displacement of the last K steps is extrapolated, with a momentum buffer, from where those K steps started.

    d     = W_t - W_{t-K}
    b    <- mu b + d
    W_t  <- W_{t-K} + eta (mu b + d)

Lookahead (Zhang et al. 2019, arXiv 1907.08610) is mu = 0 with eta in (0, 1]; eta > 1 extrapolates the net
displacement (SNOO, Kallusky et al. 2025, arXiv 2510.15830: Nesterov momentum as the outer optimizer of an inner
AdamW). eta = 1, mu = 0 is plain training: the update is computed as W_t + (eta - 1) d + eta mu b, which then adds
exact zeros. The inner optimizer (AdamW) keeps its moments across outer steps.

The step is guarded by the trend of the mean sampled reward, a metric every learner step already has: when the
mean over the last K steps fell more than `guard_margin` below the mean over the K steps before, the outer step is
skipped (W_t kept) and the buffer cleared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def outer_momentum_update(current: torch.Tensor, anchor: torch.Tensor, buffer: torch.Tensor, eta: float,
                          mu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') for one tensor: d = W_t - W_{t-K}, b' = mu b + d, W' = W_{t-K} + eta (mu b' + d), computed as
    W_t + (eta - 1) d + eta mu b' so that eta = 1, mu = 0 returns W_t bit for bit."""
    d = current - anchor
    new_buffer = mu * buffer + d
    return current + (eta - 1.0) * d + (eta * mu) * new_buffer, new_buffer


def reward_change(reward_means: list[float], every: int) -> float | None:
    """The mean of the last `every` step rewards minus the mean of the `every` before them; None while there are
    fewer than 2 x every steps to compare."""
    if len(reward_means) < 2 * every:
        return None
    return sum(reward_means[-every:]) / every - sum(reward_means[-2 * every:-every]) / every


def reward_trend_allows(reward_means: list[float], every: int, margin: float) -> bool:
    """The guard: False when the mean of the last `every` step rewards is more than `margin` below the mean of the
    `every` before them; True while there are fewer than 2 x every steps to compare."""
    change = reward_change(reward_means, every)
    return change is None or change >= -margin


@dataclass
class OuterMomentum:
    """The outer loop's state over the named trainable parameters: the anchor W_{t-K}, the buffer b, and each
    learner step's mean sampled reward (for the guard)."""

    every: int
    eta: float
    mu: float
    guard_margin: float | None
    anchor: dict[str, torch.Tensor] = field(default_factory=dict)
    buffer: dict[str, torch.Tensor] = field(default_factory=dict)
    reward_means: list[float] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg, params: dict[str, torch.Tensor]) -> OuterMomentum:
        state = cls(cfg.every, cfg.eta, cfg.mu, cfg.guard_margin)
        state.reset(params)
        return state

    def reset(self, params: dict[str, torch.Tensor]) -> None:
        """Anchor at the current parameters with an empty buffer (at the start, and after a checkpoint-based leap)."""
        self.anchor = {n: p.detach().clone() for n, p in params.items()}
        self.buffer = {n: torch.zeros_like(p) for n, p in self.anchor.items()}

    @torch.no_grad()
    def after_step(self, step: int, reward_mean: float, params: dict[str, torch.Tensor]) -> dict[str, float]:
        """Record the step's reward; at every K-th learner step apply the outer update to `params` in place (or skip
        it when the guard says so) and re-anchor. Returns metrics: outer/applied (1, or 0 when the guard skipped it)
        and outer/displacement_norm (||d|| over all parameters)."""
        self.reward_means.append(reward_mean)
        if step % self.every:
            return {}
        allowed = self.guard_margin is None or reward_trend_allows(self.reward_means, self.every, self.guard_margin)
        squared = 0.0
        for name, p in params.items():
            squared += float((p - self.anchor[name]).double().pow(2).sum())
            if allowed:
                new, self.buffer[name] = outer_momentum_update(p, self.anchor[name], self.buffer[name], self.eta,
                                                               self.mu)
                p.copy_(new)
            else:
                self.buffer[name].zero_()
            self.anchor[name].copy_(p)
        return {"outer/applied": float(allowed), "outer/displacement_norm": squared ** 0.5}

    def state_dict(self) -> dict:
        return {"anchor": {n: t.cpu() for n, t in self.anchor.items()},
                "buffer": {n: t.cpu() for n, t in self.buffer.items()}, "reward_means": list(self.reward_means)}

    def load_state_dict(self, state: dict) -> None:
        for name in self.anchor:
            self.anchor[name].copy_(state["anchor"][name])
            self.buffer[name].copy_(state["buffer"][name])
        self.reward_means = list(state["reward_means"])
