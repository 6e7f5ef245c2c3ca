"""Prompts to token ids, once: raw text or chat messages through the tokenizer's chat template.

A task's problem carries its prompt as text ("57+68=") or as chat messages ([{"role": "user", "content": ...}]).
`PromptEncoder` turns it into the token ids that every later stage moves (rollout engines, the learner's batch,
evaluation and leap candidates), so nothing is tokenized twice and the template is applied in one place:

    chat_template = "auto"    messages -> template (with the generation prompt); text -> tokenized as it is
    chat_template = "always"  text becomes one user message, then the template (an error if the tokenizer has none)
    chat_template = "never"   text only (messages are refused: they have no raw-text form)

An optional system prompt is put first as a system message whenever the template is applied and the messages do not
start with one. Generation stops on every end-of-sequence id of the tokenizer and of the model's generation config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Prompt = str | list[dict[str, Any]]


class PromptError(ValueError):
    """A prompt that cannot be encoded as configured (names the problem and the fix)."""


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def check_chat_template(tokenizer, mode: str, model_dir: str | Path) -> None:
    """Refuse `always` for a tokenizer without a chat template, before any work."""
    if mode == "always" and not has_chat_template(tokenizer):
        raise PromptError(f"rollout.chat_template is 'always' but the tokenizer of {model_dir} has no chat template; "
                          f"use a chat (instruct) model, or set rollout.chat_template: auto (raw-text prompts)")


def stop_token_ids(tokenizer, model_dir: str | Path | None = None) -> list[int]:
    """Every id that ends a completion: the tokenizer's eos and the generation config's eos_token_id (int or list)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if model_dir is not None and (Path(model_dir) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
        for i in (eos if isinstance(eos, list) else [eos] if eos is not None else []):
            if int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise PromptError(f"the tokenizer of {model_dir} defines no end-of-sequence token, so generation could never "
                          f"stop early; set eos_token in its tokenizer_config.json")
    return ids


class PromptEncoder:
    """Encodes prompts with one tokenizer and one chat-template policy; remembers each example's ids by its id."""

    def __init__(self, tokenizer, chat_template: str = "auto", system_prompt: str | None = None,
                 model_dir: str | Path | None = None):
        if chat_template not in ("auto", "always", "never"):
            raise PromptError(f"rollout.chat_template must be auto, always or never, got {chat_template!r}")
        check_chat_template(tokenizer, chat_template, model_dir or "the model")
        self.tokenizer = tokenizer
        self.mode = chat_template
        self.system_prompt = system_prompt
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, chat_template: str = "auto", system_prompt: str | None = None):
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(model_dir)), chat_template, system_prompt, model_dir)

    def uses_template(self, prompt: Prompt) -> bool:
        if isinstance(prompt, str):
            return self.mode == "always"
        return self.mode != "never"

    def encode(self, prompt: Prompt) -> list[int]:
        """The prompt's token ids (the chat template applied with the generation prompt when it is used)."""
        if isinstance(prompt, str) and not self.uses_template(prompt):
            return list(self.tokenizer(prompt)["input_ids"])
        if not isinstance(prompt, (str, list)):
            raise PromptError(f"a prompt is text or a list of chat messages, got {type(prompt).__name__}")
        if not self.uses_template(prompt):
            raise PromptError("rollout.chat_template is 'never' but the task gives chat messages; set it to auto")
        if not has_chat_template(self.tokenizer):
            raise PromptError("the task gives chat messages but the tokenizer has no chat template; use a chat model "
                              "or a task with raw-text prompts")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise PromptError(f"a chat message is a mapping with 'role' and 'content', got {m!r}")
        if self.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ids(self, examples) -> list[list[int]]:
        """Token ids of each example's prompt, encoded once per example id."""
        out = []
        for ex in examples:
            if ex.id not in self._cache:
                self._cache[ex.id] = self.encode(ex.prompt)
            out.append(self._cache[ex.id])
        return out

    def text(self, prompt_ids: list[int]) -> str:
        """The decoded prompt as the model sees it (special tokens kept), for logs and reward functions."""
        return self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
