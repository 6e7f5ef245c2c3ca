"""The job config rejects bad input before any work, naming the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import apply_overrides, read_job
from services.config import ConfigError, JobConfig, load_config, parse_config

JOBS = Path(__file__).resolve().parents[3] / "deploy" / "jobs"
EXAMPLE_JOBS = sorted(JOBS.glob("*.yaml"))


def test_reference_job_parses():
    cfg = load_config(JOBS / "arith.yaml")
    assert cfg.rollout.task == "arith" and cfg.rollout.group_size == 8


@pytest.mark.parametrize("data, field, hint", [
    ({"learner": {"lr": -1}}, "learner.lr", "greater than 0"),
    ({"rollout": {"group_size": 1}}, "rollout.group_size", "greater than or equal to 2"),
    ({"rollout": {"group_size": "eight"}}, "rollout.group_size", "valid integer"),
    ({"rollout": {"bogus": 1}}, "rollout.bogus", "unknown field"),
    ({"nonsense": {}}, "nonsense", "unknown field"),
    ({"learner": {"loss_type": "ppo"}}, "learner.loss_type", "grpo"),
    ({"learner": {"epsilon": 0.2, "epsilon_high": 0.1}}, "learner", "epsilon_high must be >= epsilon"),
    ({"run": {"name": "a/b"}}, "run.name", "pattern"),
    ({"rollout": {"environment": "sums_retry", "max_off_policy_steps": 1}}, "rollout", "set it to 0"),
    ({"rollout": {"overlap": True}}, "rollout", "max_off_policy_steps: 1"),
    ({"rollout": {"dynamic_sampling": {}, "max_off_policy_steps": 1}}, "rollout", "dynamic_sampling: null"),
    ({"learner": {"advantage_estimator": "rloo", "scale_rewards": "none"}}, "learner", "remove scale_rewards"),
    ({"rollout": {"tools": ["python"], "tool_parser": "hermes"}}, "rollout.tool_parser", "xml_json"),
    ({"learner": {"num_workers": 2}}, "learner", "sharding: ddp"),
    ({"learner": {"sharding": "ddp"}}, "learner", "num_workers >= 2"),
    ({"learner": {"num_workers": 2, "sharding": "fsdp", "optimizer": "prodigy"}}, "learner", "optimizer: adamw"),
    ({"learner": {"num_workers": 2, "sharding": "zero3"}}, "learner.sharding", "fsdp"),
])
def test_bad_fields_are_named(data, field, hint):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "test.yaml")
    assert field in str(err.value) and hint in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(lst)


def test_schema_documents_every_field():
    schema = JobConfig.model_json_schema()
    text = json.dumps(schema)
    assert "additionalProperties" in text
    for name, sub in schema["$defs"].items():
        for field, spec in sub.get("properties", {}).items():
            if "$ref" in spec or "allOf" in spec:
                continue
            assert spec.get("description"), f"{name}.{field} has no description"


def test_overrides():
    data = apply_overrides({"run": {"steps": 3}}, ["run.steps=7", "learner.lr=1e-3"])
    assert data == {"run": {"steps": 7}, "learner": {"lr": 1e-3}}
    with pytest.raises(ValueError, match="section.field=value"):
        apply_overrides({}, ["steps7"])


def test_rank_grpo_uses_the_authors_clip_unless_set():
    cfg = parse_config({"learner": {"algorithm": "rank_grpo"}})
    assert (cfg.learner.epsilon, cfg.learner.epsilon_high) == (0.06, 0.08)
    cfg = parse_config({"learner": {"algorithm": "rank_grpo", "epsilon": 0.1, "epsilon_high": 0.2}})
    assert (cfg.learner.epsilon, cfg.learner.epsilon_high) == (0.1, 0.2)
    assert parse_config({}).learner.epsilon == 0.2


def test_example_jobs_are_found():
    """The parametrized test below would pass with no cases if the glob found nothing."""
    assert {p.name for p in EXAMPLE_JOBS} >= {"arith.yaml", "ranklist.yaml"}


@pytest.mark.parametrize("path", EXAMPLE_JOBS, ids=lambda p: p.name)
def test_every_example_job_parses(path):
    load_config(path)


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("run:\n  steps: 3\n  name: a: b\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(err.value).startswith(f"{bad} line 3: mapping values are not allowed here")
    with pytest.raises(ConfigError, match=f"{bad} line 3: mapping values"):
        read_job(str(bad), ["run.steps=4"])


def test_set_overrides_leave_other_fields_unset(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("learner:\n  lr: 0.001\nrun:\n  steps: 3\n")
    cfg = read_job(str(job), ["learner.epsilon=0.3"])
    assert cfg.learner.epsilon == 0.3 and cfg.learner.lr == 0.001 and cfg.run.steps == 3
    assert {"lr", "epsilon"} <= cfg.learner.model_fields_set <= {"lr", "epsilon", "algorithm"}
    assert cfg.run.model_fields_set == {"steps"}
    assert "extrapolate" not in cfg.model_fields_set and cfg.rollout.model_fields_set == set()


def test_set_algorithm_gets_its_own_defaults_as_in_the_file(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("run:\n  steps: 3\n")
    by_set = read_job(str(job), ["learner.algorithm=rank_grpo"])
    job.write_text("run:\n  steps: 3\nlearner:\n  algorithm: rank_grpo\n")
    in_file = read_job(str(job), [])
    assert (by_set.learner.epsilon, by_set.learner.epsilon_high) == (in_file.learner.epsilon,
                                                                     in_file.learner.epsilon_high) == (0.06, 0.08)


def test_set_value_that_is_not_yaml_names_the_override():
    with pytest.raises(ValueError, match=r"--set 'run.name=\[1': the value is not valid YAML"):
        apply_overrides({}, ["run.name=[1"])
    assert apply_overrides({"extrapolate": None}, ["extrapolate.every=5"]) == {"extrapolate": {"every": 5}}
