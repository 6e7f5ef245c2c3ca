"""The word-problem dataset (deploy/data/make_word_problems.py): deterministic, in GSM8K's format (a worked solution
whose calculator annotations are all correct, ending in `#### N`), no question in both splits, and the committed
files are exactly what the generator writes. The reference job reads them as a `dataset` task."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import yaml

from tests.conftest import REPO

DATA = REPO / "deploy" / "data" / "word_problems"
JOB = REPO / "deploy" / "jobs" / "word_problems.yaml"
ANNOTATION = re.compile(r"<<([^=<>]+)=(-?\d+)>>(-?\d+)")


def generator():
    spec = importlib.util.spec_from_file_location("make_word_problems", REPO / "deploy" / "data" /
                                                  "make_word_problems.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]


def check_row(row: dict) -> None:
    """GSM8K's shape, and every number of the solution recomputed: each annotation's expression equals its result,
    the text after it repeats the result, and the final answer is the last step's result."""
    assert set(row) == {"question", "answer"} and row["question"].endswith("?")
    lines = row["answer"].split("\n")
    final = re.fullmatch(r"#### (-?\d+)", lines[-1])
    assert final, row["answer"]
    results = []
    for line in lines[:-1]:
        found = ANNOTATION.findall(line)
        assert len(found) == 1, line
        expression, value, shown = found[0]
        assert re.fullmatch(r"[\d+\-*/]+", expression), expression
        exact = eval(expression)  # digits and + - * / only (checked above)
        assert exact == int(value) == int(shown), line
        results.append(int(value))
    assert results and results[-1] == int(final.group(1)) >= 0, row["answer"]
    numbers = {int(n) for n in re.findall(r"\d+", row["question"])}
    first_operands = {int(n) for n in re.findall(r"\d+", ANNOTATION.search(lines[0]).group(1))}
    assert first_operands <= numbers, (row["question"], lines[0])  # the first step uses the question's numbers


def test_generation_is_deterministic_and_seeded():
    gen = generator()
    assert gen.generate(3, 200, 50) == gen.generate(3, 200, 50)
    assert gen.generate(3, 200, 50) != gen.generate(4, 200, 50)


def test_every_answer_is_correct_by_construction_and_in_gsm8k_format():
    gen = generator()
    train, test = gen.generate(7, 1500, 300)
    for row in train + test:
        check_row(row)
    kinds = {row["answer"].count("<<") for row in train}
    assert kinds == {1, 2}  # one- and two-step problems


def test_no_question_is_in_both_splits_nor_twice_in_one():
    gen = generator()
    train, test = gen.generate(gen.SEED, gen.TRAIN, gen.TEST)
    assert len(train) == gen.TRAIN and len(test) == gen.TEST
    train_q, test_q = [r["question"] for r in train], [r["question"] for r in test]
    assert len(set(train_q)) == len(train_q) and len(set(test_q)) == len(test_q)
    assert not set(train_q) & set(test_q)


def test_too_many_problems_is_a_clear_error(monkeypatch):
    gen = generator()
    monkeypatch.setattr(gen, "FAMILIES", (lambda rng: (f"Is {rng.randint(1, 3)} odd?", "#### 1"),))
    with pytest.raises(ValueError, match="no new question in 10000 draws after 3 distinct questions"):
        gen.generate(0, 4, 1)


def test_committed_files_equal_a_fresh_generation(tmp_path):
    gen = generator()
    train, test = gen.generate(gen.SEED, gen.TRAIN, gen.TEST)
    gen.write_jsonl(tmp_path / "train.jsonl", train)
    gen.write_jsonl(tmp_path / "test.jsonl", test)
    for split in ("train", "test"):
        assert (DATA / f"{split}.jsonl").read_bytes() == (tmp_path / f"{split}.jsonl").read_bytes(), \
            f"deploy/data/word_problems/{split}.jsonl is stale: run .venv/bin/python deploy/data/make_word_problems.py"
    for row in committed("train")[:200] + committed("test"):
        check_row(row)


def test_the_reference_job_reads_the_committed_splits():
    from rollout.tasks import load_task
    from services.config import load_config

    cfg = load_config(JOB)
    assert cfg.rollout.task == "dataset" and cfg.data.prompt_key == "question" and cfg.data.answer_key == "answer"
    assert [r.fn for r in cfg.rewards] == ["math_accuracy", "format"]
    assert yaml.safe_load(JOB.read_text())["data"]["path"] == "deploy/data/word_problems"
    cfg.data.path = str(REPO / cfg.data.path)  # the job names it from the repository root
    task = load_task("dataset", cfg.data)
    assert len(task.splits["train"]) == generator().TRAIN and len(task.splits["test"]) == generator().TEST
    assert cfg.rollout.eval_size <= len(task.splits["test"])
    first, row = task.splits["test"][0], committed("test")[0]
    assert first.answer == row["answer"] and first.prompt[-1] == {"role": "user", "content": row["question"]}
    assert first.prompt[0] == {"role": "system", "content": cfg.data.system_prompt}
    # the format bonus pays for the shape the system prompt asks for ("... like: 3 + 4 = 7")
    import re

    example = cfg.data.system_prompt.rsplit("like:", 1)[1].strip()
    pattern = cfg.rewards[1].args["pattern"]
    assert re.search(pattern, example, re.DOTALL) and not re.search(pattern, example + " apples", re.DOTALL)
