"""The step controllers against their definitions: the rescaled update W_a + c (W_t - W_a) (float64; c = 1 exact),
the candidate scales, and both controllers' decisions on problems whose answer is known (a quadratic score whose
optimum lies along, short of or behind the update; rising and falling rewards), with their state round trips."""

from __future__ import annotations

import torch

from learner.config import AdaptiveStepConfig, LrControlConfig
from learner.step_control import AdaptiveStep, LrControl, candidate_scales, choose_scale, scaled_update


def test_scaled_update_matches_the_definition_and_is_exact_at_one():
    g = torch.Generator().manual_seed(0)
    anchor, current = (torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(2))
    for c in (0.1, 0.5, 2.0, 7.5):
        assert torch.allclose(scaled_update(current, anchor, c), anchor + c * (current - anchor), atol=1e-12)
    assert torch.equal(scaled_update(current.float(), anchor.float(), 1.0), current.float())


def test_candidates_are_clamped_distinct_and_braked():
    assert candidate_scales(1.0, 2.0, 0.1, 16.0) == [0.5, 1.0, 2.0]
    assert candidate_scales(16.0, 2.0, 0.1, 16.0) == [8.0, 16.0]
    assert candidate_scales(0.1, 2.0, 0.1, 16.0) == [0.1, 0.2]
    assert candidate_scales(1.0, 2.0, 0.1, 16.0, raise_allowed=False) == [0.5, 1.0]
    assert choose_scale({0.5: 1.0, 1.0: 1.0, 2.0: 0.0}, current=1.0) == 1.0  # a tie keeps the current scale


def controller(**fields) -> tuple[AdaptiveStep, dict[str, torch.Tensor]]:
    params = {"w": torch.zeros(3, dtype=torch.float64)}
    return AdaptiveStep.from_config(AdaptiveStepConfig(every=2, **fields), params), params


def quadratic(params, optimum: torch.Tensor):
    return lambda: -float((params["w"] - optimum).square().sum())


def train(params, delta: torch.Tensor) -> None:
    params["w"] += delta  # what K inner steps did


def test_a_step_too_short_is_lengthened_and_one_too_long_is_shortened():
    optimum = torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64)
    step = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    ctl, params = controller()
    score = quadratic(params, optimum)
    assert ctl.after_step(1, 0.0, params, score) == {"adaptive/scale": 1.0}  # not a decision step
    train(params, step)
    out = ctl.after_step(2, 0.0, params, score)
    assert out["adaptive/decision"] == "raised" and ctl.scale == 2.0
    assert torch.equal(params["w"], 2 * step) and torch.equal(ctl.anchor["w"], params["w"])
    assert ctl.accounting["probe_passes"] == 3

    ctl, params = controller()
    score = quadratic(params, optimum)
    train(params, 16 * step)  # overshoots the optimum at 10
    out = ctl.after_step(2, 0.0, params, score)
    assert out["adaptive/decision"] == "lowered" and ctl.scale == 0.5 and torch.equal(params["w"], 8 * step)


def test_an_update_that_loses_everywhere_is_rolled_back():
    ctl, params = controller()
    score = quadratic(params, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    train(params, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    ctl.after_step(2, 0.0, params, score)  # lands on the optimum: scale 1 kept, anchor there
    anchor = params["w"].clone()
    train(params, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))  # away from it: every scale is worse
    out = ctl.after_step(4, 0.0, params, score)
    assert out["adaptive/decision"] == "rollback" and torch.equal(params["w"], anchor)
    assert ctl.scale == 0.5 and ctl.accounting["rollbacks"] == 1 and ctl.accounting["steps_lost"] == 2


def test_a_falling_reward_stops_raising():
    ctl, params = controller()
    score = quadratic(params, torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64))
    ctl.reward_means = [0.8, 0.8, 0.2]  # with this step's 0.2, the last K = 2 steps fell below the K before
    train(params, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    ctl.after_step(4, 0.2, params, score)
    assert ctl.scale == 1.0  # would be raised without the brake (test above)


def test_fixed_scale_one_leaves_the_weights_and_scores_the_probe():
    ctl, params = controller(fixed_scale=1.0)
    score = quadratic(params, torch.ones(3, dtype=torch.float64))
    train(params, torch.tensor([0.3, -0.7, 0.1], dtype=torch.float64))
    before = params["w"].clone()
    out = ctl.after_step(2, 0.0, params, score)
    assert torch.equal(params["w"], before) and out["adaptive/decision"] == "fixed"
    assert ctl.accounting["probe_passes"] == 1 and ctl.accounting["decisions"] == 0


def test_adaptive_state_round_trips():
    optimum = torch.tensor([10.0, 3.0, 0.0], dtype=torch.float64)
    ctl, params = controller()
    train(params, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    ctl.after_step(2, 0.1, params, quadratic(params, optimum))
    copy, copy_params = controller()
    copy_params["w"].copy_(params["w"])
    copy.load_state_dict(ctl.state_dict())
    for p, c in ((params, ctl), (copy_params, copy)):
        train(p, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
        c.after_step(4, 0.3, p, quadratic(p, optimum))
    assert torch.equal(params["w"], copy_params["w"]) and ctl.scale == copy.scale
    assert {k: v for k, v in ctl.accounting.items() if k != "probe_s"} == \
        {k: v for k, v in copy.accounting.items() if k != "probe_s"}  # seconds are measured, not restored


def test_lr_control_follows_the_reward_trend():
    ctl = LrControl.from_config(LrControlConfig(every=2, up=1.5, down=0.5, margin=0.05, max_multiplier=2.0))
    assert ctl.after_step(1, 0.1) == {"lr_control/multiplier": 1.0}
    assert ctl.after_step(2, 0.1)["lr_control/multiplier"] == 1.0  # nothing to compare yet
    ctl.after_step(3, 0.3)
    assert ctl.after_step(4, 0.3)["lr_control/multiplier"] == 1.5  # 0.3 vs 0.1: a rise
    ctl.after_step(5, 0.5)
    assert ctl.after_step(6, 0.5)["lr_control/multiplier"] == 2.0  # capped at max_multiplier
    ctl.after_step(7, 0.48)
    assert ctl.after_step(8, 0.48)["lr_control/multiplier"] == 2.0  # within the margin
    ctl.after_step(9, 0.1)
    assert ctl.after_step(10, 0.1)["lr_control/multiplier"] == 1.0  # a fall
    copy = LrControl.from_config(LrControlConfig(every=2))
    copy.load_state_dict(ctl.state_dict())
    assert copy.multiplier == 1.0 and copy.reward_means == ctl.reward_means
