"""Reward functions in TRL's signature and the one scoring path (rollout/rewards/): math-verify on tricky answers in
its worker processes, the format and length rewards, weights and None (TRL's nan-sum), per-function metrics, async
functions run concurrently, errors and timeouts counted and failing the run past the threshold."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import threading
import time

import pytest

from rollout.engines.base import Completion
from rollout.rewards import REWARDS, RewardFailure, RewardFunction, Scorer, load_reward, task_reward
from rollout.rewards.math_accuracy import completion_answer, reference_answer
from rollout.rewards.scorer import MIN_JUDGED
from rollout.tasks import load_task
from rollout.tasks.base import Example

# (completion, reference answer, math_accuracy)
MATH_TABLE = [
    ("The answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
    ("So the share is 0.5", "\\frac{1}{2}", 1.0),
    ("She pays $1,000 in total.\n#### 1,000", "1000", 1.0),
    ("In total 1,000 apples", "Each box ... 10 * 100 = 1000\n#### 1,000", 1.0),
    ("The temperature drops to -7 degrees.", "#### -7", 1.0),
    ("The temperature is 7 degrees.", "#### -7", 0.0),
    ("First 5 apples, then 12 apples.", "12", 1.0),  # the last number
    ("\\boxed{3}, not 5", "3", 1.0),  # the boxed answer before the last number
    ("#### 72\nchecking: 8 * 9", "72", 1.0),  # GSM8K's marker before the last number
    ("0.50", "1/2", 1.0),
    ("$\\boxed{x^2+1}$", "1 + x^2", 1.0),
    ("The answer is 12", "13", 0.0),
    ("I cannot tell.", "3", 0.0),
    ("", "4", 0.0),
    ("12.", 12, 1.0),  # a numeric answer column
]


def completion(text: str, ids: list[int] | None = None) -> Completion:
    ids = ids if ids is not None else [1] * max(1, len(text))
    return Completion(prompt_index=0, prompt_ids=[0], token_ids=ids, text=text, logprobs=[0.0] * len(ids),
                      finish_reason="stop")


def examples(answers: list, prompt="q", **meta) -> list[Example]:
    return [Example(id=f"e{i}", prompt=prompt, answer=a, meta={k: v[i] for k, v in meta.items()})
            for i, a in enumerate(answers)]


def test_answer_extraction_prefers_the_marker_then_the_box_then_the_last_number():
    assert completion_answer("so #### 1,234 done 7") == "1234"
    assert completion_answer("x \\boxed{\\frac{a}{\\sqrt{2}}} and 9") == "\\frac{a}{\\sqrt{2}}"
    assert completion_answer("3 then -4.5") == "-4.5"
    assert completion_answer("no digits") is None
    assert reference_answer("steps 2 + 2 = 4\n#### 4") == "4" and reference_answer(" \\frac{1}{2} ") == "\\frac{1}{2}"


def test_math_accuracy_on_tricky_answers_in_worker_processes():
    """math-verify's timeouts use signals (main thread only): scored through the Scorer, whose sync functions run
    in threads, the verdicts are still right (the verl/TRL failure mode is a silent 0 here)."""
    scorer = Scorer([RewardFunction("math_accuracy", load_reward("math_accuracy"))], max_completion_length=64)
    exs = examples([ref for _, ref, _ in MATH_TABLE])
    scores = scorer.score(exs, [[completion(text)] for text, _, _ in MATH_TABLE])
    assert scores.values["math_accuracy"] == [want for _, _, want in MATH_TABLE]
    assert scores.errors["math_accuracy"] == 0


def test_a_reference_answer_that_does_not_parse_is_an_error_not_a_zero():
    messages = []
    scorer = Scorer([RewardFunction("math_accuracy", load_reward("math_accuracy"))], 64, warn=messages.append)
    scores = scorer.score(examples(["#### ?", "4"]), [[completion("4")], [completion("4")]])
    assert scores.values["math_accuracy"] == [None, None] and scores.errors["math_accuracy"] == 2
    assert any("'#### ?'" in m for m in messages)


def test_format_reward_searches_the_pattern_in_text_and_chat_completions():
    fmt = load_reward("format", {"pattern": r"^<think>.*</think>\s*\S"})
    out = fmt(prompts=["a", "b", "c"], completions=["<think>x\ny</think> 4", "4", [{"role": "assistant",
                                                                                  "content": "<think></think>5"}]])
    assert out == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="not a regular expression"):
        load_reward("format", {"pattern": "("})
    with pytest.raises(ValueError, match="missing a required argument: 'pattern'"):
        load_reward("format")


def test_overlong_reward_is_dapo_soft_punishment_as_trl_computes_it():
    from trl.rewards.other_rewards import get_soft_overlong_punishment

    ids = [[1] * n for n in (1, 50, 80, 81, 90, 100, 101)]
    ours = load_reward("overlong", {"soft_punish_cache": 20, "max_completion_len": 100})
    theirs = get_soft_overlong_punishment(max_completion_len=100, soft_punish_cache=20)
    assert ours(prompts=[""] * 7, completions=[""] * 7, completion_ids=ids, max_completion_length=999) == theirs(ids)
    assert theirs(ids)[4] == -0.5  # 90 tokens: halfway into the last 20
    default = load_reward("overlong")  # L_max = the run's limit, L_cache = a fifth of it
    assert default(prompts=[""] * 3, completions=[""] * 3, completion_ids=[[1] * 80, [1] * 90, [1] * 100],
                   max_completion_length=100) == [0.0, -0.5, -1.0]
    length = load_reward("length")
    assert length(prompts=[""] * 2, completions=[""] * 2, completion_ids=[[1] * 10, [1] * 40],
                  max_completion_length=40) == [-0.25, -1.0]


def test_weighted_sum_skips_none_and_unscorable_completions_get_their_group_mean():
    def first(prompts, completions, **kw):
        return [1.0, None, 0.0, None]

    def second(prompts, completions, **kw):
        return [0.5, None, None, 1.0]

    scorer = Scorer([RewardFunction("first", first, weight=2.0), RewardFunction("second", second, weight=-1.0)], 8)
    scores = scorer.score(examples([1, 2]), [[completion("a"), completion("b")], [completion("c"), completion("d")]])
    assert scores.totals == [1.5, None, 0.0, -1.0]
    assert scores.training_rewards(group_size=2) == [1.5, 1.5, 0.0, -1.0]  # the unscorable one: its group's mean
    m = scores.metrics()
    assert m["rewards/first/mean"] == 0.5 and m["rewards/second/mean"] == 0.75  # over the completions each scored
    assert m["rewards/first/std"] == pytest.approx(0.5 ** 0.5) and m["reward_errors/first"] == 0


def test_columns_prompts_and_completions_arrive_as_trl_passes_them():
    seen = {}

    def spy(prompts, completions, answer, completion_ids, trainer_state, max_completion_length, **columns):
        seen.update(prompts=prompts, completions=completions, answer=answer, ids=completion_ids, columns=columns,
                    step=trainer_state.global_step, steps=trainer_state.max_steps, limit=max_completion_length)
        return [0.0] * len(prompts)

    chat = [{"role": "user", "content": "hi"}]
    exs = [Example(id="a", prompt=chat, answer="7", meta={"level": 3}), Example(id="b", prompt="text", answer="8",
                                                                                meta={"level": 5})]
    scorer = Scorer([RewardFunction("spy", spy)], max_completion_length=32, max_steps=10)
    scorer.score(exs, [[completion("x", [5, 6]), completion("y", [7])], [completion("z", [8])]], step=4)
    assert seen["prompts"] == [chat, chat, "text"] and seen["answer"] == ["7", "7", "8"]
    assert seen["completions"] == [[{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "y"}],
                                   "z"]
    assert seen["ids"] == [[5, 6], [7], [8]] and seen["columns"] == {"level": [3, 3, 5]}
    assert (seen["step"], seen["steps"], seen["limit"]) == (4, 10, 32)


def test_a_trl_reward_function_plugs_in_as_is():
    fn = load_reward("trl.rewards.format_rewards:think_format_reward")
    scorer = Scorer([RewardFunction("think", fn)], 8)
    chat = [{"role": "user", "content": "q"}]
    scores = scorer.score([Example(id="a", prompt=chat, answer=None)],
                          [[completion("<think>r</think> 4"), completion("4")]])
    assert scores.values["think"] == [1.0, 0.0]


def test_async_rewards_run_concurrently_on_one_loop_with_the_sync_ones():
    loops, threads = set(), set()

    async def slow_a(prompts, completions, **kw):
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.6)
        return [1.0] * len(prompts)

    async def slow_b(prompts, completions, **kw):
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.6)
        return [2.0] * len(prompts)

    def sync(prompts, completions, **kw):
        threads.add(threading.current_thread().name)
        time.sleep(0.6)
        return [3.0] * len(prompts)

    scorer = Scorer([RewardFunction("a", slow_a), RewardFunction("b", slow_b), RewardFunction("s", sync)], 8)
    started = time.perf_counter()
    scores = scorer.score(examples([0]), [[completion("x")]])
    elapsed = time.perf_counter() - started
    assert scores.totals == [6.0] and elapsed < 1.5, elapsed  # three 0.6 s functions at once, not 1.8 s in turn
    assert len(loops) == 1 and threads and threading.current_thread().name not in threads
    scorer.score(examples([0]), [[completion("x")]])
    assert len(loops) == 1  # the same loop for every batch


def test_errors_and_timeouts_are_counted_per_function_and_never_a_silent_zero():
    messages = []

    def broken(prompts, completions, **kw):
        raise ZeroDivisionError("verifier bug")

    def hangs(prompts, completions, **kw):
        time.sleep(1.0)
        return [1.0] * len(prompts)

    def wrong_length(prompts, completions, **kw):
        return [1.0]

    def bad_value(prompts, completions, **kw):
        return ["yes", float("inf"), 1]

    fns = [RewardFunction("broken", broken, max_error_rate=1.0), RewardFunction("hangs", hangs, timeout_s=0.1,
                                                                                max_error_rate=1.0),
           RewardFunction("wrong_length", wrong_length, max_error_rate=1.0),
           RewardFunction("bad_value", bad_value, max_error_rate=1.0), RewardFunction("ok", lambda **kw: [0.0] * 3)]
    scorer = Scorer(fns, 8, warn=messages.append)
    scores = scorer.score(examples([0, 1, 2]), [[completion("a")], [completion("b")], [completion("c")]], step=7)
    assert scores.errors == {"broken": 3, "hangs": 3, "wrong_length": 3, "bad_value": 2, "ok": 0}
    assert scores.values["broken"] == [None] * 3 and scores.values["bad_value"] == [None, None, 1.0]
    assert scores.totals == [0.0, 0.0, 1.0]  # the working functions still count
    m = scores.metrics()
    assert m["reward_errors/broken"] == 3 and m["rewards/broken/mean"] is None
    text = "\n".join(messages)
    assert "ZeroDivisionError: verifier bug" in text and "at step 7" in text and "timed out after 0.1 s" in text
    assert "returned 1 values, but 3 were expected" in text and "'yes'" in text


def test_a_raising_reward_fails_the_run_past_its_error_rate_naming_the_function():
    calls = {"n": 0}

    def flaky(prompts, completions, **kw):
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            raise RuntimeError(f"judge unreachable (call {calls['n']})")
        return [1.0] * len(prompts)

    batch = examples(list(range(8)))
    groups = [[completion("x")] for _ in batch]
    tolerant = Scorer([RewardFunction("flaky", flaky, max_error_rate=0.3)], 8, warn=lambda m: None)
    for step in range(8):  # 1 call in 4 fails: 25% <= 30%
        tolerant.score(batch, groups, step)
    calls["n"] = 0
    strict = Scorer([RewardFunction("flaky", flaky, max_error_rate=0.2)], 8, warn=lambda m: None)
    with pytest.raises(RewardFailure, match=r"'flaky' failed on 8 of 32 .*25%.*judge unreachable \(call 4\)"):
        for step in range(8):
            strict.score(batch, groups, step)
    assert calls["n"] == 4 and MIN_JUDGED == 32  # judged from 32 completions on, failed as soon as it was


def test_load_reward_user_functions_and_errors(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent('''
        def exact(prompts, completions, answer, bonus=0.0, **kw):
            return [1.0 + bonus if c.strip() == str(a) else 0.0 for c, a in zip(completions, answer)]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_reward("my_rewards:exact", {"bonus": 0.5})
    assert fn(prompts=["p", "p"], completions=["4", "5"], answer=[4, 4]) == [1.5, 0.0]
    with pytest.raises(ValueError, match="has no function 'nope'"):
        load_reward("my_rewards:nope")
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod_xyz'"):
        load_reward("no_such_mod_xyz:f")
    with pytest.raises(ValueError, match="built-ins: format, length, math_accuracy, overlong"):
        load_reward("accuracy")
    assert {"math_accuracy", "format", "overlong", "length"} == set(REWARDS)
    sys.modules.pop("my_rewards", None)


def test_a_task_verifier_is_a_reward_function_of_the_same_signature():
    task = load_task("arith")
    exs = task.examples("test", 4, seed=0)
    scorer = Scorer.for_job([], task, task.max_new_tokens)
    texts = [ex.answer if i % 2 == 0 else "0" for i, ex in enumerate(exs)]
    scores = scorer.score(exs, [[completion(t)] for t in texts])
    assert scores.values["arith"] == [task.score(ex, t) for ex, t in zip(exs, texts, strict=True)] == [1, 0, 1, 0]
    direct = task_reward(task)(prompts=[ex.prompt for ex in exs], completions=texts, answer=[ex.answer for ex in exs],
                               a=[ex.meta["a"] for ex in exs], b=[ex.meta["b"] for ex in exs])
    assert direct == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="no verifier of its own"):
        Scorer.for_job([], type("NoVerifier", (type(task).__mro__[1],), {"name": "x"})(), 4)


def test_the_readme_job_and_reward_function_work_as_shown(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    import yaml

    from services.config import parse_config

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("\n## Your model, data and rewards\n", 1)[1].split("\n## ", 1)[0]
    job = parse_config(yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1)), "README")
    assert job.rollout.task == "dataset" and [r.metric_name for r in job.rewards] == ["math_accuracy", "format",
                                                                                      "concise"]
    (tmp_path / "my_rewards.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    scorer = Scorer.for_job(job.rewards, None, max_completion_length=256)
    chat = [{"role": "user", "content": "What is 6 * 7?"}]
    scores = scorer.score([Example(id="a", prompt=chat, answer="#### 42")],
                          [[completion("6 * 7 = 42\n#### 42", [1] * 64), completion("I think 41", [1] * 128)]])
    assert scores.values == {"math_accuracy": [1.0, 0.0], "format": [1.0, 0.0], "concise": [0.75, 0.5]}
    assert scores.totals == pytest.approx([1.0 + 0.2 + 0.075, 0.05])
    sys.modules.pop("my_rewards", None)
