"""The job config rejects bad input before any work, naming the field and the fix."""

from __future__ import annotations

import json

import pytest

from services.cli import apply_overrides
from services.config import ConfigError, JobConfig, load_config, parse_config


def test_reference_job_parses():
    cfg = load_config("deploy/jobs/arith.yaml")
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


@pytest.mark.parametrize("path", sorted(__import__("glob").glob("deploy/jobs/*.yaml")))
def test_every_example_job_parses(path):
    load_config(path)
