"""Held-out evaluation: greedy accuracy and pass@k (unbiased estimator) through a rollout engine, the prompts
encoded by the run's PromptEncoder (the same token ids the policy trains on)."""

from __future__ import annotations

from math import comb

from rollout.engines.base import SamplingParams
from rollout.prompts import PromptEncoder
from rollout.tasks.base import Example, Task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, arXiv 2107.03374)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def greedy_scores(engine, task: Task, examples: list[Example], encoder: PromptEncoder,
                  max_new_tokens: int | None = None) -> list[float]:
    """The verifier's score of each example's greedy (temperature 0) completion (for paired comparisons)."""
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens or task.max_new_tokens)
    groups = engine.generate(encoder.ids(examples), params)
    return [task.score(ex, group[0].text) for ex, group in zip(examples, groups, strict=True)]


def greedy_accuracy(engine, task: Task, examples: list[Example], encoder: PromptEncoder,
                    max_new_tokens: int | None = None) -> float:
    """Share of examples whose greedy (temperature 0) completion the verifier scores 1."""
    scores = greedy_scores(engine, task, examples, encoder, max_new_tokens)
    return sum(scores) / len(scores)


def sampled_pass_at_k(engine, task: Task, examples: list[Example], encoder: PromptEncoder, n: int,
                      temperature: float = 1.0, seed: int = 0, ks: list[int] | None = None,
                      max_new_tokens: int | None = None) -> dict[int, float]:
    """Mean pass@k over examples for k in ks (default 1, 2, 4, ..., n) from n samples per problem."""
    ks = ks or [2**i for i in range(n.bit_length()) if 2**i <= n]
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens or task.max_new_tokens,
                            seed=seed)
    groups = engine.generate(encoder.ids(examples), params)
    correct = [sum(task.score(ex, c.text) >= 1.0 for c in group) for ex, group in zip(examples, groups, strict=True)]
    return {k: sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}


def list_metrics(engine, task, examples: list[Example], encoder: PromptEncoder, max_new_tokens: int | None = None,
                 ks: list[int] | None = None) -> dict[str, float]:
    """Greedy Recall@k and NDCG@k for a ranked-list task (one item per line), k in ks (default 1..K by doubling,
    and K): Recall@k = ground-truth items found in the first k lines / |ground truth|; NDCG@k with binary relevance."""
    from rollout.list_metrics import ndcg_at_k, recall_at_k

    k_max = task.list_length
    ks = ks or sorted({*[2**i for i in range(k_max.bit_length()) if 2**i <= k_max], k_max})
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens or task.max_new_tokens)
    groups = engine.generate(encoder.ids(examples), params)
    out = {f"recall@{k}": 0.0 for k in ks} | {f"ndcg@{k}": 0.0 for k in ks}
    for ex, group in zip(examples, groups, strict=True):
        rel = task.relevance(ex, task.parse(group[0].text))
        n_truth = task.n_relevant(ex)
        for k in ks:
            out[f"recall@{k}"] += recall_at_k(rel, n_truth, k) / len(examples)
            out[f"ndcg@{k}"] += ndcg_at_k(rel, n_truth, k) / len(examples)
    return out


def paired_difference(scores_a: list[float], scores_b: list[float]) -> tuple[float, float]:
    """Mean of a - b over the same examples and its standard error sqrt(var(a - b) / n) (sample variance):
    a paired comparison of two policies removes the examples' own difficulty from the noise."""
    if len(scores_a) != len(scores_b) or len(scores_a) < 2:
        raise ValueError("paired_difference needs two score lists of the same length >= 2 (same examples, same order)")
    d = [a - b for a, b in zip(scores_a, scores_b, strict=True)]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return mean, (var / len(d)) ** 0.5
