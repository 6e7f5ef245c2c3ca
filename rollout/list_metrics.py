"""Ranked-list metrics with binary relevance (used by list tasks and their evaluation)."""

from __future__ import annotations

import math


def ndcg_at_k(relevance: list[float], n_relevant: int, k: int) -> float:
    """Binary-relevance NDCG@k: sum_{j<=k} rel_j / log2(j + 1), over the ideal list's value."""
    dcg = sum(r / math.log2(j + 2) for j, r in enumerate(relevance[:k]))
    ideal = sum(1 / math.log2(j + 2) for j in range(min(k, n_relevant)))
    return dcg / ideal if ideal > 0 else 0.0


def recall_at_k(relevance: list[float], n_relevant: int, k: int) -> float:
    """Share of the ground-truth items found in the first k ranks."""
    return sum(relevance[:k]) / n_relevant if n_relevant else 0.0
