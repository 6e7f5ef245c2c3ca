"""The task plug-in contract: a seeded prompt generator, a pure verifier, and metadata.

A task is any object with the attributes and methods of `Task` below. Tasks are registered by name
(`@register_task("arith")`) or loaded from a user's module path (`my_pkg.my_task:MyTask`), see
`rollout.tasks.load_task`. A task whose completion is a ranked list (one item per line, scored per rank, as
Rank-GRPO needs) subclasses `ListTask`. The contract is pinned by tests/unit/rollout/test_tasks.py.
"""

from __future__ import annotations

import abc
import json
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Example:
    """One problem: the prompt shown to the model (raw text, or chat messages [{"role", "content"}] that the run's
    chat template renders) and what the verifier needs to score it."""

    id: str
    prompt: str | list[dict[str, Any]]
    answer: Any
    meta: dict = field(default_factory=dict)

    @property
    def prompt_key(self) -> str:
        """The prompt as one string (messages in a stable JSON form): what tells problems apart."""
        return self.prompt if isinstance(self.prompt, str) else json.dumps(self.prompt, sort_keys=True)


class Task:
    """Base class of tasks. Subclasses set `description` and `max_new_tokens` (and `name`, which `register_task`
    sets for the built-ins) and implement
    `make_example`, `score` and `reference_completion`.

    - `examples(split, n, seed)` is deterministic in (split, n, seed); train and test never share a problem.
    - `score(example, completion)` is pure and never raises: malformed output scores 0.0.
    - `reference_completion(example, rng)` is one correct completion.
    - `warmstart_completion(example, rng)` is what the default model's supervised warm-start imitates.
    - `many_answers` says whether a problem has many valid answers (pass@N matters there).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    max_new_tokens: ClassVar[int] = 16
    max_train_pool: ClassVar[int] = 50_000  # distinct training problems a run cycles through at most
    bootstrap_overrides: ClassVar[dict] = {}  # BootstrapSpec fields this task's default model uses
    many_answers: ClassVar[bool] = False

    def make_example(self, rng: random.Random, index: int) -> Example:
        raise NotImplementedError

    def score(self, example: Example, completion: str) -> float:
        raise NotImplementedError

    def reference_completion(self, example: Example, rng: random.Random) -> str:
        raise NotImplementedError

    def warmstart_completion(self, example: Example, rng: random.Random) -> str:
        """The completion the supervised warm-start of the default model is trained on (default: a correct one).
        A task may make it imperfect (a noisy demonstration set) so the bootstrapped model is only partly right."""
        return self.reference_completion(example, rng)

    def split_of(self, example: Example) -> str:
        """Which split a problem belongs to: a stable hash of its prompt, 10% test."""
        return "test" if _stable_hash(example.prompt_key) % 10 == 0 else "train"

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """n distinct problems of `split` ("train" or "test"), deterministic in (split, n, seed)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"{self.name}:{split}:{seed}")
        out: list[Example] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 200 * n + 10_000:
                raise ValueError(f"task {self.name!r} cannot produce {n} distinct {split} problems; ask for fewer")
            ex = self.make_example(rng, len(out))
            if ex.prompt_key in seen or self.split_of(ex) != split:
                continue
            seen.add(ex.prompt_key)
            out.append(Example(id=f"{self.name}-{split}-{seed}-{len(out)}", prompt=ex.prompt, answer=ex.answer, meta=ex.meta))
        return out

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "max_new_tokens": self.max_new_tokens,
            "many_answers": self.many_answers,
        }


class ListTask(Task, abc.ABC):
    """A task whose completion is a ranked list of `list_length` items, one per line (e.g. recommendations).

    Besides the `Task` contract it gives a relevance per rank, which list metrics (Recall@k, NDCG@k) and
    Rank-GRPO's per-rank rewards are computed from; `score` stays the sequence reward (e.g. NDCG@K).

    - `list_length` (K): the number of ranks a completion is scored on.
    - `relevance(example, items)`: rel_k for k = 1..K (exactly K floats in [0, 1]) of the parsed items; missing
      or malformed items score 0 and keep their slot.
    - `n_relevant(example)`: how many relevant items the problem has (the ideal list of NDCG, Recall's divisor).
    - `parse(completion)`: the completion's first K lines, stripped (override for another list format).
    """

    list_length: ClassVar[int]  # K; every list task sets it

    @abc.abstractmethod
    def relevance(self, example: Example, items: list[str]) -> list[float]:
        """rel_k for k = 1..list_length of `items` (the parsed completion)."""

    @abc.abstractmethod
    def n_relevant(self, example: Example) -> int:
        """The number of relevant items of the problem (what a perfect list could find)."""

    def parse(self, completion: str) -> list[str]:
        """The ranked items of a completion: its first `list_length` lines, stripped."""
        return [line.strip() for line in completion.split("\n")[:self.list_length]]


def _stable_hash(text: str) -> int:
    """FNV-1a 32-bit: stable across processes (unlike hash())."""
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def first_line(completion: str) -> str:
    """The model's answer: the completion up to its first newline, stripped."""
    return completion.split("\n", 1)[0].strip()
