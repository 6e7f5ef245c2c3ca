"""Algorithms and losses plug in without touching the loop: a policy loss registered by a user (one function, one
registration) trains through the learner; one completion limit (rollout.max_new_tokens) reaches every generation
of a run, leap scoring and list metrics included."""

from __future__ import annotations

import pytest
import torch

from learner.algorithms import GRPO
from learner.config import GRPOConfig, LoraConfig, ModelConfig
from learner.learner import Learner
from learner.losses import POLICY_LOSSES, LossInputs, LossSettings, token_mean
from rollout.engines.base import SamplingParams
from rollout.engines.hf import HFEngine

pytestmark = pytest.mark.integration


def test_a_registered_toy_loss_trains_two_learner_steps(tiny_model_dir):
    calls = []

    @POLICY_LOSSES.register("toy_reinforce")
    def toy_reinforce(inputs: LossInputs, log_ratio: torch.Tensor, settings: LossSettings) -> torch.Tensor:
        """REINFORCE with the group baseline: -A * logp, token mean over the batch."""
        calls.append(inputs.logp.shape)
        adv = inputs.advantages[:, None] if inputs.advantages.dim() == 1 else inputs.advantages
        return token_mean(-adv * inputs.logp, inputs)

    try:
        cfg = GRPOConfig(lr=1e-2, loss_type="toy_reinforce", lora=LoraConfig(r=4, alpha=8))
        learner = Learner(tiny_model_dir, ModelConfig(device="cpu"), cfg, seed=0, total_steps=2, max_new_tokens=6)
        engine = HFEngine(model=learner.model, tokenizer=learner.tokenizer)
        prompts = [learner.tokenizer(p)["input_ids"] for p in ("12+34=", "987+6=")]
        before = {n: p.detach().clone() for n, p in learner.model.named_parameters() if "lora_B" in n}
        for step in range(2):
            groups = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=6, seed=step))
            rewards = [float(i % 2) for i in range(4 * len(groups))]
            stats = learner.step(GRPO(cfg).make_batch(groups, rewards))
            assert stats["grad_norm"] > 0 and torch.isfinite(torch.tensor(stats["loss"]))
        assert len(calls) == 2 and learner.step_count == 2
        moved = max(float((p.detach() - before[n]).abs().max()) for n, p in learner.model.named_parameters() if n in before)
        assert moved > 0  # the toy loss's gradient reached the adapter
    finally:
        POLICY_LOSSES._entries.pop("toy_reinforce", None)


class RecordingRuntime:
    """Our LocalRuntime, recording the completion limit of every generation it is asked for."""

    def __init__(self, runtime):
        self.runtime, self.limits = runtime, []

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    def generate(self, prompt_ids, params):
        self.limits.append(params.max_new_tokens)
        return self.runtime.generate(prompt_ids, params)

    def generate_with(self, adapter_path, prompt_ids, params):
        self.limits.append(params.max_new_tokens)
        return self.runtime.generate_with(adapter_path, prompt_ids, params)


def test_one_completion_limit_everywhere(tmp_path):
    from learner.bootstrap import bootstrap
    from rollout.tasks import load_task
    from services.config import parse_config
    from services.leap_protocol import LeapController
    from services.loop import Evaluator, LoopState, RunLog
    from services.prepare import prepare_job
    from services.runtime import LocalRuntime

    model_dir = bootstrap("ranklist", 0, progress=False)
    task = load_task("ranklist")
    limit = task.max_new_tokens - 3
    cfg = parse_config({"model": {"path": str(model_dir)},
                        "rollout": {"task": "ranklist", "max_new_tokens": limit, "eval_size": 4, "eval_pass_n": 2,
                                    "eval_pass_size": 2},
                        "run": {"steps": 4}, "extrapolate": {"eval_size": 20}})
    prepared = prepare_job(cfg, "test", progress=False)
    assert prepared.max_new_tokens == limit
    runtime = RecordingRuntime(LocalRuntime(prepared, tmp_path))
    Evaluator(prepared, runtime, RunLog(tmp_path))(0, LoopState())  # greedy (list metrics on the same
    # completions), pass@k
    leaps = LeapController(prepared, runtime, tmp_path, lambda kind, record: None)
    leaps._scores()
    assert len(runtime.limits) == 3 and set(runtime.limits) == {limit}
