"""`digitsum`: write a number with a given count of digits whose digits add up to a given total.

Many answers are valid (e.g. 4 digits summing to 17: 8900, 1772, 9080, ...), so sampling diversity matters:
this is the task where pass@N and the unlikeliness reward (arXiv 2506.02355) are measured.
Example: prompt "4d s17:" -> completion "8900" (any 4-digit number, no leading zero, digit sum 17).
"""

from __future__ import annotations

import random

from rollout.tasks.base import Example, Task, first_line
from rollout.tasks.registry import register_task


@register_task("digitsum")
class DigitSum(Task):
    name = "digitsum"
    description = "an n-digit number (no leading zero) whose digits sum to s; many valid answers"
    max_new_tokens = 8
    many_answers = True

    def make_example(self, rng: random.Random, index: int) -> Example:
        n_digits = rng.randint(2, 6)
        total = rng.randint(2, 9 * n_digits - 1)
        return Example(id="", prompt=f"{n_digits}d s{total}:", answer={"digits": n_digits, "sum": total})

    def score(self, example: Example, completion: str) -> float:
        text = first_line(completion)
        n_digits, total = example.answer["digits"], example.answer["sum"]
        if len(text) != n_digits or not text.isdigit() or text[0] == "0":
            return 0.0
        return 1.0 if sum(int(c) for c in text) == total else 0.0

    def reference_completion(self, example: Example, rng: random.Random) -> str:
        """A uniformly random valid answer: first digit 1-9, the rest 0-9, digit sum exact."""
        n_digits, total = example.answer["digits"], example.answer["sum"]
        while True:
            digits = [rng.randint(1, 9)] + [rng.randint(0, 9) for _ in range(n_digits - 2)]
            last = total - sum(digits)
            if 0 <= last <= 9:
                return "".join(map(str, digits + [last]))
