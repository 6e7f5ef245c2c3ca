"""`sums`: small additions asked in plain English as a chat message, for pretrained instruct models.

The prompt is one user message ("What is 7 + 12? Answer with just the number."), worded by one of a few templates,
so the chat template of an instruct model renders it. The verifier is exact: the answer is the last integer on the
completion's first line ("19", "7 + 12 = 19" and "The answer is 19." all give 19), and it must equal a + b. A model
that explains instead of answering runs out of tokens before the number (or writes several numbers on one line
only to end with the wrong one), so both correctness and a concise answer earn the reward.

Operands are 0..`max_operand` (20 by default: one- and two-digit numbers); an instruct model of ~100M parameters
starts partly right, which leaves RL room on both the format and the sums.
"""

from __future__ import annotations

import random
import re

from rollout.tasks.base import Example, Task
from rollout.tasks.registry import register_task

TEMPLATES = (
    "What is {a} + {b}? Answer with just the number.",
    "Add {a} and {b}. Reply with the number only.",
    "What do you get when you add {a} to {b}? Give only the number.",
    "Compute {a} plus {b}. Answer with a single number.",
)
_INTEGER = re.compile(r"-?\d+")


def last_integer_of_first_line(completion: str) -> int | None:
    """The last integer on the first non-empty line of a completion, or None when it has none."""
    for line in completion.strip().splitlines()[:1]:
        found = _INTEGER.findall(line.replace(",", ""))
        if found:
            return int(found[-1])
    return None


@register_task("sums")
class Sums(Task):
    description = "a + b (0..20) asked in plain English as a chat message; the exact sum, first line"
    max_new_tokens = 12
    max_operand = 20
    max_train_pool = 1_500

    def make_example(self, rng: random.Random, index: int) -> Example:
        a, b = rng.randint(0, self.max_operand), rng.randint(0, self.max_operand)
        text = rng.choice(TEMPLATES).format(a=a, b=b)
        return Example(id="", prompt=[{"role": "user", "content": text}], answer=a + b, meta={"a": a, "b": b})

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if last_integer_of_first_line(completion) == example.answer else 0.0

    def reference_completion(self, example: Example, rng: random.Random) -> str:
        return str(example.answer)
