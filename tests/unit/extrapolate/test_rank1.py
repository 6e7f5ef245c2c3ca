"""Rank-1 extraction against a dense float64 SVD reference (s1 within 1e-4 relative, |cos| of u and v > 0.9999)."""

from __future__ import annotations

import math

import pytest
import torch

from extrapolate.rank1 import (
    align_sign,
    dense_triplets,
    growth_exponent,
    lora_factors_difference,
    lora_triplets,
    stability,
)


def reference(delta: torch.Tensor):
    u, s, vh = torch.linalg.svd(delta.double())
    return u, s, vh.T


@pytest.mark.parametrize("m, n, r", [(64, 48, 1), (128, 64, 4), (96, 200, 8), (256, 128, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_fast_path_matches_dense_svd(m, n, r, dtype):
    gen = torch.Generator().manual_seed(m + n + r)
    b = torch.randn(m, r, generator=gen).to(dtype)
    a = torch.randn(r, n, generator=gen).to(dtype)
    bb, aa = lora_factors_difference(b, a, 2.0)
    trip = lora_triplets(bb, aa, k=min(3, r))
    u, s, v = reference(2.0 * b.double() @ a.double())
    assert abs(trip.s[0].item() - s[0].item()) / s[0].item() < 1e-4
    assert abs(float(trip.u[:, 0] @ u[:, 0])) > 0.9999 and abs(float(trip.v[:, 0] @ v[:, 0])) > 0.9999
    assert trip.fro2 == pytest.approx(float((s**2).sum()), rel=1e-6)
    assert trip.metrics()["e1"] == pytest.approx(float(s[0] / s.sum()), rel=1e-6)
    assert trip.metrics()["energy1"] == pytest.approx(float(s[0] ** 2 / (s**2).sum()), rel=1e-6)


def test_local_difference_of_two_lora_states():
    gen = torch.Generator().manual_seed(0)
    b0, a0 = torch.randn(80, 8, generator=gen), torch.randn(8, 60, generator=gen)
    b1, a1 = b0 + 0.1 * torch.randn(80, 8, generator=gen), a0 + 0.1 * torch.randn(8, 60, generator=gen)
    bb, aa = lora_factors_difference(b1, a1, 0.5, b0, a0, 0.5)
    assert bb.shape[1] == 16
    trip = lora_triplets(bb, aa)
    u, s, v = reference(0.5 * (b1.double() @ a1.double() - b0.double() @ a0.double()))
    assert abs(trip.s[0].item() - s[0].item()) / s[0].item() < 1e-4
    assert abs(float(trip.u[:, 0] @ u[:, 0])) > 0.9999 and abs(float(trip.v[:, 0] @ v[:, 0])) > 0.9999


def test_dense_randomized_path_on_a_decaying_spectrum():
    gen = torch.Generator().manual_seed(1)
    q1 = torch.linalg.qr(torch.randn(300, 300, generator=gen, dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))[0]
    spectrum = 0.8 ** torch.arange(200, dtype=torch.float64)
    delta = (q1[:, :200] * spectrum) @ q2.T
    trip = dense_triplets(delta.float(), k=2)
    assert abs(trip.s[0].item() - 1.0) < 1e-4 and abs(trip.s[1].item() - 0.8) < 1e-4
    assert abs(float(trip.u[:, 0] @ q1[:, 0])) > 0.9999 and abs(float(trip.v[:, 0] @ q2[:, 0])) > 0.9999
    assert trip.metrics()["energy1"] == pytest.approx(1.0 / float((spectrum**2).sum()), rel=1e-5)


def test_sign_alignment_and_stability():
    u = torch.tensor([[1.0], [0.0]])
    v = torch.tensor([[0.0], [1.0]])
    u2, v2 = align_sign(-u, -v, u)
    assert torch.equal(u2, u) and torch.equal(v2, v)
    assert stability(-u, v, u, v) == (1.0, 1.0)


def test_growth_exponent_recovers_p():
    steps = [10.0, 20.0, 40.0, 80.0, 160.0]
    assert growth_exponent(steps, [3.0 * t**0.57 for t in steps]) == pytest.approx(0.57, abs=1e-9)


def test_lowrank_inner_and_linear_r2():
    from extrapolate.predictability import linear_r2, lowrank_inner

    gen = torch.Generator().manual_seed(3)
    b1, a1, b2, a2 = (torch.randn(20, 3, generator=gen, dtype=torch.float64),
                      torch.randn(3, 15, generator=gen, dtype=torch.float64),
                      torch.randn(20, 2, generator=gen, dtype=torch.float64),
                      torch.randn(2, 15, generator=gen, dtype=torch.float64))
    assert lowrank_inner(b1, a1, b2, a2) == pytest.approx(float(((b1 @ a1) * (b2 @ a2)).sum()), rel=1e-10)
    steps = [1, 2, 3, 4, 5, 6]
    line = [torch.tensor([2.0 * t, -t + 1.0]) for t in steps]
    assert linear_r2(steps, line, 4, 2) == pytest.approx(1.0)
    bent = [torch.tensor([float(t * t), 0.0]) for t in steps]
    assert linear_r2(steps, bent, 4, 2) < 0  # a line fitted to t^2 undershoots its future


def test_pls1_inverse_recovers_a_linear_path():
    """x_t = x0 + t d and y_t = 0.1 + 0.01 t: the PLS inverse at y* lands on x at t* = (y* - 0.1) / 0.01."""
    from extrapolate.extrapolators import pls1_inverse

    gen = torch.Generator().manual_seed(5)
    x0, d = torch.randn(30, generator=gen, dtype=torch.float64), torch.randn(30, generator=gen, dtype=torch.float64)
    t = torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=torch.float64)
    x = x0 + t[:, None] * d
    x[:, 3] = 1.5  # a constant column keeps its value
    pred = pls1_inverse(x, 0.1 + 0.01 * t, 0.7)
    expected = x0 + 60.0 * d
    expected[3] = 1.5
    assert torch.allclose(pred, expected, atol=1e-9)
    with pytest.raises(ValueError, match="do not vary"):
        pls1_inverse(x, torch.full((4,), 0.3, dtype=torch.float64), 0.7)


def test_growth_extrapolator_follows_a_power_law():
    """B_t = (t / 10)^0.6 B: the fitted exponent is 0.6 and the prediction at T is (T / t_w)^0.6 Delta_tw."""
    from extrapolate.checkpoints import LoraModule
    from extrapolate.extrapolators import EXTRAPOLATORS

    gen = torch.Generator().manual_seed(7)
    b, a = torch.randn(12, 2, generator=gen, dtype=torch.float64), torch.randn(2, 9, generator=gen, dtype=torch.float64)
    window = [(t, {"m": LoraModule("m", b * (t / 10) ** 0.6, a, 2.0)}) for t in (10, 20, 40)]
    growth = EXTRAPOLATORS.get("growth")().fit(window)
    assert growth.exponent == pytest.approx(0.6, abs=1e-9)
    pb, pa = growth.predict(160)["m"]
    assert torch.allclose(pb @ pa, 2.0 * (b * 16**0.6) @ a, atol=1e-9)
    # a checkpoint with no update yet (a first step whose groups all scored alike) is left out of the fit
    unchanged = (5, {"m": LoraModule("m", torch.zeros_like(b), a, 2.0)})
    assert EXTRAPOLATORS.get("growth")().fit([unchanged, *window]).exponent == pytest.approx(0.6, abs=1e-9)
    with pytest.raises(ValueError, match="needs 2 checkpoints after step 0 with a nonzero update"):
        EXTRAPOLATORS.get("growth")().fit([unchanged, window[0]])


def test_norms_and_cosines_survive_zero_and_rounding_negative_squares():
    from extrapolate.rank1 import cosine_from_squares, norm_from_square

    assert norm_from_square(-1e-18) == 0.0 and norm_from_square(4.0) == 2.0
    assert math.isnan(cosine_from_squares(1e-20, -1e-18, 3.0))  # a zero vector has no direction
    assert math.isnan(cosine_from_squares(0.0, 0.0, 0.0))
    assert cosine_from_squares(2.0, 1.0, 4.0) == 1.0 and cosine_from_squares(-2.0000001, 1.0, 4.0) == -1.0


def lora_state(b: torch.Tensor, a: torch.Tensor) -> dict:
    from extrapolate.checkpoints import LoraModule

    return {"model.layers.0.self_attn.q_proj": LoraModule("model.layers.0.self_attn.q_proj", b, a, 2.0)}


@pytest.mark.parametrize("method", ["rl_extra", "alpharl", "relex", "growth"])
def test_backtest_of_a_run_whose_first_checkpoints_are_unchanged(method):
    """TRL + PEFT on a hard task: every group's rewards alike in the first steps, so the zero-initialised B never
    moved. The backtests give a real number or NaN with a reason, never a complex number or an error."""
    from extrapolate.predictability import backtest, forecast_error

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 24, generator=gen, dtype=torch.float64)
    b = torch.randn(32, 4, generator=gen, dtype=torch.float64)
    states = [(s, lora_state(torch.zeros(32, 4, dtype=torch.float64), a)) for s in (1, 2, 3)]
    states += [(s, lora_state(b * (s - 3), a)) for s in (4, 5, 6)]
    for end in range(2, len(states) + 1):
        window = states[:end]
        try:
            check = backtest(window, method)
        except ValueError as err:  # the method's own refusal (e.g. growth with one nonzero checkpoint) names why
            assert "nonzero update" in str(err) or "checkpoint" in str(err), err
            continue
        assert isinstance(check["cos"], float) and isinstance(check["rel_err"], float), check
        assert math.isnan(check["cos"]) or -1.0 <= check["cos"] <= 1.0
        assert math.isnan(check["rel_err"]) or check["rel_err"] >= 0.0
        if math.isnan(check["cos"]):
            assert check["reason"]
    # identical prediction and target from an unchanged window end: no displacement, cos NaN with its reason
    same = states[0][1]
    found = forecast_error({n: (m.b, m.a) for n, m in same.items()}, same, same)
    assert math.isnan(found["cos"]) and math.isnan(found["rel_err"]) and found["reason"]
