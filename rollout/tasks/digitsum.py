"""`digitsum`: write an n-digit number with a given first digit, last digit and digit total.

Many answers are valid (e.g. 5 digits, total 20, from 3 to 7: 34907, 38027, 30557, ...), so sampling diversity
matters: this is the task where pass@N and the unlikeliness reward (arXiv 2506.02355) are measured.
Example: prompt "5d s20 3..7:" -> completion "34907".
"""

from __future__ import annotations

import random

from rollout.tasks.base import Example, Task, first_line
from rollout.tasks.registry import register_task


@register_task("digitsum")
class DigitSum(Task):
    description = "an n-digit number with given first and last digits and digit total; many valid answers"
    max_new_tokens = 10
    many_answers = True
    max_train_pool = 10_000  # of ~15,800 distinct training problems
    bootstrap_overrides = {"sft_steps": 800}  # greedy accuracy ~0.4: partly right, room for RL

    def make_example(self, rng: random.Random, index: int) -> Example:
        n_digits = rng.randint(3, 8)
        first, last = rng.randint(1, 9), rng.randint(0, 9)
        middle = rng.randint(0, 9 * (n_digits - 2))
        total = first + last + middle
        return Example(id="", prompt=f"{n_digits}d s{total} {first}..{last}:",
                       answer={"digits": n_digits, "sum": total, "first": first, "last": last})

    def score(self, example: Example, completion: str) -> float:
        text = first_line(completion)
        want = example.answer
        if len(text) != want["digits"] or not text.isascii() or not text.isdigit():
            return 0.0
        ok = (int(text[0]) == want["first"] and int(text[-1]) == want["last"]
              and sum(int(c) for c in text) == want["sum"])
        return 1.0 if ok else 0.0

    def reference_completion(self, example: Example, rng: random.Random) -> str:
        """A random valid answer: middle digits drawn one by one from the values that keep the total reachable."""
        want = example.answer
        remaining = want["sum"] - want["first"] - want["last"]
        middle = []
        for slots_left in range(want["digits"] - 2, 0, -1):
            low, high = max(0, remaining - 9 * (slots_left - 1)), min(9, remaining)
            digit = rng.randint(low, high)
            middle.append(digit)
            remaining -= digit
        return "".join(map(str, [want["first"], *middle, want["last"]]))
