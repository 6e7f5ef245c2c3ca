"""`dataset`: the problems of a user's dataset (the job's `data:` section, rollout/data.py), scored by the job's
`rewards:` (a dataset brings no verifier of its own).

Its examples are the dataset's rows: train from the train split, test from the test split (or the held-out
fraction), each with its prompt (text or chat messages, the system prompt first when data.system_prompt is set),
its answer and its other columns (Example.meta, passed on to the reward functions). Given the run's PromptEncoder,
prompts longer than data.max_prompt_tokens are dropped and counted (`dropped`).
"""

from __future__ import annotations

import random

from rollout.config import DataConfig
from rollout.data import DataError, load_rows
from rollout.tasks.base import Example, Task
from rollout.tasks.registry import register_task


@register_task("dataset")
class DatasetTask(Task):
    description = "prompts and answers read from the job's data: section; scored by its rewards:"
    max_new_tokens = 256

    def __init__(self, data: DataConfig, encoder=None):
        self.data = data
        rows = load_rows(data)
        self.splits = {split: [Example(id=f"data-{split}-{r.number}", prompt=r.prompt, answer=r.answer,
                                       meta=r.columns) for r in split_rows] for split, split_rows in rows.items()}
        self.dropped = {"train": 0, "test": 0}
        if encoder is not None and data.max_prompt_tokens is not None:
            for split, examples in self.splits.items():
                kept = [ex for ex, ids in zip(examples, encoder.ids(examples), strict=True)
                        if len(ids) <= data.max_prompt_tokens]
                self.dropped[split] = len(examples) - len(kept)
                if not kept:
                    raise DataError(f"data.max_prompt_tokens: every prompt of the {split} split of {data.path} is "
                                    f"longer than {data.max_prompt_tokens} tokens; raise it")
                self.splits[split] = kept
        self.max_train_pool = len(self.splits["train"])

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """The split's first n rows when n covers it (all of them, in file order), else a seeded sample of n rows
        (in file order)."""
        if split not in self.splits:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rows = self.splits[split]
        if n >= len(rows):
            return list(rows)
        chosen = sorted(random.Random(f"dataset:{split}:{seed}").sample(range(len(rows)), n))
        return [rows[i] for i in chosen]

    def reference_completion(self, example: Example, rng: random.Random) -> str:
        """The answer column as written (GSM8K's worked solution ending in `#### N`): the reference a leap's
        reference_logprob decision metric scores."""
        return str(example.answer)

    def metadata(self) -> dict:
        return {**super().metadata(), "path": self.data.path,
                "rows": {split: len(rows) for split, rows in self.splits.items()}, "dropped": self.dropped}
