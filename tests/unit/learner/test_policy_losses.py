"""The policy-loss registry (learner/losses.py): every loss against a dense reference written from TRL 1.16's
`_compute_loss` formulas with loops over sequences and tokens, gradients against finite differences (or the closed
form where the loss detaches its weight), the sequence-level ratio, the registry's contract and a toy loss
registered at test time. All in float64; seeds fixed."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import learner.losses as losses
from learner.losses import (
    ADVANTAGES,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    LossInputs,
    LossSettings,
    importance_log_ratio,
    policy_loss,
    token_mean,
)

LENGTHS = (5, 3, 1, 4)  # completion lengths of the 4 sequences (T = 6: every row has padding)
T, MAX_LEN = 6, 8


def random_batch(seed: int = 0, per_token_adv: bool = False) -> LossInputs:
    g = torch.Generator().manual_seed(seed)
    b = len(LENGTHS)
    logp = -2 * torch.rand(b, T, generator=g, dtype=torch.float64) - 0.05
    offsets = torch.tensor([[-0.8], [0.6], [0.6], [0.0]], dtype=torch.float64)  # per-row drift: sequence ratios too
    old = logp + offsets + 0.4 * torch.randn(b, T, generator=g, dtype=torch.float64)  # ratios away from 1: clipping
    ref = logp + 0.3 * torch.randn(b, T, generator=g, dtype=torch.float64)
    mask = torch.zeros(b, T, dtype=torch.float64)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
    logp = logp.masked_fill(mask == 0, 7.0)  # garbage past the end: must not leak into any loss
    shape = (b, T) if per_token_adv else (b,)
    adv = torch.randn(*shape, generator=g, dtype=torch.float64)
    if not per_token_adv:
        adv[1] = -abs(adv[1])  # both signs present (sapo's two temperatures, both clip sides)
        adv[0] = abs(adv[0])
    return LossInputs(logp, old, adv, mask, num_sequences=b, num_tokens=int(mask.sum()),
                      max_completion_length=MAX_LEN, ref_logp=ref)


def dense_reference(x: LossInputs, s: LossSettings) -> float:
    """TRL 1.16 `_compute_loss`, one token at a time in Python floats."""
    b = x.logp.shape[0]
    rows = []
    for i in range(b):
        toks = [t for t in range(T) if x.mask[i, t] == 1]
        d_seq = sum(float(x.logp[i, t] - x.old_logp[i, t]) for t in toks) / max(len(toks), 1)
        row = []
        for t in toks:
            lp, d = float(x.logp[i, t]), float(x.logp[i, t] - x.old_logp[i, t])
            if s.ratio_level == "sequence":
                d = d_seq
            rho = math.exp(d)
            a = float(x.advantages[i] if x.advantages.dim() == 1 else x.advantages[i, t])
            if s.loss_type == "cispo":
                loss = -min(rho, s.eps_high) * a * lp
            elif s.loss_type == "sapo":
                tau = s.sapo_temperature_pos if a > 0 else s.sapo_temperature_neg
                loss = -(4 / tau) / (1 + math.exp(-tau * (rho - 1))) * a
            else:
                loss = -min(rho * a, min(max(rho, 1 - s.eps_low), 1 + s.eps_high) * a)
            if s.beta:
                diff = float(x.ref_logp[i, t]) - lp
                loss += s.beta * (math.exp(diff) - diff - 1) * (rho if s.kl_ratio_correction else 1.0)
            row.append(loss)
        rows.append(row)
    every = [v for row in rows for v in row]
    if s.loss_type in ("grpo", "sapo"):
        return sum(sum(r) / max(len(r), 1) for r in rows) / x.num_sequences
    if s.loss_type in ("dapo", "cispo"):
        return sum(every) / x.num_tokens
    if s.loss_type == "bnpo":
        return sum(every) / max(len(every), 1) * b / x.num_sequences
    if s.loss_type == "dr_grpo":
        return sum(every) / (x.num_sequences * x.max_completion_length)
    raise AssertionError(s.loss_type)


KINDS = ["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo"]
KL = [(0.0, False), (0.1, False), (0.1, True)]


@pytest.mark.parametrize("beta, correction", KL)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", KINDS)
def test_every_loss_equals_the_dense_reference(loss_type, level, beta, correction):
    x = random_batch(seed=1)
    s = LossSettings(loss_type=loss_type, eps_low=0.2, eps_high=1.3 if loss_type == "cispo" else 0.28, beta=beta,
                     kl_ratio_correction=correction, ratio_level=level, sapo_temperature_pos=0.7,
                     sapo_temperature_neg=2.0)
    loss, stats = policy_loss(x, s)
    assert loss.item() == pytest.approx(dense_reference(x, s), abs=1e-12, rel=1e-12)
    assert loss.item() != 0.0
    assert 0.0 < stats["clip_ratio"] < 1.0  # the off-policy old_logp clips some tokens but not all
    assert ("kl" in stats) == (beta > 0)


@pytest.mark.parametrize("loss_type", KINDS)
def test_per_token_advantages_equal_the_dense_reference(loss_type):
    x = random_batch(seed=2, per_token_adv=True)
    s = LossSettings(loss_type=loss_type, eps_high=1.3 if loss_type == "cispo" else 0.28)
    assert policy_loss(x, s)[0].item() == pytest.approx(dense_reference(x, s), abs=1e-12, rel=1e-12)


@pytest.mark.parametrize("loss_type, level", [("grpo", "token"), ("grpo", "sequence"), ("dapo", "sequence"),
                                              ("bnpo", "token"), ("dr_grpo", "token"), ("sapo", "token"),
                                              ("sapo", "sequence")])
def test_gradients_equal_finite_differences(loss_type, level):
    """Autograd's d loss / d logp equals central finite differences (gradcheck, float64; eps 1e-6, atol 1e-7);
    KL with the ratio correction on, so its gradient through rho is checked too."""
    x = random_batch(seed=3)
    s = LossSettings(loss_type=loss_type, beta=0.1, kl_ratio_correction=True, ratio_level=level)

    def f(logp):
        return policy_loss(dataclasses.replace(x, logp=logp), s)[0]

    assert torch.autograd.gradcheck(f, (x.logp.clone().requires_grad_(),), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_cispo_gradient_is_the_closed_form(level):
    """CISPO detaches its weight, so its gradient is not the loss value's derivative: d L / d logp_{i,t} =
    -min(rho_{i,t}, eps_high) A_i m_{i,t} / num_tokens (rho = s_i at sequence level)."""
    x = random_batch(seed=4)
    logp = x.logp.clone().requires_grad_()
    s = LossSettings(loss_type="cispo", eps_high=1.3, ratio_level=level)
    policy_loss(dataclasses.replace(x, logp=logp), s)[0].backward()
    rho = torch.exp(importance_log_ratio(x, level))
    expected = -torch.clamp(rho, max=1.3) * x.advantages[:, None] * x.mask / x.num_tokens
    assert (rho > 1.3).any() and (rho < 1.3).any()  # both branches of the cap
    assert torch.allclose(logp.grad, expected, atol=1e-15, rtol=1e-12)


def test_sequence_ratio_is_one_value_per_row_and_its_gradient_spreads_evenly():
    x = random_batch(seed=5)
    logp = x.logp.clone().requires_grad_()
    d = importance_log_ratio(dataclasses.replace(x, logp=logp), "sequence")
    for i, n in enumerate(LENGTHS):
        mean = float((x.logp[i, :n] - x.old_logp[i, :n]).mean())
        assert d[i].tolist() == pytest.approx([mean] * T, abs=1e-12)  # constant, padding columns included
    d[:, 0].sum().backward()  # d_i = mean over sequence i's tokens: gradient 1 / n_i on each of them, 0 on padding
    expected = x.mask / x.mask.sum(-1, keepdim=True)
    assert torch.allclose(logp.grad, expected, atol=1e-15)


def test_sequence_level_with_one_token_per_sequence_is_token_level():
    x = random_batch(seed=6)
    x = dataclasses.replace(x, mask=torch.zeros_like(x.mask).index_fill_(1, torch.tensor([0]), 1.0))
    for loss_type in KINDS:
        s = LossSettings(loss_type=loss_type, eps_high=1.3 if loss_type == "cispo" else 0.2)
        tok = policy_loss(x, s)[0]
        seq = policy_loss(x, dataclasses.replace(s, ratio_level="sequence"))[0]
        assert seq.item() == pytest.approx(tok.item(), abs=1e-14)


def test_bnpo_micro_batches_are_trl_gradient_accumulation():
    """bnpo: each micro-batch normalises by its own token count; with equal micro-batches the parts add up to TRL's
    mean over accumulation steps of the local token means, which differs from dapo when token counts differ."""
    x = random_batch(seed=7)
    s = LossSettings(loss_type="bnpo", beta=0.1)
    parts = [policy_loss(dataclasses.replace(x, logp=x.logp[k], old_logp=x.old_logp[k], advantages=x.advantages[k],
                                             mask=x.mask[k], ref_logp=x.ref_logp[k]), s)[0].item()
             for k in (slice(0, 2), slice(2, 4))]
    halves = [dataclasses.replace(x, num_sequences=2, **{f: getattr(x, f)[k] for f in
                                                          ("logp", "old_logp", "advantages", "mask", "ref_logp")})
              for k in (slice(0, 2), slice(2, 4))]
    trl = sum(dense_reference(h, s) for h in halves) / 2  # each half alone, divided by 2 accumulation steps
    assert sum(parts) == pytest.approx(trl, abs=1e-12)
    assert sum(parts) != pytest.approx(policy_loss(x, dataclasses.replace(s, loss_type="dapo"))[0].item(), abs=1e-6)
    assert policy_loss(x, s)[0].item() == pytest.approx(
        policy_loss(x, dataclasses.replace(s, loss_type="dapo"))[0].item(), abs=1e-14)  # one piece: = dapo


def test_sapo_gate_is_the_identity_gradient_on_policy():
    """At rho = 1 the soft gate's slope is 1 for any temperature: the gradient is -A m / (n_i num_sequences), the
    plain policy gradient (REINFORCE with a baseline)."""
    x = random_batch(seed=8)
    logp = x.logp.clone().requires_grad_()
    s = LossSettings(loss_type="sapo", sapo_temperature_pos=0.3, sapo_temperature_neg=3.0)
    policy_loss(dataclasses.replace(x, logp=logp, old_logp=x.logp), s)[0].backward()
    expected = -x.advantages[:, None] * x.mask / x.mask.sum(-1, keepdim=True) / x.num_sequences
    assert torch.allclose(logp.grad, expected, atol=1e-15)


def test_registries_refuse_duplicates_and_list_the_names():
    assert POLICY_LOSSES.names() == sorted(KINDS)
    assert ADVANTAGES.names() == ["batch", "group", "none", "reinforce_pp", "rloo"]
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3", "low_var_kl"]
    with pytest.raises(ValueError, match="already registered"):
        POLICY_LOSSES.register("grpo")(lambda inputs, log_ratio, settings: inputs.logp.sum())
    with pytest.raises(KeyError, match="bnpo, cispo, dapo, dr_grpo, grpo, sapo"):
        POLICY_LOSSES.get("nope")
    with pytest.raises(KeyError, match="valid: bnpo"):
        policy_loss(random_batch(), LossSettings(loss_type="nope"))


def test_bad_ratio_level_and_missing_inputs_are_errors():
    x = random_batch()
    with pytest.raises(ValueError, match="token, sequence, segment"):
        policy_loss(x, LossSettings(ratio_level="word"))
    with pytest.raises(ValueError, match="segments"):
        policy_loss(x, LossSettings(ratio_level="segment"))
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(dataclasses.replace(x, ref_logp=None), LossSettings(beta=0.1))


def test_a_loss_registered_at_test_time_runs_through_policy_loss(monkeypatch):
    monkeypatch.setattr(POLICY_LOSSES, "_entries", dict(POLICY_LOSSES._entries))  # restored after the test

    @POLICY_LOSSES.register("toy_reinforce")
    def toy_reinforce(inputs, log_ratio, settings):
        """-A logp, token mean over the batch."""
        return token_mean(-inputs.token_advantages * inputs.logp, inputs)

    x = random_batch(seed=9)
    logp = x.logp.clone().requires_grad_()
    loss, stats = policy_loss(dataclasses.replace(x, logp=logp), LossSettings(loss_type="toy_reinforce"))
    loss.backward()
    assert loss.item() == pytest.approx(float((-x.advantages[:, None] * x.logp * x.mask).sum()) / x.num_tokens)
    assert torch.allclose(logp.grad, -x.advantages[:, None] * x.mask / x.num_tokens, atol=1e-15)
    assert 0.0 <= stats["clip_ratio"] <= 1.0


def test_trl_defaults_are_what_losses_py_says():
    """The pinned TRL's GRPOConfig field defaults: use_bias_correction_kl (stated in learner/losses.py's docstring),
    and the ones LossSettings copies (loss_type, epsilon, importance_sampling_level, SAPO temperatures)."""
    from importlib.metadata import version

    from trl.trainer.grpo_config import GRPOConfig

    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    assert version("trl").startswith("1.16")
    assert f"TRL 1.16's `use_bias_correction_kl` defaults to {defaults['use_bias_correction_kl']}" in losses.__doc__
    ours = LossSettings()
    assert (ours.loss_type, ours.eps_low, ours.ratio_level) == (
        defaults["loss_type"], defaults["epsilon"], defaults["importance_sampling_level"])
    assert (ours.sapo_temperature_pos, ours.sapo_temperature_neg) == (
        defaults["sapo_temperature_pos"], defaults["sapo_temperature_neg"])
