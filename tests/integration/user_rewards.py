"""A user's reward module in TRL's signature, as a job names it in `rewards:` (tests/integration/test_dataset_task.py):
`fn(prompts, completions, **columns) -> list[float | None]`."""

from __future__ import annotations

import asyncio


def text(completion) -> str:
    return completion if isinstance(completion, str) else completion[0]["content"]


def exact(prompts, completions, answer, **kwargs) -> list[float]:
    """1 when the completion's first line is the answer; None for rows marked `skip` (not applicable)."""
    skip = kwargs.get("skip") or [False] * len(completions)
    return [None if s else float(text(c).strip().split("\n")[0] == str(a))
            for c, a, s in zip(completions, answer, skip, strict=True)]


async def brevity(prompts, completions, completion_ids, max_completion_length, **kwargs) -> list[float]:
    """An async reward (as an LLM judge would be): 1 - |y| / L."""
    await asyncio.sleep(0.01)
    return [1.0 - len(ids) / max_completion_length for ids in completion_ids]


def raises(prompts, completions, **kwargs) -> list[float]:
    """A broken verifier."""
    raise KeyError("user verifier bug: no 'solution' column")
