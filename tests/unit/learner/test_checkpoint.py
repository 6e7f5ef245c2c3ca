"""Checkpoints are atomic, never overwritten, and partial or corrupt ones are refused clearly."""

from __future__ import annotations

import pytest
import torch

from common.run_dir import checkpoint_dir, list_checkpoints
from learner.checkpoint import CheckpointError, read_checkpoint, write_checkpoint


class FakeAdapterModel:
    """Stands in for a PEFT model's save_pretrained only (the checkpoint module's one call on it)."""

    def save_pretrained(self, path):
        from safetensors.torch import save_file

        save_file({"w": torch.ones(2)}, f"{path}/adapter_model.safetensors")
        (__import__("pathlib").Path(path) / "adapter_config.json").write_text("{}")


def test_write_read_and_no_overwrite(tmp_path):
    path = write_checkpoint(tmp_path, 10, FakeAdapterModel(), {"step": 10, "x": torch.arange(3)}, {"loss": 1.0})
    assert path == checkpoint_dir(tmp_path, 10)
    state, meta = read_checkpoint(path)
    assert meta == {"step": 10, "loss": 1.0} and torch.equal(state["x"], torch.arange(3))
    before = (path / "state.pt").read_bytes()
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        write_checkpoint(tmp_path, 10, FakeAdapterModel(), {"step": 99}, {})
    assert (path / "state.pt").read_bytes() == before


def test_partial_and_corrupt_checkpoints_are_refused(tmp_path):
    write_checkpoint(tmp_path, 10, FakeAdapterModel(), {"step": 10}, {})
    partial = tmp_path / "checkpoints" / "step-000020.tmp-123"
    partial.mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10]
    with pytest.raises(CheckpointError, match="partial"):
        read_checkpoint(partial)
    p20 = write_checkpoint(tmp_path, 20, FakeAdapterModel(), {"step": 20}, {})
    (p20 / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(p20)
    (p20 / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="missing meta.json"):
        read_checkpoint(p20)


def test_one_lister_for_every_layout(tmp_path):
    """learner.checkpoint.list_step_dirs lists ours (checkpoints/step-NNNNNN, partial writes skipped) for the learner
    and, with the layouts as a parameter, TRL's and verl's for the analysis; both name our directories the same."""
    from common.run_dir import list_step_dirs, step_name
    from extrapolate.checkpoints import find_adapter_checkpoints

    ours = write_checkpoint(tmp_path, 10, FakeAdapterModel(), {"step": 10}, {})
    assert ours.name == step_name(10) == "step-000010"
    (tmp_path / "checkpoints" / "step-000020.tmp-7").mkdir()
    trl = tmp_path / "checkpoint-30"
    verl = tmp_path / "global_step_40" / "actor" / "lora_adapter"
    for adapter in (trl, verl):
        adapter.mkdir(parents=True)
        FakeAdapterModel().save_pretrained(adapter)
    (tmp_path / "global_step_50" / "actor").mkdir(parents=True)  # no adapter inside: not a checkpoint
    assert list_checkpoints(tmp_path) == list_step_dirs(tmp_path) == [(10, ours)]
    assert find_adapter_checkpoints(tmp_path) == [(10, ours), (30, trl), (40, verl)]
