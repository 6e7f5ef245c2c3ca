"""The rank-1 analysis checkpoint by checkpoint: each new checkpoint costs the same reads (its own two files, nothing
earlier, not rank1/), the results equal a full re-analysis, and the HTML report's records equal the live ones."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from common.run_dir import checkpoint_dir
from extrapolate.analyze import RunAnalysis, analyze_run, growth_by_module_type
from extrapolate.config import ExtrapolateConfig
from extrapolate.service import ExtrapolationService

SHAPES = {"self_attn.q_proj": (8, 6), "mlp.down_proj": (6, 10)}  # (out, in) of each target module type
STEPS = list(range(10, 130, 10))  # 12 checkpoints


def write_adapter(run_dir: Path, step: int, rank: int = 2) -> Path:
    """A PEFT LoRA checkpoint of a 2-layer model at `step`: B_t = (t / 10)^0.7 B_0 + noise, A slowly drifting."""
    from safetensors.torch import save_file

    tensors = {}
    for layer in range(2):
        for i, (module, (m, n)) in enumerate(SHAPES.items()):
            base = torch.Generator().manual_seed(100 * layer + i)
            b0, a0 = torch.randn(m, rank, generator=base), torch.randn(rank, n, generator=base)
            noise = torch.Generator().manual_seed(10_000 * step + 100 * layer + i)
            name = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{name}.lora_B.weight"] = (step / 10) ** 0.7 * b0 + 0.05 * torch.randn(m, rank, generator=noise)
            tensors[f"{name}.lora_A.weight"] = a0 + 0.01 * step / 10 * torch.randn(rank, n, generator=noise)
    path = checkpoint_dir(run_dir, step)
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank}))
    return path


_READS: list | None = None  # paths opened for reading while a `reads_under` block runs


def _audit(event: str, args) -> None:
    if _READS is None or event != "open" or not isinstance(args[0], (str, os.PathLike)):
        return
    path, mode, flags = args
    reading = ("r" in mode and "+" not in mode) if mode else not flags & (os.O_WRONLY | os.O_RDWR)
    if reading:
        _READS.append(os.fspath(path))


sys.addaudithook(_audit)  # Python-level opens (JSON, JSONL); safetensors opens its files in Rust: counted below


@contextmanager
def reads_under(root: Path, monkeypatch):
    """The files under `root` opened for reading inside the block (Python opens and safetensors' safe_open)."""
    import safetensors
    import safetensors.torch

    global _READS
    opened: list[str] = []
    real = safetensors.safe_open

    def counting_safe_open(filename, *args, **kwargs):
        opened.append(os.fspath(filename))
        return real(filename, *args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", counting_safe_open)
    monkeypatch.setattr(safetensors.torch, "safe_open", counting_safe_open)
    _READS = opened
    found: list[str] = []
    try:
        yield found
    finally:
        _READS = None
        monkeypatch.undo()
        found.extend(p for p in opened if p.startswith(str(root)))


def comparable(record: dict) -> str:
    """A record as canonical JSON (NaN included), without its timing."""
    return json.dumps({k: v for k, v in record.items() if k != "seconds"}, sort_keys=True)


@pytest.fixture
def watched_run(tmp_path, monkeypatch):
    """A run analysed by the extrapolation service at each of its checkpoints as they arrive: (run dir, the
    records streamed, the files read at each checkpoint)."""
    run = tmp_path / "run"
    service = ExtrapolationService(run, ExtrapolateConfig(), checkpoint_every=10)
    records, reads = [], []
    for step in STEPS:
        write_adapter(run, step)
        with reads_under(run, monkeypatch) as found:
            records.append(service.on_checkpoint(step))
        reads.append(found)
    return run, records, reads


def test_each_checkpoint_is_read_once(watched_run):
    run, records, reads = watched_run
    assert records[0]["rows"] == [] and len(records[1]["rows"]) == 4
    assert [len(r) for r in reads[:2]] == [0, 4]  # the first record waits for a second checkpoint
    for step, found in zip(STEPS[2:], reads[2:], strict=True):  # then: the new checkpoint's two files, nothing else
        newest = checkpoint_dir(run, step)
        assert sorted(found) == sorted([str(newest / "adapter_config.json"),
                                        str(newest / "adapter_model.safetensors")]), step


def test_incremental_results_equal_a_full_reanalysis(watched_run, tmp_path):
    run, records, _ = watched_run
    fresh = tmp_path / "fresh"
    shutil.copytree(run / "checkpoints", fresh / "checkpoints")
    full = RunAnalysis(fresh)
    summary = full.update()
    assert summary["new_checkpoints"] == len(STEPS)
    assert (fresh / "rank1" / "metrics.jsonl").read_text() == (run / "rank1" / "metrics.jsonl").read_text()
    assert comparable(full.record(STEPS[-1])) == comparable(records[-1])
    assert math.isfinite(records[-1]["backtest"]["rl_extra"]["cos"])
    assert math.isfinite(records[-1]["linear_r2"]["median"])
    assert analyze_run(run, progress=False)["new_checkpoints"] == 0  # rank1/ on disk is complete


def test_report_records_equal_the_live_records(watched_run):
    """The HTML report (services.dashboard.rank1_records) shows every checkpoint's figures as the live page got them
    (growth exponent per module type, backtests, linear_r2)."""
    from services.dashboard import rank1_records

    run, records, _ = watched_run
    report = rank1_records(run)
    assert [r["step"] for r in report] == STEPS  # the first checkpoint's rows too (streamed empty, before a second)
    assert [comparable(r) for r in report[1:]] == [comparable(r) for r in records[1:]]
    assert all(math.isfinite(r["by_type"]["q_proj"]["growth_p"]) for r in report[1:])


def test_forget_after_drops_later_steps_and_reanalyses_their_replacements(watched_run, tmp_path, monkeypatch):
    """A branch switch moves the last three checkpoints away and back (as a paid leap's branch is restored): the
    next record reads those three again, nothing else, and equals the one streamed before."""
    run, records, _ = watched_run
    service = ExtrapolationService(run, ExtrapolateConfig(), checkpoint_every=10)
    service.on_checkpoint(STEPS[-1])
    for step in STEPS[-3:]:
        shutil.move(str(checkpoint_dir(run, step)), tmp_path / f"aside-{step}")
    service.forget_after(STEPS[-4])
    assert max(json.loads(x)["step"] for x in (run / "rank1" / "metrics.jsonl").read_text().splitlines()) == STEPS[-4]
    for step in STEPS[-3:]:
        shutil.move(str(tmp_path / f"aside-{step}"), checkpoint_dir(run, step))
    with reads_under(run, monkeypatch) as found:
        record = service.on_checkpoint(STEPS[-1])
    assert comparable(record) == comparable(records[-1])
    assert sorted(found) == sorted(str(checkpoint_dir(run, s) / f) for s in STEPS[-3:]
                                   for f in ("adapter_config.json", "adapter_model.safetensors"))


def reference_growth(rows: list[dict], up_to_step: int) -> dict[str, float]:
    """Brute force: per module, the least-squares slope of log ||Delta_t|| on log t (numpy-free normal equations
    written out), then the median per type."""
    slopes: dict[str, list[float]] = {}
    for module in sorted({r["module"] for r in rows}):
        pts = [(math.log(r["step"]), math.log(r["fro"])) for r in rows
               if r["module"] == module and 0 < r["step"] <= up_to_step and r["fro"] > 0]
        mtype = next(r["type"] for r in rows if r["module"] == module)
        if len(pts) >= 2:
            n, sx, sy = len(pts), sum(x for x, _ in pts), sum(y for _, y in pts)
            sxx, sxy = sum(x * x for x, _ in pts), sum(x * y for x, y in pts)
            slopes.setdefault(mtype, []).append((n * sxy - sx * sy) / (n * sxx - sx * sx))
    return {t: statistics.median(v) for t, v in slopes.items()}


def test_growth_by_module_type_matches_a_brute_force_fit():
    """||Delta_t|| = a t^p per module (p 0.5, 0.6, 0.9 for q_proj; 1.0 for down_proj); rows after up_to_step follow
    another law and a zero-norm row has no logarithm: both are left out."""
    exponents = {("q_proj", 0): 0.5, ("q_proj", 1): 0.6, ("q_proj", 2): 0.9, ("down_proj", 0): 1.0}
    rows = []
    for (mtype, layer), p in exponents.items():
        for t in (10, 20, 30, 50, 80, 130):
            fro = 0.0 if (t, layer) == (20, 1) else (1 + layer) * t**p if t <= 80 else 1e-3 * t**3
            rows.append({"step": t, "module": f"model.layers.{layer}.{mtype}", "type": mtype, "fro": fro})
    growth = growth_by_module_type(rows, up_to_step=80)
    assert growth == pytest.approx(reference_growth(rows, 80), abs=1e-12)
    assert growth == pytest.approx({"down_proj": 1.0, "q_proj": 0.6}, abs=1e-9)
    assert math.isnan(growth_by_module_type(rows, up_to_step=10)["q_proj"])  # one point per module: no fit


def test_a_window_that_cannot_be_fitted_is_no_forecast_not_a_crash():
    import math

    import torch

    from extrapolate.analyze import backtests
    from extrapolate.checkpoints import LoraModule

    def module(b_scale: float) -> dict:
        name = "model.layers.0.self_attn.q_proj"
        return {name: LoraModule(name=name, a=torch.ones(2, 4), b=b_scale * torch.ones(4, 2), scale=1.0)}

    states = [(2, module(0.0)), (4, module(0.0)), (6, module(0.0))]  # no update yet (all-zero B)
    figures = backtests(states)
    assert math.isnan(figures["growth"]["cos"]) and "nonzero update" in figures["growth"]["reason"]
    short = backtests(states[-2:])  # one checkpoint before the target: no method with two-checkpoint windows fits
    assert math.isnan(short["relex"]["cos"]) and "needs 2" in short["relex"]["reason"], short["relex"]
