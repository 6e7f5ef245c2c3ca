"""User code as a submitter would name it in a job: a task 'tests.integration.user_code:Sums3' and a reward
'tests.integration.user_code:exact' (tests/integration/test_api_checks.py)."""

from __future__ import annotations

from rollout.tasks.arith import Arith


class Sums3(Arith):
    name = "sums3"


def exact(prompts, completions, answer, **columns):
    return [float(c.strip() == str(a)) for c, a in zip(completions, answer, strict=True)]


class CountedSums(Arith):
    """A user task that counts its instances (tests/integration/test_prepare_once.py)."""

    name = "counted_sums"
    instances = 0

    def __init__(self):
        super().__init__()
        type(self).instances += 1
