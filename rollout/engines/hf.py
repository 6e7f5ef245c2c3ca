"""HF rollout engine: batched sampling with transformers + PEFT, returning token ids and sampling log-probs.

A small explicit decoding loop (left-padded prompts, KV cache, one sampled token per step) instead of
`generate()`: it returns the exact log-probs of the sampled tokens under softmax(logits / temperature),
uses one seeded torch.Generator per call (reproducible), and stops as soon as every row has sampled one of the
stop ids (every EOS id of the tokenizer and of the generation config). Prompts arrive as token ids.
With top_p < 1 the token is drawn from the nucleus; the recorded log-prob stays that of the full tempered
distribution (what the learner recomputes), as in TRL and vLLM's processed log-probs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rollout.engines.base import Completion, SamplingParams, check_prompt_ids


class HFEngine:
    """Generates with a causal LM (optionally a PEFT model). Construct from a model directory, or wrap a
    model object already in memory (`HFEngine(model=..., tokenizer=...)`, the single-process runner
    shares the learner's policy this way, so weight sync is free)."""

    def __init__(self, model_path: str | Path | None = None, *, model=None, tokenizer=None,
                 adapter_path: str | Path | None = None, max_batch_tokens: int = 65536, device: str = "cpu",
                 dtype: str = "float32", attn_implementation: str = "sdpa", stop_ids: list[int] | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rollout.prompts import stop_token_ids

        if model is None:
            if model_path is None:
                raise ValueError("HFEngine needs model_path or model")
            model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=getattr(torch, dtype),
                                                         attn_implementation=attn_implementation).to(device)
            tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids or stop_token_ids(tokenizer, model_path)
        self.eos_id = self.stop_ids[0]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.max_batch_tokens = max_batch_tokens
        self.adapter_version: str | None = None
        if adapter_path is not None:
            self.load_adapter(adapter_path, version=str(adapter_path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_adapter(self, adapter_path: str | Path, version: str) -> None:
        """Load (or replace) the LoRA adapter: the weight-sync path of a standalone engine. A full model directory
        (a full-parameter run's published policy) replaces the model's weights instead."""
        from peft import PeftModel, set_peft_model_state_dict
        from peft.utils import load_peft_weights

        from common.weights import is_adapter_dir, load_weights, read_weights

        if not is_adapter_dir(adapter_path):
            load_weights(self.model, read_weights(adapter_path))
        elif hasattr(self.model, "peft_config"):
            set_peft_model_state_dict(self.model, load_peft_weights(str(adapter_path), device="cpu"))
        else:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_path)).to(self.device)
        self.model.eval()
        self.adapter_version = version

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """params.n completions for each prompt (token ids), grouped per prompt, in prompt order."""
        check_prompt_ids(prompt_ids)
        prompts = [(i, list(ids)) for i, ids in enumerate(prompt_ids)]
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        longest = max(len(ids) for ids in prompt_ids) + params.max_new_tokens
        chunk = max(1, self.max_batch_tokens // (longest * params.n))  # prompts per batch of n x chunk rows
        was_training = self.model.training  # the single-process runner shares this model with the learner
        self.model.eval()
        flat: list[Completion] = []
        try:
            for start in range(0, len(prompts), chunk):
                flat.extend(self._sample(prompts[start:start + chunk], params, generator))
        finally:
            if was_training:
                self.model.train()
        grouped: list[list[Completion]] = [[] for _ in prompt_ids]
        for c in flat:
            grouped[c.prompt_index].append(c)
        return grouped

    def _sample(self, prompts, params: SamplingParams, generator: torch.Generator) -> list[Completion]:
        """n completions of each prompt: the prompts are prefilled once, then their KV cache is repeated n times."""
        n, device = params.n, self.device
        rows = [p for p in prompts for _ in range(n)]
        batch = len(rows)
        width = max(len(ids) for _, ids in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, (_, ids) in enumerate(prompts):
            input_ids[r, width - len(ids):] = torch.tensor(ids)
            attention[r, width - len(ids):] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        stop = torch.tensor(self.stop_ids, device=device)
        tokens = torch.zeros((batch, params.max_new_tokens), dtype=torch.long, device=device)
        logps = torch.zeros((batch, params.max_new_tokens), device=device)
        lengths = torch.full((batch,), params.max_new_tokens, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=True,
                         logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits[:, -1, :].float()
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            attention = attention.repeat_interleave(n, dim=0)
            position_ids = position_ids.repeat_interleave(n, dim=0)
        step_ids, step_pos = None, position_ids
        for t in range(params.max_new_tokens):
            if t > 0:
                out = self.model(input_ids=step_ids, attention_mask=attention, position_ids=step_pos,
                                 past_key_values=cache, use_cache=True)
                cache, logits = out.past_key_values, out.logits[:, -1, :].float()
            if params.temperature == 0.0:
                logp_all = torch.log_softmax(logits, dim=-1)
                nxt = logits.argmax(-1)
            else:
                logp_all = torch.log_softmax(logits / params.temperature, dim=-1)
                nxt = _sample_top_p(logp_all, params.top_p, generator)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            tokens[:, t] = nxt
            logps[:, t] = logp_all.gather(-1, nxt[:, None]).squeeze(-1)
            newly = (~done) & torch.isin(nxt, stop)
            lengths[newly] = t + 1
            done |= newly
            if bool(done.all()):
                break
            step_ids = nxt[:, None]
            attention = torch.cat([attention, torch.ones((batch, 1), dtype=torch.long, device=device)], dim=1)
            step_pos = step_pos[:, -1:] + 1
        tokens, logps, lengths, done = tokens.cpu(), logps.cpu(), lengths.cpu(), done.cpu()
        out_rows = []
        for r, (prompt_index, ids) in enumerate(rows):
            n_tok = int(lengths[r])
            tok = tokens[r, :n_tok].tolist()
            finished = bool(done[r])
            text_ids = tok[:-1] if finished else tok
            out_rows.append(Completion(
                prompt_index=prompt_index, prompt_ids=list(ids), token_ids=tok,
                text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                logprobs=logps[r, :n_tok].tolist(), finish_reason="stop" if finished else "length"))
        return out_rows


def _sample_top_p(logp: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Draw one token per row from the smallest set of tokens whose probability mass reaches top_p."""
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p, 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
