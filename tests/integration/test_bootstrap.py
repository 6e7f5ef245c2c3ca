"""The default model bootstrap: deterministic for a seed, cached, a normal HF model directory."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from learner.bootstrap import BootstrapSpec, bootstrap, default_model_dir, default_spec
from learner.models import models_home
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.integration


def test_bootstrap_is_deterministic_and_cached(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    again = bootstrap("arith", 0, out_dir=tmp_path / "again", spec=BootstrapSpec(task="arith", seed=0, **TINY_SPEC),
                      progress=False)
    a, b = load_file(tiny_model_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_model_dir / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    bootstrap("arith", 0, out_dir=again, spec=BootstrapSpec(task="arith", seed=0, **TINY_SPEC), progress=False)
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_bootstrapped_model_is_a_normal_hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("123+45=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 8  # BOS + one token per character
    assert model(torch.tensor([ids])).logits.shape[-1] == len(tok)


def test_default_model_is_partly_right(default_model_dir):
    report = json.loads((default_model_dir / "leapfrog_bootstrap.json").read_text())
    assert 0.10 <= report["heldout_accuracy"] <= 0.70
    assert 300_000 <= report["parameters"] <= 20_000_000


def test_cache_dir_is_keyed_by_the_spec():
    """The default spec keeps the name models were always cached under; any other spec gets its own directory."""
    ranklist = default_spec("ranklist", 0)
    assert default_model_dir("ranklist", 0) == default_model_dir("ranklist", 0, ranklist) == models_home() / "ranklist-s0"
    assert ranklist.sft_steps == 250  # the task's bootstrap_overrides are part of its default spec
    a = default_model_dir("ranklist", 0, dataclasses.replace(ranklist, sft_steps=300))
    b = default_model_dir("ranklist", 0, dataclasses.replace(ranklist, hidden_size=64))
    assert len({a, b, default_model_dir("ranklist", 0)}) == 3 and a.name.startswith("ranklist-s0-")


def test_changed_settings_never_reuse_a_stale_model(tiny_model_dir, tmp_path):
    cached = tmp_path / "m"
    shutil.copytree(tiny_model_dir, cached)
    other = BootstrapSpec(task="arith", seed=0, **{**TINY_SPEC, "sft_steps": 31})
    with pytest.raises(ValueError, match=r"built with other bootstrap settings \(sft_steps: 30 -> 31\).*--force"):
        bootstrap("arith", 0, out_dir=cached, spec=other, progress=False)

    # A record from before a field existed reads that field as its default: still reused, not rebuilt.
    record = json.loads((cached / "leapfrog_bootstrap.json").read_text())
    del record["spec"]["vocab_size"]
    record.pop("spec_hash", None)
    (cached / "leapfrog_bootstrap.json").write_text(json.dumps(record))
    tiny = BootstrapSpec(task="arith", seed=0, **TINY_SPEC)
    assert bootstrap("arith", 0, out_dir=cached, spec=tiny, progress=False) == cached

    # force rebuilds in a temp dir of its own: another build's temp dir beside it is left alone.
    (tmp_path / "m.tmp").mkdir()
    (tmp_path / "m.tmp" / "other-build").write_text("in progress")
    bootstrap("arith", 0, out_dir=cached, spec=other, force=True, progress=False)
    assert json.loads((cached / "leapfrog_bootstrap.json").read_text())["spec"]["sft_steps"] == 31
    assert (tmp_path / "m.tmp" / "other-build").read_text() == "in progress"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.tmp"]  # no temp dir of ours left
