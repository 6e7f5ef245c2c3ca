"""The outer-momentum update against its definition, W_{t-K} + eta (mu b' + d) with b' = mu b + d (float64), and
the reward-trend guard."""

from __future__ import annotations

import torch

from learner.outer import OuterMomentum, outer_momentum_update, reward_trend_allows


def test_update_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    anchor, current, buffer = (torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(3))
    for eta, mu in ((1.0, 0.0), (1.5, 0.0), (2.0, 0.5), (0.5, 0.9)):
        new, new_buffer = outer_momentum_update(current, anchor, buffer, eta, mu)
        d = current - anchor
        ref_buffer = mu * buffer + d
        assert torch.allclose(new_buffer, ref_buffer, atol=1e-12)
        assert torch.allclose(new, anchor + eta * (mu * ref_buffer + d), atol=1e-12)
    same, _ = outer_momentum_update(current.float(), anchor.float(), buffer.float() * 0, 1.0, 0.0)
    assert torch.equal(same, current.float())  # plain training, exactly


def test_guard_compares_the_last_two_windows():
    assert reward_trend_allows([0.1, 0.2, 0.3], every=2, margin=0.0)  # fewer than 2K steps: allowed
    assert reward_trend_allows([0.1, 0.2, 0.3, 0.4], every=2, margin=0.0)
    assert not reward_trend_allows([0.4, 0.4, 0.2, 0.2], every=2, margin=0.1)
    assert reward_trend_allows([0.4, 0.4, 0.35, 0.35], every=2, margin=0.1)


def test_skipped_update_keeps_the_weights_and_clears_the_buffer():
    params = {"w": torch.zeros(3)}
    cfg = type("Cfg", (), {"every": 2, "eta": 2.0, "mu": 0.5, "guard_margin": 0.0})
    outer = OuterMomentum.from_config(cfg, params)
    for step, reward in ((1, 0.5), (2, 0.5)):
        params["w"] += 1.0
        stats = outer.after_step(step, reward, params)
    assert stats["outer/applied"] == 1.0 and torch.allclose(params["w"], torch.full((3,), 2.0 + 1.0 * 2 + 0.5 * 2 * 2))
    for step, reward in ((3, 0.1), (4, 0.1)):  # the reward fell: skipped
        params["w"] += 1.0
        stats = outer.after_step(step, reward, params)
    assert stats["outer/applied"] == 0.0 and torch.equal(outer.buffer["w"], torch.zeros(3))
    assert torch.equal(outer.anchor["w"], params["w"])
