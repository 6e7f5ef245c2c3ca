"""`arith`: multi-digit addition with one checkable answer.

The answer is written least-significant digit first ("reversed"), the format in which small transformers
learn addition digit by digit with the carry (Lee et al. 2023, "Teaching Arithmetic to Small Transformers",
arXiv 2307.03381): the supervised warm-start then improves smoothly instead of jumping, so the default model
can be stopped part-way and RL has room. Example: prompt "57+68=" -> completion "521" (125 reversed).

The warm-start demonstrations are imperfect on purpose, like a noisy SFT set: each carry is dropped with
probability `warmstart_carry_drop` (0.65), e.g. "57+68=" -> "511" instead of "521". The bootstrapped model thus
carries correctly only part of the time and is right on roughly a third of the problems (those with few
carries); the reward (exact answer) is what teaches it to carry reliably, so RL's gain is real and graded
(problems with more carries need more sharpening).
"""

from __future__ import annotations

import random

from rollout.tasks.base import Example, Task, first_line
from rollout.tasks.registry import register_task


@register_task("arith")
class Arith(Task):
    description = "a+b with 2-4 digit operands; answer digits least-significant first"
    max_new_tokens = 6
    digits = (2, 4)  # an operand's number of digits, both ends included

    def make_example(self, rng: random.Random, index: int) -> Example:
        da, db = rng.randint(*self.digits), rng.randint(*self.digits)
        a = rng.randint(10 ** (da - 1) if da > 1 else 0, 10**da - 1)
        b = rng.randint(10 ** (db - 1) if db > 1 else 0, 10**db - 1)
        return Example(id="", prompt=f"{a}+{b}=", answer=str(a + b)[::-1], meta={"a": a, "b": b})

    def score(self, example: Example, completion: str) -> float:
        return 1.0 if first_line(completion) == example.answer else 0.0

    warmstart_carry_drop = 0.65

    def reference_completion(self, example: Example, rng: random.Random) -> str:
        return example.answer

    def warmstart_completion(self, example: Example, rng: random.Random) -> str:
        """Schoolbook addition, least-significant digit first, dropping each carry with probability q."""
        a, b = str(example.meta["a"])[::-1], str(example.meta["b"])[::-1]
        digits, carry = [], 0
        for i in range(max(len(a), len(b))):
            total = int(a[i] if i < len(a) else 0) + int(b[i] if i < len(b) else 0) + carry
            digits.append(str(total % 10))
            carry = total // 10
            if carry and rng.random() < self.warmstart_carry_drop:
                carry = 0
        if carry:
            digits.append("1")
        return "".join(digits)
