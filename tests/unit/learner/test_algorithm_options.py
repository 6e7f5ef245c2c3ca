"""The algorithm options of learner/losses.py against their definitions, element by element: the RLOO and
REINFORCE++ baselines, the KL estimators (k1, k2, k3, low_var_kl) with their known properties, the rollout
correction's weights in each TRL mode, the mismatch metrics, the entropy bonus and adaptive entropy control, and
mask_truncated_completions."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from learner.algorithms import RolloutBatch
from learner.losses import (
    ADVANTAGES,
    CORRECTION_MODES,
    KL_ESTIMATORS,
    LossSettings,
    adaptive_entropy_coef,
    local_token_mean,
    mismatch_metrics,
    policy_loss,
    rollout_correction_weights,
)
from tests.unit.learner.test_policy_losses import random_batch


def test_rloo_is_the_leave_one_out_baseline():
    g = torch.Generator().manual_seed(0)
    rewards, G = torch.randn(12, generator=g, dtype=torch.float64), 4
    got = ADVANTAGES.get("rloo")(rewards, G)
    for i in range(12):
        start = i // G * G
        others = [float(rewards[j]) for j in range(start, start + G) if j != i]
        assert math.isclose(float(got[i]), float(rewards[i]) - sum(others) / (G - 1), rel_tol=1e-12, abs_tol=1e-12)


def test_reinforce_pp_subtracts_the_group_mean_then_whitens_over_the_batch():
    g = torch.Generator().manual_seed(1)
    rewards, G = torch.rand(15, generator=g, dtype=torch.float64), 5
    got = ADVANTAGES.get("reinforce_pp")(rewards, G)
    centered = []
    for i in range(15):
        group = [float(r) for r in rewards[i // G * G: i // G * G + G]]
        centered.append(float(rewards[i]) - sum(group) / G)
    mean = sum(centered) / len(centered)
    std = math.sqrt(sum((c - mean) ** 2 for c in centered) / (len(centered) - 1))
    for i, c in enumerate(centered):
        assert math.isclose(float(got[i]), (c - mean) / (std + 1e-4), rel_tol=1e-10, abs_tol=1e-12)


def test_kl_estimators_follow_their_formulas():
    g = torch.Generator().manual_seed(2)
    logp, ref = -3 * torch.rand(50, generator=g, dtype=torch.float64), -3 * torch.rand(50, generator=g, dtype=torch.float64)
    for i in range(50):
        a, b = float(logp[i]), float(ref[i])
        assert math.isclose(float(KL_ESTIMATORS.get("k1")(logp, ref)[i]), a - b, abs_tol=1e-12)
        assert math.isclose(float(KL_ESTIMATORS.get("k2")(logp, ref)[i]), 0.5 * (a - b) ** 2, abs_tol=1e-12)
        assert math.isclose(float(KL_ESTIMATORS.get("k3")(logp, ref)[i]), math.exp(b - a) - (b - a) - 1, abs_tol=1e-12)
    assert bool((KL_ESTIMATORS.get("k3")(logp, ref) >= 0).all()) and bool((KL_ESTIMATORS.get("k2")(logp, ref) >= 0).all())
    # low_var_kl: k3 where it is small, clamped at 10 where the reference is far likelier than the policy
    assert torch.allclose(KL_ESTIMATORS.get("low_var_kl")(logp, ref), KL_ESTIMATORS.get("k3")(logp, ref))
    far = KL_ESTIMATORS.get("low_var_kl")(torch.tensor([-30.0]), torch.tensor([-1.0]))
    assert float(far) == 10.0


def test_k1_and_k3_are_unbiased_for_kl_on_samples_of_the_policy_and_k2_is_not():
    """x ~ pi over 40 outcomes, 200k draws (fixed seed): the mean of k1 and of k3 is KL(pi || ref) within 6 standard
    errors of the mean; k2's mean is not (its bias here is far larger than its standard error)."""
    g = torch.Generator().manual_seed(3)
    pi = torch.softmax(torch.randn(40, generator=g, dtype=torch.float64), 0)
    ref = torch.softmax(torch.randn(40, generator=g, dtype=torch.float64), 0)
    exact = float((pi * (pi.log() - ref.log())).sum())
    x = torch.multinomial(pi, 200_000, replacement=True, generator=g)
    for name, unbiased in (("k1", True), ("k3", True), ("k2", False)):
        k = KL_ESTIMATORS.get(name)(pi.log()[x], ref.log()[x])
        se = float(k.std()) / math.sqrt(len(k))
        gap = abs(float(k.mean()) - exact)
        assert (gap <= 6 * se) == unbiased, (name, gap, se, exact)


def reference_weights(old, sampled, mask, mode, low, high):
    b, t = old.shape
    out = []
    for i in range(b):
        diffs = [(float(old[i, j]) - float(sampled[i, j])) * float(mask[i, j]) for j in range(t)]
        ratios = [math.exp(sum(diffs))] if mode.startswith("sequence") else [math.exp(d) for d in diffs]
        row = []
        for r in ratios:
            if mode.endswith("truncate"):
                r = min(max(r, low if low is not None else -math.inf), high if high is not None else math.inf)
            elif (low is not None and r < low) or (high is not None and r > high):
                r = 0.0
            row.append(r)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("mode", CORRECTION_MODES)
@pytest.mark.parametrize("low, high", [(None, 3.0), (0.5, 2.0), (0.8, None)])
def test_correction_weights_follow_trl_modes(mode, low, high):
    x = random_batch(seed=4)
    sampled = x.old_logp + 0.5 * torch.randn(x.old_logp.shape, generator=torch.Generator().manual_seed(5),
                                            dtype=torch.float64)
    got = rollout_correction_weights(x.old_logp, sampled, x.mask, mode, low, high)
    want = reference_weights(x.old_logp, sampled, x.mask, mode, low, high)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-12, atol=0)
    assert not got.requires_grad


def test_correction_weights_multiply_the_policy_term_not_the_kl():
    x = random_batch(seed=6)
    w = torch.rand(x.logp.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.5
    for loss_type in ("grpo", "dapo", "dr_grpo", "bnpo", "sapo"):
        plain = LossSettings(loss_type=loss_type, beta=0.0)
        with_kl = LossSettings(loss_type=loss_type, beta=0.1)
        corrected = dataclasses.replace(x, correction_weights=w)
        a = float(policy_loss(corrected, with_kl)[0]) - float(policy_loss(corrected, plain)[0])
        b = float(policy_loss(x, with_kl)[0]) - float(policy_loss(x, plain)[0])
        assert math.isclose(a, b, rel_tol=1e-12), loss_type  # the KL part is the same with and without weights
        ones = dataclasses.replace(x, correction_weights=torch.ones_like(w))
        assert math.isclose(float(policy_loss(ones, plain)[0]), float(policy_loss(x, plain)[0]), rel_tol=1e-12)


def test_mismatch_metrics():
    x = random_batch(seed=8)
    same = mismatch_metrics(x.old_logp, x.old_logp, x.mask, None, None, None, None)
    assert same["mismatch/kl"] == 0 and same["mismatch/k3_kl"] == 0
    assert same["mismatch/ratio_min"] == same["mismatch/ratio_max"] == 1.0 and same["mismatch/corrected_fraction"] == 0
    sampled = x.old_logp - 0.3
    w = rollout_correction_weights(x.old_logp, sampled, x.mask, "token_truncate", None, 1.2)
    m = mismatch_metrics(x.old_logp, sampled, x.mask, w, "token_truncate", None, 1.2)
    assert math.isclose(m["mismatch/kl"], -0.3, rel_tol=1e-9) and m["mismatch/k3_kl"] >= 0
    assert math.isclose(m["mismatch/ratio_mean"], math.exp(0.3), rel_tol=1e-9)
    assert m["mismatch/corrected_fraction"] == 1.0  # every ratio exp(0.3) = 1.35 is above the cap 1.2


def test_entropy_bonus_subtracts_c_times_the_mean_token_entropy():
    x = random_batch(seed=9)
    entropy = torch.rand(x.logp.shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64,
                         requires_grad=True)
    xe = dataclasses.replace(x, entropy=entropy)
    for loss_type in ("grpo", "dapo", "dr_grpo"):
        base = float(policy_loss(x, LossSettings(loss_type=loss_type))[0])
        loss = policy_loss(xe, LossSettings(loss_type=loss_type, entropy_coef=0.05))[0]
        mean_h = float((entropy.detach() * x.mask).sum() / x.mask.sum())
        assert math.isclose(float(loss), base - 0.05 * mean_h, rel_tol=1e-12)
    entropy.grad = None
    policy_loss(xe, LossSettings(loss_type="dapo", entropy_coef=0.05))[0].backward()
    assert torch.allclose(entropy.grad, -0.05 * x.mask / x.mask.sum())  # the bonus' gradient reaches the entropy
    assert math.isclose(float(local_token_mean(entropy.detach(), x)), float((entropy.detach() * x.mask).sum() / x.mask.sum()))
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(x, LossSettings(entropy_coef=0.1))


def test_adaptive_entropy_coef_steps_toward_the_target():
    assert adaptive_entropy_coef(0.01, entropy=0.1, target=0.2, delta=0.005, low=0.0, high=1.0) == pytest.approx(0.015)
    assert adaptive_entropy_coef(0.01, entropy=0.3, target=0.2, delta=0.005, low=0.0, high=1.0) == pytest.approx(0.005)
    assert adaptive_entropy_coef(0.001, entropy=0.3, target=0.2, delta=0.005, low=0.0, high=1.0) == 0.0
    assert adaptive_entropy_coef(0.999, entropy=0.1, target=0.2, delta=0.005, low=0.0, high=1.0) == 1.0


def test_mask_truncated_completions_leaves_them_out_of_the_loss_mask():
    batch = RolloutBatch(prompt_ids=[[1], [1], [1]], completion_ids=[[2, 3], [2, 3, 4], [5]], rewards=[1.0, 0.0, 0.5],
                         group_size=3, loss=LossSettings(), advantages=[1.0, -1.0, 0.0],
                         truncated=[False, True, False])
    sampled = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.float32)
    assert batch.loss_mask(sampled).tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    kept = dataclasses.replace(batch, truncated=None)
    assert kept.loss_mask(sampled).tolist() == sampled.tolist()
