"""Datasets of `rollout.task: dataset`: the `data:` section's file read with the `datasets` library (offline), split
into train and test, and every row checked before any work.

    path                       read as
    x.jsonl / x.json           datasets' "json" builder, one split named "train"
    x.parquet                  "parquet", one split "train"
    x.csv                      "csv", one split "train"
    a directory of save_to_disk   datasets.load_from_disk (a DatasetDict keeps its splits; a Dataset is "train")
    another directory          datasets.load_dataset(dir): the splits from the file names (train-*.parquet, test.jsonl)

A row is a problem: its prompt (`prompt_key`: non-empty text, or `messages_key`: a non-empty list of
{"role", "content"} strings), its answer (`answer_key`: present, not null) and every other column, passed on to the
reward functions under its own name. Rows are counted from 1 in errors (row 1 is the first line of a JSONL file).
"""

from __future__ import annotations

import functools
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from rollout.config import DataConfig

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Keyword arguments every reward function receives besides the dataset's columns (rollout/rewards/scorer.py); a
# column of one of these names would be shadowed.
RESERVED_COLUMNS = ("prompts", "completions", "completion_ids", "trainer_state", "max_completion_length",
                    "environment_rewards")
ROLES = ("system", "user", "assistant", "tool")


class DataError(ValueError):
    """A data: section that cannot be used: names the file, the split, the row and the key, and the fix."""


@dataclass(frozen=True)
class Row:
    """One checked problem of a split: its number there (from 1), prompt, answer and other columns."""

    number: int
    prompt: str | list[dict]
    answer: object
    columns: dict


def check_data(cfg: DataConfig) -> None:
    """Load and check a data: section without a model (raises DataError): the file, its splits and every row."""
    load_rows(cfg)


def load_rows(cfg: DataConfig) -> dict[str, list[Row]]:
    """{"train": rows, "test": rows} of a data: section, every row checked (DataError on the first bad one); read
    once per section and version of the files (a run loads its task several times)."""
    path = Path(cfg.path)
    return _load_rows(cfg.model_dump_json(), _version(path))


def _version(path: Path) -> tuple:
    """What changes when the dataset's files do: (name, size, mtime) of the file or of each file under the dir."""
    if not path.exists():
        return ()
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


@functools.lru_cache(maxsize=4)
def _load_rows(cfg_json: str, version: tuple) -> dict[str, list[Row]]:
    cfg = DataConfig.model_validate_json(cfg_json)
    path = Path(cfg.path)
    splits = _read_splits(path)
    if cfg.train_split not in splits:
        raise DataError(f"data.train_split: {path} has no split {cfg.train_split!r} (its splits: "
                        f"{', '.join(sorted(splits))}; a single file is one split named 'train')")
    train = _check_split(path, cfg.train_split, splits[cfg.train_split], cfg)
    if cfg.test_split is not None:
        if cfg.test_split not in splits:
            raise DataError(f"data.test_split: {path} has no split {cfg.test_split!r} (its splits: "
                            f"{', '.join(sorted(splits))}); unset it to hold out data.test_fraction of the train split")
        return {"train": train, "test": _check_split(path, cfg.test_split, splits[cfg.test_split], cfg)}
    return dict(zip(("train", "test"), held_out(path, train, cfg.test_fraction, cfg.split_seed), strict=True))


def held_out(path: Path, rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, test): a seeded `fraction` of the rows (at least one) held out, both in file order."""
    if len(rows) < 2:
        raise DataError(f"data: {path} has {len(rows)} row(s) in its train split, too few to hold out a test set; "
                        f"add rows or give a data.test_split")
    order = list(range(len(rows)))
    random.Random(f"data-split:{seed}").shuffle(order)
    test = set(order[:max(1, round(len(rows) * fraction))])
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def _read_splits(path: Path) -> dict[str, list[dict]]:
    """Every split of the dataset at `path` as Python rows (datasets offline)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    if not path.exists():
        raise DataError(f"data.path: {path} not found (relative paths are read from the driver's working directory "
                        f"{Path.cwd()})")
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_dir():
            loaded = datasets.load_dataset(str(path))
        elif path.suffix.lower() in BUILDERS:
            loaded = datasets.load_dataset(BUILDERS[path.suffix.lower()], data_files=str(path))
        else:
            raise DataError(f"data.path: {path} is not a dataset file: use .jsonl, .json, .parquet or .csv, or a "
                            f"directory written by datasets' save_to_disk")
    except DataError:
        raise
    except Exception as err:  # the datasets / pyarrow readers raise many types; each becomes one clear message
        if path.is_file() and path.suffix.lower() in (".jsonl", ".csv") and _data_lines(path) == 0:
            raise DataError(f"data.path: {path} has no rows; give a file with one problem per "
                            f"{'line' if path.suffix.lower() == '.jsonl' else 'line after the header'}") from None
        raise DataError(f"data.path: {path} cannot be read as a dataset: {_first_bad_line(path) or err}") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}
    return {name: split.to_list() for name, split in loaded.items()}


def _data_lines(path: Path) -> int:
    """Non-blank lines of a JSONL file, or of a CSV file after its header."""
    with path.open(encoding="utf-8", errors="replace") as f:
        lines = sum(1 for line in f if line.strip())
    return lines - 1 if path.suffix.lower() == ".csv" and lines else lines


def _first_bad_line(path: Path) -> str | None:
    """For a JSONL file that does not load: the first line that is not a JSON object, named by its number."""
    if not path.is_file() or path.suffix.lower() != ".jsonl":
        return None
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number} is not valid JSON ({err.msg} at column {err.colno})"
            if not isinstance(value, dict):
                return f"line {number} is a JSON {type(value).__name__}, not an object of columns"
    return None


def _check_split(path: Path, split: str, rows: list[dict], cfg: DataConfig) -> list[Row]:
    """The split's rows checked and split into prompt, answer and columns."""
    key = cfg.prompt_key or cfg.messages_key
    key_field = "data.prompt_key" if cfg.prompt_key else "data.messages_key"
    where = f"data: {path} split {split!r}"
    if not rows:
        raise DataError(f"{where} is empty; give a dataset with rows in it")
    columns = list(rows[0])
    for name, field in ((key, key_field), (cfg.answer_key, "data.answer_key")):
        if name not in columns:
            raise DataError(f"{where} has no column {name!r} (its columns: {', '.join(columns)}); set {field}")
    for name in columns:
        if name in RESERVED_COLUMNS or (name == "answer" and cfg.answer_key != "answer"):
            raise DataError(f"{where}: the column {name!r} would shadow the reward functions' argument of that name; "
                            f"rename it (the answer_key column is passed as `answer`)")
    out = []
    for number, row in enumerate(rows, start=1):
        prompt = row.get(key)
        if cfg.prompt_key and not (isinstance(prompt, str) and prompt.strip()):
            raise DataError(f"{where} row {number}: {key!r} must be non-empty text, got {_show(prompt)}; fix the row "
                            f"or, for chat messages, set data.messages_key instead")
        if cfg.messages_key:
            problem = _messages_problem(prompt)
            if problem:
                raise DataError(f"{where} row {number}: {key!r} {problem}; a prompt is a list of "
                                f"{{\"role\": ..., \"content\": ...}} messages")
            prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
        if row.get(cfg.answer_key) is None:
            raise DataError(f"{where} row {number}: {cfg.answer_key!r} is missing or null; every row needs an answer "
                            f"(data.answer_key)")
        if cfg.system_prompt is not None:
            head = [{"role": "system", "content": cfg.system_prompt}]
            prompt = head + ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
        rest = {k: v for k, v in row.items() if k != key}
        out.append(Row(number=number, prompt=prompt, answer=row[cfg.answer_key], columns=rest))
    return out


def _messages_problem(value) -> str | None:
    """What is wrong with a chat-messages prompt, or None when it is well formed."""
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of messages, got {_show(value)}"
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"message {i} must have text 'role' and 'content', got {_show(m)}"
        if m["role"] not in ROLES:
            return f"message {i} has role {m['role']!r}, not one of {', '.join(ROLES)}"
    return None


def _show(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"
