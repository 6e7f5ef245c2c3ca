"""The learner section as one config class per algorithm: each algorithm's own defaults without a mutating
validator (so `--set learner.algorithm=rank_grpo` gives the same clip as the file), the combinations that mean
nothing refused with the reason, and policy losses checked against the registry."""

from __future__ import annotations

import pytest

from learner.config import GRPOConfig, RankGRPOConfig
from services.config import ConfigError, parse_config


def test_each_algorithm_has_its_own_class_and_defaults():
    grpo, rank = parse_config({}).learner, parse_config({"learner": {"algorithm": "rank_grpo"}}).learner
    assert type(grpo) is GRPOConfig and (grpo.epsilon, grpo.epsilon_high) == (0.2, None)
    assert type(rank) is RankGRPOConfig and (rank.epsilon, rank.epsilon_high) == (0.06, 0.08)
    assert "epsilon" not in rank.model_fields_set  # a default, not a value written by a validator
    assert not hasattr(rank, "reward_shaping") and not hasattr(grpo, "rank_reward")


def test_set_algorithm_on_the_command_line_gives_the_file_s_clip(tmp_path):
    from services.cli import read_job

    job = tmp_path / "job.yaml"
    job.write_text("rollout:\n  task: ranklist\nlearner:\n  lr: 0.001\n")
    cfg = read_job(str(job), ["learner.algorithm=rank_grpo"])
    job.write_text("rollout:\n  task: ranklist\nlearner:\n  lr: 0.001\n  algorithm: rank_grpo\n")
    assert cfg.learner == read_job(str(job), []).learner
    assert (cfg.learner.epsilon, cfg.learner.epsilon_high) == (0.06, 0.08)


@pytest.mark.parametrize("field, value, why", [
    ("reward_shaping", "unlikeliness", "one reward per sequence"),
    ("unlikeliness_beta", 0.5, "one reward per sequence"),
    ("drop_uniform_groups", True, "still teaches"),
    ("scale_rewards", "batch", "no sequence reward to scale"),
    ("importance_sampling_level", "sequence", "per rank"),
])
def test_rank_grpo_refuses_grpo_only_fields_with_the_reason(field, value, why):
    with pytest.raises(ConfigError, match=f"{field} does not apply to algorithm rank_grpo: .*{why}"):
        parse_config({"learner": {"algorithm": "rank_grpo", field: value}})
    parse_config({"learner": {"algorithm": "grpo", field: value}})  # meaningful for GRPO


def test_unknown_algorithm_and_loss_list_the_valid_names():
    with pytest.raises(ConfigError, match="learner.algorithm: unknown algorithm 'ppo'; valid: grpo, rank_grpo"):
        parse_config({"learner": {"algorithm": "ppo"}})
    with pytest.raises(ConfigError, match="unknown policy loss 'gpo'; valid: .*bnpo.*cispo.*dapo.*sapo"):
        parse_config({"learner": {"loss_type": "gpo"}})


def test_cispo_needs_its_cap():
    with pytest.raises(ConfigError, match="cispo caps the importance weight at epsilon_high"):
        parse_config({"learner": {"loss_type": "cispo"}})
    assert parse_config({"learner": {"loss_type": "cispo", "epsilon_high": 5.0}}).learner.epsilon_high == 5.0


def test_errors_name_the_field_not_the_union_member():
    with pytest.raises(ConfigError) as err:
        parse_config({"learner": {"algorithm": "rank_grpo", "lr": "fast"}})
    assert "  learner.lr:" in str(err.value) and "rank_grpo.lr" not in str(err.value)
