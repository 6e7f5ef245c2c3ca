"""The policy: an HF causal LM with a PEFT LoRA adapter, and its per-token log-probabilities."""

from __future__ import annotations

from pathlib import Path

import torch

from learner.config import LoraConfig, ModelConfig


def load_policy(model_dir: str | Path, model_cfg: ModelConfig, lora_cfg: LoraConfig, seed: int):
    """(peft model, tokenizer): base weights frozen, a fresh LoRA adapter (B = 0, so the policy starts at the base)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, model_cfg.dtype)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(seed)
    peft_cfg = PeftLoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                              target_modules=list(lora_cfg.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(base, peft_cfg)
    model.peft_config["default"].base_model_name_or_path = str(Path(model_dir).resolve())
    return model, tokenizer


def pad_sequences(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int):
    """Right-padded [prompt + completion] rows: (input_ids [B, L], attention_mask [B, L],
    completion_mask [B, T]) where T is the longest completion; completion token j of row b sits at
    input position len(prompt_b) + j."""
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(lengths)
    t_max = max(len(c) for c in completion_ids)
    input_ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(lengths), width), dtype=torch.long)
    completion_mask = torch.zeros((len(lengths), t_max))
    for b, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        input_ids[b, :len(p) + len(c)] = torch.tensor(p + c)
        attention[b, :len(p) + len(c)] = 1
        completion_mask[b, :len(c)] = 1
    return input_ids, attention, completion_mask


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: list[int],
                        t_max: int, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) of each completion token: [B, T] (zeros past a completion's end).

    The logits at input position i predict token i + 1, so completion token j of row b (position
    len(prompt_b) + j) is scored by the logits at position len(prompt_b) + j - 1.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    starts = torch.tensor(prompt_lengths)[:, None] - 1 + torch.arange(t_max)[None, :]
    starts = starts.clamp(max=input_ids.shape[1] - 2)
    picked = logits.gather(1, starts[..., None].expand(-1, -1, logits.shape[-1])).float()
    targets = input_ids.gather(1, (starts + 1).clamp(max=input_ids.shape[1] - 1))
    logp = torch.log_softmax(picked / temperature, dim=-1)
    return logp.gather(-1, targets[..., None]).squeeze(-1)
