"""The default model bootstrap: deterministic for a seed, cached, a normal HF model directory."""

from __future__ import annotations

import json

import pytest
import torch

from learner.bootstrap import BootstrapSpec, bootstrap
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
