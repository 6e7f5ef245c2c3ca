"""pass@k's unbiased estimator against brute force over all k-subsets of the n samples."""

from itertools import combinations

import pytest

from rollout.evaluate import pass_at_k


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        samples = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(combinations(range(n), k))
            brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_paired_difference_against_a_hand_computation():
    from rollout.evaluate import paired_difference

    a, b = [1, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 1]  # differences 0, 1, 0, 1, 0, 0: mean 1/3, sample var 4/15
    mean, se = paired_difference(a, b)
    assert mean == pytest.approx(1 / 3) and se == pytest.approx((4 / 15 / 6) ** 0.5)
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1, 0], [1])
