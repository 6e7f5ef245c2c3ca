"""A leap adapter whose modules have different ranks loads in PEFT with each module at the rank it was written with,
and its merged update is exactly the predicted B A (rank_pattern keyed by module name, scale 1 everywhere)."""

from __future__ import annotations

import json

import torch

from extrapolate.checkpoints import pattern_value, read_lora
from extrapolate.leap_writer import write_leap_adapter


def tiny_base(path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(path)
    return path


def test_mixed_rank_leap_loads_in_peft_with_each_module_rank(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tiny_base(tmp_path / "base")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    source = tmp_path / "source"
    get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                   LoraConfig(r=2, lora_alpha=4, target_modules=targets)).save_pretrained(source)
    gen = torch.Generator().manual_seed(1)
    prediction, ranks = {}, {}
    for i, (name, mod) in enumerate(sorted(read_lora(source).items())):
        ranks[name] = 1 + i % 3  # ranks 1, 2, 3 across modules, different within one type (layer 0 vs layer 1)
        prediction[name] = (torch.randn(mod.b.shape[0], ranks[name], generator=gen),
                            torch.randn(ranks[name], mod.a.shape[1], generator=gen))
    assert ranks["model.layers.0.self_attn.q_proj"] != ranks["model.layers.1.self_attn.q_proj"]
    leap = write_leap_adapter(tmp_path / "leap", source, prediction, {})
    config = json.loads((leap / "adapter_config.json").read_text())
    assert config["r"] == 3 and all(k in ranks for k in config["rank_pattern"])

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(leap))
    for name, (b, a) in prediction.items():
        layer = model.base_model.model.get_submodule(name)
        assert layer.lora_A["default"].weight.shape[0] == ranks[name], name
        assert torch.allclose(layer.get_delta_weight("default"), b @ a, atol=1e-6), name
    read_back = read_lora(leap)  # our reader resolves the same patterns: rank and scale 1 per module
    assert {n: (m.b.shape[1], m.scale) for n, m in read_back.items()} == {n: (r, 1.0) for n, r in ranks.items()}


def test_pattern_value_follows_peft_matching():
    """PEFT's get_pattern_key: a key matches the end of the module name at a "." boundary."""
    patterns = {"model.layers.1.self_attn.q_proj": 5, "down_proj": 7}
    assert pattern_value(patterns, "model.layers.1.self_attn.q_proj", 2) == 5
    assert pattern_value(patterns, "model.layers.11.self_attn.q_proj", 2) == 2
    assert pattern_value(patterns, "model.layers.0.mlp.down_proj", 2) == 7
    assert pattern_value(patterns, "model.layers.0.mlp.up_proj", 2) == 2
