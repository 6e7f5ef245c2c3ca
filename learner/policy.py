"""The policy: an HF causal LM with a PEFT LoRA adapter (or, for full-parameter RL, the model itself), and its
per-token log-probabilities. Its weights as saved and loaded: common/weights.py."""

from __future__ import annotations

from pathlib import Path

import torch

from learner.config import LoraConfig, ModelConfig


def load_policy(model_dir: str | Path, model_cfg: ModelConfig, lora_cfg: LoraConfig | None, seed: int,
                gradient_checkpointing: bool = False):
    """(model, tokenizer) on model.device in model.dtype. With lora_cfg: a PEFT model, base weights frozen and a
    fresh LoRA adapter (B = 0, so the policy starts at the base). Without (learner.lora: null): the model itself,
    every parameter trained (full-parameter RL). Gradient checkpointing makes the embeddings' output require grad
    (PEFT's input-grad fix), without which a frozen base gives the checkpointed blocks no graph to recompute."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = model_cfg.resolved_device()
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, model_cfg.dtype),
                                                attn_implementation=model_cfg.attn_implementation).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    torch.manual_seed(seed)
    if lora_cfg is None:
        return base.requires_grad_(True), tokenizer
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


def completion_positions(prompt_lengths: list[int], t_max: int, width: int) -> torch.Tensor:
    """[B, T] input positions whose outputs score completion tokens 0..T-1: the state at position i predicts
    token i + 1, so completion token j of row b (at len(prompt_b) + j) is scored at len(prompt_b) + j - 1."""
    starts = torch.tensor(prompt_lengths)[:, None] - 1 + torch.arange(t_max)[None, :]
    return starts.clamp(max=width - 2)


def selective_log_softmax(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor,
                          temperature: float = 1.0, chunk_tokens: int = 1024, with_entropy: bool = False,
                          entropy_grad: bool = False):
    """log softmax(lm_head(h) / temperature)[target] for hidden states h [N, H] and targets [N] -> [N], computed
    chunk_tokens rows at a time. Each chunk runs under activation checkpointing when gradients are on, so neither
    the forward nor the backward pass holds more than one chunk's [chunk, V] logits: peak memory no longer grows
    with sequence length x vocabulary. Equal to the dense log_softmax(logits).gather (a test pins it to 1e-5).
    The logsumexp is in float32 at least (float64 for a float64 model).

    with_entropy: also return the entropy [N] of each row's distribution, H = -sum_v p_v log p_v with
    p = softmax(lm_head(h) / temperature) (the distribution the tokens are sampled from), computed from the same
    chunk's logits under no_grad (a metric: no gradient, no extra [N, V] tensor); entropy_grad: with its gradient
    (the entropy bonus; one more [chunk, V] tensor, recomputed in the backward pass like the log-prob's)."""
    from torch.utils.checkpoint import checkpoint

    def chunk_logp(h: torch.Tensor, t: torch.Tensor):
        logits = lm_head(h)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
        lse = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, t[:, None]).squeeze(-1) - lse
        if not with_entropy:
            return logp
        if entropy_grad:
            return logp, lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        with torch.no_grad():  # after the log-prob's ops: a checkpoint's recompute stops before this
            probs = (logits - lse[:, None]).exp_()  # one [chunk, V] temporary, reused in place
            return logp, lse - probs.mul_(logits).sum(-1)

    out = []
    for i in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[i:i + chunk_tokens], targets[i:i + chunk_tokens]
        out.append(checkpoint(chunk_logp, h, t, use_reentrant=False) if torch.is_grad_enabled() and h.requires_grad
                   else chunk_logp(h, t))
    if not with_entropy:
        return torch.cat(out)
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def _decoder_and_head(model):
    """The decoder body and output head of a (PEFT-wrapped) causal LM when its logits are exactly lm_head(h);
    None for models that post-process logits (soft-capping, logit scales), which take the dense path."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return None
    body, head = getattr(base, base.base_model_prefix, None), base.get_output_embeddings()
    if body is None or head is None:
        return None
    return body, head


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: list[int],
                        t_max: int, temperature: float = 1.0, chunk_tokens: int = 1024, with_entropy: bool = False,
                        entropy_grad: bool = False):
    """log softmax(logits / temperature) of each completion token: [B, T] (zeros past a completion's end are not
    guaranteed: mask them). Only the hidden states of the completion positions reach the output head, through the
    chunked selective log-softmax; the full [B, L, V] logits are never formed. with_entropy: (log-probs, entropy
    [B, T]), the entropy of the policy's distribution at each completion position (see selective_log_softmax; with
    its gradient when entropy_grad)."""
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    width = input_ids.shape[1]
    positions = completion_positions(prompt_lengths, t_max, width).to(device)
    targets = input_ids.gather(1, (positions + 1).clamp(max=width - 1))
    parts = _decoder_and_head(model)
    if parts is None:
        return dense_completion_logprobs(model, input_ids, attention_mask, prompt_lengths, t_max, temperature,
                                         with_entropy, entropy_grad)
    body, head = parts
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
    flat = selective_log_softmax(picked.reshape(-1, hidden.shape[-1]), head, targets.reshape(-1), temperature,
                                 chunk_tokens, with_entropy, entropy_grad)
    if not with_entropy:
        return flat.view(targets.shape)
    return flat[0].view(targets.shape), flat[1].view(targets.shape)


def pack_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """First-fit decreasing: the sequence indices of each packed row, no row over row_tokens tokens (a longer
    sequence gets a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(row_tokens - lengths[i])
    return rows


def packed_completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                               prompt_lengths: list[int], t_max: int, temperature: float = 1.0,
                               chunk_tokens: int = 1024, with_entropy: bool = False, entropy_grad: bool = False):
    """completion_logprobs without padding: the right-padded rows are unpadded and packed, first-fit, into rows no
    longer than the longest sequence, each sequence's position ids restarting at 0 and no attention mask, so the
    model attends within each sequence only (transformers' packed-sequence masks for sdpa / eager; flash-attention's
    varlen kernel on CUDA); the completion positions are gathered back to [B, T]. Equal to the padded path up to
    rounding (a test pins it to 1e-5 on SmolLM2 with ragged lengths)."""
    device = next(model.parameters()).device
    parts = _decoder_and_head(model)
    if parts is None:
        raise ValueError("padding-free batches need a model whose logits are lm_head(h) (no soft-capping)")
    body, head = parts
    lengths = attention_mask.sum(-1).tolist()
    width = max(lengths)
    rows = pack_rows(lengths, width)
    packed = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    starts = [0] * len(lengths)  # where each sequence begins in the flattened packed rows
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            packed[r, at:at + lengths[i]] = input_ids[i, :lengths[i]]
            positions[r, at:at + lengths[i]] = torch.arange(lengths[i])
            starts[i] = r * width + at
            at += lengths[i]
        positions[r, at:] = torch.arange(width - at)  # the tail: a sequence of its own that nothing reads
    packed, positions = packed.to(device), positions.to(device)
    hidden = body(input_ids=packed, position_ids=positions, use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])
    offsets = completion_positions(prompt_lengths, t_max, width).clamp(min=0)  # within each sequence
    ends = torch.tensor(lengths)[:, None] - 1
    within = torch.minimum(offsets, ends - 1).clamp(min=0)  # past a completion's end: any position of its own
    flat_index = (torch.tensor(starts)[:, None] + within).to(device)
    targets = packed.reshape(-1)[(flat_index + 1).clamp(max=packed.numel() - 1)]
    picked = hidden[flat_index.reshape(-1)]
    out = selective_log_softmax(picked, head, targets.reshape(-1), temperature, chunk_tokens, with_entropy,
                                entropy_grad)
    if not with_entropy:
        return out.view(flat_index.shape)
    return out[0].view(flat_index.shape), out[1].view(flat_index.shape)


def dense_completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: list[int],
                              t_max: int, temperature: float = 1.0, with_entropy: bool = False,
                              entropy_grad: bool = False):
    """The reference: full logits of every position, then log_softmax and gather ([B, L, V] in memory);
    with_entropy / entropy_grad: (log-probs, entropy) as completion_logprobs."""
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    width = input_ids.shape[1]
    positions = completion_positions(prompt_lengths, t_max, width).to(device)
    targets = input_ids.gather(1, (positions + 1).clamp(max=width - 1))
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    picked = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))
    picked = picked.to(torch.promote_types(picked.dtype, torch.float32))
    logp_all = torch.log_softmax(picked / temperature, dim=-1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    if not with_entropy:
        return logp
    if entropy_grad:
        return logp, -(logp_all.exp() * logp_all).sum(-1)
    with torch.no_grad():
        return logp, -(logp_all.exp() * logp_all).sum(-1)
