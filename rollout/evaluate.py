"""Held-out evaluation: greedy accuracy and pass@k (unbiased estimator) through a rollout engine, the prompts
encoded by the run's PromptEncoder (the same token ids the policy trains on) and the completions scored by the run's
Scorer (rollout/rewards/scorer.py): "accuracy" is the accuracy reward's value (rollout.accuracy_reward, by default
the first reward function or the task's verifier)."""

from __future__ import annotations

import random
from math import comb

from rollout.engines.base import SamplingParams
from rollout.episodes import generate_groups
from rollout.prompts import PromptEncoder
from rollout.rewards import Scorer
from rollout.tasks.base import Example


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, arXiv 2107.03374)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def greedy_completions(engine, examples: list[Example], encoder: PromptEncoder, max_new_tokens: int,
                       agent=None) -> list:
    """Each example's greedy (temperature 0) completion (a multi-turn job's: its greedy episode with `agent`)."""
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    return [group[0] for group in generate_groups(engine, examples, encoder, params, agent)]


def greedy_scores(engine, scorer: Scorer, examples: list[Example], encoder: PromptEncoder, max_new_tokens: int,
                  step: int = 0, agent=None) -> list[float]:
    """The accuracy reward of each example's greedy completion (0 where it gives none), for paired comparisons."""
    completions = greedy_completions(engine, examples, encoder, max_new_tokens, agent)
    return scorer.accuracy_values(scorer.score(examples, [[c] for c in completions], step))


def greedy_accuracy(engine, scorer: Scorer, examples: list[Example], encoder: PromptEncoder, max_new_tokens: int,
                    step: int = 0, agent=None) -> float:
    """Mean accuracy reward of the examples' greedy completions (the share solved, for a 0/1 reward)."""
    scores = greedy_scores(engine, scorer, examples, encoder, max_new_tokens, step, agent)
    return sum(scores) / len(scores)


def sampled_pass_at_k(engine, scorer: Scorer, examples: list[Example], encoder: PromptEncoder, n: int,
                      max_new_tokens: int, temperature: float = 1.0, seed: int = 0, ks: list[int] | None = None,
                      step: int = 0, agent=None) -> dict[int, float]:
    """Mean pass@k over examples for k in ks (default 1, 2, 4, ..., n) from n samples per problem; a sample solves
    its problem when its accuracy reward is >= 1."""
    ks = ks or [2**i for i in range(n.bit_length()) if 2**i <= n]
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    groups = generate_groups(engine, examples, encoder, params, agent)
    solved = [v >= 1.0 for v in scorer.accuracy_values(scorer.score(examples, groups, step))]
    correct = [sum(solved[i * n:(i + 1) * n]) for i in range(len(examples))]
    return {k: sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}


def list_metrics(task, examples: list[Example], texts: list[str], ks: list[int] | None = None) -> dict[str, float]:
    """Recall@k and NDCG@k of a ranked-list task's completions (one item per line; `texts[i]` answers
    `examples[i]`), k in ks (default 1..K by doubling, and K): Recall@k = ground-truth items found in the first k
    lines / |ground truth|; NDCG@k with binary relevance."""
    from rollout.list_metrics import ndcg_at_k, recall_at_k

    k_max = task.list_length
    ks = ks or sorted({*[2**i for i in range(k_max.bit_length()) if 2**i <= k_max], k_max})
    out = {f"recall@{k}": 0.0 for k in ks} | {f"ndcg@{k}": 0.0 for k in ks}
    for ex, text in zip(examples, texts, strict=True):
        rel = task.relevance(ex, task.parse(text))
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


def reference_ids(task, examples: list[Example], encoder: PromptEncoder, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, reference completion ids + the end token) of each problem: what the reference-answer log-prob
    scores (extrapolate.decision_metric reference_logprob, learner.adaptive_step's probe). A task without
    `reference_completion` cannot be scored this way (ValueError)."""
    rng, tokenizer = random.Random(seed), encoder.tokenizer
    try:
        texts = [task.reference_completion(ex, rng) for ex in examples]
    except NotImplementedError:
        raise ValueError(f"task {type(task).__name__} has no reference_completion (one correct completion of a "
                         f"problem), which the reference-answer log-prob scores; implement it") from None
    completions = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    return encoder.ids(examples), completions
