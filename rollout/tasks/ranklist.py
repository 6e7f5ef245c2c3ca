"""`ranklist`: recommend K items from a catalog, one per line (the list task for Rank-GRPO, arXiv 2510.20150).

A seeded synthetic catalog of 120 items, each with a latent genre (12 genres of 10 items). A prompt names three
items a user liked, drawn from one genre; the ground truth is the rest of that genre (7 items). The completion
is K = 5 lines, one item name per line. Per-rank relevance follows docs/methods.md#rank-grpo: an item counts if it is in the
catalog, not already in the prompt, not a duplicate of an earlier rank, and in the ground truth; malformed lines
and unknown items score 0 and keep their slot. The sequence reward (`score`) is NDCG@K.
Warm-start demonstrations are noisy: each line is a correct unseen item with probability 0.5, else a random item.
"""

from __future__ import annotations

import random

from rollout.list_metrics import ndcg_at_k
from rollout.tasks.base import Example, ListTask
from rollout.tasks.registry import register_task

SYLLABLES = ["ba", "ko", "ri", "mu", "te", "sa", "lo", "vi", "ne", "du", "fa", "zo", "pe", "gu", "hi", "ja"]
N_GENRES, PER_GENRE, N_LIKED = 12, 10, 3


def catalog(seed: int = 0) -> dict[str, int]:
    """120 distinct two-syllable item names -> genre, deterministic in the seed."""
    rng = random.Random(f"ranklist-catalog:{seed}")
    names = [a + b for a in SYLLABLES for b in SYLLABLES if a != b]
    rng.shuffle(names)
    return {name: i // PER_GENRE for i, name in enumerate(names[:N_GENRES * PER_GENRE])}


@register_task("ranklist")
class RankList(ListTask):
    description = "recommend K=5 catalog items (one per line) for a user who liked 3 items of one genre"
    max_new_tokens = 24
    list_length = 5
    max_train_pool = 5000
    bootstrap_overrides = {"sft_steps": 250}  # NDCG@5 ~0.3: partly right, room for RL
    warmstart_hit_rate = 0.5

    def __init__(self):
        self.items = catalog()
        self.by_genre = {g: sorted(n for n, gg in self.items.items() if gg == g) for g in range(N_GENRES)}

    def make_example(self, rng: random.Random, index: int) -> Example:
        genre = rng.randrange(N_GENRES)
        liked = rng.sample(self.by_genre[genre], N_LIKED)
        truth = sorted(set(self.by_genre[genre]) - set(liked))
        return Example(id="", prompt=f"likes {' '.join(liked)} ->\n", answer={"liked": liked, "truth": truth})

    def relevance(self, example: Example, items: list[str]) -> list[float]:
        """rel_k for k = 1..K (docs/methods.md#rank-grpo); missing lines score 0."""
        seen: set[str] = set()
        rel = []
        for item in (items + [""] * self.list_length)[:self.list_length]:
            ok = item in self.items and item not in example.answer["liked"] and item not in seen \
                and item in example.answer["truth"]
            rel.append(1.0 if ok else 0.0)
            seen.add(item)
        return rel

    def n_relevant(self, example: Example) -> int:
        return len(example.answer["truth"])

    def score(self, example: Example, completion: str) -> float:
        if not isinstance(completion, str):
            return 0.0
        rel = self.relevance(example, self.parse(completion))
        return ndcg_at_k(rel, self.n_relevant(example), self.list_length)

    def reference_completion(self, example: Example, rng: random.Random) -> str:
        return "\n".join(example.answer["truth"][:self.list_length])

    def warmstart_completion(self, example: Example, rng: random.Random) -> str:
        unseen = list(example.answer["truth"])
        rng.shuffle(unseen)
        lines = []
        for _ in range(self.list_length):
            if unseen and rng.random() < self.warmstart_hit_rate:
                lines.append(unseen.pop())
            else:
                lines.append(rng.choice(sorted(self.items)))
        return "\n".join(lines)
