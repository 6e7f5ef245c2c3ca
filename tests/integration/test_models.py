"""Models by name, GGUF file or directory (learner/models.py), on a real pretrained instruct LLM: the registered
SmolLM2-135M-Instruct converts into an ordinary HF directory that computes what the GGUF file computes, is
converted once, and bad inputs fail with a clear error that leaves nothing on disk."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch

from learner.models import REGISTRY, ModelError, RegisteredModel, gguf_model_name, is_current, resolve_model

pytestmark = pytest.mark.integration

NAME = "smollm2-135m-instruct"


def wheel_file() -> Path:
    return REGISTRY[NAME].source()


def test_converted_directory_is_smollm2_instruct(smollm2_dir):
    from transformers import AutoTokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert config["tie_word_embeddings"] is True
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    eos = json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"]
    assert 2 in (eos if isinstance(eos, list) else [eos])
    record = json.loads((smollm2_dir / "leapfrog_source.json").read_text())
    source = wheel_file()
    assert record["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert record["size"] == source.stat().st_size and record["parameters"] == 134_515_008


def test_conversion_keeps_the_logits(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = wheel_file()
    gguf = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    converted = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()  # still tied
    ids = AutoTokenizer.from_pretrained(smollm2_dir)("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = gguf(ids).logits, converted(ids).logits
    assert got.shape == (1, ids.shape[1], 49152)
    assert (got - expected).abs().max().item() <= 1e-4


def test_name_and_gguf_path_share_one_cached_conversion(smollm2_dir):
    stamps = (smollm2_dir.stat().st_mtime_ns, (smollm2_dir / "model.safetensors").stat().st_mtime_ns)
    started = time.time()
    assert resolve_model(str(wheel_file()), progress=False) == smollm2_dir
    assert resolve_model(NAME, progress=False) == smollm2_dir
    assert time.time() - started < 10  # two hashes of the 98 MB file, no conversion
    assert (smollm2_dir.stat().st_mtime_ns, (smollm2_dir / "model.safetensors").stat().st_mtime_ns) == stamps
    assert resolve_model(str(smollm2_dir), progress=False) == smollm2_dir  # a model directory is itself
    sha = json.loads((smollm2_dir / "leapfrog_source.json").read_text())["sha256"]
    assert is_current(smollm2_dir, sha) and not is_current(smollm2_dir, "0" * 64)  # other bytes: converted again
    assert not [p for p in smollm2_dir.parent.iterdir() if p.name.startswith(f".{NAME}.")]  # no temp dirs left


def test_user_gguf_names_carry_stem_and_hash():
    sha = hashlib.sha256(b"x").hexdigest()
    assert gguf_model_name(Path("/m/SmolLM2-135M-Instruct.Q4_1.gguf"), sha) == f"gguf-smollm2-135m-instruct.q4_1-{sha[:12]}"
    assert gguf_model_name(Path("My Model.gguf"), sha) == f"gguf-my-model-{sha[:12]}"


def write_unsupported_gguf(path: Path) -> None:
    """A well-formed GGUF file of an architecture transformers does not know."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "bogusarch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unreadable_gguf_fails_clearly_and_leaves_nothing(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LEAPFROG_HOME", str(home))
    garbage = tmp_path / "broken.gguf"
    garbage.write_bytes(b"GGUF\x03\x00\x00\x00 not really")
    unsupported = tmp_path / "bogus.gguf"
    write_unsupported_gguf(unsupported)
    for bad, reason in ((garbage, "cannot read"), (unsupported, "bogusarch")):
        with pytest.raises(ModelError) as err:
            resolve_model(str(bad), progress=False)
        assert str(bad) in str(err.value) and reason in str(err.value)
    assert not home.exists() or not any(home.rglob("*"))


def test_bad_inputs_say_what_is_expected(tmp_path):
    from services.config import ConfigError, JobConfig
    from services.prepare import resolve_model_dir

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError) as err:
        resolve_model(str(empty), progress=False)
    assert str(empty) in str(err.value) and "config.json" in str(err.value) and NAME in str(err.value)
    text = tmp_path / "weights.bin"
    text.write_text("x")
    with pytest.raises(ModelError, match=r"\.gguf"):
        resolve_model(str(text), progress=False)
    with pytest.raises(ModelError, match=NAME):
        resolve_model("no-such-model", progress=False)
    missing = RegisteredModel(name="absent", distribution="leapfrog-no-such-wheel", version="1.0", file="a.gguf",
                              license="-", description="-")
    with pytest.raises(ModelError, match=r"leapfrog-no-such-wheel==1\.0, which is not installed: run `make env`"):
        missing.source()
    cfg = JobConfig()
    cfg.model.path = "no-such-model"
    with pytest.raises(ConfigError, match=f"^model.path: .*{NAME}"):
        resolve_model_dir(cfg, progress=False)


def test_models_cli_lists_and_pulls(smollm2_dir, capsys):
    from services.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and str(smollm2_dir) in out and "Apache-2.0" in out
    assert main(["models", "pull", NAME]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(smollm2_dir)
    assert main(["models", "pull", "no-such-model"]) == 2
    assert "error:" in capsys.readouterr().err
