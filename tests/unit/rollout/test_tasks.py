"""Contract tests of the task plug-in interface (every registered task, and a user task by module path)."""

from __future__ import annotations

import random
import sys
import textwrap

import pytest

from rollout.tasks import TASKS, load_task
from rollout.tasks.base import Example

MALFORMED = ["", " ", "\n", "abc", "-1", "1e9", "９", "\x00\xff", "12\n34", "0" * 500, "😀", "None", "  007  "]


def all_tasks():
    """The generated tasks (the dataset task reads a user's file instead)."""
    load_task("arith")  # registers the built-ins
    return [name for name in sorted(TASKS) if name != "dataset"]


@pytest.mark.parametrize("name", all_tasks())
def test_examples_are_deterministic_distinct_and_split(name):
    task = load_task(name)
    a = task.examples("train", 300, seed=3)
    b = task.examples("train", 300, seed=3)
    assert [e.prompt for e in a] == [e.prompt for e in b]
    assert len({e.prompt_key for e in a}) == 300
    test = task.examples("test", 100, seed=3)
    assert not {e.prompt_key for e in a} & {e.prompt_key for e in test}
    assert [e.prompt for e in task.examples("train", 300, seed=4)] != [e.prompt for e in a]


@pytest.mark.parametrize("name", all_tasks())
def test_verifier_is_pure_total_and_accepts_reference(name):
    task = load_task(name)
    rng = random.Random(0)
    for ex in task.examples("test", 50, seed=0):
        ref = task.reference_completion(ex, rng)
        assert task.score(ex, ref) == 1.0
        assert task.score(ex, ref + "\ntrailing lines are ignored") == 1.0
        for bad in MALFORMED:
            s = task.score(ex, bad)
            assert s in (0.0, 1.0)
        assert task.score(ex, ref) == task.score(ex, ref)  # pure
        assert isinstance(task.warmstart_completion(ex, rng), str)
    meta = task.metadata()
    assert meta["name"] == name and meta["max_new_tokens"] >= 1


def test_arith_answers_least_significant_digit_first():
    task = load_task("arith")
    ex = Example(id="x", prompt="57+68=", answer="521", meta={"a": 57, "b": 68})
    assert task.score(ex, "521") == 1.0
    assert task.score(ex, "125") == 0.0


def test_arith_warmstart_drops_carries_only():
    """The noisy demonstrations differ from the answer only where a carry was dropped."""
    task = load_task("arith")
    rng = random.Random(0)
    no_carry = Example(id="x", prompt="12+34=", answer="64", meta={"a": 12, "b": 34})
    assert {task.warmstart_completion(no_carry, rng) for _ in range(50)} == {"64"}
    carry = Example(id="y", prompt="57+68=", answer="521", meta={"a": 57, "b": 68})
    seen = {task.warmstart_completion(carry, rng) for _ in range(400)}
    assert "521" in seen and len(seen) > 1


def test_digitsum_has_many_valid_answers():
    task = load_task("digitsum")
    ex = Example(id="x", prompt="4d s17 8..0:", answer={"digits": 4, "sum": 17, "first": 8, "last": 0})
    assert task.score(ex, "8900") == task.score(ex, "8450") == 1.0
    assert task.score(ex, "1790") == 0.0  # wrong first digit
    assert task.score(ex, "890") == 0.0
    assert task.many_answers


def test_user_task_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent('''
        from rollout.tasks.base import Example, Task
        class Echo(Task):
            name = "echo"
            max_new_tokens = 4
            def make_example(self, rng, index):
                w = str(rng.randint(0, 10**6))
                return Example(id="", prompt=f"echo {w}:", answer=w)
            def score(self, example, completion):
                return 1.0 if completion.strip() == example.answer else 0.0
            def reference_completion(self, example, rng):
                return example.answer
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    task = load_task("my_tasks:Echo")
    ex = task.examples("test", 5)[0]
    assert task.score(ex, ex.answer) == 1.0
    sys.modules.pop("my_tasks", None)


def test_unknown_task_errors_name_the_fix():
    with pytest.raises(ValueError, match="built-in tasks"):
        load_task("nope")
    with pytest.raises(ValueError, match="cannot import module"):
        load_task("no_such_module_xyz:Task")


def test_registry_refuses_a_duplicate_name_and_lists_the_valid_ones():
    from rollout.tasks import register_task
    from rollout.tasks.base import Task

    assert {"arith", "digitsum", "ranklist", "sums"} <= set(TASKS)  # registered by importing rollout.tasks alone
    with pytest.raises(ValueError, match="'arith' is already registered"):
        register_task("arith")(type("Other", (Task,), {"name": "arith"}))
    assert TASKS.get("arith").__name__ == "Arith"  # the built-in is kept
    with pytest.raises(ValueError) as err:
        load_task("arithmetic")
    assert "arith, dataset, digitsum, ranklist, sums" in str(err.value)


def test_list_tasks_are_list_task_instances():
    from rollout.tasks import ListTask

    assert [name for name in all_tasks() if isinstance(load_task(name), ListTask)] == ["ranklist"]
    task = load_task("ranklist")
    ex = task.examples("test", 1, seed=0)[0]
    assert task.n_relevant(ex) == len(ex.answer["truth"])
    assert task.relevance(ex, task.parse(task.reference_completion(ex, random.Random(0)))) == [1.0] * 5
    assert task.parse("a \n b\nc\nd\ne\nf") == ["a", "b", "c", "d", "e"]
    with pytest.raises(TypeError, match="abstract"):
        type("NoRelevance", (ListTask,), {"name": "x", "list_length": 3})()
