"""What every rollout engine returns: one record per completion, the same for HF and vLLM."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Completion:
    """One sampled completion of one prompt.

    `logprobs[i]` is the sampling log-probability of `token_ids[i]`: log softmax(logits / temperature) of the
    policy that sampled it (the "old" policy of GRPO's importance ratio, docs/methods.md#grpo).

    A multi-turn rollout (rollout/episodes.py) is one Completion too: `token_ids` are every token after the prompt,
    the model's turns and the environment's messages in the order they were appended; `model_mask[i]` is 1 where the
    model sampled token i (0 for environment tokens, whose `logprobs` are 0.0); `text` is the model's last turn and
    `trajectory` the conversation and its counts.
    """

    prompt_index: int
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS sampled) or "length" (max_new_tokens reached)
    model_mask: list[int] | None = None  # multi-turn: 1 where the model sampled the token, 0 for the environment's
    trajectory: dict | None = None  # multi-turn: messages, turns, tool calls, errors, stop reason, environment reward

    @property
    def mean_logprob(self) -> float:
        """Length-normalised sampling log-prob of the model's tokens (the unlikeliness reward's ranking key,
        docs/methods.md#unlikeliness-reward)."""
        if self.model_mask is None:
            return sum(self.logprobs) / max(len(self.logprobs), 1)
        own = [lp for lp, m in zip(self.logprobs, self.model_mask, strict=True) if m]
        return sum(own) / max(len(own), 1)


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    seed: int = 0


def check_prompt_ids(prompt_ids) -> None:
    """Engines take token ids (rollout.prompts.PromptEncoder makes them), never text."""
    if not prompt_ids or not all(isinstance(p, list) and p and isinstance(p[0], int) for p in prompt_ids):
        raise TypeError("rollout engines take prompts as non-empty lists of token ids; encode text or chat messages "
                        "with rollout.prompts.PromptEncoder first")
