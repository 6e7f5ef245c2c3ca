"""Full-parameter updates in the low-rank machinery: a dense update as exact factors (B A = Delta), the extrapolators
and triplets on them against dense references, and the dense leap writer's formula W' = W_t + s (W_0 + B^A^ - W_t)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from common.weights import module_name
from extrapolate.checkpoints import dense_factors, read_full_update
from extrapolate.extrapolators import EXTRAPOLATORS
from extrapolate.leap_writer import LeapError, check_prediction, write_full_leap
from extrapolate.predictability import forecast_error
from extrapolate.rank1 import lora_triplets

Q = "model.layers.0.self_attn.q_proj"
DOWN = "model.layers.0.mlp.down_proj"


@pytest.mark.parametrize("shape", [(6, 9), (9, 6), (7, 7)])
def test_dense_factors_are_exact_with_the_smaller_inner_dimension(shape):
    delta = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b, a = dense_factors(delta)
    assert b.shape[1] == a.shape[0] == min(shape)
    assert torch.equal(b @ a, delta)
    trip = lora_triplets(b, a, k=2)
    s = torch.linalg.svdvals(delta)
    assert torch.allclose(trip.s, s[:2], atol=1e-10)
    assert trip.fro2 == pytest.approx(float((delta**2).sum()), rel=1e-12)
    assert float((trip.u[:, 0] @ torch.linalg.svd(delta)[0][:, 0]).abs()) == pytest.approx(1.0, abs=1e-10)


def model_dir(path, tensors: dict, meta: dict | None = None):
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if meta is not None:
        (path / "meta.json").write_text(json.dumps(meta))
        (path / "state.pt").write_bytes(b"learner state")
    return path


def test_growth_on_dense_updates_scales_the_window_end(tmp_path):
    gen = torch.Generator().manual_seed(1)
    w0 = {Q: torch.randn(5, 5, generator=gen), DOWN: torch.randn(5, 8, generator=gen)}
    direction = {n: torch.randn(*w.shape, generator=gen) for n, w in w0.items()}
    steps, p = [2, 4, 8], 0.5  # ||Delta_t|| = t^p exactly: the fitted exponent is p
    states = []
    for t in steps:
        weights = {f"{n}.weight": w0[n] + t**p * direction[n] for n in w0}
        ckpt = model_dir(tmp_path / f"step-{t}", {**weights, "model.norm.weight": torch.ones(5)})
        states.append((t, read_full_update(ckpt, w0)))
    assert set(states[0][1]) == {Q, DOWN}  # the norm is not a target module
    prediction = EXTRAPOLATORS.get("growth")().fit(states).predict(32)
    for n in w0:
        b, a = prediction[n]
        expected = (32 / 8) ** p * (8**p * direction[n].double())
        assert torch.allclose(b @ a, expected, atol=1e-5), n
    # the forecast error of the true point is zero, through the same low-rank inner products as LoRA runs
    truth = {n: (d * 32**p).double() for n, d in direction.items()}
    target = {n: type(states[-1][1][n])(n, *dense_factors(truth[n]), 1.0) for n in truth}
    err = forecast_error(prediction, states[-1][1], target)
    assert err["cos"] == pytest.approx(1.0, abs=1e-6) and err["rel_err"] < 1e-6


def test_full_leap_moves_the_target_modules_only(tmp_path):
    gen = torch.Generator().manual_seed(2)
    w0 = {Q: torch.randn(4, 4, generator=gen), DOWN: torch.randn(4, 6, generator=gen)}
    w_t = {n: w + 0.1 * torch.randn(*w.shape, generator=gen) for n, w in w0.items()}
    norm, embed = torch.rand(4, generator=gen), torch.randn(10, 4, generator=gen)
    source = model_dir(tmp_path / "step-8", {**{f"{n}.weight": w for n, w in w_t.items()}, "model.norm.weight": norm,
                                             "model.embed_tokens.weight": embed}, meta={"step": 8})
    (source / "tokenizer.json").write_text("{}")
    predicted = {n: 3.0 * (w_t[n] - w0[n]).double() for n in w0}
    prediction = {n: dense_factors(d) for n, d in predicted.items()}
    out, lost = write_full_leap(tmp_path / "leap", source, w0, prediction, 0.5, {"method": "test"})
    assert lost == 0.0
    written = load_file(str(out / "model.safetensors"))
    for n in w0:  # W' = W_t + s (W_0 + B^ A^ - W_t)
        expected = w_t[n].double() + 0.5 * (w0[n].double() + predicted[n] - w_t[n].double())
        assert torch.allclose(written[f"{n}.weight"].double(), expected, atol=1e-6), n
        assert written[f"{n}.weight"].dtype == w_t[n].dtype
    assert torch.equal(written["model.norm.weight"], norm) and torch.equal(written["model.embed_tokens.weight"], embed)
    files = {f.name for f in out.iterdir()}
    assert {"config.json", "tokenizer.json", "report.json", "model.safetensors"} <= files
    assert not {"state.pt", "meta.json"} & files  # a leap is a model, not a learner state
    with pytest.raises(LeapError, match="never overwritten"):
        write_full_leap(tmp_path / "leap", source, w0, prediction, 0.5, {})


def test_full_leap_refuses_non_finite_and_absurd_predictions(tmp_path):
    w0 = {Q: torch.zeros(3, 3)}
    source = model_dir(tmp_path / "step-2", {f"{Q}.weight": torch.eye(3)})
    bad = {Q: dense_factors(torch.full((3, 3), float("nan"), dtype=torch.float64))}
    with pytest.raises(LeapError, match="NaN or Inf"):
        write_full_leap(tmp_path / "leap", source, w0, bad, 1.0, {})
    assert not (tmp_path / "leap").exists()
    with pytest.raises(LeapError, match="more than 10"):
        check_prediction({Q: dense_factors(100 * torch.eye(3, dtype=torch.float64))}, {Q: 1.0}, 10.0)


def test_module_names_of_weight_keys():
    assert module_name("model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.up_proj"
    assert module_name("layers.3.self_attn.o_proj.weight") == "model.layers.3.self_attn.o_proj"
    assert module_name("model.layers.3.input_layernorm.weight") is None
    assert module_name("lm_head.weight") is None
