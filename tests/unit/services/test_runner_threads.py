"""The single-process runner's torch threads: LEAPFROG_THREADS first, then OMP_NUM_THREADS, then every core; a bad
value is an error naming the variable."""

from __future__ import annotations

import os

import pytest

from services.runtime import runner_threads


def test_leapfrog_threads_then_omp_then_every_core():
    assert runner_threads({"LEAPFROG_THREADS": "3", "OMP_NUM_THREADS": "1"}) == 3
    assert runner_threads({"OMP_NUM_THREADS": "1"}) == 1
    assert runner_threads({"OMP_NUM_THREADS": " "}) == max(1, os.cpu_count() or 1)
    assert runner_threads({}) == max(1, os.cpu_count() or 1)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_names_the_variable(value):
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        runner_threads({"OMP_NUM_THREADS": value})
