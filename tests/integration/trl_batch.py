"""The batch both TRL parity tests score: a PEFT policy with a non-zero adapter, G sampled completions per prompt,
non-constant rewards -> group advantages, pi_old log-probs from a perturbed adapter and reference log-probs from
the adapter-disabled base."""

from __future__ import annotations

import torch

from learner.losses import ADVANTAGES
from learner.policy import completion_logprobs, pad_sequences
from rollout.engines.base import SamplingParams
from rollout.engines.hf import HFEngine


def scored_batch(model, tok, prompts: list[list[int]], group: int, max_new: int, *, b_std: float,
                 old_perturbation: float, dtype=torch.float32) -> dict:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, b_std)
    engine = HFEngine(model=model, tokenizer=tok, stop_ids=[tok.eos_token_id])
    flat = [c for g in engine.generate(prompts, SamplingParams(n=group, max_new_tokens=max_new, seed=1)) for c in g]
    rewards = torch.tensor([float(len(c.token_ids) % 3) + 0.1 * i for i, c in enumerate(flat)], dtype=dtype)
    ids, att, mask = pad_sequences([c.prompt_ids for c in flat], [c.token_ids for c in flat], tok.pad_token_id)
    mask = mask.to(dtype)
    plen = [len(c.prompt_ids) for c in flat]
    with torch.no_grad():
        saved = {n: p.clone() for n, p in model.named_parameters() if "lora_B" in n}
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * old_perturbation)
        old = completion_logprobs(model, ids, att, plen, mask.shape[1])
        for n, p in model.named_parameters():
            if n in saved:
                p.copy_(saved[n])
        with model.disable_adapter():
            ref = completion_logprobs(model, ids, att, plen, mask.shape[1])
    return dict(model=model, tok=tok, flat=flat, ids=ids, att=att, mask=mask, plen=plen, old=old, ref=ref,
                advantages=ADVANTAGES.get("group")(rewards, group))


def trl_inputs(batch: dict, *, old: bool = True, ref: bool = True) -> dict:
    """The inputs dict TRL's generation step would hand `_compute_loss`, in TRL's layout: prompts left-padded
    (prompt_mask), completions right-padded (completion_mask). old / ref: pass pi_old's and the reference's
    log-probs (TRL uses its own detached log-probs as pi_old when none are given)."""
    flat, mask, tok = batch["flat"], batch["mask"], batch["tok"]
    n, width = len(flat), max(len(c.prompt_ids) for c in flat)
    prompt_ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.long)
    completion_ids = torch.full(mask.shape, tok.pad_token_id, dtype=torch.long)
    for i, c in enumerate(flat):
        prompt_ids[i, width - len(c.prompt_ids):] = torch.tensor(c.prompt_ids)
        prompt_mask[i, width - len(c.prompt_ids):] = 1
        completion_ids[i, :len(c.token_ids)] = torch.tensor(c.token_ids)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": mask.long(), "advantages": batch["advantages"],
            "old_per_token_logps": batch["old"] if old else None, "ref_per_token_logps": batch["ref"] if ref else None,
            "num_items_in_batch": mask.sum()}


def lora_grads(model) -> dict[str, torch.Tensor]:
    """The gradients of the trained ("default") LoRA adapter, by parameter name without the adapter name."""
    return {n.replace(".default", ""): p.grad.detach().clone() for n, p in model.named_parameters()
            if "lora_" in n and ".default" in n and p.grad is not None}
