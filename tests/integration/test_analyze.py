"""`leapfrog analyze` on a real run's checkpoints: per-module rank-1 metrics that match a dense SVD, written to
rank1/metrics.jsonl, with nothing else in the run directory changed; clear errors on unusable run dirs."""

from __future__ import annotations

import json

import pytest
import torch

from extrapolate.analyze import analyze_run
from extrapolate.checkpoints import CheckpointReadError, find_adapter_checkpoints, read_lora
from services.config import parse_config
from services.runner import run_job

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
