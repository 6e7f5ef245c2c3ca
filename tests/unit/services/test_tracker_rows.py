"""What the trackers receive from a metrics row, the names MLflow gets, the flat config of MLflow's params, and the
report_to choices (one per registered tracker, each at most once)."""

from __future__ import annotations

import typing

import pytest

from services.config import ConfigError, RunConfig, parse_config
from services.trackers import TRACKERS, flat_config, mlflow_key, tracker_values


def test_a_row_with_a_step_gives_its_finite_numbers():
    row = {"step": 3, "loss": 0.5, "completion_tokens": 12, "rewards/format/mean": 1.0, "kl": float("nan"),
           "ok": True, "note": "text", "time": 1.0e9}
    assert tracker_values(row) == (3, {"loss": 0.5, "completion_tokens": 12.0, "rewards/format/mean": 1.0})
    assert tracker_values({"event": "learner_restarted", "at_step": 4, "from_step": 2}) is None


def test_mlflow_names_and_params():
    assert mlflow_key("pass@4") == "pass_4"
    assert mlflow_key("rewards/my_rewards:exact/mean") == "rewards/my_rewards:exact/mean"
    flat = flat_config(parse_config({"learner": {"lr": 0.01, "lora": {"r": 4}}, "run": {"report_to": ["mlflow"]}}))
    assert flat["learner.lr"] == "0.01" and flat["run.report_to"] == '["mlflow"]'
    assert flat["learner.lora.r"] == "4" and flat["extrapolate"] == "None"


def test_report_to_choices():
    TRACKERS.check_literal(typing.get_args(RunConfig.model_fields["report_to"].annotation)[0])
    assert RunConfig().report_to == []
    with pytest.raises(ConfigError, match="each tracker at most once"):
        parse_config({"run": {"report_to": ["wandb", "wandb"]}})
    with pytest.raises(ConfigError, match="run.report_to.0"):
        parse_config({"run": {"report_to": ["comet"]}})
