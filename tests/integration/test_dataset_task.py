"""Your data and rewards: `rollout.task: dataset` reads JSONL, parquet, CSV and save_to_disk data (splits or a seeded
held-out fraction, every other column passed on), refuses bad data naming the file, row and key before any work,
drops long prompts and counts them; `leapfrog run` (run_job) trains on JSONL and parquet chat datasets with two
weighted user rewards (one async) and writes what the model wrote; a raising reward is counted and fails the run
past its error rate."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from common.run_dir import METRICS, SAMPLES, SUMMARY, read_jsonl
from rollout.config import DataConfig
from rollout.data import DataError, check_data
from rollout.prompts import PromptEncoder
from rollout.rewards import RewardFailure
from rollout.tasks import load_task
from services.config import ConfigError, parse_config
from services.loop import run_job

pytestmark = pytest.mark.integration
QUESTION = "What is 2 + 3? Answer with just the number."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sums(n: int) -> list[dict]:
    return [{"question": f"{i}+{i + 1}=", "answer": str(2 * i + 1)[::-1], "level": i % 3} for i in range(n)]


def test_jsonl_text_prompts_held_out_fraction_and_columns(tmp_path):
    path = write_jsonl(tmp_path / "sums.jsonl", sums(20))
    task = load_task("dataset", DataConfig(path=str(path), prompt_key="question", test_fraction=0.2, split_seed=1))
    train, test = task.examples("train", 1000), task.examples("test", 1000)
    assert (len(train), len(test)) == (16, 4) and task.max_train_pool == 16
    assert {e.prompt for e in train} | {e.prompt for e in test} == {r["question"] for r in sums(20)}
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    one = {e.prompt: e for e in train + test}["1+2="]
    assert one.answer == "3" and one.meta == {"answer": "3", "level": 1}  # every other column, the answer's too
    other = load_task("dataset", DataConfig(path=str(path), prompt_key="question", test_fraction=0.2, split_seed=2))
    assert {e.prompt for e in other.examples("test", 100)} != {e.prompt for e in test}  # the seed picks the rows
    sample = task.examples("train", 5, seed=0)
    assert sample == task.examples("train", 5, seed=0) != task.examples("train", 5, seed=1)
    assert [train.index(e) for e in sample] == sorted(train.index(e) for e in sample)  # in file order


def test_parquet_chat_prompts_save_to_disk_splits_and_split_files(tmp_path):
    import datasets

    rows = [{"messages": [{"role": "user", "content": f"{QUESTION} ({i})"}], "answer": 5, "skip": i == 0}
            for i in range(6)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "chat.parquet"))
    cfg = DataConfig(path=str(tmp_path / "chat.parquet"), messages_key="messages", system_prompt="Be brief.")
    task = load_task("dataset", cfg)
    ex = task.examples("train", 100)[0]
    assert ex.prompt[0] == {"role": "system", "content": "Be brief."} and ex.prompt[1]["role"] == "user"
    assert ex.answer == 5 and set(ex.meta) == {"answer", "skip"}

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(sums(8)),
                               "test": datasets.Dataset.from_list(sums(11)[8:])})
    dd.save_to_disk(str(tmp_path / "saved"))
    saved = load_task("dataset", DataConfig(path=str(tmp_path / "saved"), prompt_key="question", test_split="test"))
    assert [e.prompt for e in saved.examples("test", 10)] == ["8+9=", "9+10=", "10+11="]
    assert len(saved.examples("train", 10)) == 8

    (tmp_path / "files").mkdir()
    write_jsonl(tmp_path / "files" / "train.jsonl", sums(5))
    write_jsonl(tmp_path / "files" / "test.jsonl", sums(7)[5:])
    split_files = load_task("dataset", DataConfig(path=str(tmp_path / "files"), prompt_key="question",
                                                  test_split="test"))
    assert [e.prompt for e in split_files.examples("test", 10)] == ["5+6=", "6+7="]

    (tmp_path / "sums.csv").write_text("question,answer\n1+1=,2\n2+2=,4\n3+3=,6\n")
    csv = load_task("dataset", DataConfig(path=str(tmp_path / "sums.csv"), prompt_key="question", test_fraction=0.3))
    assert sorted(e.answer for e in csv.examples("train", 10) + csv.examples("test", 10)) == [2, 4, 6]


BAD_DATA = [  # (file name, content, data: fields, what the error names)
    ("a.jsonl", [{"q": "1+1=", "answer": "2"}], {}, ["has no column 'question'", "set data.prompt_key"]),
    ("a.jsonl", [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "4"},
                 {"question": "3+3=", "answer": None}], {}, ["row 3", "'answer' is missing or null"]),
    ("a.jsonl", [{"question": "1+1=", "answer": "2"}, {"question": "", "answer": "4"}], {},
     ["row 2", "'question' must be non-empty text"]),
    ("a.jsonl", [{"question": "1+1=", "answer": "2"}, {"question": 7, "answer": "4"}], {},
     ["row 2", "'question' must be non-empty text, got int 7"]),
    ("a.jsonl", [{"question": "1+1=", "answer": "2"}, {"question": ["1+1="], "answer": "4"}], {},
     ["row 2", "'question' must be non-empty text, got list"]),
    ("a.jsonl", '{"question": "1+1=", "answer": "2"}\n[1, 2]\n', {}, ["line 2 is a JSON list, not an object"]),
    ("m.jsonl", [{"messages": [{"role": "user", "content": "hi"}], "answer": "2"},
                 {"messages": [{"role": "bot", "content": "hi"}], "answer": "2"}], {"messages_key": "messages"},
     ["row 2", "'messages' message 0 has role 'bot'"]),
    ("a.jsonl", '{"question": "1+1=", "answer": "2"}\n{"question": "2+2=", "answer": \n', {},
     ["line 2 is not valid JSON"]),
    ("a.csv", "question,answer\n", {}, ["has no rows"]),
    ("a.jsonl", "\n", {}, ["has no rows"]),
    ("a.jsonl", sums(4), {"test_split": "validation"}, ["data.test_split", "no split 'validation'", "its splits: train"]),
    ("a.jsonl", [{**r, "completions": 1} for r in sums(4)], {}, ["column 'completions' would shadow"]),
    ("a.jsonl", sums(1), {}, ["1 row(s)", "too few to hold out"]),
    ("a.txt", "1+1=\t2\n", {}, ["not a dataset file", ".jsonl, .json, .parquet or .csv"]),
    ("missing.jsonl", None, {}, ["not found"]),
]


@pytest.mark.parametrize("name, content, fields, expected", BAD_DATA)
def test_bad_data_is_a_clear_error_naming_the_file_row_and_key(tmp_path, name, content, fields, expected):
    path = tmp_path / name
    if isinstance(content, list):
        write_jsonl(path, content)
    elif content is not None:
        path.write_text(content)
    fields = {"prompt_key": "question", **fields} if "messages_key" not in fields else fields
    with pytest.raises(DataError) as err:
        check_data(DataConfig(path=str(path), **fields))
    message = str(err.value)
    assert str(path) in message and all(e in message for e in expected), message


def test_long_prompts_are_dropped_and_counted(tmp_path, tiny_model_dir):
    rows = sums(10) + [{"question": "1" * 40 + "+1=", "answer": "2", "level": 0} for _ in range(3)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    encoder = PromptEncoder.from_model_dir(tiny_model_dir)
    longest_short = max(len(encoder.encode(r["question"])) for r in sums(10))
    cfg = DataConfig(path=str(path), prompt_key="question", test_fraction=0.3, max_prompt_tokens=longest_short)
    task = load_task("dataset", cfg, encoder)
    assert sum(task.dropped.values()) == 3 and not any(e.prompt.startswith("1111") for e in task.examples("train", 99))
    assert len(task.examples("train", 99)) + len(task.examples("test", 99)) == 10
    assert sum(load_task("dataset", cfg).dropped.values()) == 0  # without the encoder nothing is measured
    with pytest.raises(DataError, match="every prompt of the train split .* longer than 2 tokens"):
        load_task("dataset", cfg.model_copy(update={"max_prompt_tokens": 2}), encoder)


def text_job(model_dir: Path, data_path: Path, rewards: list[dict], steps: int = 10) -> dict:
    return {"model": {"path": str(model_dir)},
            "rollout": {"task": "dataset", "prompts_per_step": 2, "group_size": 4, "eval_size": 8, "max_new_tokens": 6},
            "data": {"path": str(data_path), "prompt_key": "question", "test_fraction": 0.3},
            "rewards": rewards, "run": {"steps": steps, "eval_every": 100, "checkpoint_every": 100}}


def test_a_raising_reward_is_counted_and_fails_the_run_past_its_error_rate(tmp_path, tiny_model_dir):
    rows = sums(30) + [{"question": "1" * 40 + "+1=", "answer": "2", "level": 0}]
    data_path = write_jsonl(tmp_path / "sums.jsonl", rows)
    job = text_job(tiny_model_dir, data_path, [{"fn": "tests.integration.user_rewards:exact"},
                                               {"fn": "tests.integration.user_rewards:raises", "max_error_rate": 0.5}])
    encoder = PromptEncoder.from_model_dir(tiny_model_dir)
    limit = max(len(encoder.encode(r["question"])) for r in sums(30))
    assert len(encoder.encode(rows[-1]["question"])) > limit
    job["data"]["max_prompt_tokens"] = limit
    out = io.StringIO()
    run_dir = tmp_path / "run"
    with pytest.raises(RewardFailure, match=r"'raises' failed on 32 of 32 .*KeyError.*no 'solution' column"):
        run_job(parse_config(job), run_dir=run_dir, progress=False, console=Console(file=out, width=200))
    rows = read_jsonl(run_dir / METRICS)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]  # 8 eval + 3 x 8 step completions: judged and failed at step 3
    assert all(r["reward_errors/raises"] == 8 and r["rewards/raises/mean"] is None and r["reward_errors/exact"] == 0
               and r["rewards/exact/mean"] is not None for r in steps)
    assert next(r for r in rows if "eval_accuracy" in r)["eval_reward_errors/raises"] == 8
    dropped = [r for r in rows if r.get("event") == "prompts_dropped"]
    assert len(dropped) == 1 and dropped[0]["train"] + dropped[0]["test"] == 1
    assert dropped[0]["max_prompt_tokens"] == limit
    printed = out.getvalue()
    assert "reward 'raises': 8 of 8 completions got no reward at step 1" in printed and "KeyError" in printed
    assert not (run_dir / SUMMARY).exists()


@pytest.mark.parametrize("change, message", [
    ({"rewards": [{"fn": "no_such_rewards_module:f"}]}, "rewards\\[0\\].fn: reward 'no_such_rewards_module:f': cannot "
                                                       "import module"),
    ({"rewards": [{"fn": "tests.integration.user_rewards:nope"}]}, "has no function 'nope'"),
    ({"data": {"path": "BAD", "prompt_key": "question"}}, "row 2: 'answer' is missing or null"),
    ({"data": {"path": "GOOD", "prompt_key": "question", "max_prompt_tokens": 1}}, "longer than 1 tokens"),
])
def test_bad_rewards_or_data_fail_before_the_run_dir_is_touched(tmp_path, tiny_model_dir, change, message):
    good = write_jsonl(tmp_path / "good.jsonl", sums(10))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "1+1=", "answer": "2"}, {"question": "2+2="}])
    job = {**text_job(tiny_model_dir, good, [{"fn": "tests.integration.user_rewards:exact"}]), **change}
    if "data" in change:
        job["data"] = {**change["data"], "path": str({"BAD": bad, "GOOD": good}[change["data"]["path"]])}
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=message):
        run_job(parse_config(job), run_dir=existing, progress=False)
    assert [p.name for p in existing.iterdir()] == ["notes.txt"] and (existing / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_chat_datasets_train_through_run_job_with_two_weighted_user_rewards(tmp_path, smollm2_dir, fmt):
    rows = [{"messages": [{"role": "user", "content": QUESTION.replace("3", str(i))}], "answer": str(2 + i),
             "skip": i % 4 == 0} for i in range(12)]
    if fmt == "jsonl":
        write_jsonl(tmp_path / "chat.jsonl", rows)
    else:
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "chat.parquet"))
    job = {"model": {"path": str(smollm2_dir)},
           "rollout": {"task": "dataset", "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "eval_size": 2,
                       "eval_samples": 2},
           "data": {"path": str(tmp_path / f"chat.{fmt}"), "messages_key": "messages", "answer_key": "answer",
                    "system_prompt": "Be brief.", "test_fraction": 0.25},
           "rewards": [{"fn": "tests.integration.user_rewards:exact", "weight": 2.0},
                       {"fn": "tests.integration.user_rewards:brevity", "weight": 0.5}],
           "run": {"steps": 1, "eval_every": 1, "checkpoint_every": 1}}
    streamed = []
    run_dir = tmp_path / "run"
    summary = run_job(parse_config(job), run_dir=run_dir, progress=False,
                      sink=lambda stream, record: streamed.append((stream, record)))
    assert summary.steps == 1
    rows_logged = read_jsonl(run_dir / METRICS)
    step = next(r for r in rows_logged if "loss" in r)
    assert step["reward_errors/exact"] == step["reward_errors/brevity"] == 0
    assert 0 <= step["rewards/brevity/mean"] <= 1 and 0 <= step["rewards/exact/mean"] <= 1
    evals = [r for r in rows_logged if "eval_accuracy" in r]
    assert [e["step"] for e in evals] == [0, 1] and all("eval_rewards/brevity/mean" in e for e in evals)
    samples = read_jsonl(run_dir / SAMPLES)
    assert [s["step"] for s in samples] == [0, 0, 1, 1]
    assert [r for stream, r in streamed if stream == "samples"] == samples
    for s in samples:
        assert set(s) == {"step", "prompt", "completion", "answer", "rewards", "reward"}
        assert s["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + ")
        assert s["prompt"].endswith("<|im_start|>assistant\n") and set(s["rewards"]) == {"exact", "brevity"}
        exact, brevity = s["rewards"]["exact"], s["rewards"]["brevity"]
        assert s["reward"] == pytest.approx((0.0 if exact is None else 2.0 * exact) + 0.5 * brevity)
    assert (summary.acc_before, summary.acc_after) == (evals[0]["eval_accuracy"], evals[1]["eval_accuracy"])
