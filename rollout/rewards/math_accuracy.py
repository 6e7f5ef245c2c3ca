"""`math_accuracy`: 1 when the completion's final answer equals the reference answer mathematically, on the
math-verify library (docs/methods.md#built-in-rewards), else 0.

The answer of a completion is, in this order: what follows its last `####` (GSM8K's format), the content of its
last `\\boxed{...}`, or its last number (thousands separators dropped: "1,000" is 1000). The reference answer is
what follows its last `####`, else its last `\\boxed{}`, else the whole of it ("0.5", "\\frac{1}{2}", "1,000", 72).
Both are parsed by math-verify as LaTeX or plain expressions and compared by `verify` (numbers, fractions, symbolic
expressions, sets): "\\boxed{\\frac{1}{2}}" and "0.5" are equal. A completion with no answer scores 0; a reference
answer that does not parse is an error naming it (the batch gets no math_accuracy reward, counted).

math-verify's timeouts use signal.alarm, which works only in a process's main thread, and reward functions run in
threads: parsing and verification run in a small pool of worker processes (spawned once, on first use), where each
problem is given `PARSE_TIMEOUT_S` to parse and to verify.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from rollout.rewards.base import REWARDS, RewardFn, completion_text

POOL_WORKERS = max(1, min(2, os.cpu_count() or 1))
PARSE_TIMEOUT_S = 5
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


@REWARDS.register("math_accuracy")
def math_accuracy_reward() -> RewardFn:
    return math_accuracy


def math_accuracy(prompts, completions, answer, **columns) -> list[float]:
    """1.0 where the completion's final answer verifies against `answer`, else 0.0 (in the worker pool)."""
    pairs = [(completion_text(c), str(a)) for c, a in zip(completions, answer, strict=True)]
    try:
        results = list(worker_pool().map(verify_pair, pairs, chunksize=max(1, len(pairs) // (4 * POOL_WORKERS))))
    except BrokenProcessPool:
        reset_pool()
        raise RuntimeError("math_accuracy: a math-verify worker process died (they are spawned: a script that starts "
                           "a run needs its code under `if __name__ == '__main__':`); a new pool starts on the next "
                           "call") from None
    bad = [gold for (_, gold), r in zip(pairs, results, strict=True) if r is None]
    if bad:
        raise ValueError(f"math_accuracy: the reference answer {bad[0]!r} has no number or expression math-verify "
                         f"can parse ({len(bad)} such answer(s) in this batch); fix data.answer_key's column")
    return results


def worker_pool() -> ProcessPoolExecutor:
    """The process pool of math-verify, spawned on first use (not forked: the driver holds threads and torch)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=POOL_WORKERS, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def reset_pool() -> None:
    """Forget a broken pool (a worker died); the next call spawns a new one."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


def completion_answer(text: str) -> str | None:
    """The final answer written in a completion: after its last ####, in its last \\boxed{}, or its last number."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        found = _NUMBER.search(tail)
        return found.group().replace(",", "") if found else (tail.splitlines()[0] if tail else None)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def reference_answer(text: str) -> str:
    """The reference answer: after its last ####, in its last \\boxed{}, or the whole text."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return tail.replace(",", "") if _NUMBER.fullmatch(tail) else tail
    boxed = last_boxed(text)
    return boxed if boxed is not None else text.strip()


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None


def verify_pair(pair: tuple[str, str]) -> float | None:
    """In a worker process: 1.0 / 0.0 for (completion, reference), None when the reference does not parse."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    def parsed(answer: str):
        answer = answer.strip().strip("$").strip()
        return parse(f"${answer}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                     parsing_timeout=PARSE_TIMEOUT_S) if answer else []

    completion, reference = pair
    gold = parsed(reference_answer(reference))
    if all(isinstance(g, str) for g in gold):  # nothing but math-verify's fallback string: not an answer
        return None
    found = completion_answer(completion)
    prediction = parsed(found) if found else []
    if not prediction:
        return 0.0
    return 1.0 if verify(gold, prediction, timeout_seconds=PARSE_TIMEOUT_S) else 0.0
