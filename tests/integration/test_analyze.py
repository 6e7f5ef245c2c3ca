"""`leapfrog analyze` on a real run's checkpoints: per-module rank-1 metrics that match a dense SVD, written to
rank1/metrics.jsonl, with nothing else in the run directory changed; clear errors on unusable run dirs."""

from __future__ import annotations

import json

import pytest
import torch

from extrapolate.analyze import analyze_run
from extrapolate.checkpoints import CheckpointReadError, find_adapter_checkpoints, read_lora
from services.config import parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run_dir(default_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "run"
    cfg = parse_config({"model": {"path": str(default_model_dir)},
                        "rollout": {"prompts_per_step": 16, "group_size": 4, "eval_size": 16},
                        "learner": {"lr": 2e-3}, "run": {"steps": 6, "checkpoint_every": 2, "eval_every": 6}})
    run_job(cfg, run_dir=out, progress=False)
    return out


def test_analyze_real_run(run_dir):
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = analyze_run(run_dir, progress=False)
    assert result["steps"] == [2, 4, 6] and result["modules"] == 3 * 7
    rows = [json.loads(x) for x in (run_dir / "rank1" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 21
    mod = read_lora(find_adapter_checkpoints(run_dir)[-1][1])["model.layers.0.self_attn.q_proj"]
    s = torch.linalg.svdvals(mod.scale * mod.b.double() @ mod.a.double())
    row = next(r for r in rows if r["step"] == 6 and r["module"] == "model.layers.0.self_attn.q_proj")
    assert row["e1"] == pytest.approx(float(s[0] / s.sum()), rel=1e-6)
    assert row["energy1"] == pytest.approx(float(s[0] ** 2 / (s**2).sum()), rel=1e-6)
    assert 0.0 <= row["stability_u"] <= 1.0 + 1e-9
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "rank1" not in p.parts}
    assert after == before  # only rank1/ was written


def test_analysis_is_incremental(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "rank1", ignore_errors=True)
    moved = copy / "step-000006.later"
    (copy / "checkpoints" / "step-000006").rename(moved)
    first = analyze_run(copy, progress=False)
    assert first["new_checkpoints"] == 2 and first["steps"] == [2, 4]
    moved.rename(copy / "checkpoints" / "step-000006")
    second = analyze_run(copy, progress=False)
    assert second["new_checkpoints"] == 1 and second["rows"] == 3 * 21  # only the new checkpoint was processed
    full = analyze_run(run_dir, progress=False)
    for mtype, figures in full["by_type"].items():  # same figures as analysing all at once (u, v kept in fp32)
        assert second["by_type"][mtype] == pytest.approx(figures, rel=1e-6)
    from safetensors.torch import load_file

    traj = load_file(str(copy / "rank1" / "trajectory.safetensors"))
    assert len(traj) == 3 * 21 * 3


def test_analyze_errors_are_clear(tmp_path, run_dir):
    with pytest.raises(CheckpointReadError, match="not a directory"):
        analyze_run(tmp_path / "missing", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointReadError, match="at least 2"):
        analyze_run(tmp_path / "empty", progress=False)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "checkpoints", broken / "checkpoints")
    (broken / "checkpoints" / "step-000004" / "adapter_model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointReadError, match="unreadable"):
        analyze_run(broken, progress=False)


def test_rank1_recovery(run_dir):
    from extrapolate.analyze import rank1_recovery

    rec = rank1_recovery(run_dir, "arith", eval_size=64)
    assert rec["step"] == 6
    for key in ("acc_base", "acc_full", "acc_rank1"):
        assert 0.0 <= rec[key] <= 1.0
    if rec["acc_full"] != rec["acc_base"]:
        assert rec["recovery"] == pytest.approx((rec["acc_rank1"] - rec["acc_base"]) / (rec["acc_full"] - rec["acc_base"]))


def test_analyze_full_parameter_checkpoints(tiny_model_dir, tmp_path):
    """A full-parameter run (HF model dirs checkpoint-N, as TRL/HF Trainer save them): W_t = W_0 + (t/10) s u v^T +
    noise per target module; the dense path finds s_1 and u_1 as a dense SVD does, and stability is ~1."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    names = [n for n, p in base.named_parameters() if n.endswith("proj.weight")]
    shapes = {n: p.shape for n, p in base.named_parameters() if n in names}
    spikes = {n: (torch.randn(shapes[n][0], 1, generator=gen), torch.randn(1, shapes[n][1], generator=gen))
              for n in names}
    expected = {}
    run = tmp_path / "full-run"
    for step in (10, 20, 30):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in names:
                    delta = 0.01 * step / 10 * spikes[n][0] @ spikes[n][1] + 1e-4 * torch.randn(p.shape, generator=gen)
                    p.add_(delta)
                    expected[(step, n.removesuffix(".weight"))] = (p.detach().double() -
                                                                   dict(base.named_parameters())[n].detach().double())
        model.save_pretrained(run / f"checkpoint-{step}")
    result = analyze_run(run, progress=False, base=tiny_model_dir)
    assert result["kind"] == "full" and result["steps"] == [10, 20, 30] and result["modules"] == len(names)
    assert result["backtest"] == {}
    rows = [json.loads(x) for x in (run / "rank1" / "metrics.jsonl").read_text().splitlines()]
    name = "model.layers.0.mlp.down_proj"
    row = next(r for r in rows if r["step"] == 30 and r["module"] == name)
    s = torch.linalg.svdvals(expected[(30, name)])
    assert row["s1"] == pytest.approx(float(s[0]), rel=1e-4)
    assert row["energy1"] == pytest.approx(float(s[0] ** 2 / (s**2).sum()), rel=1e-4)
    assert row["stability_u"] > 0.999 and "e1" not in row
    assert result["by_type"]["down_proj"]["growth_p"] == pytest.approx(1.0, abs=0.02)
    other = tmp_path / "other-base"
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(other)
    import shutil

    shutil.rmtree(run / "rank1")
    with pytest.raises(CheckpointReadError, match="does not match the base model"):
        analyze_run(run, progress=False, base=other)


def test_extrapolating_a_full_parameter_run_writes_a_full_model(tiny_model_dir, tmp_path):
    """Another framework's full checkpoints (checkpoint-N): without a recorded base the error names --base; with it,
    rl_extra's leap is W_0 + (T / t_w)(W_tw - W_0) in every target module, a model directory that loads."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from extrapolate.extrapolators import extrapolate_run

    key = "model.layers.0.self_attn.q_proj.weight"
    bump = torch.randn(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()[key].shape,
                       generator=torch.Generator().manual_seed(0)) * 1e-2
    for step in (10, 20):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        with torch.no_grad():
            model.get_parameter(key).add_(bump * step / 10)
        model.save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
    with pytest.raises(CheckpointReadError, match="--base DIR"):
        extrapolate_run(tmp_path / "run", "rl_extra", window_end=20, target_step=40, out_dir=tmp_path / "leap")
    out = extrapolate_run(tmp_path / "run", "rl_extra", window_end=20, target_step=40, out_dir=tmp_path / "leap",
                          base=tiny_model_dir)
    base, leapt = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert torch.allclose(leapt[key], base[key] + 4 * bump, atol=1e-6)
    other = "model.layers.0.mlp.up_proj.weight"  # untouched by training: its update is zero, and so is its leap
    assert torch.allclose(leapt[other], base[other], atol=1e-7)
    AutoModelForCausalLM.from_pretrained(out)


def test_analyze_a_trl_run_whose_first_checkpoints_hold_no_update(run_dir, tmp_path):
    """TRL GRPOTrainer + PEFT on a hard task: every group's rewards alike in the first steps, so the zero-initialised
    LoRA B never moved. Those checkpoints are analysed as zero updates (no rank-1 direction), and every figure that
    divides by a norm is a real number or NaN, never complex (this used to fail in the backtests)."""
    import math
    import shutil

    from safetensors.torch import load_file, save_file

    trl = tmp_path / "trl-run"
    ours = find_adapter_checkpoints(run_dir)
    unchanged = ours[0][1]
    for i, (_, path) in enumerate([(0, unchanged), (0, unchanged), *ours]):
        target = trl / f"checkpoint-{2 * (i + 1)}"
        target.mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(path / name, target / name)
        if i < 2:  # B of the first two checkpoints is still its zero initialisation
            weights = load_file(str(target / "adapter_model.safetensors"))
            save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()},
                      str(target / "adapter_model.safetensors"))
    result = analyze_run(trl, progress=False)
    assert result["steps"] == [2, 4, 6, 8, 10]
    for method, check in result["backtest"].items():
        for key in ("cos", "rel_err"):
            assert isinstance(check[key], float) and not isinstance(check[key], complex), (method, check)
        assert math.isnan(check["cos"]) or -1.0 <= check["cos"] <= 1.0, (method, check)
    rows = [json.loads(x) for x in (trl / "rank1" / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {2, 4, 6, 8, 10}
